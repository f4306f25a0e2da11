"""`random`: uniform draws from the feasible part of the space (rejection sampling, then repair).

Warm-start candidates (`initial`) are asked first, then the draws begin.
"""
from __future__ import annotations

from typing import Any

from spaces.space import Candidate

from .base import Agent


class RandomAgent(Agent):
    name = "random"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.asked = 0

    def ask(self, ticket: int) -> Candidate:
        self.asked += 1
        if self.asked <= len(self.initial):
            return self.initial[self.asked - 1]
        return self.sample_feasible()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "asked": self.asked}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.asked = int(state.get("asked", 0))
