"""The evolution agent's own rules: generation barrier, no repeats, within budget, parents, resumable."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from agents import make_agent
from conftest import fake_score, setting
from spaces.budget import Budget, Limit
from spaces.records import Result, TrialState
from spaces.space import KEEP, WIDTH, Dimension, SearchSpace

SMALL = dict(population=8, parents=3, mutations=3, crossovers=3)
TICKETS = itertools.count(1000)  # fresh tickets for asks whose results are told before the next ones


def evolution(budget_name="0.4flops", seed=0, trials=None, **options):
    space, budget, price = setting(budget_name)
    agent = make_agent("evolution", space, budget, price=price, seed=seed, trials=trials, **(options or SMALL))
    return agent, space, budget, price


def generation(agent, score, price):
    """Ask until the barrier, then tell every result; returns the generation's candidates."""
    asked = []
    while (c := agent.ask(ticket := next(TICKETS))) is not None:
        asked.append((ticket, c))
    for ticket, c in asked:
        s = score(c)
        agent.tell(ticket, Result(TrialState.FAILED, None, price(c), message="boom") if s is None
                   else Result(TrialState.COMPLETE, s, price(c)))
    return [c for _, c in asked]


def test_a_generation_waits_for_its_results():
    agent, space, budget, price = evolution()
    first = [agent.ask(t) for t in range(8)]
    assert all(c is not None for c in first) and agent.ask(8) is None and agent.generation == 0
    for t, c in enumerate(first[:-1]):
        agent.tell(t, Result(TrialState.COMPLETE, fake_score(space, c), price(c)))
    assert agent.ask(8) is None  # one result still missing
    agent.tell(7, Result(TrialState.COMPLETE, fake_score(space, first[-1]), price(first[-1])))
    assert agent.ask(8) is not None and agent.generation == 1


@pytest.mark.parametrize("budget_name", ["0.4flops", "0.25flops+0.5params"])
def test_never_repeats_and_stays_within_budget(budget_name):
    agent, space, budget, price = evolution(budget_name)
    seen = []
    for _ in range(8):
        asked = generation(agent, lambda c: fake_score(space, c), price)
        assert len(asked) == 8
        seen += asked
    assert len(set(seen)) == len(seen)
    assert all(budget.feasible(price(c)) for c in seen)


def test_exhausts_a_small_space_without_repeats_then_stops():
    space = SearchSpace([Dimension("a", WIDTH, 4, (1, 2, 3, 4)), Dimension("b", WIDTH, 3, (1, 2, 3)),
                         Dimension("keep", KEEP, 1, (0, 1))])
    price = lambda c: {"flops": float(c["a"] * c["b"] * (1 + c["keep"]))}  # noqa: E731
    budget = Budget([Limit("flops", 0.5, True)]).resolve({"flops": 24.0})  # at most 12
    feasible = {c for c in (space.decode([i, j, k]) for i in range(4) for j in range(3) for k in range(2))
                if budget.feasible(price(c))}
    agent = make_agent("evolution", space, budget, price=price, seed=0, **SMALL)
    seen = []
    for _ in range(20):
        asked = generation(agent, lambda c: float(sum(space.encode(c))), price)
        if not asked:
            break
        seen += asked
    assert agent.ask(next(TICKETS)) is None  # nothing outstanding and nothing new: the search ends
    assert len(seen) == len(set(seen)) and set(seen) == feasible


def test_parents_are_the_best_scored_and_failures_never_breed():
    agent, space, budget, price = evolution(population=8, parents=3, mutations=0, crossovers=5)
    scores, numbers = {}, np.random.default_rng(7)

    def score(c):  # every other candidate fails; the rest get arbitrary scores
        scores[c] = None if len(scores) % 2 else float(numbers.random())
        return scores[c]

    first = generation(agent, score, price)
    best = sorted((c for c in first if scores[c] is not None), key=lambda c: -scores[c])[:3]
    assert [space.decode(g) for g in agent.top()] == best
    ranked = agent.ranked()
    assert all(s is None for _, s in ranked[-4:]) and all(s is not None for _, s in ranked[:4])
    children = [agent.ask(next(TICKETS)) for _ in range(5)]  # the crossovers come first
    parents = [space.encode(c) for c in best]
    for child in children:
        genes = space.encode(child)
        # a gene-wise mix of two parents, some widths narrowed where the mix is over the budget
        assert any(all(g in (p[k], q[k]) or g < max(p[k], q[k]) for k, g in enumerate(genes))
                   for p in parents for q in parents if p is not q), "a crossover child of two parents"


def test_mutations_stay_close_to_a_parent():
    agent, space, budget, price = evolution(population=8, parents=2, mutations=6, crossovers=0, mutation_prob=0.1)
    generation(agent, lambda c: fake_score(space, c), price)
    parents = agent.top()
    for _ in range(6):
        genes = space.encode(agent.ask(next(TICKETS)))
        # a few mutated genes; widths narrowed to pay for widened ones (`trade`) are not mutations
        assert min(sum(a > b or (a != b and d.kind == KEEP) for a, b, d in zip(genes, p, space.dimensions))
                   for p in parents) <= 6


def test_state_dict_round_trip_mid_generation():
    agent, space, budget, price = evolution(seed=4)
    generation(agent, lambda c: fake_score(space, c), price)
    pending = [agent.ask(t) for t in range(3)]
    agent.tell(0, Result(TrialState.COMPLETE, 0.7, price(pending[0])))
    state = json.loads(json.dumps(agent.state_dict()))
    twin, _, _, _ = evolution(seed=99)
    twin.load_state_dict(state)
    assert twin.state_dict() == agent.state_dict()
    for a in (agent, twin):
        for t, c in enumerate(pending[1:], 1):
            a.tell(t, Result(TrialState.FAILED, None, price(c), message="boom"))
    assert generation(agent, lambda c: fake_score(space, c), price) == \
        generation(twin, lambda c: fake_score(space, c), price)
    assert twin.state_dict() == agent.state_dict()


def test_replay_reproduces_the_state():
    agent, space, budget, price = evolution(seed=2)
    events = []
    for step in range(30):  # interleaved asks and tells, some results told late, one generation in flight
        c = agent.ask(step)
        if c is None:
            for e in [e for e in events if e[0] == "ask" and not any(t[0] == "tell" and t[1] == e[1] for t in events)]:
                r = Result(TrialState.COMPLETE, fake_score(space, e[2]), price(e[2]))
                agent.tell(e[1], r)
                events.append(("tell", e[1], r))
            continue
        events.append(("ask", step, c))
        if step % 3 == 0:
            r = Result(TrialState.COMPLETE, fake_score(space, c), price(c))
            agent.tell(step, r)
            events.append(("tell", step, r))
    twin, _, _, _ = evolution(seed=2)
    outstanding = twin.restore(events)
    assert list(outstanding.items()) == [(t, space.decode(g)) for t, g in agent.outstanding.items()]
    assert twin.state_dict() == agent.state_dict()


def test_options_are_checked_and_the_population_shrinks_for_short_searches():
    space, budget, price = setting("0.4flops")
    for bad in ({"population": 1}, {"parents": 0}, {"parents": 60}, {"mutations": -1},
                {"mutations": 30, "crossovers": 30}, {"mutation_prob": 0.0}, {"mutation_prob": 1.5},
                {"parents": 1, "crossovers": 5}, {"population": 10.5}):
        with pytest.raises(ValueError):
            make_agent("evolution", space, budget, price=price, **bad)
    default = make_agent("evolution", space, budget, price=price)
    assert (default.population, default.parents, default.mutations, default.crossovers) == (50, 10, 25, 25)
    short = make_agent("evolution", space, budget, price=price, trials=40)
    assert (short.population, short.parents, short.mutations, short.crossovers) == (10, 2, 5, 5)
    long = make_agent("evolution", space, budget, price=price, trials=1000)
    assert long.population == 50
    # a population asked for is kept as asked, with its own proportions (as abc keeps food_sources)
    asked = make_agent("evolution", space, budget, price=price, trials=40, population=50)
    assert (asked.population, asked.parents, asked.mutations, asked.crossovers) == (50, 10, 25, 25)
    asked = make_agent("evolution", space, budget, price=price, trials=40, population=30, parents=4)
    assert (asked.population, asked.parents, asked.mutations, asked.crossovers) == (30, 4, 15, 15)


def test_at_a_tight_budget_children_keep_using_the_budget():
    # an over-budget child is fitted by narrowing other widths a step at a time: drawn again instead, only the
    # children that narrow a layer would survive; shrunk by one common ratio, most widths would lose a step
    agent, space, budget, price = evolution("0.25flops+0.5params", population=12, parents=3, mutations=9,
                                            crossovers=0, mutation_prob=0.3)
    cap = budget.caps["flops"]
    generation(agent, lambda c: price(c)["flops"] / cap, price)
    parents = [space.decode(g) for g in agent.top()]
    share = lambda cs: sum(price(c)["flops"] for c in cs) / len(cs) / cap  # noqa: E731
    children = []
    for _ in range(3):  # flat scores: the parents stay the best
        children += generation(agent, lambda c: 0.0, price)[:9]
    assert [space.decode(g) for g in agent.top()] == parents
    assert share(children) >= 0.85 * share(parents)  # rejecting over-budget children: 0.83 here
