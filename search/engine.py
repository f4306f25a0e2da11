"""The search loop: ask -> price -> reject or score -> tell, journaled per candidate, resumable.

The engine keeps up to `executor.slots` candidates in flight (one for the local executor, one per
worker on Ray), asking the agent for more while slots are free; over-budget and repeated candidates
are settled at once without scoring. Each journal line records a finished trial and how many
candidates had been asked when it was told, so the exact interleaving of asks and tells is known.

Resuming replays that interleaving into a fresh agent built with the same seed: each replayed `ask()`
must give back the journaled candidate, which is told its journaled result without being scored
again. Candidates that were in flight when the run stopped are asked again and scored; nothing
finished is scored twice, and the run continues as if never interrupted.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from agents.base import Agent
from evaluators.executors import LocalExecutor
from spaces.budget import Budget
from spaces.records import Result, TrialState
from spaces.space import Candidate

from .errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trial:
    number: int          # the order in which the agent proposed it
    candidate: Candidate
    result: Result
    asked: int = 0       # candidates asked of the agent when this one was told (for exact replay)

    def to_json(self) -> dict:
        r = self.result
        return {"trial": self.number, "asked": self.asked, "state": r.state.value, "score": r.score,
                "costs": dict(r.costs), "seconds": round(r.seconds, 6), "message": r.message,
                "candidate": self.candidate.to_dict()}

    @classmethod
    def from_json(cls, data: Mapping) -> Trial:
        result = Result(TrialState(data["state"]), data["score"], data["costs"], data["seconds"], data["message"])
        return cls(int(data["trial"]), Candidate(data["candidate"]), result, int(data.get("asked", data["trial"] + 1)))


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
    """Runs one agent for `trials` candidates. See the module docstring.

    `executor` scores candidates (an object with `score(candidate)` is wrapped in a `LocalExecutor`).
    """

    def __init__(self, agent: Agent, price: Callable[[Candidate], Mapping[str, float]], budget: Budget,
                 executor: Any, *, trials: int, journal: Journal | None = None, progress: bool = True,
                 base_flops: float | None = None):
        self.agent, self.price, self.budget = agent, price, budget
        self.executor = executor if hasattr(executor, "submit") else LocalExecutor(executor)
        self.trials, self.journal, self.progress = trials, journal, progress
        self.base_flops = base_flops
        self.outcome = Outcome()
        self._scored: dict[Candidate, Result] = {}
        self._asked = 0
        self._in_flight: dict[int, tuple[Candidate, dict[str, float]]] = {}
        self._resubmit: list[tuple[int, Candidate]] = []

    def replay(self, trials: list[Trial]) -> None:
        """Bring a fresh agent to the state it had after `trials` (nothing finished is scored again)."""
        by_number = {t.number: t for t in trials}
        events: list[tuple] = []
        asked = 0
        for trial in sorted(trials, key=lambda t: (t.asked, t.number)):
            while asked < trial.asked:
                known = by_number.get(asked)
                events.append(("ask", known.candidate if known else None))
                asked += 1
            events.append(("tell", trial.candidate, trial.result))
        try:
            pending = self.agent.restore(events)
        except ValueError as error:
            raise UserError(f"cannot resume: {error} (was the run started with other options or another "
                            "version?)") from None
        for trial in trials:
            self._remember(trial)
        self._asked = asked
        told = {t.number for t in trials}
        self._resubmit = [(n, c) for n, c in zip((n for n in range(asked) if n not in told), pending)]

    def _remember(self, trial: Trial) -> None:
        self.outcome.trials.append(trial)
        if trial.result.state is not TrialState.INFEASIBLE:
            self._scored.setdefault(trial.candidate, trial.result)

    def _postfix(self) -> dict[str, str]:
        best = self.outcome.best
        if best is None:
            return {"best": "-"}
        ratio = best.result.costs["flops"] / self.base_flops if self.base_flops else float("nan")
        return {"best": f"{best.result.score:.4f}", "flops": f"{ratio:.3f}"}

    def _finish(self, number: int, candidate: Candidate, result: Result, bar) -> None:
        self.agent.tell(candidate, result)
        trial = Trial(number, candidate, result, self._asked)
        self._remember(trial)
        if self.journal is not None:
            self.journal.append(trial)
        bar.update(1)
        bar.set_postfix(self._postfix(), refresh=False)

    def _start(self, number: int, candidate: Candidate, bar) -> None:
        """Settle an over-budget or repeated candidate at once; submit any other for scoring."""
        costs = dict(self.price(candidate))
        if not self.budget.feasible(costs):
            self._finish(number, candidate, Result(TrialState.INFEASIBLE, None, costs, 0.0, "over budget"), bar)
        elif candidate in self._scored:
            seen = self._scored[candidate]
            self._finish(number, candidate, Result(seen.state, seen.score, costs, 0.0,
                                                   "repeat of an earlier candidate"), bar)
        else:
            self._in_flight[number] = (candidate, costs)
            self.executor.submit(number, candidate)

    def _collect(self, bar) -> None:
        for number, scored in self.executor.wait():
            candidate, costs = self._in_flight.pop(number)
            if scored.ok:
                result = Result(TrialState.COMPLETE, scored.score, costs, scored.seconds)
            else:
                result = Result(TrialState.FAILED, None, costs, scored.seconds, scored.error)
            self._finish(number, candidate, result, bar)

    def run(self) -> Outcome:
        bar = tqdm(total=self.trials, initial=len(self.outcome.trials), desc=f"search {self.agent.name}",
                   disable=not self.progress, dynamic_ncols=True)
        try:
            for number, candidate in self._resubmit:
                self._start(number, candidate, bar)
            self._resubmit = []
            while True:
                while len(self._in_flight) < self.executor.slots and self._asked < self.trials:
                    candidate = self.agent.ask()
                    if candidate is None:
                        break  # the agent waits for results, or has nothing more to propose
                    number, self._asked = self._asked, self._asked + 1
                    self._start(number, candidate, bar)
                if not self._in_flight:
                    self.outcome.finished_early = self._asked < self.trials
                    break
                self._collect(bar)
        except KeyboardInterrupt:
            self.outcome.interrupted = True
            tqdm.write("interrupted: keeping the trials so far")
        finally:
            bar.close()
        return self.outcome
