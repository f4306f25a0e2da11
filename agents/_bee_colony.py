"""`abc`: artificial bee colony search, after ABCPruner (Lin et al., IJCAI 2020), made budget-aware.

A food source is a whole candidate: one gene per dimension, the index of its value among the
dimension's choices (widths on the ratio grid, keep flags 0/1). One cycle:
- employed bees: for each source i, pick another source k and move a few genes (default 2) by
  `x + U(-1, 1) * (x - x_k)`, rounded to the grid (a move that changes nothing steps one gene by one);
  the better of old and new is kept (greedy), otherwise the source's trial counter goes up;
- onlooker bees: as many moves again, on sources drawn by fitness (rank-proportional: accuracy
  differences between good sources are small, so raw proportional selection barely prefers any);
- scouts: a source whose counter reaches the limit is replaced by a fresh one.
Unlike ABCPruner, every proposal is inside the budget and uses most of it (good subnets do): an
over-budget move is fitted by `Agent.trade` (the moved genes kept, other widths narrowed a step at a
time; shrinking every width by one common ratio instead, rounded down to the grid, cost a move at the
budget about a quarter of it), budget a move frees goes to other widths a step at a time (`_fill`),
and fresh sources are random shapes scaled up until the budget binds. Every gene can mutate. `ask()`
returns None while a phase waits for its results, so a whole phase can be scored in parallel (results
come back in any order; a phase's are selected in the order asked, so the order of completion changes
nothing); the moves of one phase are distinct (a move equal to one already planned in the phase is
drawn again, a bounded number of times).

Small trial budgets: unless `food_sources` is given, the colony has 10 sources, or with `trials` known
`min(10, max(4, trials // 20))`, so a search sees at least about ten cycles (a cycle scores two moves per
source). With 10 sources, 100 trials are four and a half cycles, mostly spent moving sources that never
become good: at 0.1 x FLOPs on hard digits the best held-out score of 100 trials (median of 10 seeds,
`benchmarks/agents_vs_random.py --no-finetune`) was below random's on MobileNetV2 with 10 sources and
above it with 5 (docs/agents.md has the figures).
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np

from spaces.records import Result
from spaces.space import Candidate

from .base import Agent

_REDRAWS = 20  # draws of a move that repeats one already planned in its phase
FOOD_SOURCES = 10  # ABCPruner's colony, for searches of 200 trials and more


class BeeColonyAgent(Agent):
    name = "abc"

    def __init__(self, *args: Any, food_sources: int | None = None, limit: int = 5, genes: int = 2, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if food_sources is None:
            food_sources = FOOD_SOURCES if self.trials is None else min(FOOD_SOURCES, max(4, self.trials // 20))
        if food_sources < 2 or limit < 1 or genes < 1:
            raise ValueError("abc needs food_sources >= 2, limit >= 1 and genes >= 1")
        self.food_sources, self.limit, self.genes = food_sources, limit, min(genes, len(self.space))
        self.sources: list[list[int]] = []
        self.scores: list[float] = []
        self.counters: list[int] = []
        self.phase = "start"
        self.queue: list[tuple[int, list[int]]] = []    # (source index, genes) still to ask
        self.asked: dict[int, tuple[int, list[int]]] = {}  # ticket -> (source index, genes): result not yet told
        self.done: list[tuple[int, int, list[int], float]] = []  # (ticket, source, genes, score) told this phase

    @property
    def batch(self) -> int:
        return self.food_sources  # a phase moves each source once (onlookers: as many moves again)

    # -- genes <-> candidates ------------------------------------------------------------------
    def _candidate(self, genes: list[int]) -> Candidate:
        return self.space.decode(genes)

    def _genes(self, candidate: Candidate) -> list[int]:
        return self.space.encode(candidate)

    def _fresh(self) -> list[int]:
        return self._genes(self.grow(self.space.sample(self.rng)))

    def _move(self, i: int) -> list[int]:
        k = int(self.rng.choice([j for j in range(len(self.sources)) if j != i]))
        x, partner = list(self.sources[i]), self.sources[k]
        chosen = self.rng.choice(len(x), size=self.genes, replace=False)
        for g in chosen:
            top = len(self.space.dimensions[g].choices) - 1
            x[g] = int(np.clip(round(x[g] + self.rng.uniform(-1, 1) * (x[g] - partner[g])), 0, top))
        if x == self.sources[i]:  # the partner agrees on those genes: step one of them instead
            g = int(chosen[0])
            top = len(self.space.dimensions[g].choices) - 1
            x[g] = int(np.clip(x[g] + (1 if x[g] == 0 or (x[g] < top and self.rng.random() < 0.5) else -1), 0, top))
        moved = {self.space.dimensions[int(g)].name for g in chosen}
        return self._genes(self._fill(self.trade(self._candidate(x), moved), moved))

    def _fill(self, candidate: Candidate, moved: set[str]) -> Candidate:
        """Give the budget a move freed to the other widths: widen them a step at a time (drawn at random
        among those that can still widen within the budget) until none can. A source sits at the budget,
        so without this every move that narrows a width leaves budget unused, and is rarely better."""
        values = dict(candidate)
        open_ = [d for d in self.space.widths if d.name not in moved and values[d.name] < d.choices[-1]]
        while open_:
            d = open_[int(self.rng.integers(len(open_)))]
            wider = {**values, d.name: d.choices[d.index(values[d.name]) + 1]}
            if self.feasible(Candidate(wider)):
                values = wider
                if values[d.name] < d.choices[-1]:
                    continue
            open_.remove(d)
        return Candidate(values)

    def _moves(self, indices: list[int]) -> list[tuple[int, list[int]]]:
        """One move per source index, none equal to another (each redrawn up to `_REDRAWS` times)."""
        planned: list[tuple[int, list[int]]] = []
        for i in indices:
            genes = self._move(i)
            for _ in range(_REDRAWS):
                if all(genes != g for _, g in planned):
                    break
                genes = self._move(i)
            planned.append((i, genes))
        return planned

    # -- phases --------------------------------------------------------------------------------
    def _next_phase(self) -> None:
        # in the order asked, not told: results that come back out of order (parallel workers) select the same
        # sources, and a resumed run, whose replay tells in ticket order, proposes what the run did
        done, self.done = [entry[1:] for entry in sorted(self.done, key=lambda e: e[0])], []
        if self.phase == "start":
            warm = [self._genes(c) for c in self.initial[:self.food_sources]]  # warm starts first
            self.phase, self.queue = "init", [(i, warm[i] if i < len(warm) else self._fresh())
                                              for i in range(self.food_sources)]
            return
        if self.phase in ("init", "scout"):
            for i, genes, score in done:
                if i >= len(self.sources):
                    self.sources.append(genes), self.scores.append(score), self.counters.append(0)
                else:
                    self.sources[i], self.scores[i], self.counters[i] = genes, score, 0
        else:  # employed or onlooker: greedy selection
            for i, genes, score in done:
                if score > self.scores[i]:
                    self.sources[i], self.scores[i], self.counters[i] = genes, score, 0
                else:
                    self.counters[i] += 1
        if self.phase == "employed":
            ranks = np.argsort(np.argsort(self.scores)) + 1.0  # worst 1 .. best n
            picks = self.rng.choice(len(self.sources), size=len(self.sources), p=ranks / ranks.sum())
            self.phase, self.queue = "onlooker", self._moves([int(i) for i in picks])
            return
        if self.phase == "onlooker":
            tired = [i for i, c in enumerate(self.counters) if c >= self.limit]
            if tired:
                self.phase, self.queue = "scout", [(i, self._fresh()) for i in tired]
                return
        self.phase, self.queue = "employed", self._moves(list(range(len(self.sources))))

    def ask(self, ticket: int) -> Candidate | None:
        if self.phase == "start":
            self._next_phase()
        if not self.queue:
            return None  # the phase waits for its results
        entry = self.queue.pop(0)
        self.asked[ticket] = entry
        return self._candidate(entry[1])

    def tell(self, ticket: int, result: Result) -> None:
        entry = self.asked.pop(ticket, None)
        if entry is None:
            return  # not one of ours (or told twice)
        i, genes = entry
        self.done.append((ticket, i, genes, result.score if result.ok else float("-inf")))
        if not self.queue and not self.asked:  # the phase is complete: select, then plan the next one
            self._next_phase()

    def learn(self, known) -> None:
        """The best known candidates become the first food sources (their known results settle them: none is
        scored again)."""
        scored = sorted((r.score, i, c) for i, (c, r) in enumerate(known) if r.ok and r.score is not None)
        best = [c for _, _, c in sorted(scored, key=lambda e: (-e[0], e[1]))]
        self.initial = list(dict.fromkeys(best + self.initial))

    def state_dict(self) -> dict[str, Any]:
        asked = [[t, i, g] for t, (i, g) in self.asked.items()]
        return copy.deepcopy({**super().state_dict(), "sources": self.sources, "scores": self.scores,
                              "counters": self.counters, "phase": self.phase, "queue": self.queue,
                              "asked": asked, "done": self.done})  # never shares its lists with the agent

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        state = copy.deepcopy(dict(state))
        self.sources, self.scores, self.counters = state["sources"], state["scores"], state["counters"]
        self.phase = state["phase"]
        self.queue = [tuple(e) for e in state["queue"]]
        # a checkpoint written before results carried their ticket holds them in the order to select them
        self.done = [tuple(e) if len(e) == 4 else (n, *e) for n, e in enumerate(state["done"])]
        self.asked = {int(t): (i, g) for t, i, g in state["asked"]}
