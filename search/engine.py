"""The search loop: ask -> price -> reject or score -> tell, journaled per candidate, resumable.

Resuming replays the journal into a fresh agent built with the same seed: each replayed `ask()` must
give back the journaled candidate, which is told its journaled result without being scored again. The
agent thus reaches exactly the state it had, and the run continues as if never interrupted.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from agents.base import Agent
from spaces.budget import Budget
from spaces.records import Result, TrialState
from spaces.space import Candidate

from .errors import UserError

log = logging.getLogger(__name__)


class Scorer(Protocol):
    def score(self, candidate: Mapping[str, int]) -> float: ...


@dataclass(frozen=True)
class Trial:
    number: int
    candidate: Candidate
    result: Result

    def to_json(self) -> dict:
        r = self.result
        return {"trial": self.number, "state": r.state.value, "score": r.score, "costs": dict(r.costs),
                "seconds": round(r.seconds, 6), "message": r.message, "candidate": self.candidate.to_dict()}

    @classmethod
    def from_json(cls, data: Mapping) -> Trial:
        result = Result(TrialState(data["state"]), data["score"], data["costs"], data["seconds"], data["message"])
        return cls(int(data["trial"]), Candidate(data["candidate"]), result)


class Journal:
    """Append-only JSON lines, one per trial, flushed as each trial ends."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> list[Trial]:
        if not self.path.exists():
            return []
        trials = []
        for line in self.path.read_text().splitlines():
            try:
                trials.append(Trial.from_json(json.loads(line)))
            except (ValueError, KeyError):
                break  # a line cut short by a crash: everything before it is sound
        return trials

    def truncate(self, trials: list[Trial]) -> None:
        """Rewrite the journal to exactly `trials` (drops a half-written last line)."""
        self.path.write_text("".join(json.dumps(t.to_json()) + "\n" for t in trials))

    def append(self, trial: Trial) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(trial.to_json()) + "\n")
            f.flush()


def score_candidate(scorer: Scorer, candidate: Candidate, costs: Mapping[str, float]) -> Result:
    """Score one feasible candidate; a failure or a non-finite score is a FAILED result, never an exception."""
    start = time.perf_counter()
    try:
        score = float(scorer.score(candidate))
    except Exception as error:  # noqa: BLE001 - any failure of one candidate is data
        log.debug("candidate failed", exc_info=True)
        return Result(TrialState.FAILED, None, costs, time.perf_counter() - start,
                      f"{type(error).__name__}: {error}".splitlines()[0][:300])
    seconds = time.perf_counter() - start
    if not math.isfinite(score):
        return Result(TrialState.FAILED, None, costs, seconds, "score is not finite")
    return Result(TrialState.COMPLETE, score, costs, seconds)


def best_trial(trials: list[Trial]) -> Trial | None:
    """The highest score; among equal scores, the fewest FLOPs, then the earliest."""
    done = [t for t in trials if t.result.ok]
    return max(done, key=lambda t: (t.result.score, -t.result.costs.get("flops", 0), -t.number), default=None)


@dataclass
class Outcome:
    trials: list[Trial] = field(default_factory=list)
    interrupted: bool = False
    finished_early: bool = False  # the agent had nothing more to propose

    @property
    def best(self) -> Trial | None:
        return best_trial(self.trials)


class Engine:
    """Runs one agent for `trials` candidates. See the module docstring."""

    def __init__(self, agent: Agent, price: Callable[[Candidate], Mapping[str, float]], budget: Budget,
                 scorer: Scorer, *, trials: int, journal: Journal | None = None, progress: bool = True,
                 base_flops: float | None = None):
        self.agent, self.price, self.budget, self.scorer = agent, price, budget, scorer
        self.trials, self.journal, self.progress = trials, journal, progress
        self.base_flops = base_flops
        self.outcome = Outcome()
        self._scored: dict[Candidate, Result] = {}

    def replay(self, trials: list[Trial]) -> None:
        """Bring a fresh agent to the state it had after `trials` (nothing is scored again)."""
        try:
            self.agent.restore([(t.candidate, t.result) for t in trials])
        except ValueError as error:
            raise UserError(f"cannot resume: {error} (was the run started with other options or another "
                            "version?)") from None
        for trial in trials:
            self._remember(trial)

    def _remember(self, trial: Trial) -> None:
        self.outcome.trials.append(trial)
        if trial.result.state is not TrialState.INFEASIBLE:
            self._scored.setdefault(trial.candidate, trial.result)

    def _evaluate(self, candidate: Candidate) -> Result:
        costs = dict(self.price(candidate))
        if not self.budget.feasible(costs):
            return Result(TrialState.INFEASIBLE, None, costs, 0.0, "over budget")
        if candidate in self._scored:  # the same subnet again: its score is known
            seen = self._scored[candidate]
            return Result(seen.state, seen.score, costs, 0.0, "repeat of an earlier candidate")
        return score_candidate(self.scorer, candidate, costs)

    def _postfix(self) -> dict[str, str]:
        best = self.outcome.best
        if best is None:
            return {"best": "-"}
        ratio = best.result.costs["flops"] / self.base_flops if self.base_flops else float("nan")
        return {"best": f"{best.result.score:.4f}", "flops": f"{ratio:.3f}"}

    def run(self) -> Outcome:
        start = len(self.outcome.trials)
        bar = tqdm(total=self.trials, initial=start, desc=f"search {self.agent.name}", disable=not self.progress,
                   dynamic_ncols=True)
        try:
            for number in range(start, self.trials):
                candidate = self.agent.ask()
                if candidate is None:
                    self.outcome.finished_early = True
                    break
                trial = Trial(number, candidate, self._evaluate(candidate))
                self.agent.tell(candidate, trial.result)
                self._remember(trial)
                if self.journal is not None:
                    self.journal.append(trial)
                bar.update(1)
                bar.set_postfix(self._postfix(), refresh=False)
        except KeyboardInterrupt:
            self.outcome.interrupted = True
            tqdm.write("interrupted: keeping the trials so far")
        finally:
            bar.close()
        return self.outcome
