"""The agent interface: `ask(ticket)` for a candidate, `tell(ticket, result)` its result. Seeded, budget-aware,
resumable.

Tickets, as Ray Tune's `Searcher.suggest(trial_id)` / `on_trial_complete(trial_id, result)`: the engine
names every ask with a ticket (its trial number, an int) and tells the result back under that ticket, so
an agent never matches a result to a candidate by equality. An agent that must remember something per
candidate in flight (its genes, Optuna's trial number, an AMC episode) keeps it in a dict keyed by ticket.

Conventions every agent follows (the conformance suite checks them):
- `ask(ticket)` returns a candidate of the space, or None. None while candidates are outstanding means
  "wait for their results" (a generation barrier); None with nothing outstanding means the agent has
  nothing more to propose, and the search ends. A ticket answered with None is not used: the engine
  passes it again with its next ask.
- `tell(ticket, result)` gives the result of the candidate asked under `ticket`; a ticket the agent does
  not hold (never asked, or told already) is ignored.
- Proposals respect the budget: agents price candidates with the injected `price` callable
  (microseconds, no forward pass) and never spend an evaluation on an infeasible one.
- All randomness comes from `self.rng`, seeded by `seed`: the same seed gives the same run.
- Failed and infeasible results are told like any other; an agent never raises on them.
- `state_dict()` is plain data (lists, dicts, numbers, tensors), outstanding tickets included.
- `initial` candidates (a warm start, e.g. what magnitude pruning picks: `spaces.warm_start`) are
  repaired into the budget and proposed among an agent's first candidates: random asks them first,
  abc makes them food sources, evolution puts them in its first population, tpe/nsga2 enqueue them
  in the study. `uniform` (the reference) and `amc` (its actions come from its policy) ignore them.
"""
from __future__ import annotations

import abc
from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from spaces.budget import Budget, Price
from spaces.records import Result
from spaces.sampling import sample_feasible
from spaces.space import KEEP, WIDTH, Candidate, SearchSpace


class Agent(abc.ABC):
    name: ClassVar[str] = ""

    def __init__(self, space: SearchSpace, budget: Budget, *, price: Price, seed: int | None = None,
                 trials: int | None = None, initial: Sequence[Mapping[str, int]] = ()):
        self.space = space
        self.budget = budget
        self.price = price
        self.seed = seed
        self.trials = trials  # the engine's trial budget, for agents that plan around it
        self.rng = np.random.default_rng(seed)
        #: warm-start candidates, within budget, without repeats (see the module docstring)
        self.initial: list[Candidate] = list(dict.fromkeys(self.repair(Candidate(c)) for c in initial))

    @property
    def batch(self) -> int | None:
        """The most candidates this agent has outstanding at once (a phase or generation waits for all of its
        results before the next is planned); None: no such bound. More workers than this wait idle."""
        return None

    @abc.abstractmethod
    def ask(self, ticket: int) -> Candidate | None:
        """The candidate to evaluate under `ticket`, or None (see the module docstring)."""

    def tell(self, ticket: int, result: Result) -> None:
        """Learn from the result of the candidate asked under `ticket`. Default: nothing to learn."""

    def restore(self, events: Sequence[tuple]) -> dict[int, Candidate]:
        """Bring this fresh agent (same space, budget, seed and options) to its state after `events`.

        `events` are `("ask", ticket, expected candidate or None)` and `("tell", ticket, result)` in the
        order they happened. Default: replay them; each `ask(ticket)` must give back the expected
        candidate (a mismatch, from other options or another version, is a ValueError). Returns the
        candidates asked but never told (in flight when the run stopped) by ticket, in the order asked.
        """
        outstanding: dict[int, Candidate] = {}
        for number, event in enumerate(events):
            if event[0] == "ask":
                _, ticket, expected = event
                asked = self.ask(ticket)
                if asked is None or (expected is not None and asked != expected):
                    raise ValueError(f"event {number} of the history differs from what the agent proposes now")
                outstanding[ticket] = asked
            else:
                _, ticket, result = event
                outstanding.pop(ticket, None)
                self.tell(ticket, result)
        return outstanding

    def learn(self, known: Sequence[tuple[Candidate, Result]]) -> None:
        """Take in results of candidates this fresh agent did not ask for, as data (Optuna's `add_trial`).

        A resume uses it where `restore` cannot replay the history exactly (a journal damaged in the middle,
        or the agent's code changed): the readable trials become what the agent knows, and it goes on from
        there. They are never scored again (a candidate proposed again is settled from its known result).
        Default: nothing to learn (an agent whose proposals do not depend on results)."""

    def state_dict(self) -> dict[str, Any]:
        """A snapshot of the agent's state (the engine resumes by `restore`; this is for checkpoints)."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    # -- budget helpers shared by agents ----------------------------------------------------------
    def feasible(self, candidate: Candidate) -> bool:
        return self.budget.feasible(self.price(candidate))

    def _scaled(self, candidate: Candidate, low: float, high: float, keeps: Mapping[str, int]) -> Candidate | None:
        """The largest common scale of the candidate's width ratios in [low, high] that fits, applied."""
        ratios = {d.name: d.ratio(candidate[d.name]) for d in self.space.widths}

        def at(s: float) -> Candidate:
            return Candidate({**{n: self.space[n].floor(min(1.0, r * s)) for n, r in ratios.items()}, **keeps})

        if not self.feasible(at(low)):
            return None
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if self.feasible(at(mid)) else (low, mid)
            if high - low < 1e-3 * max(1.0, low):
                break
        return at(low)

    def repair(self, candidate: Candidate) -> Candidate:
        """Shrink an over-budget candidate into the budget, keeping its shape.

        Every width ratio is scaled by one common factor, the largest that fits (bisection on the
        pricing function); if even the smallest widths do not fit, removable blocks are dropped too.
        """
        if self.feasible(candidate):
            return candidate
        keeps = {d.name: candidate[d.name] for d in self.space.keeps}
        fitted = self._scaled(candidate, 0.0, 1.0, keeps)
        if fitted is None:
            fitted = self._scaled(candidate, 0.0, 1.0, {d.name: 0 for d in self.space.keeps})
        return fitted if fitted is not None else self.space.smallest()

    def trade(self, candidate: Candidate, fixed: Collection[str] = ()) -> Candidate:
        """Fit an over-budget candidate into the budget locally: narrow one width at a time by one step of its
        choices (drawn at random among the widths not in `fixed` that can narrow) until it fits.

        For local moves (a bee's move, a mutation): the moved widths stay as moved and the rest pay for
        them, a step at a time. `repair` instead scales every ratio by one common factor, and rounded down
        to the width grid that narrows most widths by a whole step: one widened layer of a candidate at
        the budget costs it about a quarter of the budget and changes most of its genes. Falls back to
        `repair` where narrowing every free width as far as it goes still does not fit.
        """
        if self.feasible(candidate):
            return candidate
        values = dict(candidate)
        free = [d for d in self.space.widths if d.name not in fixed]
        while True:
            narrowable = [d for d in free if values[d.name] > d.choices[0]]
            if not narrowable:
                return self.repair(candidate)
            d = narrowable[int(self.rng.integers(len(narrowable)))]
            values[d.name] = d.choices[d.index(values[d.name]) - 1]
            if self.feasible(Candidate(values)):
                return Candidate(values)

    def grow(self, candidate: Candidate) -> Candidate:
        """Scale a feasible candidate's width ratios up by one common factor until the budget binds."""
        candidate = self.repair(candidate)
        keeps = {d.name: candidate[d.name] for d in self.space.keeps}
        smallest = min((d.ratio(candidate[d.name]) for d in self.space.widths), default=1.0)
        grown = self._scaled(candidate, 1.0, 1.0 / max(smallest, 1e-6), keeps)
        return grown if grown is not None else candidate

    def sample_feasible(self, tries: int = 200) -> Candidate:
        """A uniform draw from the feasible part of the space (rejection), else a repaired draw."""
        return sample_feasible(self.space, self.feasible, self.rng, tries=tries, repair=self.repair)


__all__ = ["Agent", "Price", "KEEP", "WIDTH"]
