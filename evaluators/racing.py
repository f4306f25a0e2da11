"""Racing: score the held-out samples in chunks and stop a candidate once it cannot enter the top-k.

The engine passes each candidate the current bar: the k-th best score of the candidates scored on
every held-out sample so far (None until there are k, or with racing off). After each chunk the
scorer asks `RaceRule.stops`: with `correct` of `seen` held-out samples right, is the candidate's top-1
on all `total` held-out samples below the bar with confidence `confidence`? The bound is the exact
(Clopper-Pearson) binomial upper bound on the share it gets right, capped by what it could still
reach, (correct + total - seen) / total. The `seen` samples are a draw without replacement from the
`total` (the held-out samples are shuffled once, `race_batches`), whose tails are thinner than the
binomial's, so the bound is conservative. The confidence is split evenly over the looks a candidate
gets (Bonferroni): a candidate that would have entered the top-k is stopped with probability at most
1 - confidence, whatever chunk it is at. (Wilson's normal-approximation bound, even with the
finite-population correction, stopped such a candidate about as often as the nominal 1% in the tests'
simulation, and several times more often than its share at the first look with accuracy near 1.)

A stopped candidate's score is its estimate on the samples it saw (`Estimate.raced`); it is below
the bar by construction (the estimate never exceeds the upper bound), so it never enters a top-k.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Estimate:
    """What scoring a candidate gave: its score, what the score rests on, what it cost, or why it failed.

    A scorer's `estimate` fills in the score, `samples` and `raced`; `executors.score_safely` adds the
    time taken and, for a scorer that raised or gave a non-finite score, the error (a failed candidate is
    data). The engine turns it into the `Result` the agent is told (`search.engine.loop.Referee`).
    """

    score: float | None
    samples: int | None = None   # held-out samples scored (None: a user's metric, not counted)
    raced: bool = False          # stopped early: `score` is the estimate on `samples` of the held-out set
    seconds: float = 0.0         # wall time of the scoring (set by `executors.score_safely`)
    error: str = ""              # why scoring failed ("" when it did not)

    @property
    def ok(self) -> bool:
        return not self.error and self.score is not None and math.isfinite(self.score)


def binomial_upper(correct: int, seen: int, alpha: float) -> float:
    """Clopper-Pearson: the share p with P(at most `correct` right of `seen` | p) = alpha (1 if all were right)."""
    if seen <= 0 or correct >= seen:
        return 1.0
    from scipy.special import betaincinv   # scipy comes with scikit-learn

    return float(betaincinv(correct + 1, seen - correct, 1 - alpha))


@dataclass(frozen=True)
class RaceRule:
    """When a candidate stops: see the module docstring."""

    confidence: float = 0.99

    def __post_init__(self):
        if not 0 < self.confidence < 1:
            raise ValueError(f"racing confidence must lie in (0, 1), got {self.confidence}")

    def upper(self, correct: int, seen: int, total: int, looks: int) -> float:
        """An upper bound on the top-1 over all `total` samples, after `correct` of `seen` were right."""
        cap = (correct + total - seen) / total
        return min(cap, binomial_upper(correct, seen, (1 - self.confidence) / max(1, looks)))

    def stops(self, correct: int, seen: int, total: int, looks: int, bar: float | None) -> bool:
        return bar is not None and seen < total and self.upper(correct, seen, total, looks) < bar


def race_batches(held_out: Sequence[tuple[torch.Tensor, torch.Tensor]], chunk: int, *,
                 seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The held-out samples shuffled once (seeded) and cut into chunks of `chunk`: racing's steps.

    The order must be random for the bound to hold (a user's loader may be sorted by class); the set
    of samples, and so a full score, is unchanged.
    """
    if chunk < 1:
        raise ValueError(f"racing chunk must be positive, got {chunk}")
    if not held_out:
        return []
    x = torch.cat([b[0] for b in held_out])
    y = torch.cat([torch.as_tensor(b[1]).to(x.device) for b in held_out])
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(x.device)
    x, y = x[order], y[order]
    return [(x[i:i + chunk], y[i:i + chunk]) for i in range(0, len(y), chunk)]


class TopK:
    """The k best full scores so far; `bar` is the k-th of them (None until there are k)."""

    def __init__(self, k: int | None):
        self.k = k
        self._scores: list[float] = []

    def add(self, score: float) -> None:
        if self.k is None or not math.isfinite(score):
            return
        self._scores.append(score)
        self._scores.sort(reverse=True)
        del self._scores[self.k:]

    @property
    def bar(self) -> float | None:
        return self._scores[-1] if self.k is not None and len(self._scores) >= self.k else None


__all__ = ["Estimate", "RaceRule", "TopK", "binomial_upper", "race_batches"]
