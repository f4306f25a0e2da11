"""Lazy public names for a package's `__init__` (PEP 562): a name's module is imported on first use.

So `import search` stays cheap, and importing one module of a sub-package (the training step) does not
import the rest of it (the fine-tune's command line and what that needs), which would make import circles.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_getattr(package: str, names: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` giving each of `names` ({name: module relative to it})."""
    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(import_module(f".{names[name]}", package), name)
            namespace[name] = value  # found once, then an ordinary attribute
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
