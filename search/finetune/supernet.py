"""Supernet training (AutoSlim / BigNAS / once-for-all): the shared weights every candidate inherits, made train-aware.

The elastic model computes every candidate with the base model's own weights, so training it in place
trains what the search scores (BN-recalibrated) and what `spaces.materialize` exports. Each step is the
sandwich rule with in-place distillation (Yu et al., BigNAS 2020; Yu & Huang, AutoSlim 2019): on one batch,
the full width learns from the labels, then the smallest candidate and `random` (2) candidates drawn by
`sample` (feasible ones, within the search's budget) learn from the full width's outputs (soft targets,
detached; `Distillation(temperature=1, alpha=1)` by default); the gradients of the four add up and one
optimizer step follows (the shared `make_optimizer`: Nesterov SGD, cosine to 0 over the steps).

Afterwards the elastic model is reset (the base model is a plain model again, at full width) and the base
model's BatchNorm statistics, meaningless after training a shared supernet at every width, are recalibrated
for the full width (the search recalibrates per candidate anyway). Seeded: the same seed draws the same
candidates and batches and gives the same weights; the caller's RNG state is untouched.
"""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from evaluators.accuracy import recalibrate
from spaces.derive import PrunableModel
from spaces.elastic import ElasticModel
from spaces.space import Candidate

from search.finetune.step import Distillation, TrainConfig, distillation_loss, make_optimizer
from search.selection.finalists import Batches



#: in-place distillation (BigNAS, AutoSlim): the subnets learn from the full width's soft targets alone
IN_PLACE = Distillation(temperature=1.0, alpha=1.0)


@dataclass(frozen=True)
class SupernetSettings:
    steps: int = 100            # optimizer steps, each on one batch (see `for_epochs`)
    lr: float = 0.05            # peak learning rate, cosine to 0 over the steps
    momentum: float = 0.9
    weight_decay: float = 5e-4
    random: int = 2             # random feasible candidates per step, besides the full width and the smallest
    kd: Distillation = IN_PLACE     # how the subnets learn from the full width
    calibration_batches: int = 20   # batches the full width's BatchNorm statistics are recalibrated on afterwards
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.lr <= 0 or self.random < 0 or self.calibration_batches < 0:
            raise ValueError(f"supernet settings need steps >= 0, lr > 0, random >= 0 and calibration_batches >= 0: {self}")

    @classmethod
    def for_epochs(cls, epochs: float, batches_per_epoch: int, **others) -> SupernetSettings:
        """Settings for `epochs` passes over data of `batches_per_epoch` batches (at least one step if epochs > 0)."""
        steps = max(1, round(epochs * batches_per_epoch)) if epochs > 0 else 0
        return cls(steps=steps, **others)


@dataclass(frozen=True)
class SupernetStats:
    """What a supernet training did: its steps, samples and seconds, and its mean losses over the last tenth of
    the steps (the full width's cross-entropy; the smallest's and the random candidates' distillation losses)."""
    steps: int
    samples: int
    seconds: float
    full_loss: float
    smallest_loss: float
    random_loss: float


def train_supernet(prunable: PrunableModel, batches: Batches, *, sample: Callable[[np.random.Generator], Candidate],
                   settings: SupernetSettings = SupernetSettings(), smallest: Candidate | None = None,
                   calibration: Sequence[torch.Tensor] | None = None, device: torch.device | str | None = None,
                   progress: bool = False, shard: tuple[int, int] = (0, 1),
                   reduce: Callable[[torch.nn.Module], None] | None = None) -> SupernetStats:
    """Train `prunable`'s base weights in place as a supernet; see the module docstring.

    `batches(seed)` gives endless (x, y) training batches (`search.selection.finalists.Batches`); `sample(rng)`
    a candidate within the budget (`spaces.sampling.feasible_sampler`); `smallest` the sandwich's lower end
    (default: the space's smallest, the cheapest candidate, feasible whenever anything is). The full width's
    BatchNorms are recalibrated on `calibration` (inputs), else on the next `settings.calibration_batches`
    training batches. `device`: where the base model is moved first (default: where it is). With no steps
    nothing changes.

    Data parallel (`search.finetune.supernet_on_ray`): worker `rank` of `world` (`shard`) trains on its stride of
    every batch, draws the same candidates as every other worker (one seed), and `reduce(model)` averages the
    gradients of all workers before each optimizer step, so every worker keeps the same weights.
    """
    s = settings
    if s.steps == 0:
        return SupernetStats(steps=0, samples=0, seconds=0.0, full_loss=math.nan, smallest_loss=math.nan,
                             random_loss=math.nan)
    model = prunable.model if device is None else prunable.model.to(device)
    smallest = prunable.space.validate(smallest if smallest is not None else prunable.space.smallest())
    rng = np.random.default_rng(s.seed)
    stream = batches(s.seed)
    elastic = ElasticModel(prunable)
    losses: list[torch.Tensor] = []  # per step: (full, smallest, mean of the random ones), on the device
    samples, started = 0, time.perf_counter()
    bar = tqdm(total=s.steps, desc="training the supernet", disable=not progress, leave=False)
    try:
        with elastic.trainable(s.seed, freeze_base=False) as where:
            optimizer, scheduler = make_optimizer(model, TrainConfig(lr=s.lr, momentum=s.momentum,
                                                                     weight_decay=s.weight_decay), s.steps)
            optimizer.zero_grad(set_to_none=True)
            rank, world = shard
            for x, y in itertools.islice(stream, s.steps):
                x, y = x[rank::world], torch.as_tensor(y)[rank::world]
                x, y = x.to(where, non_blocking=True), y.to(where, non_blocking=True)
                losses.append(sandwich_step(elastic, x, y, smallest, [sample(rng) for _ in range(s.random)], s.kd))
                if reduce is not None:
                    reduce(model)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                samples += y.numel()
                bar.update(1)
            if calibration is None:  # drawn in the block: a loader's shuffling stays off the caller's RNG
                calibration = [x for x, _ in itertools.islice(stream, s.calibration_batches)]
        if calibration:  # the full width's statistics, on the plain base model
            recalibrate(model, [x.to(where) for x in calibration])
    finally:
        bar.close()
    tail = torch.stack(losses[-max(1, len(losses) // 10):]).mean(0).tolist() if losses else [math.nan] * 3
    return SupernetStats(steps=len(losses), samples=samples, seconds=time.perf_counter() - started,
                         full_loss=tail[0], smallest_loss=tail[1], random_loss=tail[2])


def sandwich_step(elastic: ElasticModel, x: torch.Tensor, y: torch.Tensor, smallest: Candidate,
                  randoms: Sequence[Candidate], kd: Distillation) -> torch.Tensor:
    """The gradients of one sandwich step, accumulated in the base weights (no optimizer step): the full width
    on the labels, `smallest` and `randoms` distilled from its outputs. Returns the detached losses (full,
    smallest, mean of the randoms); the full width is in force afterwards."""
    elastic.reset()
    teacher = elastic(x)
    full = F.cross_entropy(teacher, y)
    full.backward()
    teacher = teacher.detach()
    student = []
    for candidate in [smallest, *randoms]:
        elastic.apply(candidate)
        loss = distillation_loss(elastic(x), teacher, y, kd)
        loss.backward()
        student.append(loss.detach())
    elastic.reset()
    rest = torch.stack(student[1:]).mean() if len(student) > 1 else torch.full_like(full, math.nan)
    return torch.stack([full.detach(), student[0], rest])


__all__ = ["IN_PLACE", "SupernetSettings", "SupernetStats", "sandwich_step", "train_supernet"]
