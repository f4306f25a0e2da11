"""The fair report: its paired bootstrap interval (benchmarks/paired_bootstrap.py), row keys and tables."""
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


def _row(method: str, seed: int, test_after: float):
    from benchmarks.report_rows import Row

    return Row(f"k|{method}|{seed}", "resnet20", "0.1flops", method, seed, 1, 0.1, 0.1, 0.5, 0.5, test_after,
               1.0, 0.0, 0, 0, 10, 1.0)


def test_a_row_added_keeps_the_rows_another_run_saved_meanwhile(tmp_path):
    from benchmarks.report_rows import add, load

    path = tmp_path / "rows.json"
    mine = {}
    add(path, mine, _row("random + finalists", 0, 0.8))
    theirs = load(path)
    add(path, theirs, _row("TP global magnitude", 0, 0.9))      # another run, one model each
    add(path, mine, _row("random + finalists", 1, 0.81))           # mine had not seen theirs
    assert sorted(load(path)) == sorted(["k|random + finalists|0", "k|TP global magnitude|0", "k|random + finalists|1"])
    assert load(path)["k|TP global magnitude|0"].test_after == 0.9


def test_row_keys_of_the_first_report_stay_and_new_finalist_rules_get_their_own():
    from benchmarks.report_rows import Settings

    first = Settings("hard", 10080, 100, 5, 50, 5, 10)
    assert first.text() == "hard|test=10080|trials=100|finalists=5x50|pruningnet=5|baseline=10"
    today = Settings("hard", 10080, 100, 10, 0, 5, 10, "ce", True, "flags")
    assert today.text() == first.text().replace("5x50", "10x0") + "|rank=ce|one-shot"
    assert Settings("hard", 10080, 100, 10, 0, 5, 10, "ce", True, "depth").text().endswith("|one-shot|blocks=depth")


def test_agents_against_random_are_paired_by_seed():
    from benchmarks.report import agents_table

    rows = [_row("random + finalists", s, 0.80 + 0.01 * s) for s in range(3)]
    rows += [_row("tpe + finalists", s, 0.81 + 0.01 * s) for s in range(3)]        # +0.01 on every seed
    rows += [_row("abc + finalists", s, 0.79 + 0.01 * s) for s in range(2)]        # -0.01, two seeds only
    rows += [_row("TP global magnitude", s, 0.9) for s in range(3)]                # a peer: not an agent
    table = agents_table(rows)
    assert table[0] == "| model | budget | FT epochs | tpe | abc |"
    assert table[2] == "| resnet20 | 0.1flops | 1 | +0.0100 [+0.0100, +0.0100] | -0.0100 [-0.0100, -0.0100] |"
    assert agents_table([r for r in rows if not r.method.startswith("random")]) == []


def test_each_agent_against_the_best_peer_on_the_seeds_every_agent_has():
    from benchmarks.report import default_agent_table

    rows = [_row("TP global magnitude", s, 0.80) for s in range(3)] + [_row("TP uniform L1", s, 0.70) for s in range(3)]
    rows += [_row("amc + finalists", s, 0.82 + 0.01 * s) for s in range(2)]        # +0.02, +0.03: median +0.025
    rows += [_row("amc + finalists", 2, 0.50)]                                     # tpe lacks seed 2: not counted
    rows += [_row("tpe + finalists", s, 0.81) for s in range(2)]                   # +0.01
    table = default_agent_table(rows)
    assert table[0] == "| model | budget | FT epochs | best peer | amc | tpe |"
    assert table[2] == "| resnet20 | 0.1flops | 1 | TP global magnitude | +0.0250 | +0.0100 |"
    assert table[3].startswith("| mean over the 1 settings every agent was measured in |")
    assert table[3].endswith("| **+0.0250** | +0.0100 |")
    assert default_agent_table([r for r in rows if not r.method.startswith("tpe")]) == []


def _keyed(settings, method: str, seed: int, test_after: float):
    from benchmarks.report_rows import Row, key

    return Row(key(settings, "resnet20", "0.1flops", method, seed, 1), "resnet20", "0.1flops", method, seed, 1, 0.1,
               0.1, 0.5, 0.5, test_after, 1.0, 0.0, 0, 0, 10, 1.0)


def test_rows_of_other_variants_are_found_by_value_and_other_settings_are_not():
    from dataclasses import replace

    from benchmarks.report import other_variants, variant_name
    from benchmarks.report_rows import Settings

    default = Settings("hard", 10080, 100, 10, 0, 5, 10, "tce", True, "flags", 1024)
    rows = [_keyed(default, "tpe + finalists", 0, 0.9),
            _keyed(replace(default, reconstruct=4096), "tpe + finalists", 0, 0.91),
            _keyed(replace(default, reconstruct=0), "tpe + finalists", 0, 0.88),
            _keyed(replace(default, reconstruct=4096, trials=50), "tpe + finalists", 0, 0.87),
            _keyed(replace(default, export_weights="base"), "tpe + finalists", 0, 0.86),
            _keyed(replace(default, width_grid=32), "tpe + finalists", 0, 0.85),
            _keyed(replace(default, distinct="subnet"), "tpe + finalists", 0, 0.92),
            _keyed(replace(default, finalists=5), "tpe + finalists", 0, 0.80)]  # other settings: never a variant
    found = other_variants({r.key: r for r in rows}, default, ["resnet20"])
    c = "candidate"
    assert list(found) == [(0, "refit", 10, c, 100), (1024, "base", 10, c, 100), (1024, "refit", 10, "subnet", 100),
                           (1024, "refit", 32, c, 100), (4096, "refit", 10, c, 50), (4096, "refit", 10, c, 100)]
    assert [r.test_after for r in found[(0, "refit", 10, c, 100)]] == [0.88]
    assert [r.test_after for r in found[(1024, "base", 10, c, 100)]] == [0.86]
    assert [r.test_after for r in found[(1024, "refit", 32, c, 100)]] == [0.85]
    assert [r.test_after for r in found[(4096, "refit", 10, c, 100)]] == [0.91]
    assert [r.test_after for r in found[(4096, "refit", 10, c, 50)]] == [0.87]  # other trials: a variant of its own
    assert [r.test_after for r in found[(1024, "refit", 10, "subnet", 100)]] == [0.92]
    assert 0.80 not in [r.test_after for rows_of in found.values() for r in rows_of]
    assert variant_name((4096, "refit", 10, c, 50), 100).endswith("50 trials per search (`--trials 50`)")
    assert "trials" not in variant_name((4096, "refit", 10, c, 100), 100)
    assert "|distinct=" not in default.text()  # the rows measured before it keep their keys
    assert other_variants({r.key: r for r in rows}, default, ["mobilenetv2"]) == {}


def test_a_changed_baseline_is_not_the_same_base():
    from benchmarks.report import same_base

    base = {"flops": 5065984, "params": 272186, "held_out": 0.888671875, "test": 0.9091269841269841}
    assert same_base(base, dict(base)) and same_base(base, {**base, "test": 0.9091269841269842})
    assert not same_base(base, {**base, "test": 0.9122})


def test_our_long_fine_tunes_start_from_the_copied_weights_as_search_finetune_does():
    from dataclasses import replace

    from benchmarks.report import fine_tune_start
    from benchmarks.report_rows import Settings
    from search.finetune.loop import COPIED_FROM_STEPS

    default = Settings("hard", 10080, 100, 10, 0, 5, 10, "tce", True, "flags", 1024)
    long, short = COPIED_FROM_STEPS, COPIED_FROM_STEPS - 1
    assert fine_tune_start(default, "tpe + finalists", 0, long) == "base"
    assert fine_tune_start(default, "magnitude start", 0, long) == "base"
    assert fine_tune_start(default, "tpe + finalists", 0, short) == "export"
    assert fine_tune_start(default, "tpe + finalists", 50, long) == "export"          # trained finalists
    for peer in ("TP global magnitude", "FastNAS", "TP global magnitude + our refit"):
        assert fine_tune_start(default, peer, 0, long) == "export"
    assert fine_tune_start(replace(default, export_weights="base"), "tpe + finalists", 0, long) == "export"
    assert fine_tune_start(replace(default, reconstruct=0), "tpe + finalists", 0, long) == "export"


def test_a_kept_baseline_goes_back_into_an_empty_cache_byte_for_byte(tmp_path, monkeypatch):
    from benchmarks import kept_baselines
    from search.engine.config import SearchConfig

    monkeypatch.setenv("PRUNESEARCH_CACHE", str(tmp_path / "cache"))
    config = SearchConfig(model="resnet20", data="digits", baseline_epochs=3)
    weights, record = kept_baselines.cached_files(config)
    assert kept_baselines.keep(config, tmp_path / "kept") is False  # nothing cached yet: nothing to keep
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"tensors"), record.write_text('{"test_top1": 0.9}')
    assert kept_baselines.keep(config, tmp_path / "kept") is True
    assert kept_baselines.keep(config, tmp_path / "kept") is False  # kept once
    weights.unlink(), record.unlink()
    assert kept_baselines.restore(config, [tmp_path / "elsewhere", tmp_path / "kept"]) == tmp_path / "kept"
    assert weights.read_bytes() == b"tensors" and record.read_text() == '{"test_top1": 0.9}'
    assert kept_baselines.restore(config, [tmp_path / "kept"]) is None  # the cache has it: left alone
    other = SearchConfig(model="resnet20", data="digits", baseline_epochs=4)  # another recipe: another baseline
    assert kept_baselines.restore(other, [tmp_path / "kept"]) is None
    assert not kept_baselines.cached_files(other)[0].exists()


def test_a_cached_subnet_is_keyed_by_the_baseline_it_was_cut_from():
    from benchmarks.report import base_fingerprint, same_base

    first = {"flops": 5065984, "params": 272186, "held_out": 0.8887, "test": 0.9091}
    again = dict(first)
    retrained = {**first, "held_out": 0.8838, "test": 0.9126}  # the same recipe trained on another machine
    assert base_fingerprint(first) == base_fingerprint(again) and same_base(first, again)
    assert base_fingerprint(first) != base_fingerprint(retrained) and not same_base(first, retrained)
