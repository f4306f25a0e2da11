"""A standard training loop (SGD + cosine) and top-1 evaluation, shared by the baseline and fine-tuning."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    lr: float = 0.1           # peak learning rate, decayed to 0 by a cosine over all steps
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0


def resolve_device(device: str = "auto") -> torch.device:
    """`auto`: CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of `model` (in eval mode) over `loader`."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        correct += (model(x).argmax(1) == y).sum().item()
        total += y.numel()
    return correct / max(1, total)


def train(model: nn.Module, loader: DataLoader, config: TrainConfig, *, device: torch.device | str = "cpu",
          desc: str = "train", progress: bool = True,
          on_epoch: Callable[[int, float, float], None] | None = None) -> list[dict[str, float]]:
    """Train in place with SGD + cosine; returns one record per epoch (loss, train top-1, lr).

    `on_epoch(epoch, loss, train_top1)` is called after every epoch (e.g. to evaluate and log).
    """
    model.to(device)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=config.lr, momentum=config.momentum, nesterov=True)
    steps = max(1, config.epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    history = []
    bar = tqdm(range(config.epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        loss_sum = correct = seen = 0.0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            loss = F.cross_entropy(out, y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * y.numel()
            correct += (out.argmax(1) == y).sum().item()
            seen += y.numel()
        record = {"epoch": epoch + 1, "loss": loss_sum / max(1, seen), "train_top1": correct / max(1, seen),
                  "lr": optimizer.param_groups[0]["lr"]}
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", top1=f"{record['train_top1']:.3f}")
        if on_epoch is not None:
            on_epoch(epoch + 1, record["loss"], record["train_top1"])
    return history
