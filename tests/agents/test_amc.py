"""The AMC agent's own rules: the walk, the action wall, rewards, options, checkpoints, replay, learning."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agents import make_agent
from conftest import fake_score, setting
from spaces.records import Result, TrialState
from spaces.space import KEEP


def amc(budget_name: str = "0.4flops", *, seed: int = 0, **options):
    space, budget, price = setting(budget_name)
    return make_agent("amc", space, budget, price=price, seed=seed, **options), space, budget, price


def complete(space, price, candidate, score=None) -> Result:
    return Result(TrialState.COMPLETE, fake_score(space, candidate) if score is None else score, price(candidate))


def run(agent, space, price, episodes: int, score=None) -> list:
    asked = []
    for _ in range(episodes):
        ticket = agent.asked  # the agent's own count of episodes: a fresh ticket
        candidate = agent.ask(ticket)
        asked.append(candidate)
        agent.tell(ticket, complete(space, price, candidate, None if score is None else score(candidate)))
    return asked


@pytest.mark.parametrize("budget_name", ["0.4flops", "0.25flops+0.5params"])
def test_every_episode_is_within_budget_during_and_after_warmup(budget_name):
    agent, space, budget, price = amc(budget_name, warmup=10)
    asked = run(agent, space, price, 40)
    assert agent.told == 40 and agent.stored == 40 * len(space)
    for candidate in asked:
        space.validate(candidate)
        assert budget.feasible(price(candidate))
    # the wall lets the budget bind: episodes use a good part of it
    flops = [price(c)["flops"] / budget.caps["flops"] for c in asked]
    assert max(flops) > 0.8


def test_the_walk_covers_every_dimension_in_order():
    agent, space, budget, price = amc(warmup=2)
    walked = []
    wall = agent._wall
    agent._wall = lambda t, action, decided, **kw: (walked.append((t, len(decided))), wall(t, action, decided, **kw))[1]
    candidate = agent.ask(0)
    n = len(space)
    assert walked == [(t, t) for t in range(n)]
    (_, states, actions), = agent.outstanding.values()
    assert len(states) == len(actions) == n
    index = [s[0] for s in states]
    assert index == sorted(index) and index[0] == 0.0 and index[-1] == 1.0
    assert [s[1] for s in states] == [float(d.kind != KEEP) for d in space]
    assert states[0][-3] == pytest.approx(0.0) and states[0][-1] == 1.0  # nothing reduced yet, no previous action
    assert all(0.0 <= x <= 1.0 + 1e-9 for s in states for x in s)
    assert [s[-1] for s in states[1:]] == actions[:-1]  # the previous (capped) action is part of the state
    for d, a in zip(space, actions):  # every value is nearest to its capped action (keep: a >= 0.5 keeps)
        assert candidate[d.name] == (int(a >= 0.5) if d.kind == KEEP else d.nearest(a))


def test_state_dict_round_trip_continues_identically():
    a, space, budget, price = amc(seed=1, warmup=3)
    run(a, space, price, 5)  # past warm-up: the networks have been trained
    outstanding = a.ask(5)
    b, *_ = amc(seed=99, warmup=50)
    b.load_state_dict(a.state_dict())
    for agent in (a, b):
        agent.tell(5, complete(space, price, outstanding))
    nxt_a, nxt_b = [a.ask(t) for t in range(6, 9)], [b.ask(t) for t in range(6, 9)]
    assert nxt_a == nxt_b
    for agent, asked in ((a, nxt_a), (b, nxt_b)):
        for t, c in enumerate(asked, 6):
            agent.tell(t, complete(space, price, c))
    assert run(a, space, price, 3) == run(b, space, price, 3)
    for key in ("actor", "critic_target"):
        for p, q in zip(a.state_dict()[key].values(), b.state_dict()[key].values()):
            assert torch.equal(p, q)


def test_replaying_the_history_reproduces_the_agent():
    a, space, budget, price = amc(seed=2, warmup=3)
    events = []
    for ticket, candidate in enumerate(run(a, space, price, 5)):
        events += [("ask", ticket, candidate), ("tell", ticket, complete(space, price, candidate))]
    in_flight = a.ask(5)
    events.append(("ask", 5, in_flight))
    b, *_ = amc(seed=2, warmup=3)
    assert b.restore(events) == {5: in_flight}
    for agent in (a, b):
        agent.tell(5, complete(space, price, in_flight))
    assert run(a, space, price, 3) == run(b, space, price, 3)


def test_several_episodes_may_be_outstanding():
    agent, space, budget, price = amc(warmup=2)
    first, second, third = agent.ask(0), agent.ask(1), agent.ask(2)
    assert len(agent.outstanding) == 3
    agent.tell(2, complete(space, price, third, 0.3))
    agent.tell(0, complete(space, price, first, 0.1))
    assert [e[0] for e in agent.outstanding.values()] == [second]
    agent.tell(99, complete(space, price, space.full()))  # not ours: ignored
    agent.tell(1, complete(space, price, second, 0.2))
    assert agent.told == 3 and not agent.outstanding
    n = len(space)
    assert agent.buffer["rewards"][:3 * n, 0].tolist() == pytest.approx([0.3] * n + [0.1] * n + [0.2] * n)


def test_rewards_error_log_flops_failed_and_infeasible():
    agent, space, budget, price = amc(warmup=10, reward="error_log_flops")
    n = len(space)
    c = agent.ask(0)
    agent.tell(0, complete(space, price, c, 0.9))
    expected = -(1 - 0.9) * math.log(price(c)["flops"])
    assert agent.buffer["rewards"][:n, 0].tolist() == pytest.approx([expected] * n, rel=1e-5)
    c = agent.ask(1)
    agent.tell(1, Result(TrialState.FAILED, None, price(c), message="boom"))
    c = agent.ask(2)
    agent.tell(2, Result(TrialState.INFEASIBLE, None, price(c)))
    assert agent.buffer["rewards"][n:3 * n, 0].tolist() == [0.0] * n + [-1.0] * n
    run(agent, space, price, 12)  # learning with these rewards runs
    assert agent.told == 15


@pytest.mark.parametrize("options", [{"warmup": -1}, {"warmup": 2.5}, {"warmup": True}, {"reward": "accuracy"}])
def test_bad_options_raise(options):
    with pytest.raises(ValueError):
        amc(**options)


def test_default_warmup_scales_with_the_trial_budget():
    assert amc()[0].warmup == 100
    assert amc(trials=1000)[0].warmup == 100
    assert amc(trials=40)[0].warmup == 10
    assert amc(trials=8)[0].warmup == 5
    assert amc(trials=8, warmup=0)[0].warmup == 0


def test_no_global_random_state_is_used():
    torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    agent, space, budget, price = amc(warmup=2)
    run(agent, space, price, 4)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert (np.random.get_state()[1] == np_state).all()


def preference(space, candidate) -> float:
    """A reward for one structure: wide early channel groups, narrow late ones (weights +1 .. -1)."""
    widths = space.widths
    weights = np.linspace(1.0, -1.0, len(widths))
    return float(np.mean([w * d.ratio(candidate[d.name]) for w, d in zip(weights, widths)]))


def test_it_learns_the_preferred_structure():
    # 20 episodes of random actions, then 100 of DDPG: the policy's last 20 episodes must be clearly
    # better than the random ones (a random episode scores about 0.0 +- 0.05, a 20-episode mean
    # +- 0.011; the best structures under the budget about 0.25). Seeds 0 to 9 all pass, by 0.19 or more.
    agent, space, budget, price = amc(seed=0, warmup=20)
    asked = run(agent, space, price, 120, score=lambda c: preference(space, c))
    rewards = np.array([preference(space, c) for c in asked])
    assert all(budget.feasible(price(c)) for c in asked)
    assert rewards[-20:].mean() > rewards[:20].mean() + 0.1


def test_skipping_the_wall_where_the_budget_cannot_bind_changes_no_episode():
    a, space, budget, price = amc(seed=3, warmup=4)
    b, *_ = amc(seed=3, warmup=4)
    wall = b._wall
    b._wall = lambda t, action, decided, free=False: wall(t, action, decided)  # always scan the choices
    assert run(a, space, price, 8) == run(b, space, price, 8)
    assert a.asked == 8


def test_looking_for_the_wall_from_the_actions_own_choice_down_changes_no_episode():
    """Costs grow with widths: starting below the choices above the action finds the same cap as
    scanning every choice from the top, during warm-up and after it."""
    a, space, budget, price = amc("0.25flops+0.5params", seed=5, warmup=6)
    b, *_ = amc("0.25flops+0.5params", seed=5, warmup=6)
    fits, wall, binding = b._fits, b._wall, []

    def from_the_top(t, action, decided, free=False):
        d = space.dimensions[t]
        if d.kind == KEEP or free:
            return wall(t, action, decided, free)
        rest = b._cheapest[t + 1:]
        top = next((c for c in reversed(d.choices) if fits(decided + (c,) + rest)), d.smallest)
        capped = min(max(action, d.ratio(d.smallest)), d.ratio(top))
        binding.append(capped < action)
        return min(d.nearest(capped), top), capped

    asked = run(a, space, price, 14)
    b._wall = from_the_top
    assert run(b, space, price, 14) == asked
    assert torch.equal(a.buffer["actions"], b.buffer["actions"])
    assert any(binding) and not all(binding)  # the walls bound in some steps, not in all


@pytest.mark.parametrize("updates", [None, 1, 3])
def test_updates_per_told_episode(updates):
    agent, space, budget, price = amc(warmup=0, updates=updates)
    calls = []
    update = agent._update
    agent._update = lambda actor=True: (calls.append(actor), update(actor))[1]
    run(agent, space, price, 2)
    assert len(calls) == 2 * (len(space) if updates is None else updates)


@pytest.mark.parametrize("updates", [0, -1, 2.5, True])
def test_bad_updates_raise(updates):
    with pytest.raises(ValueError):
        amc(updates=updates)


def test_outstanding_episodes_stay_distinct_once_the_noise_has_decayed():
    agent, space, budget, price = amc(seed=4, warmup=3)
    run(agent, space, price, 5)
    agent.sigma = 1e-9  # as after a few hundred episodes: the policy alone decides
    asked = [agent.ask(t) for t in range(5, 13)]
    assert len(set(asked)) == 8
    assert all(budget.feasible(price(c)) for c in asked)


def test_no_candidate_is_proposed_twice_once_the_noise_has_decayed():
    # a repeat spends a trial on a known result: at 150 trials on ResNet-20, 39 of 150 were repeats
    agent, space, budget, price = amc(seed=4, warmup=3)
    told = run(agent, space, price, 5)
    agent.sigma = 1e-9  # as after a few hundred episodes: the policy alone decides
    asked = []
    for ticket in range(5, 13):
        c = agent.ask(ticket)
        asked.append(c)
        agent.tell(ticket, complete(space, price, c))
    assert len(set(asked)) == 8 and not set(asked) & set(told)
