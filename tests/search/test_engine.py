"""The engine loop: rejection before scoring, failures as data, journal and exact resume."""
from __future__ import annotations

import json
import math

import pytest

from agents import make_agent
from conftest import fake_score, setting
from evaluators.racing import Estimate
from search.engine.loop import SAME_SUBNET, Engine, Journal
from search.engine.pipeline import idle_workers
from search.errors import UserError
from spaces.records import TrialState


class CountingScorer:
    def __init__(self, space, fail=lambda c: False, nan=lambda c: False):
        self.space, self.fail, self.nan, self.calls = space, fail, nan, 0

    def score(self, candidate):
        self.calls += 1
        if self.fail(candidate):
            raise RuntimeError("forward pass failed")
        return math.nan if self.nan(candidate) else fake_score(self.space, candidate)


def engine(tmp_path, trials, agent="random", seed=0, scorer=None, journal=True):
    space, budget, price = setting("0.4flops")
    a = make_agent(agent, space, budget, price=price, seed=seed, trials=trials)
    scorer = scorer or CountingScorer(space)
    return Engine(a, price, budget, scorer, trials=trials, journal=Journal(tmp_path / "j.jsonl") if journal else None,
                  progress=False), scorer


def test_every_trial_is_journaled_and_over_budget_is_never_scored(tmp_path):
    space, budget, price = setting("0.4flops")
    over = space.full()

    class Stubborn:  # proposes an over-budget candidate every third time
        name = "stubborn"

        def __init__(self):
            self.inner = make_agent("random", space, budget, price=price, seed=0)
            self.n = 0

        def ask(self, ticket):
            self.n += 1
            return over if self.n % 3 == 0 else self.inner.ask(ticket)

        def tell(self, ticket, r):
            pass

    scorer = CountingScorer(space)
    outcome = Engine(Stubborn(), price, budget, scorer, trials=9, journal=Journal(tmp_path / "j.jsonl"),
                     progress=False).run()
    states = [t.result.state for t in outcome.trials]
    assert states.count(TrialState.INFEASIBLE) == 3
    assert scorer.calls == 6
    assert len((tmp_path / "j.jsonl").read_text().splitlines()) == 9


def test_failures_and_nan_are_recorded_and_the_search_goes_on(tmp_path):
    space = setting("0.4flops")[0]
    first = space.names[0]
    scorer = CountingScorer(space, fail=lambda c: c[first] % 2 == 0, nan=lambda c: c[first] % 3 == 0)
    eng, _ = engine(tmp_path, 25, scorer=scorer)
    outcome = eng.run()
    assert len(outcome.trials) == 25
    failed = [t for t in outcome.trials if t.result.state is TrialState.FAILED]
    assert failed and any("forward pass failed" in t.result.message for t in failed)
    assert outcome.best is not None and outcome.best.result.ok


def test_resume_equals_an_uninterrupted_run(tmp_path):
    full, _ = engine(tmp_path / "a", 20, journal=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    uninterrupted = full.run()
    half, _ = engine(tmp_path / "b", 8)
    half.run()
    resumed, scorer = engine(tmp_path / "b", 20)
    resumed.replay(Journal(tmp_path / "b" / "j.jsonl").read())
    outcome = resumed.run()
    assert scorer.calls <= 12  # nothing already scored is scored again
    assert [t.candidate for t in outcome.trials] == [t.candidate for t in uninterrupted.trials]
    assert outcome.best.candidate == uninterrupted.best.candidate


def test_resume_with_another_seed_is_refused(tmp_path):
    first, _ = engine(tmp_path, 5)
    first.run()
    other, _ = engine(tmp_path, 10, seed=1)
    with pytest.raises(UserError, match="cannot resume"):
        other.replay(Journal(tmp_path / "j.jsonl").read())


def test_a_torn_last_journal_line_is_dropped(tmp_path):
    eng, _ = engine(tmp_path, 4)
    eng.run()
    path = tmp_path / "j.jsonl"
    path.write_text(path.read_text() + '{"trial": 4, "sta')
    trials = Journal(path).read()
    assert len(trials) == 4 and json.loads(path.read_text().splitlines()[0])["trial"] == 0


def test_uniform_finishes_early_after_its_one_candidate(tmp_path):
    eng, scorer = engine(tmp_path, 10, agent="uniform")
    outcome = eng.run()
    assert len(outcome.trials) == 1 and outcome.finished_early and scorer.calls == 1


def test_repeated_candidates_are_not_scored_twice(tmp_path):
    space, budget, price = setting("0.4flops")
    candidate = make_agent("uniform", space, budget, price=price).ask(0)

    class Repeater:
        name = "repeat"

        def ask(self, ticket):
            return candidate

        def tell(self, ticket, r):
            pass

    scorer = CountingScorer(space)
    outcome = Engine(Repeater(), price, budget, scorer, trials=5, progress=False).run()
    assert scorer.calls == 1 and all(t.result.ok for t in outcome.trials)
    assert len({t.result.score for t in outcome.trials}) == 1


def test_a_candidate_whose_subnet_was_scored_under_another_name_is_a_repeat():
    space, budget, price = setting("0.4flops")
    first = make_agent("uniform", space, budget, price=price).ask(0)
    width = next(d for d in space.widths if first[d.name] != d.smallest)
    other = first.replace(**{width.name: width.smallest})  # narrower: within the budget too
    asked = [first, other, first, other]

    class Asker:
        name = "asker"

        def ask(self, ticket):
            return asked[ticket]

        def tell(self, ticket, r):
            pass

    scorer = CountingScorer(space)
    outcome = Engine(Asker(), price, budget, scorer, trials=2, progress=False,
                     canonical=lambda c: first if c == other else c).run()
    assert scorer.calls == 1 and len({t.result.score for t in outcome.trials}) == 1
    # the agent's own names are kept; a same-subnet repeat is not one of the 2 trials, an exact repeat is
    assert [t.candidate for t in outcome.trials] == asked[:3]
    assert [t.result.message for t in outcome.trials] == ["", SAME_SUBNET, "repeat of an earlier candidate"]
    scorer = CountingScorer(space)
    outcome = Engine(Asker(), price, budget, scorer, trials=2, progress=False).run()
    assert scorer.calls == 2 and len(outcome.trials) == 2  # without it, each name is scored once, as a trial


def test_same_subnet_repeats_are_free_up_to_the_trials_and_resume_counts_them(tmp_path):
    space, budget, price = setting("0.4flops")
    first = make_agent("uniform", space, budget, price=price).ask(0)
    width = next(d for d in space.widths if first[d.name] != d.smallest)
    names = [first.replace(**{width.name: v}) for v in width.choices if v <= first[width.name]]

    class Renamer:  # asks one subnet under ever other names, cycling
        name = "renamer"

        def ask(self, ticket):
            return names[ticket % len(names)]

        def tell(self, ticket, r):
            pass

        def restore(self, events):
            return {}

    one = lambda c: first  # noqa: E731  every name is the one subnet
    scorer = CountingScorer(space)
    outcome = Engine(Renamer(), price, budget, scorer, trials=3, progress=False, canonical=one).run()
    assert scorer.calls == 1 and len(outcome.trials) == 6  # 3 trials and at most 3 free repeats, never a loop
    journal = Journal(tmp_path / "j.jsonl")
    Engine(Renamer(), price, budget, CountingScorer(space), trials=3, progress=False, canonical=one,
           journal=journal).run()
    stopped = journal.read()[:4]  # 1 scored + 3 free: the budget left is 2 trials
    resumed = Engine(Renamer(), price, budget, CountingScorer(space), trials=3, progress=False, canonical=one)
    resumed.replay(stopped)
    assert len(resumed.run().trials) == 6


class OutOfOrderExecutor:
    """Three slots; finishes the most recent submission first; can be 'killed' at its n-th wait."""

    slots = 3

    def __init__(self, scorer, kill_at=None):
        self.scorer, self.kill_at, self.waits, self.queue = scorer, kill_at, 0, []

    def submit(self, ticket, candidate):
        self.queue.append((ticket, candidate))

    def wait(self):
        self.waits += 1
        if self.waits == self.kill_at:
            raise KeyboardInterrupt
        ticket, candidate = self.queue.pop()
        return [(ticket, Estimate(self.scorer.score(candidate)))]


@pytest.mark.parametrize("agent", ["random", "abc", "tpe"])
def test_parallel_resume_replays_the_interleaving_exactly(tmp_path, agent):
    space, budget, price = setting("0.4flops")

    def engine_for(directory, executor):
        a = make_agent(agent, space, budget, price=price, seed=0, trials=16)
        return Engine(a, price, budget, executor, trials=16, journal=Journal(directory / "j.jsonl"), progress=False)

    (tmp_path / "whole").mkdir()
    (tmp_path / "parts").mkdir()
    whole = engine_for(tmp_path / "whole", OutOfOrderExecutor(CountingScorer(space))).run()
    first_scorer = CountingScorer(space)
    broken = engine_for(tmp_path / "parts", OutOfOrderExecutor(first_scorer, kill_at=7)).run()
    assert broken.interrupted and len(broken.trials) < 16
    second_scorer = CountingScorer(space)
    resumed = engine_for(tmp_path / "parts", OutOfOrderExecutor(second_scorer))
    resumed.replay(Journal(tmp_path / "parts" / "j.jsonl").read())
    outcome = resumed.run()
    key = lambda t: t.number  # noqa: E731
    assert [(t.number, t.candidate, t.result.score) for t in sorted(outcome.trials, key=key)] == \
        [(t.number, t.candidate, t.result.score) for t in sorted(whole.trials, key=key)]
    numbers = [t.number for t in outcome.trials]
    assert len(numbers) == len(set(numbers)) == 16  # every candidate exactly once in the journal
    assert len(Journal(tmp_path / "parts" / "j.jsonl").read()) == 16


def test_an_agent_that_waits_for_its_phase_warns_when_workers_would_idle():
    space, budget, price = setting("0.4flops")
    abc = make_agent("abc", space, budget, price=price, seed=0, trials=100)
    evolution = make_agent("evolution", space, budget, price=price, seed=0, trials=100)
    assert (abc.batch, evolution.batch) == (5, 25)
    assert make_agent("random", space, budget, price=price, seed=0, trials=100).batch is None
    # abc really holds back: with 8 slots open it offers one phase, 5 candidates, then waits
    asked = [abc.ask(t) for t in range(8)]
    assert sum(c is not None for c in asked) == 5
    assert idle_workers("abc", abc.batch, 8) == (
        "abc proposes at most 5 candidates at a time (it waits for all of their results before planning the next): "
        "3 of the 8 workers will wait idle; --food-sources 8 keeps them all busy")
    assert "--population 32 keeps them all busy" in idle_workers("evolution", evolution.batch, 32)
    assert idle_workers("abc", 5, 5) is None and idle_workers("abc", 5, 0) is None
    assert idle_workers("random", None, 64) is None
