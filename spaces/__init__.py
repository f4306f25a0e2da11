"""The shared vocabulary: search spaces derived from model graphs, elastic and materialized subnets.

The torch-free names (`Dimension`, `Candidate`, `SearchSpace`, `Result`, `TrialState`) load eagerly;
the torch-bearing ones (`derive`, `ElasticModel`, `materialize`, ...) load on first use.
"""
from importlib import import_module

from .records import Result, TrialState
from .space import DEFAULT_RATIOS, KEEP, WIDTH, Candidate, Dimension, SearchSpace, width_choices

_LAZY = {
    "derive": "derive", "PrunableModel": "derive",
    "ChannelGraph": "graph", "ChannelGroup": "graph",
    "ElasticModel": "elastic", "materialize": "materialize",
    "reorder": "importance", "channel_importance": "importance",
    "register_layer": "layers", "UntraceableModel": "tracing",
}

__all__ = ["DEFAULT_RATIOS", "KEEP", "WIDTH", "Candidate", "Dimension", "Result", "SearchSpace", "TrialState",
           "width_choices", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'spaces' has no attribute {name!r}")
