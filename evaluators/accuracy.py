"""BN-recalibrated accuracy (EagleEye's adaptive BN): the score of a candidate, on cached batches.

Scoring a candidate: apply it to the elastic model (no copy), reset every BatchNorm's running
statistics, recalibrate them with `momentum=None` (a cumulative average) over K cached calibration
batches with only the BatchNorms in train mode (dropout and stochastic depth stay off) and no
gradients, then take top-1 on M cached held-out samples in eval mode. With a `metric` (any
`f(model) -> float`, higher is better, e.g. a user's mean IoU), the metric is called on the elastic
model, set to the candidate, recalibrated and in eval mode, instead of top-1.

The batches are tensors cut once, on the device, when the evaluator is built: the per-candidate path
has no data loading, no copy of the model and no re-trace. The base model's statistics are restored
by `restore()` (and by using the evaluator as a context manager).

`estimate(candidate, bar)` is the same score, raced (`evaluators.racing`): each held-out batch is a
racing step, and once the candidate's top-1 cannot reach `bar` it stops with its estimate so far.
On the device, correct counts and the finiteness check stay on the device: the host reads them
once per racing step (`.item()`), once per candidate without a bar, never once per batch.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from spaces.derive import PrunableModel, derive
from spaces.elastic import ElasticModel
from spaces.layers import running_stat_norms

from .racing import Estimate, RaceRule


def stack_batches(dataset: Dataset, indices: Sequence[int], batch_size: int,
                  device: torch.device | str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Load `indices` of `dataset` once, as (x, y) batches on `device`."""
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False)
    return [(x.to(device), torch.as_tensor(y).to(device)) for x, y in loader]


def recalibrate(module: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Reset every BatchNorm's statistics and re-estimate them (cumulative average) on `batches`."""
    bns = running_stat_norms(module)
    momenta = [bn.momentum for bn in bns]
    training = module.training
    module.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    with torch.no_grad():
        for x in batches:
            module(x)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    module.train(training)
    if not training:
        for bn in bns:
            bn.eval()


def hits(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 hits: how many rows of `output` (logits) have their largest value at the label; a tensor on the
    output's device (summing them there costs one host read at the end, not one per batch). The one
    definition of top-1 that the scorer, the training step and the reports use."""
    return (output.argmax(1) == labels).sum()


@torch.no_grad()
def top1(module: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy of `module` as it is (train or eval mode is the caller's) over (x, y) batches."""
    correct, total = 0, 0
    for x, y in batches:
        correct = correct + hits(module(x), y)
        total += y.numel()
    return int(correct) / max(1, total)


class AccuracyEvaluator:
    """Scores candidates of one prunable model; see the module docstring."""

    def __init__(self, prunable: PrunableModel, calibration: Sequence[torch.Tensor],
                 held_out: Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str = "cpu",
                 metric: Callable[[nn.Module], float] | None = None, race: RaceRule | None = None):
        if not calibration or (not held_out and metric is None):
            raise ValueError("the evaluator needs at least one calibration batch and one held-out batch "
                             "(or a metric)")
        self.prunable = prunable
        self.metric = metric
        self.device = torch.device(device)
        prunable.model.to(self.device)
        self.elastic = ElasticModel(prunable).to(self.device).eval()
        self.calibration = [x.to(self.device) for x in calibration]
        self.held_out = [(x.to(self.device), y.to(self.device)) for x, y in held_out]
        self.race = race or RaceRule()
        self._bns = self.elastic.batchnorms()
        self._momenta = [bn.momentum for bn in self._bns]
        self.bn_state = self.elastic.bn_snapshot()  # the base model's own BatchNorm statistics

    @classmethod
    def from_dataset(cls, prunable: PrunableModel, dataset: Dataset, calibration_indices: Sequence[int],
                     held_out_indices: Sequence[int], *, calib_batches: int, batch_size: int,
                     eval_samples: int, device: torch.device | str = "cpu") -> AccuracyEvaluator:
        """Cut K calibration batches and M held-out samples from `dataset` once (eval transforms)."""
        calib = list(calibration_indices)[:calib_batches * batch_size]
        held = list(held_out_indices)[:eval_samples]
        calibration = [x for x, _ in stack_batches(dataset, calib, batch_size, device)]
        return cls(prunable, calibration, stack_batches(dataset, held, max(batch_size, 256), device), device)

    @property
    def samples(self) -> tuple[int, int]:
        """(calibration samples, held-out samples) per candidate."""
        return sum(len(x) for x in self.calibration), sum(len(y) for _, y in self.held_out)

    def score(self, candidate: Mapping[str, int]) -> float:
        """Held-out top-1 of `candidate` after BN recalibration (NaN if its outputs are not finite)."""
        return self.estimate(candidate).score

    def estimate(self, candidate: Mapping[str, int], bar: float | None = None) -> Estimate:
        """`score`, raced against `bar` (None: every held-out sample is scored); see the module docstring."""
        self.elastic.apply(candidate)
        for bn in self._bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        with torch.no_grad():
            for x in self.calibration:
                self.elastic(x)
            for bn in self._bns:
                bn.eval()
            if self.metric is not None:
                return Estimate(float(self.metric(self.elastic)))
            total = sum(len(y) for _, y in self.held_out)
            looks = len(self.held_out) - 1   # after every batch but the last
            correct = torch.zeros((), dtype=torch.int64, device=self.device)
            finite = torch.ones((), dtype=torch.bool, device=self.device)
            seen = 0
            for step, (x, y) in enumerate(self.held_out):
                out = self.elastic(x)
                finite &= torch.isfinite(out).all()
                correct += hits(out, y)
                seen += len(y)
                if bar is not None and step < looks:
                    if not finite.item():
                        return Estimate(math.nan, seen)
                    right = int(correct.item())   # one host read per racing step
                    if self.race.stops(right, seen, total, looks, bar):
                        return Estimate(right / seen, seen, raced=True)
            if not finite.item():
                return Estimate(math.nan, seen)
            return Estimate(int(correct.item()) / seen, seen)

    def recalibrated(self, module: nn.Module) -> nn.Module:
        """Recalibrate a materialized subnet's BatchNorms on this evaluator's calibration batches."""
        recalibrate(module.to(self.device), self.calibration)
        return module

    def restore(self) -> None:
        """Give the base model back its own BatchNorm statistics and the full widths."""
        self.elastic.restore_bn(self.bn_state)
        for bn, momentum in zip(self._bns, self._momenta):
            bn.momentum = momentum
        self.elastic.reset()

    def __enter__(self) -> AccuracyEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


@dataclass
class EvaluatorPayload:
    """What a remote worker needs to build its own evaluator: sent once, through Ray's object store.

    `model` is the base model with its channels already reordered (workers derive with
    `importance=None`, so every worker sees the same channel order as the driver, without the data
    or the model files themselves).
    """

    model: nn.Module
    calibration: list[torch.Tensor]
    held_out: list[tuple[torch.Tensor, torch.Tensor]]
    derive_options: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    metric: Callable[[nn.Module], float] | None = None   # travels by cloudpickle: a user's score function
    race: RaceRule | None = None

    @classmethod
    def of(cls, evaluator: AccuracyEvaluator, derive_options: Mapping[str, Any], device: str) -> EvaluatorPayload:
        return cls(copy.deepcopy(evaluator.prunable.model).cpu(), [x.cpu() for x in evaluator.calibration],
                   [(x.cpu(), y.cpu()) for x, y in evaluator.held_out], dict(derive_options), device,
                   evaluator.metric, evaluator.race)


def build_evaluator(payload: EvaluatorPayload) -> AccuracyEvaluator:
    """Runs on each worker: derive the space again (same channel order) and cache the batches there."""
    model = payload.model.cpu().eval()
    prunable = derive(model, payload.calibration[0][:1], importance=None, **payload.derive_options)
    return AccuracyEvaluator(prunable, payload.calibration, payload.held_out, payload.device, payload.metric,
                             payload.race)
