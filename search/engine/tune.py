"""Ray Tune backend: any agent as a Tune `Searcher`, a trainable that scores one candidate, a runner.

When to prefer it: for Tune's experiment management (trial logs, its dashboard, schedulers,
`Tuner.restore` of an interrupted experiment, a `FailureConfig` that retries failed trials). The
default actor pool (`--workers`) has lower per-candidate overhead: its actors keep their evaluator for
the whole search, while every Tune trial is scheduled on its own (the trainable caches its evaluator
per worker process, so the model is derived once per process, not per trial).

The mapping: `ask(ticket)` -> `suggest(trial_id)` (None while the agent waits for results,
`Searcher.FINISHED` when it has nothing more to propose); `tell(ticket, result)` <-
`on_trial_complete(trial_id)` (an errored trial, or one without a score, is told as FAILED, as Ray
Tune's own searchers map a missing result to failure). The ticket is the trial number, which the
searcher keeps under Tune's `trial_id` while the trial runs. With racing
(`top_k`), a suggested config carries the referee's bar and the trainable races against it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from ray import tune
from ray.tune.search import Searcher

from agents.base import Agent
from evaluators.accuracy import AccuracyEvaluator, EvaluatorPayload, build_evaluator
from evaluators.executors import score_safely
from evaluators.racing import Estimate
from spaces.budget import Budget, Price
from spaces.files import atomic_write
from spaces.records import Result
from spaces.space import Candidate

from search.engine.loop import Referee
from search.engine.records import Trial

_EVALUATORS: dict[str, AccuracyEvaluator] = {}  # per worker process: built once, reused by its trials


class AgentSearcher(Searcher):
    """A prunesearch agent behind Ray Tune's Searcher interface."""

    def __init__(self, agent: Agent, price: Price, budget: Budget, top_k: int | None = None,
                 canonical: Callable[[Candidate], Candidate] | None = None):
        super().__init__(metric="score", mode="max")
        self.agent, self.price, self.budget = agent, price, budget
        self.referee = Referee(price, budget, top_k, canonical)
        self.asked = 0
        #: Tune's trial_id -> (trial number, the agent's ticket; candidate; costs), while the trial runs
        self.outstanding: dict[str, tuple[int, Candidate, dict[str, float]]] = {}
        self.trials: list[Trial] = []

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        while True:
            candidate = self.agent.ask(self.asked)  # the trial number is the ticket
            if candidate is None:
                return None if self.outstanding else Searcher.FINISHED
            number, self.asked = self.asked, self.asked + 1
            costs, settled = self.referee.settle(candidate)
            if settled is None:
                self.outstanding[trial_id] = (number, candidate, costs)
                config = {"candidate": candidate.to_dict(), "trial": number}
                if self.referee.bar is not None:
                    config["bar"] = self.referee.bar
                return config
            self._tell(number, candidate, settled)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.outstanding:
            return
        number, candidate, costs = self.outstanding.pop(trial_id)
        self._tell(number, candidate, self.referee.result(costs, _estimate(result, error)))

    def _tell(self, number: int, candidate: Candidate, result: Result) -> None:
        self.referee.remember(candidate, result)
        self.agent.tell(number, result)
        self.trials.append(Trial(number, candidate, result, self.asked))

    def save(self, checkpoint_path: str) -> None:
        """Plain data and tensors (an agent's networks), written atomically and read back with
        `weights_only=True`: no library's objects are pickled, so a checkpoint survives their next release."""
        state = {"agent": self.agent.state_dict(), "asked": self.asked,
                 "outstanding": {k: [n, c.to_dict(), dict(costs)] for k, (n, c, costs) in self.outstanding.items()},
                 "trials": [t.to_json() for t in self.trials]}
        atomic_write(Path(checkpoint_path), lambda f: torch.save(state, f))

    def restore(self, checkpoint_path: str) -> None:
        state = torch.load(checkpoint_path, weights_only=True)
        self.agent.load_state_dict(state["agent"])
        self.asked = state["asked"]
        self.outstanding = {k: (int(n), Candidate(c), dict(costs)) for k, (n, c, costs) in state["outstanding"].items()}
        self.trials = [Trial.from_json(t) for t in state["trials"]]


def _estimate(metrics: Mapping | None, error: bool = False) -> Estimate:
    """A Tune trial's reported metrics as an `Estimate` (an errored trial, or one without a score, fails)."""
    metrics = metrics or {}
    score = metrics.get("score")
    if error or score is None or not math.isfinite(score):
        return Estimate(None, seconds=metrics.get("seconds", 0.0),
                        error=str(metrics.get("error") or "the trial errored or reported no score")[:300])
    samples = metrics.get("samples")
    return Estimate(float(score), None if samples is None else int(samples), bool(metrics.get("raced", False)),
                    metrics.get("seconds", 0.0))


def score_trial(config: dict, payload: EvaluatorPayload, key: str) -> None:
    """The Tune trainable: score one candidate with this process's cached evaluator, report it."""
    if key not in _EVALUATORS:
        _EVALUATORS[key] = build_evaluator(payload)
    estimate = score_safely(_EVALUATORS[key], config["candidate"], config.get("bar"))
    report = {"score": estimate.score if estimate.ok else float("nan"), "seconds": estimate.seconds,
              "error": estimate.error, "raced": estimate.raced}
    if estimate.samples is not None:
        report["samples"] = estimate.samples
    tune.report(report)


def run_tune(searcher: AgentSearcher, payload: EvaluatorPayload, *, trials: int, workers: int, storage: Path,
             cpus_per_worker: float = 1, gpus_per_worker: float = 0, resume: bool = False) -> list[Trial]:
    """Run the search through `tune.Tuner` (or continue it with `Tuner.restore`); returns its trials."""
    trainable = tune.with_resources(tune.with_parameters(score_trial, payload=payload, key=str(storage)),
                                    {"cpu": cpus_per_worker, "gpu": gpus_per_worker})
    experiment = storage / "search"
    if resume and experiment.exists():
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=trials, max_concurrent_trials=workers,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name="search", storage_path=str(storage), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=2)))
    grid = tuner.fit()
    out = []
    for result in grid:
        config, metrics = result.config or {}, dict(result.metrics or {})
        if "candidate" not in config:  # stopped (Ctrl-C) before it started: Tuner.restore runs it on --resume
            continue
        candidate = Candidate(config["candidate"])
        if result.error is not None:
            metrics["error"] = str(result.error)
        outcome = Referee.result(searcher.price(candidate), _estimate(metrics, result.error is not None))
        out.append(Trial(int(config["trial"]), candidate, outcome, int(config["trial"]) + 1))
    return sorted(out, key=lambda t: t.number)
