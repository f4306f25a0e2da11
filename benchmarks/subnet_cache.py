"""Subnets of the fair report before the common fine-tune, cached on disk between runs (/tmp by default).

Each method's subnet (after its search or pruning and its own SGD steps) is fine-tuned once per setting
(1 and 5 epochs); the cache lets a later run fine-tune it for another setting without searching again.
A file holds the whole module (pickled: written and read only by this benchmark) and its record of costs.
A class whose module moved inside `search/` since the file was written is looked up in search's sub-packages;
a file that still cannot be read is a miss (the subnet is measured again).
"""
from __future__ import annotations

import hashlib
import importlib
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn


PACKAGES = ("search.models", "search.engine", "search.selection", "search.finetune", "search.export")


class _MovedModules(pickle.Unpickler):
    """An unpickler that finds `search.X.Name` under `search.<package>.X` when `search.X` no longer exists."""

    def find_class(self, module: str, name: str):
        try:
            return super().find_class(module, name)
        except ModuleNotFoundError:
            if not module.startswith("search."):
                raise
            for package in PACKAGES:
                try:
                    return getattr(importlib.import_module(f"{package}.{module.split('.')[-1]}"), name)
                except (ModuleNotFoundError, AttributeError):
                    continue
            raise


class _Pickle:
    Unpickler = _MovedModules
    load = pickle.load
    loads = pickle.loads


class SubnetCache:
    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, key: str) -> Path:
        return self.folder / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.pt"

    def get(self, key: str) -> tuple[nn.Module, dict[str, Any]] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, weights_only=False, pickle_module=_Pickle)  # our own file (module docstring)
        except (ModuleNotFoundError, AttributeError, pickle.UnpicklingError, EOFError):
            return None
        return (saved["module"], saved["record"]) if saved.get("key") == key else None

    def put(self, key: str, module: nn.Module, record: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(key)
        temporary = path.with_suffix(".tmp")
        torch.save({"key": key, "module": module, "record": record}, temporary)
        temporary.replace(path)
