"""The agent interface: `ask` for a candidate, `tell` it the result. Seeded, budget-aware, resumable.

Conventions every agent follows (the conformance suite checks them):
- `ask()` returns a candidate of the space, or None. None while candidates are outstanding means
  "wait for their results" (a generation barrier); None with nothing outstanding means the agent has
  nothing more to propose, and the search ends.
- Proposals respect the budget: agents price candidates with the injected `price` callable
  (microseconds, no forward pass) and never spend an evaluation on an infeasible one.
- All randomness comes from `self.rng`, seeded by `seed`: the same seed gives the same run.
- Failed and infeasible results are told like any other; an agent never raises on them.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from spaces.budget import Budget
from spaces.records import Result
from spaces.space import KEEP, WIDTH, Candidate, SearchSpace

#: candidate -> its costs ({"flops": ..., "params": ...}); cheap, no forward pass.
Price = Callable[[Candidate], Mapping[str, float]]


class Agent(abc.ABC):
    name: ClassVar[str] = ""

    def __init__(self, space: SearchSpace, budget: Budget, *, price: Price, seed: int | None = None,
                 trials: int | None = None):
        self.space = space
        self.budget = budget
        self.price = price
        self.seed = seed
        self.trials = trials  # the engine's trial budget, for agents that plan around it
        self.rng = np.random.default_rng(seed)

    @abc.abstractmethod
    def ask(self) -> Candidate | None:
        """The next candidate to evaluate, or None (see the module docstring)."""

    def tell(self, candidate: Candidate, result: Result) -> None:
        """Learn from a finished candidate. Default: nothing to learn."""

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    # -- budget helpers shared by agents ----------------------------------------------------------
    def feasible(self, candidate: Candidate) -> bool:
        return self.budget.feasible(self.price(candidate))

    def repair(self, candidate: Candidate) -> Candidate:
        """Shrink an over-budget candidate into the budget, keeping its shape.

        Every width ratio is scaled by one common factor, the largest that fits (bisection on the
        pricing function); if even the smallest widths do not fit, removable blocks are dropped too.
        """
        if self.feasible(candidate):
            return candidate
        ratios = {d.name: d.ratio(candidate[d.name]) for d in self.space.widths}

        def scaled(s: float, keep: Mapping[str, int]) -> Candidate:
            return Candidate({**{n: self.space[n].floor(r * s) for n, r in ratios.items()}, **keep})

        keeps = {d.name: candidate[d.name] for d in self.space.keeps}
        if not self.feasible(scaled(0.0, keeps)):
            keeps = {d.name: 0 for d in self.space.keeps}
        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.feasible(scaled(mid, keeps)) else (lo, mid)
            if hi - lo < 1e-3:
                break
        return scaled(lo, keeps)

    def sample_feasible(self, tries: int = 200) -> Candidate:
        """A uniform draw from the feasible part of the space (rejection), else a repaired draw."""
        for _ in range(tries):
            candidate = self.space.sample(self.rng)
            if self.feasible(candidate):
                return candidate
        return self.repair(candidate)


__all__ = ["Agent", "Price", "KEEP", "WIDTH"]
