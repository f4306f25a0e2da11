"""Budget grammar and feasibility."""
from __future__ import annotations

import pytest

from search.engine.budget import parse_budget, parse_limit
from search.errors import UserError


@pytest.mark.parametrize("text, metric, value, relative", [
    ("0.4flops", "flops", 0.4, True), ("0.5PARAMS", "params", 0.5, True), ("300mflops", "flops", 3e8, False),
    ("1.5gflops", "flops", 1.5e9, False), ("40kflops", "flops", 4e4, False), ("1.2m", "params", 1.2e6, False),
    ("300k", "params", 3e5, False), ("12ms", "latency", 12, False), ("0.5latency", "latency", 0.5, True),
    (".25flops", "flops", 0.25, True),
])
def test_grammar(text, metric, value, relative):
    limit = parse_limit(text)
    assert (limit.metric, limit.relative) == (metric, relative)
    assert limit.value == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "flops", "0.4", "0.4flop", "1.5flops", "-1m", "0flops", "abc"])
def test_bad_budgets_show_the_grammar(text):
    with pytest.raises(UserError, match="flops"):
        parse_limit(text)


def test_every_limit_must_hold():
    budget = parse_budget(["0.5flops", "0.6params"]).resolve({"flops": 100, "params": 10})
    assert budget.feasible({"flops": 50, "params": 6})
    assert not budget.feasible({"flops": 51, "params": 6})
    assert not budget.feasible({"flops": 50, "params": 6.5})
    assert budget.violations({"flops": 25, "params": 9}) == pytest.approx([-0.5, 0.5])
    assert budget.caps == {"flops": 50, "params": 6}
    with pytest.raises(UserError):
        parse_budget([])
