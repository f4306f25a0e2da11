"""The latency table: interpolation, the remainder's fit, features, caching (not timing accuracy)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evaluators import latency
from evaluators.cost import CostModel
from evaluators.latency import (LayerGrid, fit_hinged, fit_remainder, measure_latencies, measure_table,
                                reachable_lengths, spread)
from search.models.cifar_resnet import resnet20
from spaces.derive import derive
from spaces.graph import ChannelGroup, Segment, TensorUse
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


def test_slow_paths_are_the_points_slower_than_a_larger_configuration():
    """ONNX Runtime's shape of a conv's time over its widths: a staircase (outputs padded to a block) where
    unaligned inputs take a slower kernel. Only those points are slow; a staircase's flat steps are not."""
    ms = [[1.0, 1.8, 1.0, 2.0],   # out 16: in 4, 6 (unaligned), 8, 10 (unaligned; nothing larger is faster)
          [1.0, 2.5, 1.05, 3.0],  # out 32: the same widths cost as much as out 16 (the staircase)
          [2.0, 3.0, 2.1, 3.2]]
    slow = latency.slow_points(ms)
    assert slow.tolist() == [[False, True, False, False], [False, True, False, False], [False, True, False, False]]
    grid = LayerGrid("w", "n", outs=[16, 32, 48], ins=[4, 6, 8, 10], ms=ms)
    assert grid.slow_at(32, 6) == 2.5 and grid.slow_at(32, 8) == 0.0 and grid.at(32, 8) == 1.05
    assert not latency.slow_points([[1.0, 2.0], [2.0, 4.0]]).any()  # time that grows with the widths


def test_a_runtime_whose_unaligned_widths_are_slow_gets_the_multiple_that_avoids_them(prunable, table):
    """Timings shaped like ONNX Runtime's (a layer whose input width is not a multiple of 4 runs twice as
    slow as its work says): the table names 4; timings that grow with the work name nothing."""
    def shaped(slow_unless: int | None) -> latency.LatencyTable:
        layers = [LayerGrid(g.weight, g.node, g.outs, g.ins,
                            [[1e-3 * o * i * (2.0 if slow_unless and i % slow_unless else 1.0) for i in g.ins]
                             for o in g.outs]) for g in table.layers]
        return latency.LatencyTable(prunable, layers, table.remainder, table.meta)

    aligned = shaped(4)
    assert aligned.slow_paths() and all(inp % 4 for _, _, inp in aligned.slow_paths())
    assert aligned.aligned_multiple() == 4
    assert shaped(None).slow_paths() == [] and shaped(None).aligned_multiple() is None


def test_only_the_widths_the_space_varies_decide_the_multiple(prunable, table):
    """Depthwise convs (1 input per group, never varied) slow unless their channels are a multiple of 8: the
    input axis cannot be rounded, so the channels alone decide, and 8 is named (judging the fixed 1 too, every
    multiple would look missed and 2 would be named)."""
    outs = [4, 8, 12, 16, 20, 24]
    ms = [[1e-3 * o * (3.0 if o % 8 else 1.0)] for o in outs]
    layers = [LayerGrid(g.weight, g.node, outs, [1], ms) for g in table.layers]
    depthwise = latency.LatencyTable(prunable, layers, table.remainder, table.meta)
    assert {out for _, out, _ in depthwise.slow_paths()} == {4, 12, 20}
    assert depthwise.aligned_multiple() == 8


def test_the_remainder_fit_recovers_known_costs_and_never_goes_negative():
    rng = np.random.default_rng(0)
    features = [[rng.uniform(0.1, 3), 1.0, rng.integers(10, 100), rng.integers(1_000, 1_000_000)] for _ in range(24)]
    truth = np.array([1.3, 0.2, 0.01, 2e-6])
    fitted = fit_remainder(features, np.asarray(features) @ truth)
    assert np.allclose(fitted, truth, rtol=1e-6)
    # timings that fall as ops are added would need a negative cost per op: it is clipped to zero
    flipped = fit_remainder(features, [3.0 - 0.01 * f[2] for f in features])
    assert min(flipped) >= 0


def test_the_fit_is_in_relative_error_and_all_but_exact_at_the_full_model():
    """Timings no fit explains: the full model's (row 0) is still met, and a small subnet's relative error
    counts as much as a large one's (a plain least squares would sacrifice the small ones)."""
    features = [[10.0, 1.0], [5.0, 1.0], [1.0, 1.0], [0.5, 1.0]]
    measured = [10.0, 6.0, 0.5, 0.9]
    fitted = np.asarray(fit_remainder(features, measured))
    predicted = np.asarray(features) @ fitted
    assert predicted[0] == pytest.approx(10.0, rel=0.02)  # a plain fit misses it by 27%
    unweighted = np.asarray(fit_remainder(features, measured, anchor=None))
    assert abs(np.asarray(features[0]) @ unweighted - 10.0) > abs(predicted[0] - 10.0)


def test_the_hinge_is_found_where_weights_stop_fitting_in_the_cache():
    """Latency that grows faster once the weights pass 40,000 elements: the fit finds that hinge (no hinge
    is an option too) and recovers the costs."""
    rng = np.random.default_rng(0)
    rows = [[rng.uniform(0.1, 3), 1.0, float(rng.integers(10, 100)), float(rng.integers(1_000, 100_000)),
             float(p)] for p in [*np.linspace(1_000, 80_000, 23), 40_000]]
    truth = np.array([1.0, 0.1, 0.0, 1e-6, 1e-6, 5e-5])
    measured = [float(np.dot(truth, [*r, max(0.0, r[-1] - 40_000)])) for r in rows]
    coefficients, hinge = fit_hinged(rows, measured)
    assert hinge == 40_000 and np.allclose(coefficients, truth, rtol=1e-4, atol=1e-9)
    linear = [float(np.dot(truth[:-1], r)) for r in rows]
    assert fit_hinged(rows, linear)[1] == float("inf") or fit_hinged(rows, linear)[0][-1] == pytest.approx(0, abs=1e-9)


def test_reachable_lengths_of_an_axis():
    groups = [ChannelGroup(0, 16), ChannelGroup(1, 8, blocks=4), ChannelGroup(2, 4)]
    choices = {0: (4, 8, 16), 1: (4, 8)}
    one = TensorUse("w", 0, (Segment(0, 16),))
    assert reachable_lengths(one, choices, groups) == [4, 8, 16]
    inner = TensorUse("w", 1, (Segment(0, 16, inner=9),))
    assert reachable_lengths(inner, choices, groups) == [36, 72, 144]
    local = TensorUse("w", 1, (Segment(1, 8),), local=True)  # a grouped conv's per-group input
    assert reachable_lengths(local, choices, groups) == [1, 2]
    cat = TensorUse("w", 1, (Segment(0, 16), Segment(1, 8), Segment(2, 4)))  # group 2 is not searched
    assert reachable_lengths(cat, choices, groups) == sorted({a + b + 4 for a in (4, 8, 16) for b in (4, 8)})
    many = {0: tuple(range(1, 17)), 1: tuple(range(1, 9))}
    wide = TensorUse("w", 1, (Segment(0, 16, inner=100), Segment(1, 8)))
    assert reachable_lengths(wide, many, groups) is None  # 128 lengths: interpolated instead


def test_layers_are_timed_at_the_widths_the_space_reaches_and_alike_layers_once(prunable, tmp_path, monkeypatch):
    monkeypatch.setattr(latency, "MIN_SECONDS", 0.0005)
    monkeypatch.setattr(latency, "ROUNDS", 1)
    timed = []
    real = latency._layer_call

    def counting(prunable, site, out_len, in_len, *args):
        shape = latency.tensor_shape(prunable.graph.node(site.node).all_input_nodes[0])
        timed.append((site.kind, repr(site.options), tuple(shape), out_len, in_len))
        return real(prunable, site, out_len, in_len, *args)

    monkeypatch.setattr(latency, "_layer_call", counting)
    table = measure_table(prunable, SHAPE, progress=False)
    graph, space = prunable.graph, prunable.space
    choices = {gid: space[name].choices for name, gid in prunable.dimension_groups.items()}
    for grid in table.layers:
        uses = {u.axis: u for u in graph.uses.get(grid.weight, [])}
        for axis, sizes in ((0, grid.outs), (1, grid.ins)):
            reach = reachable_lengths(uses[axis], choices, graph.groups) if axis in uses else None
            if reach is not None and len(reach) <= latency.MAX_AXIS:
                assert sizes == reach
    points = sum(len(g.outs) * len(g.ins) for g in table.layers)
    assert len(timed) == len(set(timed)) < points  # ResNet-20's repeated blocks: each configuration once
    # a candidate's layer time is a timed point, not an interpolation between points
    candidate = space.sample(np.random.default_rng(5))
    widths = prunable.widths(candidate)
    for grid, (out_use, in_use, full) in zip(table.layers, table._axes):
        out_len = latency.kept_length(out_use, widths, graph.groups) if out_use else full[0]
        in_len = latency.kept_length(in_use, widths, graph.groups) if in_use else full[1]
        assert out_len in grid.outs and in_len in grid.ins


def test_off_eager_torch_the_calibration_divides_by_the_median_of_three_compiled_full_models(prunable, monkeypatch):
    """One compiled session of the full model runs 20% slow: the reference is the median of three, so the
    calibration's full model (the base relative budgets divide by) is 1.0 ms, not 1.2."""
    monkeypatch.setattr(latency, "_layer_call", lambda *a, **k: ((lambda: None), torch.device("cpu")))
    monkeypatch.setattr(latency, "time_call", lambda fn, device, **k: 1e-4)
    seen = []

    def rounds(modules, input_shape, *, batch, device, rounds, backend):
        seen.append(len(modules))
        count = latency.CALIBRATION
        return [[1.2] + [0.5] * (count - 1) + [1.0, 1.0] for _ in range(rounds)]

    monkeypatch.setattr(latency, "measure_rounds", rounds)
    table = measure_table(prunable, SHAPE, progress=False, backend="onnxruntime")
    assert seen == [latency.CALIBRATION + latency.REFERENCES - 1]
    assert table.meta["full_ms_measured"] == 1.0 and table.meta["calibration"]["ms"][0] == 1.0
    assert table.meta["calibration"]["ms"][1] == pytest.approx(0.5)


def test_the_weights_feature_counts_the_subnets_conv_and_linear_weights(prunable, table):
    """P, the kept weight elements, is what the materialized subnet's conv/linear layers hold."""
    space = prunable.space
    for candidate in (space.full(), space.smallest(), space.sample(np.random.default_rng(2))):
        module = materialize(prunable, candidate)
        held = sum(m.weight.numel() for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
        assert table.features(candidate)[5] == held


def test_spread_draws_light_and_heavy_subnets_evenly(prunable, table):
    space = prunable.space
    first = spread(space, table.predict, 10, np.random.default_rng(0))
    assert first == spread(space, table.predict, 10, np.random.default_rng(0))  # seeded
    costs = [table.predict(c) for c in first]
    assert len(set(first)) == 10 and costs == sorted(costs)
    # light and heavy: checked on exact FLOPs, as a table timed on a busy shared CPU can price the full model
    # far above its nearest neighbours (it did once in CI: 1.1 ms heaviest drawn, 2.2 ms full)
    flops = CostModel(prunable).flops
    by_flops = [flops(c) for c in spread(space, flops, 10, np.random.default_rng(0))]
    assert by_flops[0] < 0.5 * flops(space.full()) and by_flops[-1] > 0.8 * flops(space.full())
    assert not set(spread(space, table.predict, 10, np.random.default_rng(0), exclude=first[:3])) & set(first[:3])


def test_features_follow_widths_and_removed_blocks(prunable, table):
    space = prunable.space
    full, smallest = table.features(space.full()), table.features(space.smallest())
    assert full[0] > smallest[0] and full[4] > smallest[4] and full[5] > smallest[5]  # layers' time, elements, weights
    assert full[2] == smallest[2] == 1.0
    assert full[3] > smallest[3]  # the smallest subnet removes every removable block and its ops
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


def test_the_cache_key_is_the_same_for_the_model_derived_again_and_differs_when_a_layer_does(prunable):
    """Another derivation (new objects, as in a second run or a resume) finds the cached table; a model that
    differs only in a layer's options (padding mode: same shapes, same traced code) or in the input shape
    does not."""
    torch.manual_seed(1)  # other weights: latency does not depend on them
    again = derive(resnet20(num_classes=10, in_channels=1).eval(), torch.zeros(1, *SHAPE))
    key = latency.table_key(prunable, SHAPE, 1, torch.device("cpu"))
    assert latency.table_key(again, SHAPE, 1, torch.device("cpu")) == key
    model = resnet20(num_classes=10, in_channels=1).eval()
    model.conv1.padding_mode = "reflect"
    reflected = derive(model, torch.zeros(1, *SHAPE))
    assert latency.table_key(reflected, SHAPE, 1, torch.device("cpu")) != key
    bigger = derive(resnet20(num_classes=10, in_channels=1).eval(), torch.zeros(1, 1, 16, 16))
    assert latency.table_key(bigger, (1, 16, 16), 1, torch.device("cpu")) != key


class Tagged(torch.nn.Conv2d):
    """A conv (a leaf of the trace, so in the traced module's repr) whose repr names a function by its address."""

    def __init__(self, *args, hook=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.hook = hook

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hook={self.hook}"


def test_the_cache_key_ignores_addresses_a_module_s_repr_names():
    def model():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                   Tagged(8, 8, 3, padding=1, hook=lambda x: x), torch.nn.BatchNorm2d(8),
                                   torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 64, 4)).eval()

    prunables = [derive(model(), torch.zeros(1, *SHAPE)) for _ in "ab"]
    assert all(" at 0x" in str(p.graph.gm) for p in prunables)
    assert len({latency.table_key(p, SHAPE, 1, torch.device("cpu")) for p in prunables}) == 1


def test_a_table_saved_with_its_scale_prices_as_it_did(prunable, table):
    """A run keeps its table (re-anchoring scale included): loaded back, it prices every candidate the same."""
    table.scale = 1.7
    try:
        loaded = latency.LatencyTable.from_json(prunable, json.loads(json.dumps(table.to_json())))
        candidate = prunable.space.sample(np.random.default_rng(5))
        assert loaded.scale == 1.7 and loaded.predict(candidate) == table.predict(candidate)
    finally:
        table.scale = 1.0


def test_a_cached_table_is_re_anchored_by_the_full_model_timed_now(prunable, table, tmp_path, monkeypatch):
    """A table measured on a quieter machine: everything now runs 3x slower, and the predictions follow. The
    full model alone is timed, in ANCHORS compiled instances; one slow instance does not move the median."""
    monkeypatch.setattr(latency, "MIN_SECONDS", 0.0005)
    monkeypatch.setattr(latency, "ROUNDS", 1)
    path = tmp_path / f"latency-{table.meta['key']}.json"
    path.write_text(json.dumps(table.to_json()))
    timed = []

    def rounds(modules, input_shape, *, batch, device, rounds, backend):
        timed.extend(modules)
        return [[3 * table.base_ms * (1.5 if i == 0 else 1.0) for i in range(len(modules))] for _ in range(rounds)]

    monkeypatch.setattr(latency, "measure_rounds", rounds)
    again = measure_table(prunable, SHAPE, cache_dir=tmp_path, progress=False)
    full = sum(p.numel() for p in materialize(prunable, prunable.space.full()).parameters())
    assert len(timed) == latency.ANCHORS and all(sum(p.numel() for p in m.parameters()) == full for m in timed)
    assert again.scale == pytest.approx(3.0) and again.meta["anchor"]["scale"] == pytest.approx(3.0)
    candidate = prunable.space.sample(np.random.default_rng(3))
    assert again.predict(candidate) == pytest.approx(3 * table.predict(candidate))
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
