"""The fidelity study's truths (benchmarks/fidelity.py): several fine-tune seeds per candidate, from the copied or
the refit weights, their mean and its split-half noise ceiling."""
from __future__ import annotations

import math

from benchmarks.fidelity import seed_count, split_half, truth_keys, truths, with_default_pick


def test_truth_keys_are_in_seed_order():
    assert truth_keys("", 4) == ["truth", "truth_other_seed", "truth_seed_2", "truth_seed_3"]
    assert truth_keys("recon_", 2) == ["recon_truth", "recon_truth_other_seed"]
    assert truth_keys("recon_", 1) == ["recon_truth"]


def test_truths_stop_at_the_first_missing_seed_and_keep_prefixes_apart():
    row = {"truth": 0.8, "truth_other_seed": 0.81, "recon_truth": 0.7, "recon_truth_other_seed": 0.72,
           "recon_truth_seed_2": 0.74, "recon_truth_seed_4": 0.9}
    assert truths(row) == [0.8, 0.81]
    assert truths(row, "recon_") == [0.7, 0.72, 0.74]  # seed 3 is missing: seed 4 is not counted
    assert seed_count([row, {**row, "recon_truth_seed_3": 0.7}], "recon_") == 3


def test_split_half_needs_four_seeds_and_ranks_the_means():
    three = [{"recon_truth": v, "recon_truth_other_seed": v, "recon_truth_seed_2": v} for v in (0.1, 0.2, 0.3)]
    assert math.isnan(split_half(three, "recon_"))
    rows = [{"recon_truth": v, "recon_truth_other_seed": v + 0.01, "recon_truth_seed_2": v,
             "recon_truth_seed_3": v + 0.01} for v in (0.1, 0.2, 0.3, 0.4)]
    assert math.isclose(split_half(rows, "recon_"), 1.0)
    reversed_odd = [{**r, "recon_truth_other_seed": 1 - r["recon_truth"], "recon_truth_seed_3": 1 - r["recon_truth"]}
                    for r in rows]
    assert math.isclose(split_half(reversed_odd, "recon_"), -1.0)


def test_both_means_are_added_where_their_seeds_are_measured():
    rows = [{"bn_top1": 0.5 + i / 10, "steps_50_neg_ce": -i, "truth": 0.8, "truth_other_seed": 0.82,
             "recon_truth": 0.7, "recon_truth_other_seed": 0.74, "recon_truth_seed_2": 0.72} for i in range(3)]
    out = with_default_pick(rows, 50)
    assert all(math.isclose(r["truth_mean"], 0.81) and math.isclose(r["recon_truth_mean"], 0.72) for r in out)
    no_recon = with_default_pick([{k: v for k, v in r.items() if not k.startswith("recon_")} for r in rows], 50)
    assert all("recon_truth_mean" not in r and "truth_mean" in r for r in no_recon)
