"""Train a zoo model once on the data's fit split and cache it, so the next run starts at once."""
from __future__ import annotations

import json
import logging

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from .training import TrainConfig, evaluate, train
from .zoo import DataBundle, cache_dir

log = logging.getLogger(__name__)


def trained_baseline(model: nn.Module, model_spec: str, data_spec: str, data: DataBundle, *, epochs: int,
                     seed: int, batch_size: int, device: torch.device, progress: bool = True) -> tuple[nn.Module, float]:
    """`model` trained (or loaded from the cache) and its test top-1. The cache key names everything that matters."""
    key = "-".join(s.replace("/", "_").replace(":", "_") for s in (model_spec, data_spec, f"seed{seed}", f"e{epochs}"))
    weights, meta = cache_dir() / f"{key}.pt", cache_dir() / f"{key}.json"
    test_loader = DataLoader(data.test, batch_size=256)
    if weights.exists() and meta.exists():
        model.load_state_dict(torch.load(weights, map_location="cpu"))
        model.to(device)
        top1 = json.loads(meta.read_text())["test_top1"]
        log.info("baseline loaded from %s (test top-1 %.4f)", weights, top1)
        return model, top1
    torch.manual_seed(seed)
    loader = DataLoader(Subset(data.train, data.fit.tolist()), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed), drop_last=len(data.fit) > batch_size)
    train(model, loader, TrainConfig(epochs=epochs), device=device, desc="training the baseline", progress=progress)
    top1 = evaluate(model, test_loader, device)
    tmp = weights.with_suffix(".tmp")
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(weights)
    meta.write_text(json.dumps({"model": model_spec, "data": data_spec, "seed": seed, "epochs": epochs,
                                "test_top1": top1}))
    log.info("baseline trained: test top-1 %.4f, cached in %s", top1, weights)
    return model, top1
