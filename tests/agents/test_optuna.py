"""TPE and NSGA-II through ask-and-tell: over-budget trials never reach the engine; studies resume."""
from __future__ import annotations

import optuna
import pytest

from agents import make_agent
from conftest import fake_score, setting
from spaces.records import Result, TrialState


def test_over_budget_trials_are_told_to_optuna_not_asked_of_the_engine():
    space, budget, price = setting("0.25flops+0.5params")
    agent = make_agent("tpe", space, budget, price=price, seed=0, trials=30)
    for ticket in range(30):
        c = agent.ask(ticket)
        assert budget.feasible(price(c))
        agent.tell(ticket, Result(TrialState.COMPLETE, fake_score(space, c), price(c)))
    trials = agent.study.trials
    assert len(trials) > 30  # the extra ones were infeasible and cost no evaluation
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == len(trials)


def test_nsga2_optimizes_score_and_flops():
    space, budget, price = setting("0.4flops")
    agent = make_agent("nsga2", space, budget, price=price, seed=0, trials=20, population=6)
    for ticket in range(20):
        c = agent.ask(ticket)
        agent.tell(ticket, Result(TrialState.COMPLETE, fake_score(space, c), price(c)))
    assert agent.study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert agent.study.best_trials


def test_a_stored_study_continues_where_it_stopped(tmp_path):
    space, budget, price = setting("0.4flops")
    url = f"sqlite:///{tmp_path / 'study.db'}"

    def run(agent, n, start=0):
        out = []
        for ticket in range(start, start + n):
            c = agent.ask(ticket)
            out.append(c)
            agent.tell(ticket, Result(TrialState.COMPLETE, fake_score(space, c), price(c)))
        return out

    first = make_agent("tpe", space, budget, price=price, seed=0, trials=20, storage=url, study_name="s")
    history = run(first, 12)
    again = make_agent("tpe", space, budget, price=price, seed=0, trials=20, storage=url, study_name="s")
    again.restore([("ask", t, c) for t, c in enumerate(history)])  # the stored study holds them: nothing replayed
    assert len(again.study.trials) == len(first.study.trials)
    run(again, 3, start=12)
    journal = tmp_path / "study.log"
    logged = make_agent("tpe", space, budget, price=price, seed=0, storage=str(journal))
    run(logged, 2)
    assert journal.exists() and journal.stat().st_size > 0


def test_when_optuna_keeps_missing_the_budget_a_repaired_candidate_is_enqueued(monkeypatch):
    from agents import _optuna

    monkeypatch.setattr(_optuna, "_MAX_INFEASIBLE_ASKS", 1)
    space, budget, price = setting("0.25flops+0.5params")
    agent = make_agent("tpe", space, budget, price=price, seed=0, trials=10)
    repaired = []
    real_repair = agent.repair
    agent.repair = lambda c: repaired.append(real_repair(c)) or repaired[-1]
    asked = []
    for ticket in range(12):
        c = agent.ask(ticket)
        assert budget.feasible(price(c)) and space.validate(c)
        asked.append(c)
        agent.tell(ticket, Result(TrialState.COMPLETE, fake_score(space, c), price(c)))
    assert repaired, "no ask missed the budget: the fallback was not exercised"
    assert all(r in asked for r in repaired)  # Optuna evaluated exactly the repaired candidates it was handed


def drive_tpe(trials: int, **options):
    space, budget, price = setting("0.4flops")
    agent = make_agent("tpe", space, budget, price=price, seed=0, trials=trials, **options)
    for ticket in range(trials):
        c = agent.ask(ticket)
        agent.tell(ticket, Result(TrialState.COMPLETE, fake_score(space, c), price(c)))
    return agent


def test_tpe_models_every_dimension_jointly_after_its_startup_trials():
    agent = drive_tpe(12, startup_trials=10)
    sampler = agent.study.sampler
    # the fixed search space is exactly what Optuna would infer from the trials
    assert sampler.infer_relative_search_space(agent.study, agent.study.trials[-1]) == \
        optuna.search_space.intersection_search_space(agent.study.trials)
    independent = []
    sampler.sample_independent = lambda *a, **k: independent.append(a[2]) or 0
    space, budget, price = setting("0.4flops")
    for ticket in range(12, 15):
        c = agent.ask(ticket)
        agent.tell(ticket, Result(TrialState.COMPLETE, fake_score(space, c), price(c)))
    assert independent == []  # no dimension fell back to independent (random) sampling


def test_tpe_sees_its_recent_and_best_trials_only():
    from agents._optuna import BEST_KEPT

    agent = drive_tpe(BEST_KEPT + 30, history=20, startup_trials=10)
    study = agent.study
    trials = study.trials
    bounded = study.sampler._view(study)
    assert bounded is not study
    view = bounded._get_trials(deepcopy=False)
    complete_old = [t for t in trials[:-20] if t.state == optuna.trial.TrialState.COMPLETE]
    best_old = sorted(complete_old, key=lambda t: -t.value)[:BEST_KEPT]
    assert [t.number for t in view] == sorted({t.number for t in best_old} | {t.number for t in trials[-20:]})
    unbounded = drive_tpe(40, history=0, startup_trials=10)
    assert unbounded.study.sampler._view(unbounded.study) is unbounded.study


def test_the_bounded_view_kept_up_to_date_is_the_view_of_a_full_scan():
    """With 4 trials outstanding (finishing out of order relative to the window), at every few trials
    the view equals the recent window plus the best older finished trials plus the older running ones,
    and the remembered internal form of each viewed trial is what Optuna itself converts."""
    import heapq

    import numpy as np

    from agents._optuna import _REPR_TAKES_STUDY, BEST_KEPT

    space, budget, price = setting("0.25flops+0.5params")
    agent = make_agent("tpe", space, budget, price=price, seed=0, trials=120, history=15, startup_trials=10)
    study, sampler, pending, checked, asked = agent.study, agent.study.sampler, [], 0, 0
    for told in range(120):
        while len(pending) < 4:
            pending.append((asked, agent.ask(asked)))
            asked += 1
        ticket, c = pending.pop(1 if told % 3 else 0)  # not always the oldest: some older trials stay running
        agent.tell(ticket, Result(TrialState.COMPLETE, fake_score(space, c), price(c)))
        bounded = sampler._view(study)
        if bounded is study:
            continue
        trials = study.trials
        old = trials[:-15]
        finished = [t for t in old if t.state == optuna.trial.TrialState.COMPLETE]
        kept = {t.number for t in heapq.nlargest(BEST_KEPT, finished, key=lambda t: t.value)}
        kept |= {t.number for t in old if t.state == optuna.trial.TrialState.RUNNING}
        view = bounded._get_trials(deepcopy=False)
        assert [t.number for t in view] == sorted(kept) + [t.number for t in trials[-15:]]
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
        seen = bounded._get_trials(deepcopy=False, states=states)
        ours = sampler._get_internal_repr(seen, sampler._space, bounded)
        optunas = optuna.samplers.TPESampler._get_internal_repr(sampler, seen, sampler._space,
                                                                *([bounded] if _REPR_TAKES_STUDY else []))
        assert ours.keys() == optunas.keys()
        assert all(ours[k].dtype == optunas[k].dtype and np.array_equal(ours[k], optunas[k]) for k in ours)
        checked += 1
    assert checked > 50 and len(study.trials) - 15 > 2 * BEST_KEPT  # older trials than the heap keeps: it replaced


def test_bad_history_or_ei_candidates_raise():
    import pytest

    space, budget, price = setting("0.4flops")
    for options in ({"history": -1}, {"history": 2.5}, {"history": True}, {"ei_candidates": 0},
                    {"ei_candidates": 1.5}):
        with pytest.raises(ValueError):
            make_agent("tpe", space, budget, price=price, **options)
    assert make_agent("tpe", space, budget, price=price, ei_candidates=8).study.sampler._n_ei_candidates == 8


def test_a_bounded_tpe_resumes_exactly_by_replay_and_by_state_dict():
    """Past the point where the view is bounded (history 10 + the 50 best), with 3 trials outstanding:
    a fresh agent replaying the events, and one loaded from a state_dict, continue as the original."""
    space, budget, price = setting("0.4flops")

    def fresh():
        return make_agent("tpe", space, budget, price=price, seed=0, trials=95, history=10, startup_trials=10)

    def drive(agent, pending, tells, first_ticket, events=None):
        asked = []
        for _ in range(tells):
            while len(pending) < 3:
                ticket = first_ticket + len(asked)
                c = agent.ask(ticket)
                pending.append((ticket, c))
                asked.append(c)
                if events is not None:
                    events.append(("ask", ticket, c))
            ticket, c = pending.pop(0)
            result = Result(TrialState.COMPLETE, fake_score(space, c), price(c))
            agent.tell(ticket, result)
            if events is not None:
                events.append(("tell", ticket, result))
        return asked

    original, pending, events = fresh(), [], []
    asked = len(drive(original, pending, 70, 0, events))
    assert original.study.sampler._view(original.study) is not original.study  # the view is bounded by now
    replayed, loaded = fresh(), fresh()
    assert list(replayed.restore(events).items()) == pending
    loaded.load_state_dict(original.state_dict())
    after = [drive(agent, list(pending), 15, asked) for agent in (original, replayed, loaded)]
    assert after[0] == after[1] == after[2] and len(after[0]) == 15


@pytest.mark.parametrize("name, options, startup", [("tpe", {"startup_trials": 8}, 8), ("nsga2", {"population": 6}, 6)])
def test_startup_trials_are_feasible_random_draws_that_reach_the_engine(name, options, startup):
    # at a tight budget Optuna's own random draws are nearly all over it: they would use up the startup
    # (told as infeasible, never evaluated) and leave the engine the warm start alone
    space, budget, price = setting("0.25flops+0.5params")
    warm = space.full()
    agent = make_agent(name, space, budget, price=price, seed=0, trials=30, initial=[warm], **options)
    asked = []
    for ticket in range(startup):
        c = agent.ask(ticket)
        asked.append(c)
        agent.tell(ticket, Result(TrialState.COMPLETE, fake_score(space, c), price(c)))
    assert len(agent.study.trials) == startup  # not one draw was wasted on an over-budget candidate
    assert asked[0] == agent.initial[0] and len(set(asked)) == startup
    assert all(budget.feasible(price(c)) for c in asked)
    again = make_agent(name, space, budget, price=price, seed=0, trials=30, initial=[warm], **options)
    assert [again.ask(t) for t in range(startup)] == asked  # seeded
