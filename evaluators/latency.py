"""A per-layer latency table measured on the target device, and latency predicted from widths alone.

Measured once per (device, torch version, model structure, input shape, batch) and cached on disk:
- every conv/linear layer is timed on its own (its real kernel, stride, groups and input size), warm-up
  then the median of repeated runs, at every kept output x kept input size the search space can give it
  (at most `MAX_AXIS` per axis; beyond that a `GRID` of them, interpolated bilinearly in between).
  Runtimes with blocked channel layouts are far from linear in the width: on ONNX Runtime a conv costs
  the same for 17..32 output channels, and one with 26 input channels costs more than one with 32 (not a
  multiple of 4: no NCHWc kernel). Timing the widths the search can pick sees that; interpolating
  between a few does not. Layers alike (kind, options, input shape, sizes) are timed once;
- the remainder (normalization, activations, additions, pooling, memory traffic) is modelled as
  `a + c x N + b x E + p x P + q x max(0, P - hinge)`: N is the number of live ops that are not timed
  layers (removed residual blocks take theirs away: per-op dispatch dominates small models), E the
  elements those ops touch (kept channels x positions), P the kept weight elements of the live layers.
  A layer timed alone runs with its weights in cache; in the whole model they are read once per call,
  and once they no longer fit in the cache (the hinge) every call streams them from memory, which on a
  2x2-pixel ResNet-18 stage costs more than the arithmetic. `a, b, c, p, q` and a scale `alpha` on the
  layers' summed times are fitted by non-negative least squares, in relative error, to end-to-end
  timings of 24 materialized calibration subnets (full, smallest, uniform ratios, and subnets spread
  over the layers' summed time), the full model weighing four times as much as all the others (relative
  budgets divide by it); the hinge is the calibration subnet's P whose fit errs least. A layer point
  slower than a larger configuration of that layer is a slow path (`slow_points`: a kernel the runtime
  falls back to); inside the model it costs more than alone (ONNX Runtime reorders the blocked layout
  around it), so that part of the layers' time, L_slow, gets its own scale alpha'. The grid points of all
  layers are timed in interleaved rounds (alternating order, the median kept), and so are the
  calibration subnets, each taken as its median ratio to the full model in the same round: a slow spell
  of the machine spreads over all of them instead of skewing one. Off eager torch the full model is
  compiled `REFERENCES` times and the median of its instances is that reference.
Predicted latency = scale x (alpha x L + alpha' x L_slow + a + c x N + b x E + p x P + q x max(0, P - hinge)),
L the live layers' times and L_slow the part of it on slow paths.
No forward pass at pricing time. On CUDA the timings use CUDA events.

The runtime (`backend`: torch, onnxruntime, openvino; see `latency_backends`) is the one the user deploys
with: every layer configuration and calibration subnet is exported to it and timed there.

A cached table is re-anchored when it is loaded: the full model is timed now in `ANCHORS` separately
compiled instances and `scale` is its median measured / predicted time, so that a table measured while the
machine was quieter or busier does not silently mislead an absolute budget (`12ms`). Only the full model:
the fit all but meets it (its calibration anchor), so what moved there is the machine; on a subnet the fit's
own error would be taken for the machine's drift. Relative budgets
(`0.5latency`) do not move with `scale`; what the exported subnet measures is checked at the end of a run
(`search.selection.latency_check`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from spaces.channels import tensor_shape
from spaces.derive import PrunableModel
from spaces.files import atomic_write
from spaces.materialize import materialize
from spaces.layers import layer_named
from spaces.slicing import kept_length
from spaces.space import KEEP

from .latency_backends import BackendError, compile_call, version

log = logging.getLogger(__name__)
GRID = 5             # sizes per axis in a layer's grid when the space reaches more than MAX_AXIS
MAX_AXIS = 12        # a layer axis reaching at most this many sizes is timed at every one of them
SLOW = 1.1           # a grid point this much slower than a larger configuration takes a slow path
CALIBRATION = 24     # end-to-end timings the remainder is fitted to
ROUNDS = 3           # interleaved rounds of end-to-end timings (the median is kept)
VERSION = 6          # of the table's format and method (part of the cache key)
MIN_SECONDS = 0.02   # time spent per timing (inner loops until then); tests lower it
REFERENCES = 3       # compiled instances of the full model in the calibration's rounds (off eager torch)
ANCHORS = 3          # compiled instances of the full model timed to re-anchor a cached table (0: never)


def time_call(fn: Callable[[], object], device: torch.device, *, min_seconds: float | None = None,
              repeats: int = 7) -> float:
    """Median seconds of one call of `fn` (warm-up first; inner loops long enough to time reliably)."""
    with torch.no_grad():
        for _ in range(3):
            fn()
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        once = max(time.perf_counter() - start, 1e-6)
        number = max(1, int((MIN_SECONDS if min_seconds is None else min_seconds) / repeats / once))
        samples = []
        for _ in range(repeats):
            if cuda:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                for _ in range(number):
                    fn()
                end.record()
                torch.cuda.synchronize(device)
                samples.append(begin.elapsed_time(end) / 1e3 / number)
            else:
                start = time.perf_counter()
                for _ in range(number):
                    fn()
                samples.append((time.perf_counter() - start) / number)
    return statistics.median(samples)


@dataclass
class LayerGrid:
    """One layer's measured times (ms) on a grid of kept output x kept input sizes."""

    weight: str
    node: str
    outs: list[int]
    ins: list[int]
    ms: list[list[float]]

    def __post_init__(self) -> None:
        self.slow = slow_points(self.ms)  # which points take a slow path (not saved: derived from `ms`)
        self._slow_ms = (np.asarray(self.ms, dtype=float) * self.slow).tolist()

    def at(self, out_len: float, in_len: float) -> float:
        """Bilinear interpolation (linear extrapolation is never needed: sizes lie inside the grid)."""
        return self._bilinear(self.ms, out_len, in_len)

    def slow_at(self, out_len: float, in_len: float) -> float:
        """`at` counting only the slow-path points (see `slow_points`): 0 where the layer takes the fast path."""
        return self._bilinear(self._slow_ms, out_len, in_len) if self.slow.any() else 0.0

    def _bilinear(self, m: Sequence[Sequence[float]], out_len: float, in_len: float) -> float:
        def locate(axis: list[int], v: float) -> tuple[int, float]:
            if len(axis) == 1:
                return 0, 0.0
            i = int(np.clip(np.searchsorted(axis, v) - 1, 0, len(axis) - 2))
            return i, (v - axis[i]) / (axis[i + 1] - axis[i])

        i, a = locate(self.outs, out_len)
        j, b = locate(self.ins, in_len)
        i1, j1 = min(i + 1, len(self.outs) - 1), min(j + 1, len(self.ins) - 1)
        return ((1 - a) * (1 - b) * m[i][j] + a * (1 - b) * m[i1][j] + (1 - a) * b * m[i][j1] + a * b * m[i1][j1])


def slow_points(ms: Sequence[Sequence[float]]) -> np.ndarray:
    """Which points of a layer's grid take a slow path: slower by `SLOW` than a larger configuration.

    A layer with more channels does more work, so a point slower than one that has at least as many
    output and input channels is a kernel the runtime falls back to (on ONNX Runtime, input channels that
    are not a multiple of 4 leave the blocked NCHWc kernels, and the whole model pays for reordering
    around that layer). Said by the timings alone, so no runtime's rules are written here."""
    m = np.asarray(ms, dtype=float)
    rows, cols = m.shape
    best = np.full((rows + 1, cols + 1), np.inf)  # best[a, b]: the fastest point with out >= a and in >= b
    for a in reversed(range(rows)):
        for b in reversed(range(cols)):
            best[a, b] = min(m[a, b], best[a + 1, b], best[a, b + 1])
    larger = np.minimum(best[1:, :-1], best[:-1, 1:])  # the fastest larger point, the point itself excluded
    return m > SLOW * larger


class LatencyTable:
    """Predicts a candidate's latency (ms) from its widths; see the module docstring."""

    def __init__(self, prunable: PrunableModel, layers: Sequence[LayerGrid], remainder: Sequence[float],
                 meta: Mapping[str, object]):
        # fitted: latency = alpha x (layers' timed sum) + a + c x N + b x E
        self.prunable, self.layers, self.remainder = prunable, list(layers), tuple(remainder)
        self.meta = dict(meta)
        self.scale = 1.0  # the re-anchoring factor (see the module docstring); 1 in the cache, set when loaded
        graph = prunable.graph
        uses = graph.uses
        self._axes = [(next((u for u in uses.get(g.weight, []) if u.axis == 0), None),
                       next((u for u in uses.get(g.weight, []) if u.axis == 1), None),
                       tuple(graph.tensors[g.weight].shape[:2])) for g in self.layers]
        self._rest = [int(np.prod(graph.tensors[g.weight].shape[2:])) for g in self.layers]
        self._blocks = [tuple(b.index for b in graph.blocks if g.node in b.branch) for g in self.layers]
        site_nodes = {site.node for site in graph.sites}
        self._ops = []  # (layout, positions per channel element, blocks around it) of every other op with channels
        self._calls = []  # blocks around each op that is not a timed layer
        for node in graph.gm.graph.nodes:
            if node.op not in ("call_module", "call_function", "call_method") or node.name in site_nodes:
                continue
            blocks = tuple(b.index for b in graph.blocks if node.name in b.branch or node.name == b.add)
            self._calls.append(blocks)
            spec, shape = graph.specs.get(node.name), tensor_shape(node)
            if spec is not None and shape is not None and spec.length:
                self._ops.append((spec.layout, int(np.prod(shape[1:])) // spec.length, blocks))

    def features(self, candidate: Mapping[str, int]) -> list[float]:
        """What the fitted coefficients multiply: L, L_slow (ms), 1, N, E, P, P beyond the hinge (see the
        module docstring)."""
        widths, keeps = self.prunable.widths(candidate), self.prunable.keeps(candidate)
        layers_ms, slow_ms, weights = self._layers(widths, keeps)
        return [layers_ms, slow_ms, 1.0, float(self._calls_live(keeps)), float(self._elements(widths, keeps)),
                float(weights), max(0.0, weights - self.hinge)]

    @property
    def hinge(self) -> float:
        """The kept weight elements beyond which weights no longer stay in cache between calls (fitted)."""
        return float(self.meta.get("hinge", float("inf")))

    def calls(self, candidate: Mapping[str, int]) -> int:
        """N: the live ops that are not timed layers."""
        return self._calls_live(self.prunable.keeps(candidate))

    def _calls_live(self, keeps: Sequence[bool]) -> int:
        return sum(all(keeps[b] for b in blocks) for blocks in self._calls)

    def _elements(self, widths: Sequence[int], keeps: Sequence[bool]) -> int:
        """E: the elements the non-conv/linear ops touch (per sample)."""
        return sum(per * sum(widths[seg.group] * seg.inner for seg in layout)
                   for layout, per, blocks in self._ops if all(keeps[b] for b in blocks))

    def _layers(self, widths: Sequence[int], keeps: Sequence[bool]) -> tuple[float, float, int]:
        """L: the live conv/linear layers' times, each looked up in its grid at its kept sizes; L_slow: the
        part of it from slow paths (`slow_points`); P: their kept weight elements (read once per call)."""
        groups = self.prunable.graph.groups
        total = slow = 0.0
        weights = 0
        for grid, (out_use, in_use, full), rest, blocks in zip(self.layers, self._axes, self._rest, self._blocks):
            if all(keeps[b] for b in blocks):
                out_len = kept_length(out_use, widths, groups) if out_use else full[0]
                in_len = kept_length(in_use, widths, groups) if in_use else full[1]
                total += grid.at(out_len, in_len)
                slow += grid.slow_at(out_len, in_len)
                weights += out_len * in_len * rest
        return total, slow, weights

    def slow_paths(self) -> list[tuple[str, int, int]]:
        """The (layer node, kept outputs, kept inputs) grid points that take a slow path (`slow_points`)."""
        return [(grid.node, grid.outs[a], grid.ins[b]) for grid, a, b in self._slow_points()]

    def _slow_points(self) -> list[tuple[LayerGrid, int, int]]:
        """(grid, output index, input index) of every grid point that takes a slow path."""
        return [(grid, a, b) for grid in self.layers for a, b in zip(*np.nonzero(grid.slow))]

    def aligned_multiple(self, most: int = 16) -> int | None:
        """The smallest width multiple (2, 4, 8, .. `most`) that every slow path misses (some size of each that
        the space varies is not a multiple of it), when slow paths are a pattern of the runtime: at least 5% of
        the timed points, none of them at that multiple. None when there is no such pattern (noise flags a few
        points anyway). An axis the space does not vary (an RGB stem's 3 inputs, a depthwise conv's 1 input per
        group) is no width --round-to could move, so only the varied axes count."""
        slow = [(grid.outs[a] if len(grid.outs) > 1 else None, grid.ins[b] if len(grid.ins) > 1 else None)
                for grid, a, b in self._slow_points()]
        points = sum(len(g.outs) * len(g.ins) for g in self.layers)
        if len(slow) < 0.05 * points:
            return None
        multiple = 2
        while multiple <= most:
            if not any(all(size is None or size % multiple == 0 for size in sizes) for sizes in slow):
                return multiple
            multiple *= 2
        return None

    def predict(self, candidate: Mapping[str, int]) -> float:
        return self.scale * float(np.dot(self.remainder, self.features(candidate)))

    @property
    def backend(self) -> str:
        return str(self.meta.get("backend", "torch"))

    def anchor(self, *, device: torch.device | str = "cpu", instances: int = ANCHORS) -> float:
        """Rescale predictions by the full model's measured / predicted time, the full model timed now in
        `instances` separately compiled instances (one compiled session runs a few % faster or slower than
        another; eager torch compiles nothing) over `ROUNDS` rounds, the median of all kept.

        Not subnets: anchored on the full, smallest and half-width subnets, the median of their three ratios
        took the fit's own error on the small ones for drift (MobileNetV3 on OpenVINO, 6 runs on a quiet
        machine: x0.89-0.92; timed alone, the full model gave x0.93-1.00), and once read x1.50."""
        self.scale = 1.0
        full = materialize(self.prunable, self.prunable.space.full())
        rounds = measure_rounds([full] * instances, self.meta["input_shape"], batch=int(self.meta["batch"]),
                                device=device, rounds=ROUNDS, backend=self.backend)
        measured = statistics.median(ms for row in rounds for ms in row)
        self.scale = float(measured / self.base_ms)
        self.meta["anchor"] = {"scale": self.scale, "instances": instances, "full_ms_measured": measured}
        return self.scale

    @property
    def base_ms(self) -> float:
        return self.predict(self.prunable.space.full())

    def to_json(self) -> dict:
        """The table as it prices now: its timings, fit and re-anchoring `scale` (a run keeps its own copy, so
        that a resumed run prices every candidate exactly as before; see `search.engine.pipeline`)."""
        return {"meta": self.meta, "remainder": list(self.remainder), "scale": self.scale,
                "layers": [asdict(g) for g in self.layers]}

    @classmethod
    def from_json(cls, prunable: PrunableModel, data: Mapping) -> LatencyTable:
        table = cls(prunable, [LayerGrid(**g) for g in data["layers"]], data["remainder"], data["meta"])
        table.scale = float(data.get("scale", 1.0))
        return table


def _grid(smallest: int, full: int) -> list[int]:
    return sorted({int(round(v)) for v in np.linspace(smallest, full, GRID)})


def reachable_lengths(use, choices: Mapping[int, Sequence[int]], groups) -> list[int] | None:
    """Every length the axis of `use` can take over the space (None: more than `MAX_AXIS` x 4 of them).

    `choices` maps a searched group id to its allowed widths; other groups keep their full width."""
    def widths(gid: int) -> Sequence[int]:
        return choices.get(gid, (groups[gid].size,))

    if use.local:
        seg = use.layout[0]
        return sorted({w // groups[seg.group].blocks for w in widths(seg.group)})
    lengths = {0}
    for seg in use.layout:
        lengths = {t + w * seg.inner for t in lengths for w in widths(seg.group)}
        if len(lengths) > 4 * MAX_AXIS:
            return None
    return sorted(lengths)


def _axis(reachable: list[int] | None, smallest: int, full: int) -> list[int]:
    """The sizes one axis of a layer is timed at: every size the space reaches when they are few (the
    exact time of each: runtimes with blocked layouts are far from linear in the width, see the module
    docstring); else `GRID` of them (or of the range), evenly spaced, interpolated in between."""
    if reachable is not None and len(reachable) <= MAX_AXIS:
        return reachable
    if reachable is None:
        return _grid(smallest, full)
    return sorted({reachable[int(round(i))] for i in np.linspace(0, len(reachable) - 1, GRID)})


def _layer_call(prunable: PrunableModel, site, out_len: int, in_len: int, batch: int, device: torch.device,
                backend: str = "torch") -> tuple[Callable[[], object], torch.device]:
    """(a call running one conv/linear at the given kept sizes on random data, the device timing it).

    It is the layer alone as its layer-table entry exports it (`Layer.export`), compiled for `backend`;
    on torch, the entry's own eager call where it has one (`Layer.latency`)."""
    node = prunable.graph.node(site.node)
    in_shape = tensor_shape(node.all_input_nodes[0])
    layer = layer_named(site.kind)
    if backend == "torch" and layer.latency is not None:
        return layer.latency(site, in_shape, out_len, in_len, batch, device), device
    if layer.export is None:
        raise BackendError(f"layer {site.kind!r} has no `export` in the layer table: it cannot be timed alone")
    module, x = layer.export(site, in_shape, out_len, in_len, batch)
    return compile_call(module, x, backend, device)


def structure_key(prunable: PrunableModel, input_shape: Sequence[int], batch: int) -> str:
    """What a table's layers and features depend on, the same in every process: the space, the modules with
    their options and the traced code (`str` of the GraphModule), every node's output shape, the input.
    (Not `repr(graph)`: that is the object's address, and no cached table was ever found again.)"""
    gm = prunable.graph.gm
    shapes = [(node.name, tensor_shape(node)) for node in gm.graph.nodes]
    modules = re.sub(r" at 0x[0-9a-fA-F]+", "", str(gm))  # a module's repr may name an object by its address
    text = json.dumps([VERSION, list(input_shape), batch, prunable.space.to_json(), modules, shapes],
                      sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def table_key(prunable: PrunableModel, input_shape: Sequence[int], batch: int, device: torch.device,
              backend: str = "torch") -> str:
    """The cache key: the structure (`structure_key`), and where it was timed (device, threads, versions)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{torch.get_num_threads()}threads"
    runtime = [backend, version(backend)] if backend != "torch" else []
    text = json.dumps([structure_key(prunable, input_shape, batch), name, torch.__version__, *runtime])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def measure_table(prunable: PrunableModel, input_shape: Sequence[int], *, batch: int = 1,
                  device: torch.device | str = "cpu", cache_dir: Path | None = None,
                  progress: bool = True, backend: str = "torch", anchor: int = ANCHORS) -> LatencyTable:
    """Measure (or load from `cache_dir`, re-anchored by `anchor` timed instances of the full model) the table of
    `prunable` on `device` and the `backend` runtime."""
    device = torch.device(device)
    key = table_key(prunable, input_shape, batch, device, backend)
    path = cache_dir / f"latency-{key}.json" if cache_dir is not None else None
    if path is not None and path.exists():
        table = LatencyTable.from_json(prunable, json.loads(path.read_text()))
        if anchor:
            scale = table.anchor(device=device, instances=anchor)
            log.info("cached latency table re-anchored: predictions x%.3f (the full model timed now: %.3f ms, "
                     "predicted %.3f ms)", scale, table.meta["anchor"]["full_ms_measured"], table.base_ms / scale)
        return table
    graph = prunable.graph
    smallest, full = prunable.widths(prunable.space.smallest()), [g.size for g in graph.groups]
    choices = {gid: prunable.space[name].choices for name, gid in prunable.dimension_groups.items()}
    grids = []  # (site, kept output sizes, kept input sizes)
    for site in graph.sites:
        uses = {u.axis: u for u in graph.uses.get(site.weight, [])}
        shape = graph.tensors[site.weight].shape

        def span(axis: int) -> list[int]:
            use = uses.get(axis)
            if use is None:
                return [int(shape[axis])]
            return _axis(reachable_lengths(use, choices, graph.groups), kept_length(use, smallest, graph.groups),
                         kept_length(use, full, graph.groups))

        grids.append((site, span(0), span(1)))
    # layers alike (kind, options, input shape, sizes) are timed once: a ResNet repeats its blocks
    points, where = [], {}  # distinct configurations; (layer, out index, in index) -> position in points
    for k, (site, outs, ins) in enumerate(grids):
        in_shape = tuple(tensor_shape(graph.node(site.node).all_input_nodes[0]))
        for a, out_len in enumerate(outs):
            for b, in_len in enumerate(ins):
                config = (site.kind, json.dumps(site.options, sort_keys=True, default=str), in_shape, out_len, in_len)
                if config not in where:
                    where[config] = len(points)
                    points.append((site, out_len, in_len))
                where[k, a, b] = where[config]
    bar = tqdm(total=len(points) * (ROUNDS + 1), desc="measuring latency", disable=not progress, leave=False)
    calls = []
    for site, out_len, in_len in points:
        calls.append(_layer_call(prunable, site, out_len, in_len, batch, device, backend))
        bar.update()
    # every grid point timed once per round, rounds in alternating order: a slow spell spreads over all layers
    samples: list[list[float]] = [[] for _ in points]
    for r in range(ROUNDS):
        for j in (range(len(points)) if r % 2 == 0 else reversed(range(len(points)))):
            samples[j].append(1e3 * time_call(*calls[j], min_seconds=MIN_SECONDS / ROUNDS))
            bar.update()
    bar.close()
    del calls
    ms = [statistics.median(column) for column in samples]
    layers = [LayerGrid(site.weight, site.node, outs, ins, [[ms[where[k, a, b]] for b in range(len(ins))]
                                                             for a in range(len(outs))])
              for k, (site, outs, ins) in enumerate(grids)]
    table = LatencyTable(prunable, layers, (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), {})
    space = prunable.space
    calibration = [space.full(), space.smallest(), *(space.uniform(r, nearest=True) for r in (0.25, 0.5, 0.75))]
    calibration += spread(space, lambda c: table.features(c)[0], max(0, CALIBRATION - len(calibration)),
                          np.random.default_rng(1), exclude=calibration)
    # off eager torch, the full model is compiled REFERENCES times: one compiled session of a model runs a few
    # % faster or slower than another, and every ratio below divides by the full model's time
    copies = REFERENCES - 1 if backend != "torch" else 0
    modules = [materialize(prunable, c) for c in calibration] + [materialize(prunable, space.full())] * copies
    rounds = measure_rounds(modules, input_shape, batch=batch, device=device, rounds=ROUNDS, backend=backend)
    # each subnet's median ratio to the full model in the same round, times the full model's median: the
    # machine's drift between rounds cancels out of the fit
    reference = [statistics.median([row[0], *row[len(calibration):]]) for row in rounds]
    full_ms = statistics.median(reference)
    measured = [full_ms * statistics.median(row[i] / ref for row, ref in zip(rounds, reference))
                for i in range(len(calibration))]
    measured[0] = full_ms
    rows = [table.features(c)[:-1] for c in calibration]
    coefficients, hinge = fit_hinged(rows, measured)
    meta = {"hinge": hinge, "calibration": {"features": rows, "ms": measured},
            "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "backend": backend, "runtime": version(backend),
            "batch": batch, "input_shape": list(input_shape),
            "key": key, "structure": structure_key(prunable, input_shape, batch),
            "full_ms_measured": full_ms, "calibration_subnets": len(calibration)}
    table = LatencyTable(prunable, layers, coefficients, meta)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(table.to_json()))
    return table


def spread(space, cost: Callable[[Mapping[str, int]], float], count: int, rng: np.random.Generator, *,
           pool: int = 400, exclude: Sequence = ()) -> list:
    """`count` candidates spread evenly over `cost` among `pool` drawn ones: half uniform per dimension, half
    uniform width ratios at a random level jittered per group, blocks kept with a level-dependent chance
    (so that light, heavy and in-between subnets are all there, not only the middle a uniform draw gives)."""
    drawn = [space.sample(rng) for _ in range(pool // 2)]
    for _ in range(pool - pool // 2):
        level = rng.uniform(0.1, 1.0)
        ratios = [float(rng.uniform() < 0.5 + level / 2) if d.kind == KEEP else level + rng.normal(0, 0.15)
                  for d in space.dimensions]
        drawn.append(space.from_ratios(np.clip(np.asarray(ratios, dtype=float), 0.05, 1.0)))
    skip = set(exclude)
    drawn = sorted({c for c in drawn if c not in skip}, key=cost)
    if not drawn or count <= 0:
        return []
    picks = np.linspace(0, len(drawn) - 1, min(count, len(drawn))).round().astype(int)
    return [drawn[i] for i in sorted(set(picks))]


def fit_remainder(features: Sequence[Sequence[float]], measured: Sequence[float], *,
                  anchor: int | None = 0) -> tuple[float, ...]:
    """Non-negative least squares of `measured` (ms) on `features` (see `LatencyTable.features`), in
    relative error: what budgets read is a ratio (candidate / base), so a small subnet's 10% counts as
    much as the full model's. Row `anchor` (the full model) weighs four times as much as all the others
    together, so the table is all but exact at the base that relative budgets divide by (None: no such row).

    Columns are scaled to unit norm first so that E (thousands of elements) and the layers' sum (ms)
    weigh alike; every coefficient is physical (a cost can only add time).
    """
    from scipy.optimize import nnls

    y = np.asarray(measured, dtype=float)
    weights = 1.0 / np.maximum(y, 1e-9)
    if anchor is not None and len(y) > 1:
        weights[anchor] *= 4 * (len(y) - 1)
    design = np.asarray(features, dtype=float) * weights[:, None]
    norms = np.linalg.norm(design, axis=0)
    norms[norms == 0] = 1.0
    solution, _ = nnls(design / norms, y * weights)
    return tuple(float(v) for v in solution / norms)


def with_hinge(rows: np.ndarray, hinge: float) -> np.ndarray:
    """`rows` with the column `fit_hinged` adds: max(0, P - hinge), P their last column."""
    return np.column_stack([rows, np.maximum(0.0, rows[:, -1] - hinge)])


def fit_hinged(features: Sequence[Sequence[float]], measured: Sequence[float]) -> tuple[tuple[float, ...], float]:
    """`fit_remainder` with one more column, the weights beyond a hinge: max(0, P - hinge), P the last column.

    Weights that fit in the cache stay there between calls; beyond it every call streams them from memory,
    at a higher cost per element. The hinge is each calibration subnet's P in turn (and none: infinity);
    the one whose fit errs least (in relative squares) is kept. Returns (coefficients, hinge)."""
    rows = np.asarray(features, dtype=float)
    y = np.asarray(measured, dtype=float)
    best: tuple[float, tuple[float, ...], float] = (float("inf"), (), float("inf"))
    for hinge in [float("inf"), *sorted(set(rows[:, -1]))[:-1]]:
        design = with_hinge(rows, hinge)
        coefficients = fit_remainder(design, y)
        error = float(np.sum(((design @ np.asarray(coefficients) - y) / y) ** 2))
        if error < best[0] - 1e-12:
            best = (error, coefficients, hinge)
    return best[1], best[2]


def measure_rounds(modules: Sequence[torch.nn.Module], input_shape: Sequence[int], *, batch: int = 1,
                   device: torch.device | str = "cpu", rounds: int = ROUNDS, backend: str = "torch"
                   ) -> list[list[float]]:
    """Per round, the latency (ms) of each module (in the order given), timed in interleaved rounds.

    Every module is timed once per round on `backend`; the order alternates between rounds (forward,
    then backward), so that a slow spell of the machine, or a cache warmed by the previous module,
    weighs on all of them alike. Modules compared within one round (a subnet and the base) share its load.
    """
    device = torch.device(device)
    x = torch.randn(batch, *input_shape)
    calls = [compile_call(module, x, backend, device) for module in modules]
    samples = []
    for r in range(rounds):
        order = range(len(calls)) if r % 2 == 0 else reversed(range(len(calls)))
        row = [0.0] * len(calls)
        for i in order:
            row[i] = 1e3 * time_call(*calls[i])
        samples.append(row)
    return samples


def measure_latencies(modules: Sequence[torch.nn.Module], input_shape: Sequence[int], *, batch: int = 1,
                      device: torch.device | str = "cpu", rounds: int = ROUNDS, backend: str = "torch") -> list[float]:
    """Measured latency (ms) of each module: the median over `rounds` interleaved rounds of timings."""
    samples = measure_rounds(modules, input_shape, batch=batch, device=device, rounds=rounds, backend=backend)
    return [statistics.median(column) for column in zip(*samples)]
