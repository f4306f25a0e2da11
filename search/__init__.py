"""Search a pruned architecture: the Python API (`prune`) and the command lines over four sub-packages.

- `engine/`: the search loop and its records, the run's configuration, the pipeline that assembles a run;
- `models/`: the models and data a user names; `selection/`: what is exported is picked after the search;
- `finetune/`: the training step and the fine-tune (`python -m search.finetune`); `export/`: the subnet as
  a deployable file (`python -m search.export`). `run.py` is `python -m search.run`, `cli.py` what the
  command lines share. See docs/architecture.md.

    from search import prune
    result = prune(model, budget="0.4flops", agent="abc", calibration=train_loader, held_out=val_loader)

The names below load on first use, so `import search` stays cheap.
"""
from search.lazy import lazy_getattr

_LAZY = {
    "prune": "engine.api", "Pipeline": "engine.pipeline", "PruneResult": "engine.pipeline",
    "Inputs": "models.inputs", "SearchConfig": "engine.config", "UserError": "errors", "rebuild": "export",
}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
