"""The ABC agent's own rules: generation barrier, greedy selection, scouts, budget-aware fresh sources."""
from __future__ import annotations

import itertools

from agents import make_agent
from conftest import setting
from spaces.records import Result, TrialState


TICKETS = itertools.count()  # fresh tickets for asks whose results are told before the next ones


def colony(**options):
    space, budget, price = setting("0.4flops")
    return make_agent("abc", space, budget, price=price, seed=0, **options), space, budget, price


def test_a_phase_waits_for_its_results():
    agent, space, budget, price = colony(food_sources=4)
    first = [agent.ask(t) for t in range(4)]
    assert all(c is not None for c in first) and agent.ask(4) is None
    for i, c in enumerate(first):
        agent.tell(i, Result(TrialState.COMPLETE, 0.1 * i, price(c)))
    assert agent.ask(4) is not None and agent.phase == "employed"


def test_fresh_sources_use_most_of_the_budget():
    agent, space, budget, price = colony(food_sources=6)
    for ticket in range(6):
        c = agent.ask(ticket)
        assert budget.feasible(price(c))
        assert price(c)["flops"] >= 0.8 * budget.caps["flops"]  # grown until the budget binds


def test_greedy_selection_and_scouts():
    agent, space, budget, price = colony(food_sources=3, limit=2)

    def run_phase(score):
        asked = []
        while (c := agent.ask(ticket := next(TICKETS))) is not None:
            asked.append((ticket, c))
        for ticket, c in asked:
            agent.tell(ticket, Result(TrialState.COMPLETE, score(c), price(c)))
        return [c for _, c in asked]

    run_phase(lambda c: 0.5)                  # init: every source scores 0.5
    sources = [list(s) for s in agent.sources]
    run_phase(lambda c: 0.4)                  # employed: every move is worse
    assert agent.sources == sources and agent.counters == [1, 1, 1]
    run_phase(lambda c: 0.4)                  # onlookers: still worse, some counters reach the limit
    tired = [i for i, n in enumerate(agent.counters) if n >= 2]
    assert tired
    scouts = run_phase(lambda c: 0.3)         # scouts replace the tired sources, whatever they score
    assert len(scouts) == len(tired) and all(agent.counters[i] == 0 for i in tired)
    moves = run_phase(lambda c: 0.9)          # employed: every move is better and is kept
    assert [list(s) for s in agent.sources] == [space.encode(c) for c in moves]


def test_failed_moves_never_replace_a_source():
    agent, space, budget, price = colony(food_sources=3)
    init = [agent.ask(t) for t in range(3)]
    for t, c in enumerate(init):
        agent.tell(t, Result(TrialState.COMPLETE, 0.5, price(c)))
    moves = []
    while (c := agent.ask(ticket := next(TICKETS))) is not None:
        moves.append((ticket, c))
    for ticket, c in moves:
        agent.tell(ticket, Result(TrialState.FAILED, None, price(c), message="boom"))
    assert agent.ask(next(TICKETS)) is not None
    assert agent.scores == [0.5, 0.5, 0.5]


def test_moves_planned_for_one_phase_are_distinct():
    # onlookers may pick one source many times; one gene moved at a time makes repeats likely
    agent, space, budget, price = colony(food_sources=2, genes=1)
    first = [agent.ask(t) for t in range(2)]
    for i, c in enumerate(first):
        agent.tell(i, Result(TrialState.COMPLETE, 0.1 * i, price(c)))
    planned = [tuple(g) for _, g in agent._moves([0] * 12)]
    assert len(set(planned)) == len(planned)


def test_moves_stay_local_and_keep_using_the_budget():
    # a move's over-budget part is paid by narrowing other widths a step at a time, and budget it frees is
    # given to other widths: shrinking every width by one common ratio (rounded down to the grid) instead
    # cost a move at the budget about a quarter of it and changed most genes
    space, budget, price = setting("0.25flops+0.5params")
    agent = make_agent("abc", space, budget, price=price, seed=0, food_sources=6)
    cap = budget.caps["flops"]
    first = []
    while (c := agent.ask(len(first))) is not None:
        first.append(c)
    for i, c in enumerate(first):
        agent.tell(i, Result(TrialState.COMPLETE, 0.1 * i, price(c)))
    moves = []
    while (c := agent.ask(len(first) + len(moves))) is not None:
        moves.append(c)
    for (i, _), c in zip(agent.asked.values(), moves):
        assert budget.feasible(price(c))
        assert price(c)["flops"] >= 0.9 * cap
        source = agent.sources[i]
        assert sum(a != b for a, b in zip(space.encode(c), source)) <= len(space) // 2


def test_a_small_trial_budget_shrinks_the_colony_to_about_ten_cycles():
    space, budget, price = setting("0.4flops")

    def sources(trials, **options):
        agent = make_agent("abc", space, budget, price=price, seed=0, trials=trials, **options)
        first = list(itertools.takewhile(lambda c: c is not None, (agent.ask(t) for t in range(50))))
        return agent.food_sources, len(first)

    assert sources(100) == (5, 5)           # 10 sources would see 4.5 cycles of 100 trials
    assert sources(40) == (4, 4)            # never fewer than 4
    assert sources(200) == (10, 10) and sources(None) == (10, 10)   # enough trials: as asked
    assert sources(100, food_sources=10) == (10, 10)                 # a colony asked for stays as asked


def test_results_told_out_of_order_select_as_in_order():
    """Parallel workers finish in any order: the colony must not depend on it (it lost sources, and a resumed
    run, whose replay tells in ticket order, proposed other moves than the run it resumed)."""
    def colony_after(order):
        agent, space, budget, price = colony(food_sources=4)
        asked = {t: agent.ask(t) for t in range(4)}
        for t in order:
            agent.tell(t, Result(TrialState.COMPLETE, 0.1 * (t + 1), price(asked[t])))
        return agent, [space.encode(asked[t]) for t in range(4)], [agent.ask(t) for t in range(4, 8)]

    in_order, asked, moves = colony_after([0, 1, 2, 3])
    reversed_, _, moves_reversed = colony_after([3, 1, 2, 0])
    assert in_order.sources == reversed_.sources == asked      # every source kept, at its own index
    assert in_order.scores == reversed_.scores == [0.1 * (t + 1) for t in range(4)]
    assert moves == moves_reversed
