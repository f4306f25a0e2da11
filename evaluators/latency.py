"""A per-layer latency table measured on the target device, and latency predicted from widths alone.

Measured once per (device, torch version, model structure, input shape, batch) and cached on disk:
- every conv/linear layer is timed on its own, on a grid of kept output x kept input sizes (its real
  kernel, stride, groups and input size), warm-up then the median of repeated runs; a candidate's
  layer time is the bilinear interpolation of that grid at its sizes;
- the remainder (normalization, activations, additions, pooling: everything but those layers) costs
  a fixed dispatch overhead per op (what dominates small models and small inputs) plus a memory-bound
  part, so it is modelled as `a + c x N + b x E`, where N is the number of live ops (removed residual
  blocks take theirs away) and E the number of elements those ops touch (kept channels x positions,
  summed over the live ops). `a`, `b`, `c` are fitted by non-negative least squares to end-to-end
  timings of 24 materialized calibration subnets (full, smallest, uniform ratios, random), together
  with a scale `alpha` on the layers' summed times (layers timed alone run cache-hot, and that bias
  is shared). The grid points of all layers are timed in interleaved rounds (alternating order, the
  median kept), and so are the calibration subnets, each taken as its median ratio to the full model
  in the same round: a slow spell of the machine spreads over all of them instead of skewing one.
Predicted latency = scale x (alpha x (sum of the live layers' interpolated times) + a + c x N + b x E).
No forward pass at pricing time. On CUDA the timings use CUDA events.

The runtime (`backend`: torch, onnxruntime, openvino; see `latency_backends`) is the one the user deploys
with: every layer configuration and calibration subnet is exported to it and timed there.

A cached table is re-anchored when it is loaded: `ANCHORS` subnets (full, smallest, half) are timed
directly and `scale` is the median of measured / predicted over them, so that a table measured while the
machine was quieter or busier does not silently mislead an absolute budget (`12ms`). Relative budgets
(`0.5latency`) do not move with `scale`; what the exported subnet measures is checked at the end of a run
(`search.latency_check`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from spaces.derive import PrunableModel
from spaces.materialize import materialize
from spaces.graph import tensor_shape
from spaces.layers import layer_named
from spaces.slicing import kept_length

from .latency_backends import compile_call, layer_module, version

log = logging.getLogger(__name__)
GRID = 5             # sizes per axis in each layer's grid
CALIBRATION = 24     # end-to-end timings the remainder is fitted to
ROUNDS = 3           # interleaved rounds of end-to-end timings (the median is kept)
VERSION = 5          # of the table's format and method (part of the cache key)
MIN_SECONDS = 0.02   # time spent per timing (inner loops until then); tests lower it
ANCHORS = 3          # subnets timed directly to re-anchor a cached table (0: never)


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

    def at(self, out_len: float, in_len: float) -> float:
        """Bilinear interpolation (linear extrapolation is never needed: sizes lie inside the grid)."""
        def locate(axis: list[int], v: float) -> tuple[int, float]:
            if len(axis) == 1:
                return 0, 0.0
            i = int(np.clip(np.searchsorted(axis, v) - 1, 0, len(axis) - 2))
            return i, (v - axis[i]) / (axis[i + 1] - axis[i])

        i, a = locate(self.outs, out_len)
        j, b = locate(self.ins, in_len)
        m = self.ms
        i1, j1 = min(i + 1, len(self.outs) - 1), min(j + 1, len(self.ins) - 1)
        return ((1 - a) * (1 - b) * m[i][j] + a * (1 - b) * m[i1][j] + (1 - a) * b * m[i][j1] + a * b * m[i1][j1])


class LatencyTable:
    """Predicts a candidate's latency (ms) from its widths; see the module docstring."""

    def __init__(self, prunable: PrunableModel, layers: Sequence[LayerGrid], remainder: Sequence[float],
                 meta: Mapping[str, object]):
        # fitted: latency = alpha x (layers' timed sum) + a + c x N + b x E
        self.prunable, self.layers, self.remainder = prunable, list(layers), tuple(remainder)
        self.meta = dict(meta)
        self.scale = 1.0  # the re-anchoring factor (see the module docstring); not saved with the table
        graph = prunable.graph
        uses = graph.uses
        self._axes = [(next((u for u in uses.get(g.weight, []) if u.axis == 0), None),
                       next((u for u in uses.get(g.weight, []) if u.axis == 1), None),
                       tuple(graph.tensors[g.weight].shape[:2])) for g in self.layers]
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
        """What the fitted coefficients multiply: layers' timed sum (ms), 1, N, E (see the module docstring)."""
        widths, keeps = self.prunable.widths(candidate), self.prunable.keeps(candidate)
        return [self._layers_ms(widths, keeps), 1.0, float(self._calls_live(keeps)),
                float(self._elements(widths, keeps))]

    def calls(self, candidate: Mapping[str, int]) -> int:
        """N: the live ops that are not timed layers."""
        return self._calls_live(self.prunable.keeps(candidate))

    def _calls_live(self, keeps: Sequence[bool]) -> int:
        return sum(all(keeps[b] for b in blocks) for blocks in self._calls)

    def _elements(self, widths: Sequence[int], keeps: Sequence[bool]) -> int:
        """E: the elements the non-conv/linear ops touch (per sample)."""
        return sum(per * sum(widths[seg.group] * seg.inner for seg in layout)
                   for layout, per, blocks in self._ops if all(keeps[b] for b in blocks))

    def _layers_ms(self, widths: Sequence[int], keeps: Sequence[bool]) -> float:
        """The live conv/linear layers' times, each interpolated in its grid at its kept sizes."""
        groups = self.prunable.graph.groups
        total = 0.0
        for grid, (out_use, in_use, full), blocks in zip(self.layers, self._axes, self._blocks):
            if all(keeps[b] for b in blocks):
                out_len = kept_length(out_use, widths, groups) if out_use else full[0]
                in_len = kept_length(in_use, widths, groups) if in_use else full[1]
                total += grid.at(out_len, in_len)
        return total

    def predict(self, candidate: Mapping[str, int]) -> float:
        return self.scale * float(np.dot(self.remainder, self.features(candidate)))

    @property
    def backend(self) -> str:
        return str(self.meta.get("backend", "torch"))

    def anchor(self, *, device: torch.device | str = "cpu", subnets: int = ANCHORS) -> float:
        """Rescale predictions by the median measured / predicted latency of `subnets` subnets timed now."""
        space = self.prunable.space
        chosen = [space.full(), space.smallest(), space.uniform(0.5, nearest=True)][:subnets]
        self.scale = 1.0
        measured = measure_latencies([materialize(self.prunable, c) for c in chosen], self.meta["input_shape"],
                                     batch=int(self.meta["batch"]), device=device, backend=self.backend)
        self.scale = float(statistics.median(m / self.predict(c) for m, c in zip(measured, chosen)))
        self.meta["anchor"] = {"scale": self.scale, "subnets": len(chosen), "full_ms_measured": measured[0]}
        return self.scale

    @property
    def base_ms(self) -> float:
        return self.predict(self.prunable.space.full())

    def to_json(self) -> dict:
        return {"meta": self.meta, "remainder": list(self.remainder), "layers": [vars(g) for g in self.layers]}

    @classmethod
    def from_json(cls, prunable: PrunableModel, data: Mapping) -> LatencyTable:
        return cls(prunable, [LayerGrid(**g) for g in data["layers"]], data["remainder"], data["meta"])


def _grid(smallest: int, full: int) -> list[int]:
    return sorted({int(round(v)) for v in np.linspace(smallest, full, GRID)})


def _layer_call(prunable: PrunableModel, site, out_len: int, in_len: int, batch: int, device: torch.device,
                backend: str = "torch") -> tuple[Callable[[], object], torch.device]:
    """(a call running one conv/linear at the given kept sizes on random data, the device timing it).

    On torch it is the layer-table entry's own call; on another runtime, the same layer as a module
    exported to it."""
    node = prunable.graph.node(site.node)
    in_shape = tensor_shape(node.all_input_nodes[0])
    if backend == "torch":
        return layer_named(site.kind).latency(site, in_shape, out_len, in_len, batch, device), device
    module, x = layer_module(site.kind, site.options, in_shape, out_len, in_len, batch)
    return compile_call(module, x, backend, device)


def table_key(prunable: PrunableModel, input_shape: Sequence[int], batch: int, device: torch.device,
              backend: str = "torch") -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{torch.get_num_threads()}threads"
    structure = json.dumps(prunable.space.to_json(), sort_keys=True) + repr(prunable.graph.gm.graph)
    runtime = [backend, version(backend)] if backend != "torch" else []
    text = json.dumps([VERSION, name, torch.__version__, list(input_shape), batch, structure, *runtime])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def measure_table(prunable: PrunableModel, input_shape: Sequence[int], *, batch: int = 1,
                  device: torch.device | str = "cpu", cache_dir: Path | None = None,
                  progress: bool = True, backend: str = "torch", anchor: int = ANCHORS) -> LatencyTable:
    """Measure (or load from `cache_dir`, re-anchored by `anchor` direct timings) the latency table of
    `prunable` on `device` and the `backend` runtime."""
    device = torch.device(device)
    key = table_key(prunable, input_shape, batch, device, backend)
    path = cache_dir / f"latency-{key}.json" if cache_dir is not None else None
    if path is not None and path.exists():
        table = LatencyTable.from_json(prunable, json.loads(path.read_text()))
        if anchor:
            scale = table.anchor(device=device, subnets=anchor)
            log.info("cached latency table re-anchored: predictions x%.3f (%d subnets timed now)", scale, anchor)
        return table
    graph = prunable.graph
    smallest, full = prunable.widths(prunable.space.smallest()), [g.size for g in graph.groups]
    grids = []  # (site, kept output sizes, kept input sizes)
    for site in graph.sites:
        uses = {u.axis: u for u in graph.uses.get(site.weight, [])}
        shape = graph.tensors[site.weight].shape

        def span(axis: int) -> list[int]:
            use = uses.get(axis)
            if use is None:
                return [int(shape[axis])]
            return _grid(kept_length(use, smallest, graph.groups), kept_length(use, full, graph.groups))

        grids.append((site, span(0), span(1)))
    points = [(k, a, b) for k, (_, outs, ins) in enumerate(grids) for a in range(len(outs)) for b in range(len(ins))]
    bar = tqdm(total=len(points) * (ROUNDS + 1), desc="measuring latency", disable=not progress, leave=False)
    calls = []
    for k, a, b in points:
        site, outs, ins = grids[k]
        calls.append(_layer_call(prunable, site, outs[a], ins[b], batch, device, backend))
        bar.update()
    # every grid point timed once per round, rounds in alternating order: a slow spell spreads over all layers
    samples: list[list[float]] = [[] for _ in points]
    for r in range(ROUNDS):
        for j in (range(len(points)) if r % 2 == 0 else reversed(range(len(points)))):
            samples[j].append(1e3 * time_call(*calls[j], min_seconds=MIN_SECONDS / ROUNDS))
            bar.update()
    bar.close()
    del calls
    ms = {point: statistics.median(column) for point, column in zip(points, samples)}
    layers = [LayerGrid(site.weight, site.node, outs, ins, [[ms[k, a, b] for b in range(len(ins))]
                                                             for a in range(len(outs))])
              for k, (site, outs, ins) in enumerate(grids)]
    table = LatencyTable(prunable, layers, (1.0, 0.0, 0.0, 0.0), {})
    space, rng = prunable.space, np.random.default_rng(0)
    calibration = [space.full(), space.smallest(), *(space.uniform(r, nearest=True) for r in (0.25, 0.5, 0.75))]
    calibration += [space.sample(rng) for _ in range(max(0, CALIBRATION - len(calibration)))]
    rounds = measure_rounds([materialize(prunable, c) for c in calibration], input_shape, batch=batch, device=device,
                            rounds=ROUNDS, backend=backend)
    # each subnet's median ratio to the full model in the same round, times the full model's median: the
    # machine's drift between rounds cancels out of the fit
    full_ms = statistics.median(row[0] for row in rounds)
    measured = [full_ms * statistics.median(row[i] / row[0] for row in rounds) for i in range(len(calibration))]
    coefficients = fit_remainder([table.features(c) for c in calibration], measured)
    meta = {"device": str(device), "torch": torch.__version__, "backend": backend, "runtime": version(backend),
            "batch": batch, "input_shape": list(input_shape),
            "key": key, "full_ms_measured": full_ms, "calibration_subnets": len(calibration)}
    table = LatencyTable(prunable, layers, coefficients, meta)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table.to_json()))
    return table


def fit_remainder(features: Sequence[Sequence[float]], measured: Sequence[float]) -> tuple[float, ...]:
    """Non-negative least squares of `measured` (ms) on `features` (see `LatencyTable.features`).

    Columns are scaled to unit norm first so that E (thousands of elements) and the layers' sum (ms)
    weigh alike; every coefficient is physical (a cost can only add time).
    """
    from scipy.optimize import nnls

    design = np.asarray(features, dtype=float)
    norms = np.linalg.norm(design, axis=0)
    norms[norms == 0] = 1.0
    solution, _ = nnls(design / norms, np.asarray(measured, dtype=float))
    return tuple(float(v) for v in solution / norms)


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
