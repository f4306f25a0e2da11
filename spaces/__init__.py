"""The shared vocabulary: search spaces derived from model graphs, elastic and materialized subnets.

The torch-free names (`Dimension`, `Candidate`, `SearchSpace`, `Result`, `TrialState`) load eagerly;
the torch-bearing ones (`derive`, `ElasticModel`, `materialize`, ...) load on first use.
"""
import sys
import types
from importlib import import_module

from .records import Result, TrialState
from .space import (BLOCK_ENCODINGS, DEFAULT_RATIOS, DEPTH, KEEP, WIDTH, Candidate, Dimension, SearchSpace,
                    width_choices)

_LAZY = {
    "derive": "derive", "PrunableModel": "derive",
    "ChannelGraph": "graph", "ChannelGroup": "graph",
    "ElasticModel": "elastic", "materialize": "materialize",
    "reorder": "importance", "channel_importance": "importance",
    "register_layer": "layers", "register_op": "ops", "UntraceableModel": "tracing", "UnpricedModel": "submodule",
}

__all__ = ["BLOCK_ENCODINGS", "DEFAULT_RATIOS", "DEPTH", "KEEP", "WIDTH", "Candidate", "Dimension", "Result",
           "SearchSpace", "TrialState", "width_choices", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'spaces' has no attribute {name!r}")


class _Package(types.ModuleType):
    """`spaces.derive` and `spaces.materialize` are the functions, not the submodules of the same name.

    Importing a submodule sets it as an attribute of its package, which would shadow the function
    (`from spaces import derive` would give a module). That one assignment is dropped, so the name
    resolves through `__getattr__` to the function; `from spaces.derive import derive` is unchanged.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
