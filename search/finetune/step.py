"""The training step (SGD + cosine, optional distillation) and top-1 evaluation, shared by the baseline and fine-tuning."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from evaluators.accuracy import hits, top1

from search.errors import UserError, first_line


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    lr: float = 0.1           # peak learning rate, decayed to 0 by a cosine over all steps
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation from a teacher (Hinton et al. 2015):
    loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)).

    The T^2 keeps the soft term's gradients on the scale of the hard term's as T grows."""
    temperature: float = 4.0
    alpha: float = 0.5


def resolve_device(device: str = "auto") -> torch.device:
    """`auto`: CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of `model` (in eval mode) over `loader`."""
    return top1(model.eval(), ((x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in loader))


def make_optimizer(model: nn.Module, config: TrainConfig, steps: int):
    """Nesterov SGD (weight decay on weights, not on biases and norms) and a per-step cosine from `config.lr` to 0
    over `steps`."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=config.lr, momentum=config.momentum, nesterov=True)
    steps = max(1, steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    return optimizer, scheduler


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, kd: Distillation,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """See `Distillation`; KL averaged over the batch."""
    hard = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    t = kd.temperature
    soft = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits.detach() / t, dim=1),
                    reduction="batchmean", log_target=True)
    return (1 - kd.alpha) * hard + kd.alpha * t * t * soft


def train_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer, scheduler, *,
                device: torch.device | str = "cpu", label_smoothing: float = 0.0,
                teacher: nn.Module | None = None, kd: Distillation | None = None,
                amp: bool = False) -> dict[str, float]:
    """One pass over `batches` in train mode, one optimizer and scheduler step per batch: the training step,
    for the baseline, the plain fine-tune and every Ray Train worker alike. With a `teacher` (in eval mode,
    no grad) the loss is `distillation_loss`. With `amp` the forward passes run under bfloat16 autocast
    (no loss scaling needed) on channels-last inputs. Sums stay on the device: one host sync per epoch.

    Returns the epoch's mean loss, train top-1 and samples seen (of this process)."""
    model.train()
    device_type = torch.device(device).type
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if amp and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
            if teacher is not None:
                with torch.no_grad():
                    soft_targets = teacher(x)
                loss = distillation_loss(out.float(), soft_targets.float(), y, kd or Distillation(), label_smoothing)
            else:
                loss = F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * y.numel()
        correct += hits(out.detach(), y)
        seen += y.numel()
    return {"loss": loss_sum.item() / max(1, seen), "train_top1": correct.item() / max(1, seen), "samples": seen}


def train(model: nn.Module, loader: DataLoader, config: TrainConfig, *, device: torch.device | str = "cpu",
          desc: str = "train", progress: bool = True,
          on_epoch: Callable[[int, float, float], None] | None = None) -> list[dict[str, float]]:
    """Train in place with SGD + cosine; returns one record per epoch (loss, train top-1, lr).

    `on_epoch(epoch, loss, train_top1)` is called after every epoch (e.g. to evaluate and log).
    """
    model.to(device)
    optimizer, scheduler = make_optimizer(model, config, config.epochs * len(loader))
    history = []
    bar = tqdm(range(config.epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        stats = train_epoch(model, loader, optimizer, scheduler, device=device,
                            label_smoothing=config.label_smoothing)
        record = {"epoch": epoch + 1, "loss": stats["loss"], "train_top1": stats["train_top1"],
                  "lr": optimizer.param_groups[0]["lr"]}
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", top1=f"{record['train_top1']:.3f}")
        if on_epoch is not None:
            on_epoch(epoch + 1, record["loss"], record["train_top1"])
    return history


def device_of(name: str) -> torch.device:
    """The device `name` (auto, cpu, cuda, cuda:1, ...), checked usable; else a UserError."""
    try:
        device = resolve_device(name)
        torch.empty(0, device=device)
    except (RuntimeError, ValueError, AssertionError) as error:
        raise UserError(f"cannot use --device {name}: {first_line(error)}") from None
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise UserError(f"cannot use --device {name}: the search runs on cpu or cuda")
    return device
