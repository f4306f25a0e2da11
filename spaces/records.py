"""What became of a candidate: `TrialState` and `Result`. Failed or infeasible candidates are data."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum


class TrialState(str, Enum):
    COMPLETE = "complete"      # scored
    INFEASIBLE = "infeasible"  # over budget: priced, never scored
    FAILED = "failed"          # scoring raised or gave a non-finite score


@dataclass(frozen=True)
class Result:
    state: TrialState
    score: float | None = None
    costs: Mapping[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.state is TrialState.COMPLETE
