"""The agent-scaling benchmark's functions at tiny size: what they time and report."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import derived, setting

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "agent_scaling.py"
_spec = importlib.util.spec_from_file_location("agent_scaling", _PATH)
scaling = sys.modules.setdefault("agent_scaling", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(scaling)


@pytest.fixture(scope="module")
def tiny():
    space, budget, price = setting("0.4flops")
    return scaling.Setting("resnet20", space, budget, price)


@pytest.mark.parametrize("outstanding", [1, 8])
def test_measure_times_every_told_trial_and_tracks_the_best(tiny, outstanding):
    run = scaling.measure("random", tiny, trials=30, seed=0, outstanding=outstanding)
    assert len(run.seconds) == len(run.best) == 30
    assert all(s >= 0 for s in run.seconds) and sum(run.seconds) > 0
    assert run.best == sorted(run.best) and run.distinct and run.repeats == 0
    assert 0 < run.best[-1] <= 1
    assert run.window_ms() == {"1-100": None, "401-500": None, "last 100": None}  # too short for any window


def test_windows_average_their_trials():
    run = scaling.Measured(seconds=[0.001] * 100 + [0.002] * 400 + [0.004] * 100, best=[0.0] * 600, distinct=True,
                           repeats=0)
    assert run.window_ms() == pytest.approx({"1-100": 1.0, "401-500": 2.0, "last 100": 4.0})


def test_an_agent_with_nothing_more_to_propose_ends_the_loop(tiny):
    run = scaling.measure("uniform", tiny, trials=10, outstanding=8)
    assert len(run.seconds) == 1


def test_synthetic_score_rewards_width_and_is_one_at_full():
    space = setting("0.4flops")[0]
    assert scaling.synthetic_score(space, space.full()) == pytest.approx(1.0)
    assert 0 <= scaling.synthetic_score(space, space.smallest()) < scaling.synthetic_score(space, space.uniform(0.5))


def test_agent_specs_parse_options():
    assert scaling.parse_agent("tpe") == ("tpe", {})
    assert scaling.parse_agent("tpe:history=0,constant_liar=False,x=1.5,y=None") == \
        ("tpe", {"history": 0, "constant_liar": False, "x": 1.5, "y": None})


def test_setting_of_prices_a_derived_space_against_its_budget():
    import torch

    from search.models.cifar_resnet import resnet20

    torch.manual_seed(0)
    made = scaling.setting_of("resnet20", resnet20(), torch.randn(1, 3, 32, 32), budget=0.5)
    assert len(made.space) == len(derived("resnet20")[0].space)
    assert not made.budget.feasible(made.price(made.space.full()))
    assert made.budget.feasible(made.price(made.space.smallest()))
