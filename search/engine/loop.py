"""The search loop: ask -> price -> reject or score -> tell, journaled per candidate, resumable.

The engine keeps up to `executor.slots` candidates in flight (one for the local executor, one per
worker on Ray), asking the agent for more while slots are free; over-budget and repeated candidates
are settled at once without scoring. Every ask carries the trial number as its ticket, and the result
is told back under it (`agents.base`); the executor works under the same number. Each journal line
records a finished trial and how many candidates had been asked when it was told, so the exact
interleaving of asks and tells is known.

Racing (`top_k`): the referee keeps the k best full scores; each submitted candidate goes with the
k-th of them, the bar, and a scorer that races stops it once it cannot reach the bar
(`evaluators.racing`). A raced-out candidate is COMPLETE with `Result.raced` and its estimate on the
samples it saw (what the agent is told: the share it got right so far, below the bar), and `best_trial` ranks
every fully scored candidate above it. The journal keeps what racing decided; a replay re-races nothing.

Resuming replays that interleaving into a fresh agent built with the same seed: each replayed `ask(number)`
must give back the journaled candidate, which is told its journaled result without being scored
again. Candidates that were in flight when the run stopped are asked again and scored; nothing
finished is scored twice, and the run continues as if never interrupted.
"""
from __future__ import annotations

import logging
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from agents.base import Agent
from evaluators.executors import Executor, LocalExecutor, Scorer
from evaluators.racing import Estimate, TopK
from spaces.budget import Budget, Price
from spaces.records import Result, TrialState
from spaces.space import Candidate

from search.errors import UserError
from search.engine.records import Journal, Trial, best_trial

__all__ = ["Engine", "Journal", "Outcome", "Price", "Referee", "Trial", "best_trial", "memoized"]

log = logging.getLogger(__name__)


#: the message of a candidate settled as the same subnet as an earlier one under another name (see `Engine`)
SAME_SUBNET = "the same subnet as an earlier candidate (its other widths are inside removed blocks)"


def _itself(candidate: Candidate) -> Candidate:
    return candidate


def memoized(price: Price, size: int = 4096) -> Price:
    """`price` with its last `size` answers remembered: a candidate the agent priced is not priced again."""
    cache: OrderedDict[Candidate, dict[str, float]] = OrderedDict()

    def cached(candidate: Candidate) -> dict[str, float]:
        key = candidate if isinstance(candidate, Candidate) else Candidate(candidate)
        costs = cache.get(key)
        if costs is None:
            costs = cache[key] = dict(price(key))
            if len(cache) > size:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return costs

    cached.__wrapped__ = price  # type: ignore[attr-defined]
    return cached


class Referee:
    """The one path every candidate takes, in the engine and in the Ray Tune searcher.

    `settle(candidate)` prices it once: an over-budget candidate, or a repeat of one already scored, is
    settled at once (a `Result`, never scored); otherwise it returns None with the costs, and the
    candidate must be scored. `result(costs, estimate)` turns a score into the `Result` to tell.
    `bar` is racing's bar (the `top_k`-th best full score remembered; None without racing).
    `canonical` names a candidate's subnet (`PrunableModel.canonical`): a candidate whose subnet was scored
    already, under another name, is a repeat too (default: each candidate is its own subnet).
    """

    def __init__(self, price: Price, budget: Budget, top_k: int | None = None,
                 canonical: Callable[[Candidate], Candidate] | None = None):
        self.price, self.budget = price, budget
        self.canonical = canonical or _itself
        self._scored: dict[Candidate, tuple[Candidate, Result]] = {}  # subnet -> the first candidate, its result
        self._top = TopK(top_k)

    @property
    def bar(self) -> float | None:
        return self._top.bar

    def settle(self, candidate: Candidate) -> tuple[dict[str, float], Result | None]:
        costs = dict(self.price(candidate))
        if not self.budget.feasible(costs):
            return costs, Result(TrialState.INFEASIBLE, None, costs, 0.0, "over budget")
        first, seen = self._scored.get(self.canonical(candidate), (None, None))
        if seen is not None:
            why = "repeat of an earlier candidate" if first == candidate else SAME_SUBNET
            return costs, Result(seen.state, seen.score, costs, 0.0, why, seen.samples, seen.raced)
        return costs, None

    @staticmethod
    def result(costs: Mapping[str, float], estimate: Estimate) -> Result:
        if estimate.ok:
            message = f"raced out after {estimate.samples} held-out samples" if estimate.raced else ""
            return Result(TrialState.COMPLETE, estimate.score, dict(costs), estimate.seconds, message, estimate.samples,
                          estimate.raced)
        return Result(TrialState.FAILED, None, dict(costs), estimate.seconds, estimate.error, estimate.samples)

    def remember(self, candidate: Candidate, result: Result) -> None:
        subnet = self.canonical(candidate)
        if result.state is TrialState.INFEASIBLE or subnet in self._scored:
            return
        self._scored[subnet] = candidate, result
        if result.ok and not result.raced and result.score is not None:
            self._top.add(result.score)


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

    `executor` scores candidates (a bare `Scorer` is wrapped in a `LocalExecutor`); `top_k` turns
    racing on (None: every candidate is scored on every held-out sample); `canonical` names a candidate's
    subnet (`PrunableModel.canonical`), so that a candidate whose subnet was scored under another name is a repeat.
    Such a repeat is told its result but does not count as one of the `trials` (up to `trials` of them): an agent
    cannot see that two names are one subnet, so it is not charged for asking under another name, and `trials`
    stays the number of subnets it may try (an exact repeat counts: the agent asked for what it was told; the Ray
    Tune searcher counts neither, as Tune counts only the trials it runs).
    """

    def __init__(self, agent: Agent, price: Price, budget: Budget, executor: Executor | Scorer, *, trials: int,
                 journal: Journal | None = None, progress: bool = True, base_flops: float | None = None,
                 top_k: int | None = None, canonical: Callable[[Candidate], Candidate] | None = None):
        self.agent, self.price, self.budget = agent, price, budget
        self.referee = Referee(price, budget, top_k, canonical)
        self.executor: Executor = executor if isinstance(executor, Executor) else LocalExecutor(executor)
        self.trials, self.journal, self.progress = trials, journal, progress
        self.base_flops = base_flops
        self.outcome = Outcome()
        self._best: Trial | None = None  # the outcome's best so far, kept as trials finish (not rescanned)
        self._asked = 0
        self._free = 0  # same-subnet repeats that did not count as trials (at most `trials`)
        self._in_flight: dict[int, tuple[Candidate, dict[str, float]]] = {}
        self._resubmit: dict[int, Candidate] = {}  # number -> candidate in flight when the run stopped

    def replay(self, trials: list[Trial], fresh: Callable[[], Agent] | None = None, *, why: str = "") -> bool:
        """Bring a fresh agent to the state it had after `trials` (nothing finished is scored again).

        Exactly, where the agent proposes again what the journal holds. Where it cannot (a journal damaged in
        the middle, the agent's code changed: `why` says what is known of it), and `fresh` builds a new agent,
        that one continues from the readable trials as known results (`Agent.learn`), with a warning; without
        `fresh` it is a UserError. Returns whether the replay was exact."""
        by_number = {t.number: t for t in trials}
        events: list[tuple] = []
        asked = 0
        for trial in sorted(trials, key=lambda t: (t.asked, t.number)):
            while asked < trial.asked:
                known = by_number.get(asked)
                events.append(("ask", asked, known.candidate if known else None))
                asked += 1
            events.append(("tell", trial.number, trial.result))
        exact = True
        try:
            self._resubmit = self.agent.restore(events)
        except ValueError as error:
            if fresh is None:
                raise UserError(f"cannot resume: {error} (was the run started with other options or another "
                                f"version?{' ' + why if why else ''})") from None
            log.warning("the journal cannot be replayed exactly (%s%s); the agent continues from the %d readable "
                        "trials as known results, none scored again: from here the search differs from an "
                        "uninterrupted run", error, f"; {why}" if why else "", len(trials))
            self.agent = fresh()
            ordered = sorted(trials, key=lambda t: t.number)
            self.agent.learn([(t.candidate, t.result) for t in ordered])
            self._resubmit = {}
            top = max((t.number for t in trials), default=-1) + 1
            self.trials += top - len(trials)  # trial numbers lost with the damaged lines are asked again
            asked, exact = max(asked, top), False
        for trial in trials:
            self._remember(trial)
        self._asked = asked
        self._free = min(self.trials, sum(t.result.message == SAME_SUBNET for t in trials))
        return exact

    def _remember(self, trial: Trial) -> None:
        self.outcome.trials.append(trial)
        self._best = best_trial([t for t in (self._best, trial) if t is not None])
        self.referee.remember(trial.candidate, trial.result)

    def _postfix(self) -> dict[str, str]:
        best = self._best
        if best is None:
            return {"best": "-"}
        ratio = best.result.costs["flops"] / self.base_flops if self.base_flops else float("nan")
        return {"best": f"{best.result.score:.4f}", "flops": f"{ratio:.3f}"}

    def _finish(self, number: int, candidate: Candidate, result: Result, bar) -> None:
        self.agent.tell(number, result)
        trial = Trial(number, candidate, result, self._asked)
        if result.message == SAME_SUBNET and self._free < self.trials:
            self._free += 1
            bar.total += 1
        self._remember(trial)
        if self.journal is not None:
            self.journal.append(trial)
        bar.update(1)
        bar.set_postfix(self._postfix(), refresh=False)

    def _start(self, number: int, candidate: Candidate, bar) -> None:
        """Settle an over-budget or repeated candidate at once; submit any other for scoring."""
        costs, settled = self.referee.settle(candidate)
        if settled is not None:
            self._finish(number, candidate, settled, bar)
        else:
            self._in_flight[number] = (candidate, costs)
            race_bar = self.referee.bar
            if race_bar is None:   # executors that know nothing of racing take two arguments
                self.executor.submit(number, candidate)
            else:
                self.executor.submit(number, candidate, race_bar)

    def _collect(self, bar) -> None:
        for number, estimate in self.executor.wait():
            candidate, costs = self._in_flight.pop(number)
            self._finish(number, candidate, self.referee.result(costs, estimate), bar)

    def run(self) -> Outcome:
        bar = tqdm(total=self.trials, initial=len(self.outcome.trials), desc=f"search {self.agent.name}",
                   disable=not self.progress, dynamic_ncols=True)
        try:
            for number, candidate in self._resubmit.items():
                self._start(number, candidate, bar)
            self._resubmit = {}
            while True:
                while len(self._in_flight) < self.executor.slots and self._asked - self._free < self.trials:
                    candidate = self.agent.ask(self._asked)  # the trial number is the ticket
                    if candidate is None:
                        break  # the agent waits for results, or has nothing more to propose
                    number, self._asked = self._asked, self._asked + 1
                    self._start(number, candidate, bar)
                if not self._in_flight:
                    self.outcome.finished_early = self._asked - self._free < self.trials
                    break
                self._collect(bar)
        except KeyboardInterrupt:
            self.outcome.interrupted = True
            tqdm.write("interrupted: keeping the trials so far", file=sys.stderr)
        finally:
            bar.close()
        return self.outcome
