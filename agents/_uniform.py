"""`uniform`: one width ratio for every channel group, the largest that meets the budget.

The reference every learned agent must beat: what a user gets by pruning every layer alike. It
proposes that one candidate, then has nothing more to propose.
"""
from __future__ import annotations

from spaces.space import Candidate

from .base import Agent


class UniformAgent(Agent):
    name = "uniform"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._proposed = False

    def best_uniform(self) -> Candidate:
        """Scan ratios down from 1 in steps of 0.005, each width rounded to its nearest allowed value.

        Costs fall (weakly) as the ratio falls, so the first feasible candidate is the largest. Nearest
        rounding lets groups of different sizes land on either side of the ratio, so the reference
        gets as close to the budget as one common ratio can on the space's width grid.
        """
        for step in range(200, 0, -1):
            candidate = self.space.uniform(step / 200, nearest=True)
            if self.feasible(candidate):
                return candidate
        return self.repair(self.space.smallest())

    def ask(self, ticket: int) -> Candidate | None:
        if self._proposed:
            return None
        self._proposed = True
        return self.best_uniform()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "proposed": self._proposed}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self._proposed = state["proposed"]
