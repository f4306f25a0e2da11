"""What became of a candidate: `TrialState` and `Result`. Failed or infeasible candidates are data."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum


class TrialState(str, Enum):
    COMPLETE = "complete"      # scored (on every held-out sample, or raced out: `Result.raced`)
    INFEASIBLE = "infeasible"  # over budget: priced, never scored
    FAILED = "failed"          # scoring raised or gave a non-finite score


@dataclass(frozen=True)
class Result:
    state: TrialState
    score: float | None = None
    costs: Mapping[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    message: str = ""
    samples: int | None = None   # held-out samples the score rests on (None: not counted, or not scored)
    raced: bool = False          # racing stopped it early: `score` is its estimate on `samples`, below the
    #                              top-k bar of its time (evaluators.racing); never the best of a search

    @property
    def ok(self) -> bool:
        return self.state is TrialState.COMPLETE
