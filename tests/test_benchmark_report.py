"""The fair report's paired bootstrap interval (benchmarks/paired_bootstrap.py)."""
from __future__ import annotations

import math

from benchmarks.paired_bootstrap import bootstrap_interval, median_margin, paired_differences


def test_pairs_by_seed_and_ignores_unpaired_seeds():
    assert paired_differences({0: 0.9, 1: 0.8, 2: 0.7}, {1: 0.75, 0: 0.85}) == [0.9 - 0.85, 0.8 - 0.75]


def test_constant_margin_has_a_point_interval():
    margin, (low, high) = median_margin({s: 0.9 for s in range(5)}, {s: 0.88 for s in range(5)})
    assert math.isclose(margin, 0.02) and math.isclose(low, 0.02) and math.isclose(high, 0.02)


def test_interval_holds_the_median_and_is_seeded():
    differences = [-0.01, 0.0, 0.004, 0.01, 0.03]
    low, high = bootstrap_interval(differences, seed=3)
    assert low <= 0.004 <= high and low >= -0.01 and high <= 0.03
    assert bootstrap_interval(differences, seed=3) == (low, high)


def test_no_pairs_gives_nan():
    margin, (low, high) = median_margin({0: 1.0}, {1: 1.0})
    assert math.isnan(margin) and math.isnan(low) and math.isnan(high)
