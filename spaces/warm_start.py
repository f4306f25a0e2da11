"""Warm starts: the candidate global magnitude pruning would pick at the budget, for a search to improve on.

One importance threshold for every channel group at once (channel importance divided by its group's
mean, as Torch-Pruning's global pruning normalizes it): each group keeps its channels at or above the
threshold, rounded down to its allowed widths, every residual block kept. The threshold is bisected
to the lowest one whose candidate is feasible, so the candidate uses its budget. A search that asks
it first can only end at least as well as magnitude pruning does, by the search's own score.
"""
from __future__ import annotations

from collections.abc import Callable

from .derive import PrunableModel
from .space import KEEP, Candidate


def magnitude_candidate(prunable: PrunableModel, feasible: Callable[[Candidate], bool], *,
                        steps: int = 50) -> Candidate | None:
    """The global-magnitude candidate within `feasible`, or None (no importance scores, or nothing fits)."""
    space, scores = prunable.space, prunable.channel_scores
    if not scores or not space.widths:
        return None

    def at(threshold: float) -> Candidate:
        values = {}
        for dim in space.dimensions:
            if dim.kind == KEEP:
                values[dim.name] = 1
                continue
            channel = scores.get(dim.name)
            if channel is None:
                values[dim.name] = dim.full
                continue
            kept = sum(1 for v in channel if v >= threshold)
            values[dim.name] = dim.floor(kept / len(channel))
        return Candidate(values)

    low, high = 0.0, max(max(v) for v in scores.values()) + 1.0  # at `high` every group is at its smallest
    if feasible(at(low)):
        return at(low)
    if not feasible(at(high)):
        return None
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (low, mid) if feasible(at(mid)) else (mid, high)
    return at(high)


__all__ = ["magnitude_candidate"]
