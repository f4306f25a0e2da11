"""One-shot candidates: what global magnitude pruning and uniform pruning pick at the budget, scored as extra
trials so that they always compete among the finalists.

A user compares this tool with one-shot pruning; with these two among the finalists, the export is never one
that the finalists' own short fine-tune ranks below one-shot pruning at the same budget. Global magnitude is
`spaces.warm_start.magnitude_candidate` (Torch-Pruning's global ranking by group L2 norm); uniform is the
`uniform` agent's one candidate (one width ratio for every channel group, the largest that fits).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from agents.registry import make_agent
from spaces.derive import PrunableModel
from spaces.space import Candidate
from spaces.warm_start import magnitude_candidate

from search.engine.records import Trial
from search.selection.extra import ExtraTrials

if TYPE_CHECKING:
    from search.engine.pipeline import Pipeline

log = logging.getLogger(__name__)

#: the message that marks a one-shot trial (trials.csv's message column, best.json's origin)
ONE_SHOT = "one-shot"


def one_shot_candidates(prunable: PrunableModel, pipeline: Pipeline, price) -> dict[str, Candidate]:
    """{name: candidate} of global magnitude and uniform pruning at the pipeline's budget (a name is left out
    when its method finds nothing that fits)."""
    feasible = lambda c: pipeline.budget.feasible(price(c))  # noqa: E731
    found = {"global magnitude": magnitude_candidate(prunable, feasible),
             "uniform": make_agent("uniform", prunable.space, pipeline.budget, price=price).ask(0)}
    return {name: c for name, c in found.items() if c is not None}


def one_shot_trials(pipeline: Pipeline, prunable: PrunableModel, trials: list[Trial], scorer,
                    price) -> tuple[list[Trial], dict[str, Trial]]:
    """(the extra trials scored here, {method: the trial holding its candidate}: one the search scored itself,
    e.g. its warm start, is not scored again)."""
    extras = ExtraTrials(trials, scorer, price, pipeline.budget, prunable.canonical)
    new, chosen = [], {}
    for name, candidate in one_shot_candidates(prunable, pipeline, price).items():
        trial = extras.known(candidate)
        if trial is None:
            trial = extras.score(candidate, f"{ONE_SHOT}: {name}")
            if trial is None:  # over the budget
                continue
            new.append(trial)
        if trial.result.ok:
            chosen[name] = trial
    if new:
        log.info("one-shot candidates scored: %s", ", ".join(
            f"{t.result.message} -> {t.result.score:.4f}" for t in new if t.result.ok))
    return new, chosen


def origin(trial: Trial, one_shot: Mapping[str, Trial]) -> str:
    """Where a candidate came from, in words (finalists.csv's and best.json's `origin`): the trial's own mark (a
    fill, a one-shot method scored as an extra trial), else "search"; a search trial holding a one-shot method's
    candidate (the warm start is global magnitude's) names the method too, so that a plain one-shot result never
    reads as a search's."""
    if trial.result.message:
        return trial.result.message
    names = [name for name, t in one_shot.items() if t is trial]
    return f"search, also {ONE_SHOT}: {' and '.join(names)}" if names else "search"


def one_shot_finalists(methods: Mapping[str, Trial]) -> list[Trial]:
    """The trials of `one_shot_trials`' {method: trial}, each once (one trial may hold both methods' candidate)."""
    return list({id(t): t for t in methods.values()}.values())
