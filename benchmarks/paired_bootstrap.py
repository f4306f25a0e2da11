"""Paired bootstrap interval of a median margin: seeds resampled with replacement, each keeping its pair.

    margin, (low, high) = median_margin({0: 0.91, 1: 0.90}, {0: 0.90, 1: 0.905}, seed=0)

`ours` and `theirs` map a seed to a score; only seeds both have count. The margin is the median over
seeds of ours - theirs (paired by seed: the same seed drew the same search seed, training order and
fine-tune order for both); the interval is the percentile interval of that median over `resamples`
bootstrap draws of the seeds (numpy's seeded Generator, no global RNG). With few seeds the interval is
coarse (5 seeds have only 126 distinct resamples); it says how much the margin moves with the seeds.
"""
from __future__ import annotations

import statistics
from collections.abc import Mapping

import numpy as np


def paired_differences(ours: Mapping[int, float], theirs: Mapping[int, float]) -> list[float]:
    """ours[s] - theirs[s] for every seed s both have, in seed order."""
    return [ours[s] - theirs[s] for s in sorted(set(ours) & set(theirs))]


def bootstrap_interval(differences: list[float], *, confidence: float = 0.95, resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the median of `differences` over bootstrap resamples (NaNs if none)."""
    if not differences:
        return float("nan"), float("nan")
    values = np.asarray(differences, dtype=float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(resamples, len(values)))
    medians = np.median(values[draws], axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(medians, [tail, 1 - tail])
    return float(low), float(high)


def median_margin(ours: Mapping[int, float], theirs: Mapping[int, float], *, confidence: float = 0.95,
                  resamples: int = 10_000, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """(median paired margin, its bootstrap interval) of `ours` over `theirs`."""
    differences = paired_differences(ours, theirs)
    if not differences:
        return float("nan"), (float("nan"), float("nan"))
    return statistics.median(differences), bootstrap_interval(differences, confidence=confidence,
                                                              resamples=resamples, seed=seed)
