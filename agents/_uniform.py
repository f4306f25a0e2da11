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
        """Scan the distinct ratios of all widths from the top; costs fall as the ratio falls."""
        ratios = sorted({d.ratio(c) for d in self.space.widths for c in d.choices}, reverse=True) or [1.0]
        for ratio in ratios:
            candidate = self.space.uniform(ratio)
            if self.feasible(candidate):
                return candidate
        return self.repair(self.space.uniform(ratios[-1]))

    def ask(self) -> Candidate | None:
        if self._proposed:
            return None
        self._proposed = True
        return self.best_uniform()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "proposed": self._proposed}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self._proposed = state["proposed"]
