"""`random`: uniform draws from the feasible part of the space (rejection sampling, then repair)."""
from __future__ import annotations

from spaces.space import Candidate

from .base import Agent


class RandomAgent(Agent):
    name = "random"

    def ask(self) -> Candidate:
        return self.sample_feasible()
