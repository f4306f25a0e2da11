"""Feasible sampling: uniform draws from the part of a search space that fits a budget (rejection)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .space import Candidate, SearchSpace


def sample_feasible(space: SearchSpace, feasible: Callable[[Candidate], bool], rng: np.random.Generator, *,
                    tries: int = 200, repair: Callable[[Candidate], Candidate] | None = None) -> Candidate:
    """A uniform draw from the feasible part of `space` (up to `tries` draws), else the last draw `repair`ed
    (or the smallest candidate)."""
    candidate = space.smallest()
    for _ in range(tries):
        candidate = space.sample(rng)
        if feasible(candidate):
            return candidate
    return repair(candidate) if repair is not None else space.smallest()


def feasible_sampler(space: SearchSpace, feasible: Callable[[Candidate], bool], *, tries: int = 200,
                     repair: Callable[[Candidate], Candidate] | None = None
                     ) -> Callable[[np.random.Generator], Candidate]:
    """`sample(rng)`: `sample_feasible` bound to `space` and `feasible`."""
    return lambda rng: sample_feasible(space, feasible, rng, tries=tries, repair=repair)
