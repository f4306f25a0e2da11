"""`evolution`: the evolutionary search of MetaPruning (Liu et al., ICCV 2019), budget-aware.

A candidate is a list of genes, one per dimension: the index of its value among the dimension's
choices (widths on the ratio grid, keep flags 0/1), as in the ABC agent. One generation:
- the first one is `population` random candidates (uniform draws from the feasible part of the space);
- every later one is bred from the `parents` best candidates scored so far in the whole search
  (MetaPruning's top-k list): `mutations` children of a random parent, each gene redrawn uniformly
  from its choices with probability `mutation_prob`, then `crossovers` children of two distinct
  random parents, each gene taken from either with probability 1/2; then random candidates fill the
  generation up to `population`.
Every proposal is new (never a candidate already proposed in this search) and inside the budget: a
child that is over budget is fitted into it by `Agent.trade` (its mutated genes kept, other widths
narrowed a step at a time). Drawing it again instead, as before, kept at a tight budget only the
children that narrow a layer (the population drifted below the budget), and shrinking it by one common
ratio (`repair`) narrowed most of its widths. A child already proposed is drawn again, a bounded number
of times (then dropped, for the random fill to replace). Failed results (and non-finite scores) rank
below every scored candidate and are never parents. `ask()` returns None while the generation's
candidates await their results (a generation barrier: a whole generation can be scored in parallel);
None with nothing outstanding means the space holds nothing new, and the search ends.

Small trial budgets: unless `population` is given, it is 50, or with `trials` known
`min(50, max(8, trials // 4))`, so a search sees at least about four generations; `parents`,
`mutations` and `crossovers` are then scaled by the same factor (rounded; at least 2 parents where there
are crossovers). A `population` given is kept as asked, with its own `parents`, `mutations` and
`crossovers` (as abc keeps `food_sources`). `metapruning` is this agent, scored with a trained PruningNet's generated weights
(see `evaluators.pruningnet`) instead of the base weights.
"""
from __future__ import annotations

import math
from typing import Any

from spaces.records import Result
from spaces.space import Candidate

from .base import Agent

#: MetaPruning's population, for searches of 200 trials and more
POPULATION = 50
#: draws per proposal before falling back (over budget or already proposed: draw again); a random
#: draw is itself a rejection sample of up to 200 uniform draws (`sample_feasible`).
TRIES = 20


class EvolutionAgent(Agent):
    name = "evolution"

    def __init__(self, *args: Any, population: int | None = None, parents: int | None = None, mutations: int | None = None,
                 crossovers: int | None = None, mutation_prob: float = 0.1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        shrink = population is None and self.trials is not None
        population = POPULATION if population is None else population
        # MetaPruning's 10 parents and 25 + 25 children of 50; a smaller population keeps the proportions
        if isinstance(population, int) and not isinstance(population, bool):
            parents = min(10, population) if parents is None else parents
            mutations = population // 2 if mutations is None else mutations
            crossovers = population - population // 2 if crossovers is None else crossovers
        ints = {"population": population, "parents": parents, "mutations": mutations, "crossovers": crossovers}
        for key, value in ints.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"evolution: {key} must be an integer, got {value!r}")
        if population < 2:
            raise ValueError(f"evolution: population must be at least 2, got {population}")
        if not 1 <= parents <= population:
            raise ValueError(f"evolution: parents must lie in [1, population={population}], got {parents}")
        if mutations < 0 or crossovers < 0 or mutations + crossovers > population:
            raise ValueError(f"evolution: mutations and crossovers must be >= 0 with a sum of at most the "
                             f"population ({population}), got {mutations} and {crossovers}")
        if crossovers and parents < 2:
            raise ValueError("evolution: crossovers need at least 2 parents")
        if not (isinstance(mutation_prob, (int, float)) and 0 < mutation_prob <= 1):
            raise ValueError(f"evolution: mutation_prob must lie in (0, 1], got {mutation_prob!r}")
        self.requested = dict(ints, mutation_prob=float(mutation_prob))
        size = min(population, max(8, self.trials // 4)) if shrink else population
        scale = size / population
        self.population = size
        self.parents = min(size, max(2 if crossovers else 1, round(parents * scale)))
        self.mutations = min(size, round(mutations * scale))
        self.crossovers = min(size - self.mutations, round(crossovers * scale))
        self.mutation_prob = float(mutation_prob)
        self.generation = -1                      # the generation being asked/scored (-1: none yet)
        self.queue: list[list[int]] = []          # planned, not asked yet
        self.outstanding: dict[int, list[int]] = {}  # ticket -> genes: asked, result not told yet
        self.history: list[list] = []            # [genes, score or None (failed)], in the order told
        self.proposed: list[list[int]] = []       # every candidate planned in this search, in order
        self._seen: set[tuple[int, ...]] = set()

    @property
    def batch(self) -> int:
        return self.population  # a generation

    # -- genes ---------------------------------------------------------------------------------
    def _genes(self, candidate: Candidate) -> list[int]:
        return self.space.encode(candidate)

    def _fits(self, genes: list[int]) -> bool:
        return tuple(genes) not in self._seen and self.feasible(self.space.decode(genes))

    def _take(self, genes: list[int]) -> None:
        self.queue.append(genes)
        self.proposed.append(genes)
        self._seen.add(tuple(genes))

    def _settle(self, draw, tries: int = TRIES) -> bool:
        """Plan the first new result of `draw()` -> (genes, names of the genes it moved), an over-budget one
        fitted into the budget by `trade` (the moved genes kept, the others paying); bounded tries."""
        for _ in range(tries):
            genes, moved = draw()
            candidate = self.space.decode(genes)
            if not self.feasible(candidate):
                genes = self._genes(self.trade(candidate, moved))
            if self._fits(genes):
                self._take(genes)
                return True
        return False

    def _mutate(self, parent: list[int]) -> tuple[list[int], set[str]]:
        child, moved = list(parent), set()
        for g, dim in enumerate(self.space.dimensions):
            if self.rng.random() < self.mutation_prob:
                child[g] = int(self.rng.integers(len(dim.choices)))
                moved.add(dim.name)
        return child, moved

    def _cross(self, a: list[int], b: list[int]) -> tuple[list[int], set[str]]:
        pick = self.rng.random(len(a)) < 0.5
        return [int(x) if p else int(y) for x, y, p in zip(a, b, pick)], set()

    def _random(self) -> tuple[list[int], set[str]]:
        return self._genes(self.sample_feasible()), set()

    # -- generations ---------------------------------------------------------------------------
    def ranked(self) -> list[tuple[list[int], float | None]]:
        """Every told candidate, best first; failed ones last (ties: the earlier told first)."""
        order = sorted(range(len(self.history)),
                       key=lambda i: (self.history[i][1] is None, -(self.history[i][1] or 0.0), i))
        return [(list(self.history[i][0]), self.history[i][1]) for i in order]

    def top(self) -> list[list[int]]:
        """The parents of the next generation: the best `parents` scored candidates so far."""
        return [g for g, s in self.ranked() if s is not None][:self.parents]

    def _plan(self) -> None:
        self.generation += 1
        parents = self.top() if self.generation > 0 else []
        if parents:
            for _ in range(self.mutations):
                self._settle(lambda: self._mutate(parents[int(self.rng.integers(len(parents)))]))
            if len(parents) >= 2:
                for _ in range(self.crossovers):
                    def child() -> list[int]:
                        i, j = self.rng.choice(len(parents), size=2, replace=False)
                        return self._cross(parents[int(i)], parents[int(j)])
                    self._settle(child)
        if self.generation == 0:  # warm starts join the first population
            for candidate in self.initial[:self.population]:
                genes = self._genes(candidate)
                if self._fits(genes):
                    self._take(genes)
        while len(self.queue) < self.population:
            # nothing new is found (drawn harder before a generation would end the search empty): the
            # space, or its feasible part, is exhausted
            if not self._settle(self._random, TRIES if self.queue else 10 * TRIES):
                break

    def ask(self, ticket: int) -> Candidate | None:
        if not self.queue and not self.outstanding:
            self._plan()
        if not self.queue:
            return None  # the generation waits for its results (or there is nothing new left)
        genes = self.queue.pop(0)
        self.outstanding[ticket] = genes
        return self.space.decode(genes)

    def tell(self, ticket: int, result: Result) -> None:
        genes = self.outstanding.pop(ticket, None)
        if genes is None:
            return  # not one of ours (or told twice)
        score = result.score if result.ok and result.score is not None and math.isfinite(result.score) else None
        self.history.append([genes, None if score is None else float(score)])

    def learn(self, known) -> None:
        """Known results join the history (the parents are drawn from it) and are never proposed again."""
        for candidate, result in known:
            genes = self._genes(candidate)
            score = result.score if result.ok and result.score is not None and math.isfinite(result.score) else None
            if result.state.value != "infeasible":
                self.history.append([genes, None if score is None else float(score)])
            if tuple(genes) not in self._seen:
                self.proposed.append(genes)
                self._seen.add(tuple(genes))
        if self.history and self.generation < 0:
            self.generation = 0  # the next generation is bred from the known ones

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generation": self.generation, "queue": [list(g) for g in self.queue],
                "outstanding": [[t, list(g)] for t, g in self.outstanding.items()],
                "history": [[list(g), s] for g, s in self.history], "proposed": [list(g) for g in self.proposed]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generation = int(state["generation"])
        self.queue = [[int(x) for x in g] for g in state["queue"]]
        self.outstanding = {int(t): [int(x) for x in g] for t, g in state["outstanding"]}
        self.history = [[[int(x) for x in g], None if s is None else float(s)] for g, s in state["history"]]
        self.proposed = [[int(x) for x in g] for g in state["proposed"]]
        self._seen = {tuple(g) for g in self.proposed}
