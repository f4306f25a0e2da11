"""Fill: the search's best few candidates, each widened until the budget binds, scored as extra trials.

A search's best candidate often leaves some of the budget unspent; widening it (`spaces.fill`) costs one
more evaluation and is kept only if it scores. The widened candidates are trials numbered after the
search's and not journaled (a resumed run fills again at its end).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from spaces.derive import PrunableModel
from spaces.fill import fill

from search.engine.records import Trial
from search.selection.extra import ExtraTrials
from search.selection.finalists import top_distinct

if TYPE_CHECKING:
    from search.engine.pipeline import Pipeline

log = logging.getLogger(__name__)


def fill_trials(pipeline: Pipeline, prunable: PrunableModel, trials: list[Trial], scorer, price) -> list[Trial]:
    """The best `max(1, --finalists)` distinct candidates, each widened until the budget binds
    (`spaces.fill`), scored by the search's scorer: extra trials, numbered after the search's and
    not journaled (a resumed run fills again at its end)."""
    extras = ExtraTrials(trials, scorer, price, pipeline.budget, prunable.canonical)
    extra = []
    for trial in top_distinct(trials, max(1, pipeline.config.finalists), prunable.canonical):
        wider = fill(prunable.space, trial.candidate, lambda c: pipeline.budget.feasible(price(c)))
        scored = extras.score(wider, f"fill of trial {trial.number}")  # None: nothing to widen, or scored already
        if scored is not None:
            extra.append(scored)
    if extra:
        log.info("fill: %d widened candidates scored (%s)", len(extra), ", ".join(
            f"{t.result.message} -> {t.result.score:.4f}" for t in extra if t.result.ok))
    return extra
