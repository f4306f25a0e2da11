"""Train a zoo model once on the data's fit split and cache it, so the next run starts at once."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from search.engine.records import atomic_write
from search.finetune.step import TrainConfig, evaluate, train
from search.models.zoo import DataBundle, cache_dir

log = logging.getLogger(__name__)


def cache_key(model_spec: str, data_spec: str, *, seed: int, epochs: int, batch_size: int,
              held_out: float) -> str:
    """Names everything that decides the baseline's training data and recipe (the split too: `held_out`)."""
    recipe = json.dumps({"model": model_spec, "data": data_spec, "seed": seed, "epochs": epochs,
                         "batch_size": batch_size, "held_out": held_out, "train": asdict(TrainConfig(epochs=epochs))},
                        sort_keys=True)
    readable = "-".join(s.replace("/", "_").replace(":", "_") for s in (model_spec, data_spec, f"seed{seed}",
                                                                         f"e{epochs}"))[:80]
    return f"{readable}-{hashlib.sha1(recipe.encode()).hexdigest()[:10]}"


def baseline_files(model_spec: str, data_spec: str, *, seed: int, epochs: int, batch_size: int,
                   held_out: float) -> tuple[Path, Path]:
    """Where the cache keeps this recipe's baseline: its weights (tensors only) and its record (test top-1)."""
    key = cache_key(model_spec, data_spec, seed=seed, epochs=epochs, batch_size=batch_size, held_out=held_out)
    return cache_dir() / f"{key}.pt", cache_dir() / f"{key}.json"


def trained_baseline(model: nn.Module, model_spec: str, data_spec: str, data: DataBundle, *, epochs: int,
                     seed: int, batch_size: int, device: torch.device, held_out: float = 0.2,
                     progress: bool = True) -> tuple[nn.Module, float]:
    """`model` trained (or loaded from the cache) and its test top-1. The cache key names everything that matters.

    The cache holds tensors only and is loaded with `weights_only=True`; an unreadable or tampered entry is
    reported, then trained again and replaced.
    """
    weights, meta = baseline_files(model_spec, data_spec, seed=seed, epochs=epochs, batch_size=batch_size,
                                   held_out=held_out)
    test_loader = DataLoader(data.test, batch_size=256)
    if weights.exists() and meta.exists():
        try:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            top1 = float(json.loads(meta.read_text())["test_top1"])
        except Exception as error:  # noqa: BLE001 - a damaged or poisoned cache entry is a miss, never code
            log.warning("cached baseline %s is unusable (%s): training it again", weights,
                        str(error).splitlines()[0] if str(error) else type(error).__name__)
        else:
            model.to(device)
            log.info("baseline loaded from %s (test top-1 %.4f)", weights, top1)
            return model, top1
    log.info("no cached baseline for this recipe (%s on %s, seed %d, %d epochs at batch size %d): training it once "
             "(--weights gives your own)", model_spec, data_spec, seed, epochs, batch_size)
    torch.manual_seed(seed)
    loader = DataLoader(Subset(data.train, data.fit.tolist()), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed), drop_last=len(data.fit) > batch_size)
    train(model, loader, TrainConfig(epochs=epochs), device=device, desc="training the baseline", progress=progress)
    top1 = evaluate(model, test_loader, device)
    atomic_write(weights, lambda f: torch.save({k: v.cpu() for k, v in model.state_dict().items()}, f))
    atomic_write(meta, json.dumps({"model": model_spec, "data": data_spec, "seed": seed, "epochs": epochs,
                                   "batch_size": batch_size, "held_out": held_out, "test_top1": top1}))
    log.info("baseline trained: test top-1 %.4f, cached in %s", top1, weights)
    return model, top1
