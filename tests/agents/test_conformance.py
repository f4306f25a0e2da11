"""Conformance suite: every registered agent must pass it (valid, within budget, seeded, robust)."""
from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agents import list_agents, make_agent
from conftest import BUDGETS, fake_score, setting
from spaces.records import Result, TrialState
from spaces.space import Candidate

def drive(name: str, budget_name: str = "0.4flops", *, seed: int = 0, trials: int = 30, fail_every: int = 0,
          initial=()):
    """Run the ask/tell loop the way the engine does; returns the asked candidates."""
    space, budget, price = setting(budget_name)
    agent = make_agent(name, space, budget, price=price, seed=seed, trials=trials, initial=initial)
    asked, pending = [], []
    for step in range(trials * 3):
        if len(asked) >= trials:
            break
        ticket = len(asked)
        candidate = agent.ask(ticket)
        if candidate is None:
            if not pending:
                break  # nothing more to propose
            for t, c in pending:  # a generation barrier: finish the outstanding ones
                agent.tell(t, Result(TrialState.COMPLETE, fake_score(space, c), price(c)))
            pending.clear()
            continue
        asked.append(candidate)
        if fail_every and len(asked) % fail_every == 0:
            agent.tell(ticket, Result(TrialState.FAILED, None, price(candidate), message="boom"))
        else:
            agent.tell(ticket, Result(TrialState.COMPLETE, fake_score(space, candidate), price(candidate)))
    return asked


@pytest.mark.parametrize("name", list_agents())
@pytest.mark.parametrize("budget_name", list(BUDGETS))
def test_candidates_are_valid_and_within_budget(name, budget_name):
    space, budget, price = setting(budget_name)
    asked = drive(name, budget_name)
    assert asked, "the agent proposed nothing"
    for candidate in asked:
        space.validate(candidate)
        assert budget.feasible(price(candidate)), f"{name} proposed an over-budget candidate"


@pytest.mark.parametrize("name", list_agents())
def test_same_seed_same_run(name):
    assert drive(name, seed=3) == drive(name, seed=3)


@pytest.mark.parametrize("name", list_agents())
def test_survives_failed_results(name):
    asked = drive(name, fail_every=2)
    assert asked


@pytest.mark.parametrize("name", list_agents())
def test_state_dict_round_trip_continues_identically(name):
    space, budget, price = setting("0.4flops")
    a = make_agent(name, space, budget, price=price, seed=5, trials=20)
    first = a.ask(0)
    if first is not None:
        a.tell(0, Result(TrialState.COMPLETE, 0.5, price(first)))
    b = make_agent(name, space, budget, price=price, seed=99, trials=20)
    b.load_state_dict(a.state_dict())
    assert a.ask(1) == b.ask(1)


WARM_STARTED = ["random", "abc", "evolution", "metapruning", "tpe", "nsga2"]


def warm_start(budget_name: str = "0.4flops"):
    from conftest import derived
    from spaces.warm_start import magnitude_candidate

    space, budget, price = setting(budget_name)
    return magnitude_candidate(derived("resnet20")[0], lambda c: budget.feasible(price(c)))


@pytest.mark.parametrize("name", list_agents())
def test_warm_starts_are_asked_first_by_the_agents_that_use_them(name):
    start = warm_start()
    asked = drive(name, initial=[start])
    if name in WARM_STARTED:
        assert asked[0] == start and asked.count(start) == 1
    else:  # uniform is the reference and amc follows its policy: a warm start changes nothing
        assert asked == drive(name)
    assert drive(name, initial=[start], seed=4) == drive(name, initial=[start], seed=4)


@pytest.mark.parametrize("name", ["random", "tpe", "abc"])
def test_over_budget_warm_starts_are_repaired(name):
    space, budget, price = setting("0.25flops+0.5params")
    asked = drive(name, "0.25flops+0.5params", initial=[space.full()])
    assert budget.feasible(price(asked[0])) and asked[0] != space.full()


@pytest.mark.parametrize("name", WARM_STARTED)
def test_state_dict_round_trip_with_a_warm_start(name):
    space, budget, price = setting("0.4flops")
    start = warm_start()
    a = make_agent(name, space, budget, price=price, seed=5, trials=20, initial=[start])
    first = a.ask(0)
    a.tell(0, Result(TrialState.COMPLETE, 0.5, price(first)))
    b = make_agent(name, space, budget, price=price, seed=99, trials=20, initial=[start])
    b.load_state_dict(a.state_dict())
    assert a.ask(1) == b.ask(1)


def test_agents_import_no_torchvision_ray_or_evaluators():
    code = ("import sys, agents\n"
            "for name in agents.list_agents(): agents.agent_class(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'ray', 'evaluators')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "[]", out


def test_random_differs_across_seeds_and_uniform_is_the_largest_common_ratio():
    assert drive("random", seed=0) != drive("random", seed=1)
    space, budget, price = setting("0.4flops")
    (candidate,) = drive("uniform")
    ratios = {round(space[n].ratio(v), 6) for n, v in candidate.items() if space[n].kind == "width"}
    assert budget.feasible(price(candidate))
    bigger = space.uniform(max(ratios) + 0.1)
    assert not budget.feasible(price(bigger))


def test_unknown_agent_names_the_valid_ones():
    space, budget, price = setting("0.4flops")
    with pytest.raises(KeyError, match="random"):
        make_agent("nope", space, budget, price=price)


def drive_outstanding(name: str, *, outstanding: int = 8, trials: int = 40, seed: int = 0):
    """The engine's loop with `outstanding` workers: asks until that many are untold, then tells the oldest.

    Returns the agent and, per ask, the candidates outstanding at that moment (the new one last).
    """
    space, budget, price = setting("0.4flops")
    agent = make_agent(name, space, budget, price=price, seed=seed, trials=trials)
    pending, snapshots, told, asked = [], [], 0, 0
    while told < trials:
        while len(pending) < outstanding:
            candidate = agent.ask(asked)
            if candidate is None:
                break
            pending.append((asked, candidate))
            asked += 1
            snapshots.append([c for _, c in pending])
        if not pending:
            break
        ticket, candidate = pending.pop(0)
        agent.tell(ticket, Result(TrialState.COMPLETE, fake_score(space, candidate), price(candidate)))
        told += 1
    return agent, snapshots


@pytest.mark.parametrize("name", list_agents())
def test_proposals_with_eight_outstanding_are_distinct_and_within_budget(name):
    space, budget, price = setting("0.4flops")
    _, snapshots = drive_outstanding(name)
    assert snapshots
    if name != "uniform":
        assert max(len(s) for s in snapshots) > 1, "the agent never had two candidates out at once"
    for outstanding in snapshots:
        assert len(set(outstanding)) == len(outstanding), f"{name} proposed a candidate already outstanding"
        assert budget.feasible(price(outstanding[-1]))


def through_a_checkpoint(state: dict) -> dict:
    """What Ray Tune's checkpoint of a searcher does with an agent's state: torch.save, then a safe load."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


#: how a state travels: as it is, through a checkpoint (weights_only load), or the whole agent pickled (Ray does)
TRANSPORTS = ["state_dict", "checkpoint", "pickle"]


@pytest.mark.parametrize("how", TRANSPORTS)
@pytest.mark.parametrize("name", list_agents())
def test_state_dict_round_trip_mid_search_with_outstanding_candidates(name, how):
    # past every agent's warm-up (tpe's random startup trials, amc's random episodes), 3 untold
    space, budget, price = setting("0.4flops")
    options = {"warmup": 5} if name == "amc" else {"startup_trials": 10} if name == "tpe" else {}
    a = make_agent(name, space, budget, price=price, seed=5, trials=60, **options)
    pending = []
    for step in range(33):
        candidate = a.ask(step)
        if candidate is None:
            break
        pending.append((step, candidate))
        if step < 30:
            t, c = pending.pop(0)
            a.tell(t, Result(TrialState.COMPLETE, fake_score(space, c), price(c)))
    if how == "pickle":
        b = pickle.loads(pickle.dumps(a))
    else:
        b = make_agent(name, space, budget, price=price, seed=99, trials=60, **options)
        b.load_state_dict(a.state_dict() if how == "state_dict" else through_a_checkpoint(a.state_dict()))

    def go_on(agent) -> list:
        asked, out = [], list(pending)
        for ticket in range(33, 45):
            while out:
                t, c = out.pop(0)
                agent.tell(t, Result(TrialState.COMPLETE, fake_score(space, c), price(c)))
            c = agent.ask(ticket)
            asked.append(c)
            if c is not None:
                out.append((ticket, c))
        return asked

    assert go_on(a) == go_on(b)


@pytest.mark.parametrize("name", ["tpe", "nsga2"])
def test_optuna_agents_state_is_plain_json_data_with_no_pickled_study(name):
    # a pickled Optuna study broke when Optuna 5.1 gave NSGA-II a thread lock; the state must outlive releases
    space, budget, price = setting("0.4flops")
    a = make_agent(name, space, budget, price=price, seed=5, trials=30)
    for ticket in range(25):
        c = a.ask(ticket)
        a.tell(ticket, Result(TrialState.COMPLETE if len(a.study.trials) % 4 else TrialState.FAILED,
                              fake_score(space, c), price(c)))
    out = a.ask(25)  # one outstanding
    state = json.loads(json.dumps(a.state_dict()))
    assert b"optuna" not in pickle.dumps(state)
    b = make_agent(name, space, budget, price=price, seed=99, trials=30)
    b.load_state_dict(state)
    for agent in (a, b):
        agent.tell(25, Result(TrialState.COMPLETE, fake_score(space, out), price(out)))
    assert [a.ask(t) for t in range(26, 31)] == [b.ask(t) for t in range(26, 31)]
    assert b"optuna.study" not in pickle.dumps(a)  # the agent itself pickles as plain data too


def test_trade_fits_a_widened_candidate_by_narrowing_other_widths_a_step_at_a_time():
    space, budget, price = setting("0.25flops+0.5params")
    agent = make_agent("random", space, budget, price=price, seed=0)
    at_budget = agent.repair(space.full())
    wide = next(d for d in space.widths
                if not budget.feasible(price(Candidate({**at_budget, d.name: d.choices[-1]}))))
    widened = Candidate({**at_budget, wide.name: wide.choices[-1]})
    traded = agent.trade(widened, {wide.name})
    assert budget.feasible(price(traded)) and traded[wide.name] == wide.choices[-1]
    for d in space.dimensions:
        if d.name != wide.name:
            assert traded[d.name] <= at_budget[d.name]  # the others only narrow
    assert agent.trade(at_budget) == at_budget  # a feasible candidate is left alone
