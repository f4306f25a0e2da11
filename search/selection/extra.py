"""Extra trials after the search (fill, one-shot candidates): scored by the search's scorer, numbered after
the search's trials and never journaled (a resumed run scores them again at its end)."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from evaluators.executors import score_safely
from spaces.budget import Budget, Price
from spaces.space import Candidate

from search.engine.loop import Referee
from search.engine.records import Trial


class ExtraTrials:
    """Scores candidates the search did not propose, each subnet once, as trials after `trials` (`canonical`
    names a candidate's subnet, `PrunableModel.canonical`; default: each candidate is its own)."""

    def __init__(self, trials: Sequence[Trial], scorer, price: Price, budget: Budget,
                 canonical: Callable[[Candidate], Candidate] | None = None):
        self.scorer, self.referee = scorer, Referee(price, budget, canonical=canonical)
        self.canonical = self.referee.canonical
        self._trials: dict[Candidate, Trial] = {}  # each subnet's first trial
        for trial in trials:
            self.referee.remember(trial.candidate, trial.result)
            self._trials.setdefault(self.canonical(trial.candidate), trial)
        self.number = max((t.number for t in trials), default=-1) + 1

    def known(self, candidate: Candidate) -> Trial | None:
        """The trial that scored `candidate`'s subnet already (the search's, or one scored here), else None."""
        return self._trials.get(self.canonical(candidate))

    def score(self, candidate: Candidate, message: str) -> Trial | None:
        """The candidate scored as a new trial whose message says where it came from; None when it is over the
        budget or was scored already (`known` gives that trial)."""
        costs, settled = self.referee.settle(candidate)
        if settled is not None:
            return None
        scored = score_safely(self.scorer, candidate)
        result = dataclasses.replace(self.referee.result(costs, scored),
                                     message=message + (f": {scored.error}" if scored.error else ""))
        self.referee.remember(candidate, result)
        trial = Trial(self.number, candidate, result, self.number + 1)
        self._trials[self.canonical(candidate)] = trial
        self.number += 1
        return trial
