"""The final latency check: what is exported is timed directly against the base model and must fit the budget.

The latency table predicts; this measures. The candidates the user would export, best first, are timed
one at a time on the runtime of the table (`--latency-backend`), in `rounds` rounds interleaved with the
base model: each round times the base and the candidate back to back (in alternating order), so both
share whatever load the machine is under, and the ratio candidate / base of each round is one sample.
On ONNX Runtime and OpenVINO the rounds are shared among `INSTANCES` freshly compiled pairs (one compiled
session runs a few % faster or slower than another of the same model). The first candidate that fits every latency limit with `confidence` is the one to export:
- a relative limit (`0.5latency`) holds when the upper end of the interval of the median ratio is <= 0.5;
- an absolute limit (`12ms`) holds when the upper end of the interval of the median milliseconds is <= 12.
The interval is distribution-free: order statistics of the rounds' samples around the median, chosen
from the binomial distribution of how many samples fall below it (no assumption on the noise's shape).

What it guarantees: on this machine, under the load it had while checking, the exported subnet's median
latency (or ratio to the base) is within the budget with that confidence. What it does not: another
machine, another thread count, or another load (absolute milliseconds move with load; ratios much less).
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

import torch
from torch import nn

from evaluators.latency import measure_latencies, measure_rounds
from spaces.budget import Limit
from spaces.materialize import materialize

from search.engine.records import Trial

if TYPE_CHECKING:
    from search.engine.loop import Outcome
    from search.engine.pipeline import Pipeline

CONFIDENCE = 0.95     # two-sided, of each interval; a limit holds when the interval's upper end is within it
ROUNDS = 15           # interleaved rounds per candidate (15: the 4th and 12th of 15 samples bound the median, 96.5%)
MAX_CANDIDATES = 10   # candidates checked before the run says that none fits
INSTANCES = 3         # freshly compiled (base, candidate) pairs the rounds are shared among, off eager torch


@dataclass(frozen=True)
class Interval:
    """A median and its distribution-free confidence interval."""

    median: float
    low: float
    high: float

    def to_json(self) -> list[float]:
        return [self.median, self.low, self.high]

    def text(self, digits: int = 3) -> str:
        return f"{self.median:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def median_interval(samples: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The median of `samples` and the order statistics that bound it with `confidence` (two-sided).

    The k-th smallest and k-th largest samples, for the largest k with P(Binomial(n, 1/2) < k) <= (1 -
    confidence) / 2; with too few samples for that confidence, the whole range.
    """
    x = sorted(samples)
    n = len(x)
    if n == 0:
        raise ValueError("no samples")
    tail, k, below = (1 - confidence) / 2, 0, 0.0
    for j in range(n):
        below += math.comb(n, j) / 2 ** n  # P(Binomial(n, 1/2) <= j)
        if below > tail:
            break
        k = j + 1
    low, high = (x[k - 1], x[n - k]) if k else (x[0], x[-1])
    return Interval(float(statistics.median(x)), float(low), float(high))


@dataclass(frozen=True)
class Measurement:
    """One candidate timed against the base model in the same rounds, and what the table predicted."""

    trial: int
    ms: Interval                 # the candidate's milliseconds
    base_ms: Interval            # the base model's, in the same rounds
    ratio: Interval              # per round candidate / base
    predicted_ms: float
    base_predicted_ms: float
    rounds: int
    confidence: float
    fits: bool

    @property
    def predicted_ratio(self) -> float:
        return self.predicted_ms / self.base_predicted_ms

    def to_json(self) -> dict:
        return {"trial": self.trial, "fits": self.fits, "rounds": self.rounds, "confidence": self.confidence,
                "measured": {"ratio": self.ratio.to_json(), "ms": self.ms.to_json(), "base_ms": self.base_ms.to_json()},
                "predicted": {"ratio": self.predicted_ratio, "ms": self.predicted_ms,
                              "base_ms": self.base_predicted_ms}}


@dataclass(frozen=True)
class LatencyCheck:
    """The outcome: the first candidate that fits (None: none did) and every measurement, in the order taken."""

    chosen: Trial | None
    measurements: list[Measurement] = field(default_factory=list)
    limits: tuple[Limit, ...] = ()
    backend: str = "torch"

    @property
    def measurement(self) -> Measurement | None:
        """The chosen candidate's measurement."""
        return self.measurements[-1] if self.chosen is not None else None

    @property
    def skipped(self) -> list[Measurement]:
        """Better-ranked candidates measured over the budget."""
        return [m for m in self.measurements if not m.fits]

    @property
    def budget(self) -> str:
        return "+".join(str(lim) for lim in self.limits) or "no latency limit"

    def failure(self, run_dir: object) -> str:
        """Why nothing is exported, in one line, and what to do."""
        closest = min(self.measurements, key=lambda m: m.ratio.high)
        return (f"no candidate fits {self.budget} as measured: the {len(self.measurements)} best feasible ones, "
                f"each timed against the base model in {closest.rounds} interleaved rounds ({self.backend}), are "
                f"over it at {100 * closest.confidence:g}% confidence (closest: trial {closest.trial}, x"
                f"{closest.ratio.text()} of the base, predicted x{closest.predicted_ratio:.3f}); trials.csv is "
                f"written: search on with --resume {run_dir} --trials N, or loosen the budget")

    def to_json(self) -> dict:
        return {"backend": self.backend, "budget": self.budget,
                "chosen": None if self.chosen is None else self.chosen.number,
                "measurements": [m.to_json() for m in self.measurements]}


def fits(limits: Sequence[Limit], ms: Interval, ratio: Interval) -> bool:
    """Every latency limit holds at the upper end of its interval (relative: the ratio; absolute: ms)."""
    return all((ratio.high if lim.relative else ms.high) <= lim.value for lim in limits if lim.metric == "latency")


def ranked_trials(trials: Sequence[Trial]) -> list[Trial]:
    """The scored trials, best first (the order `records.best_trial` picks in)."""
    done = [t for t in trials if t.result.ok]
    return sorted(done, key=lambda t: (-t.result.score, t.result.costs.get("flops", 0), t.number))


def time_against_base(module: nn.Module, base: nn.Module, *, input_shape: Sequence[int], batch: int = 1,
                      device: torch.device | str = "cpu", backend: str = "torch", rounds: int = ROUNDS,
                      confidence: float = CONFIDENCE) -> tuple[Interval, Interval, Interval]:
    """(the module's ms, the base's ms, their per-round ratio), each a median with its interval, from the
    same interleaved rounds.

    On ONNX Runtime and OpenVINO the rounds are shared among `INSTANCES` pairs, each compiled afresh: one
    compiled session of a model can run a few % faster or slower than another (on the 2-core VM, ratios
    of three fresh ResNet-18 pairs on ORT: 0.646, 0.588, 0.603), and what the user deploys is yet another
    one, so the interval has to cover that spread, not only one pair's round-to-round noise."""
    samples = []  # the rounds spread over INSTANCES freshly compiled (base, candidate) pairs
    pairs = INSTANCES if backend != "torch" else 1  # eager torch runs the modules themselves: nothing to compile
    for k in range(pairs):
        share = rounds // pairs + (k < rounds % pairs)
        samples += measure_rounds([base, module], input_shape, batch=batch, device=device, rounds=share,
                                  backend=backend)
    return (median_interval([s[1] for s in samples], confidence), median_interval([s[0] for s in samples], confidence),
            median_interval([s[1] / s[0] for s in samples], confidence))


def check_latency(ranked: Sequence[Trial], build: Callable[[Trial], nn.Module], base: nn.Module,
                  limits: Sequence[Limit], *, input_shape: Sequence[int], base_predicted_ms: float, batch: int = 1,
                  device: torch.device | str = "cpu", backend: str = "torch", rounds: int = ROUNDS,
                  confidence: float = CONFIDENCE, max_candidates: int = MAX_CANDIDATES,
                  predict: Callable[[Trial], float] | None = None) -> LatencyCheck:
    """Time `ranked` (best first) against `base` until one fits `limits` with `confidence`; see the module docstring.

    `build(trial)` is the candidate's module (materialized); `predict(trial)` its predicted ms (default: the
    trial's priced latency; give the table's own when it was re-anchored since, as on resume).
    """
    predict = predict or (lambda t: float(t.result.costs["latency"]))
    limits = tuple(lim for lim in limits if lim.metric == "latency")
    measurements = []
    for trial in list(ranked)[:max_candidates]:
        ms, base_ms, ratio = time_against_base(build(trial), base, input_shape=input_shape, batch=batch,
                                               device=device, backend=backend, rounds=rounds, confidence=confidence)
        measurement = Measurement(trial.number, ms, base_ms, ratio, float(predict(trial)),
                                  float(base_predicted_ms), rounds, confidence, fits(limits, ms, ratio))
        measurements.append(measurement)
        if measurement.fits:
            return LatencyCheck(trial, measurements, limits, backend)
    return LatencyCheck(None, measurements, limits, backend)


def summary_lines(check: LatencyCheck, batch: int) -> list[str]:
    """The summary's lines: measured figures with measured ones, predicted with predicted."""
    m = check.measurement
    if m is None:
        return []
    within = (f"within {check.budget} at {100 * m.confidence:g}% confidence" if check.limits
              else "no latency limit to check")
    lines = [f"latency: best measured x{m.ratio.text()} of the base: {m.ms.text()} ms against base "
             f"{m.base_ms.text()} ms in the same {m.rounds} interleaved rounds ({check.backend}, batch {batch}); "
             f"{within}",
             f"         predicted x{m.predicted_ratio:.3f} ({m.predicted_ms:.3f} ms against base predicted "
             f"{m.base_predicted_ms:.3f} ms)"]
    if check.skipped:
        lines.append(f"         {len(check.skipped)} better-scored candidate(s) measured over the budget and skipped: "
                     + ", ".join(f"trial {s.trial} x{s.ratio.text()}" for s in check.skipped))
    return lines


# ---------------------------------------------------------------- the stage in a run
def measure_sample(pipeline: Pipeline, prunable, outcome: Outcome, table) -> dict[int, float]:
    """Honesty: a seeded sample of 20 scored trials, measured directly (ms; the best is the final check's)."""
    scored = [t for t in outcome.trials if t.result.ok]
    rng = np.random.default_rng(pipeline.config.seed)
    chosen = [scored[i] for i in rng.choice(len(scored), size=min(20, len(scored)), replace=False)] if scored else []
    measured = measure_latencies([materialize(prunable, t.candidate) for t in chosen], table.meta["input_shape"],
                                 batch=pipeline.config.latency_batch, device=pipeline.device,
                                 backend=table.backend) if chosen else []
    return {t.number: ms for t, ms in zip(chosen, measured)}


def check_ranked(pipeline: Pipeline, prunable, ranked: list[Trial], table):
    """The final check (search.selection.latency_check): `ranked` (best first) timed against the base until one fits."""
    return check_latency(ranked, lambda t: materialize(prunable, t.candidate),
                         materialize(prunable, prunable.space.full()), pipeline.budget.limits,
                         input_shape=table.meta["input_shape"], base_predicted_ms=table.base_ms,
                         batch=pipeline.config.latency_batch, device=pipeline.device, backend=table.backend,
                         predict=lambda t: table.predict(t.candidate))
