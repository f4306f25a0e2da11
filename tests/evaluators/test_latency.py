"""The latency table: interpolation, the remainder's fit, features, caching (not timing accuracy)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evaluators import latency
from evaluators.latency import LayerGrid, fit_remainder, measure_latencies, measure_table
from search.cifar_resnet import resnet20
from spaces.derive import derive
from spaces.materialize import materialize

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def prunable():
    torch.manual_seed(0)
    return derive(resnet20(num_classes=10, in_channels=1).eval(), torch.zeros(1, *SHAPE))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny timings on a shared CPU: a second intra-op thread only adds stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def table(prunable, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(latency, "MIN_SECONDS", 0.0005)
        patch.setattr(latency, "ROUNDS", 1)
        return measure_table(prunable, SHAPE, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def test_layer_grid_is_exact_on_its_points_and_bilinear_between():
    grid = LayerGrid("w", "n", outs=[4, 8], ins=[2, 6], ms=[[1.0, 3.0], [5.0, 11.0]])
    assert grid.at(4, 2) == 1.0 and grid.at(8, 6) == 11.0 and grid.at(8, 2) == 5.0
    assert grid.at(6, 4) == pytest.approx((1 + 3 + 5 + 11) / 4)
    assert grid.at(4, 4) == pytest.approx(2.0)
    single = LayerGrid("w", "n", outs=[4], ins=[3], ms=[[0.5]])
    assert single.at(4, 3) == 0.5


def test_the_remainder_fit_recovers_known_costs_and_never_goes_negative():
    rng = np.random.default_rng(0)
    features = [[rng.uniform(0.1, 3), 1.0, rng.integers(10, 100), rng.integers(1_000, 1_000_000)] for _ in range(24)]
    truth = np.array([1.3, 0.2, 0.01, 2e-6])
    fitted = fit_remainder(features, np.asarray(features) @ truth)
    assert np.allclose(fitted, truth, rtol=1e-6)
    # timings that fall as ops are added would need a negative cost per op: it is clipped to zero
    flipped = fit_remainder(features, [3.0 - 0.01 * f[2] for f in features])
    assert min(flipped) >= 0


def test_features_follow_widths_and_removed_blocks(prunable, table):
    space = prunable.space
    full, smallest = table.features(space.full()), table.features(space.smallest())
    assert full[0] > smallest[0] and full[3] > smallest[3]  # layers' time, elements
    assert full[1] == smallest[1] == 1.0
    assert full[2] > smallest[2]  # the smallest subnet removes every removable block and its ops
    dropped = dict(space.full())
    block = next(d.name for d in space.dimensions if d.kind == "keep")
    dropped[block] = 0
    assert table.calls(dropped) < table.calls(space.full())
    assert table.predict(space.full()) > table.predict(space.smallest()) > 0
    assert table.base_ms == table.predict(space.full())


def test_the_table_is_measured_once_and_loaded_from_its_cache(prunable, table, tmp_path, monkeypatch):
    monkeypatch.setattr(latency, "MIN_SECONDS", 0.0005)
    monkeypatch.setattr(latency, "ROUNDS", 1)
    first = measure_table(prunable, SHAPE, cache_dir=tmp_path, progress=False)
    (path,) = tmp_path.glob("latency-*.json")
    assert json.loads(path.read_text())["meta"]["calibration_subnets"] == latency.CALIBRATION

    def no_timing(*args, **kwargs):
        raise AssertionError("a cached table was measured again")

    monkeypatch.setattr(latency, "time_call", no_timing)
    again = measure_table(prunable, SHAPE, cache_dir=tmp_path, progress=False, anchor=0)
    candidate = prunable.space.sample(np.random.default_rng(3))
    assert again.predict(candidate) == first.predict(candidate) and again.remainder == first.remainder


def test_a_cached_table_is_re_anchored_by_a_few_direct_timings(prunable, table, tmp_path, monkeypatch):
    """A table measured on a quieter machine: everything now runs 3x slower, and the predictions follow."""
    monkeypatch.setattr(latency, "MIN_SECONDS", 0.0005)
    monkeypatch.setattr(latency, "ROUNDS", 1)
    path = tmp_path / f"latency-{table.meta['key']}.json"
    path.write_text(json.dumps(table.to_json()))
    space, anchored = prunable.space, []
    truth = {id(c): 3 * table.predict(c) for c in (space.full(), space.smallest(), space.uniform(0.5, nearest=True))}
    predicted = iter(truth.values())
    monkeypatch.setattr(latency, "measure_latencies", lambda modules, *a, **k: anchored.extend(modules) or
                        [next(predicted) for _ in modules])
    again = measure_table(prunable, SHAPE, cache_dir=tmp_path, progress=False)
    assert len(anchored) == latency.ANCHORS and again.scale == pytest.approx(3.0)
    candidate = space.sample(np.random.default_rng(3))
    assert again.predict(candidate) == pytest.approx(3 * table.predict(candidate))
    assert again.meta["anchor"]["scale"] == pytest.approx(3.0)
    # relative budgets do not move: the ratio to the base is the same
    assert again.predict(candidate) / again.base_ms == pytest.approx(table.predict(candidate) / table.base_ms)


def test_interleaved_measurements_keep_the_modules_order(prunable, monkeypatch):
    monkeypatch.setattr(latency, "MIN_SECONDS", 0.0005)
    space = prunable.space
    full, smallest = materialize(prunable, space.full()), materialize(prunable, space.smallest())
    calls = []
    speed = {}  # each module's call -> its fake seconds, the full model's first

    def fake(fn, device):
        calls.append(fn)
        return speed.setdefault(fn, 0.002 if not speed else 0.001)

    monkeypatch.setattr(latency, "time_call", fake)
    rounds = latency.measure_rounds([full, smallest], SHAPE, rounds=3)
    assert len(calls) == 6 and calls[1] is calls[2] and calls[3] is calls[4]  # the order alternates per round
    assert rounds == [[2.0, 1.0]] * 3
    speed.clear()
    measured = measure_latencies([full, smallest], SHAPE, rounds=3)
    assert measured == [2.0, 1.0]  # ms, each module's median over its rounds, in the order given
