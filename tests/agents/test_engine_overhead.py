"""The engine-overhead benchmark's functions at tiny size: a whole search timed, and by part per trial."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "engine_overhead.py"
_spec = importlib.util.spec_from_file_location("engine_overhead", _PATH)
overhead = sys.modules.setdefault("engine_overhead", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(overhead)


def test_a_local_search_is_timed_whole_and_by_part_per_trial():
    setting = overhead.default_setting("0.4flops")
    run = overhead.measure(setting, trials=6, agent="random", workers=0, progress=False)
    assert run.executor == "local" and run.trials == 6 and len(run.laps) == 6
    assert 0 < run.scoring <= run.wall and run.ratio >= 1.0  # scoring happens inside the search
    assert all(set(lap) == set(overhead.PARTS) for lap in run.laps)
    assert all(lap[p] > -1e-6 for lap in run.laps for p in overhead.PARTS)
    assert all(lap["agent"] > 0 and lap["journal"] > 0 for lap in run.laps)
    # the laps account for the whole search but the last trial's progress-bar update
    assert sum(sum(lap.values()) for lap in run.laps) + run.scoring == pytest.approx(run.wall, rel=0.05)
    assert run.part_ms("agent", 0, 3) == pytest.approx(1e3 * sum(lap["agent"] for lap in run.laps[:3]) / 3)


def test_an_instant_scorer_leaves_the_engines_own_work():
    setting = overhead.default_setting("0.4flops")
    run = overhead.measure(setting, trials=40, agent="random", workers=0, progress=False, instant=True)
    assert run.executor == "local, instant" and run.trials == len(run.laps) == 40
    assert overhead.Instant(setting).score(setting.prunable.space.full()) == pytest.approx(1.0)
    assert run.scoring < run.wall


def test_the_ratio_is_per_worker():
    run = overhead.Overhead("ray, 2 workers", 2, 10, wall=5.0, scoring=8.0, laps=[])
    assert run.ratio == pytest.approx(1.25)
