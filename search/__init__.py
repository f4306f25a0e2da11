"""The engine, the Python API (`prune`), the command lines, models and data, export and run records.

    from search import prune
    result = prune(model, budget="0.4flops", agent="abc", calibration=train_loader, held_out=val_loader)

The names below load on first use, so `import search` stays cheap.
"""
from importlib import import_module

_LAZY = {
    "prune": "pipeline", "Pipeline": "pipeline", "PruneResult": "pipeline", "Inputs": "pipeline",
    "SearchConfig": "config", "UserError": "errors", "rebuild": "export",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'search' has no attribute {name!r}")
