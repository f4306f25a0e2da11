"""Layer-wise reconstruction: a materialized subnet's weights refit, by least squares, so that each layer's output
matches the full model's on training inputs (no labels, no SGD step).

Pruning removes channels; what the removed channels contributed to the next layer is lost, and the error compounds
through the depth (on ResNet-20 at 0.1 x FLOPs BN recalibration alone leaves held-out top-1 near chance). Here, in
the order the subnet runs its layers, each `nn.Linear`, `nn.Conv2d` and depthwise `nn.Conv2d` gets the weights
that map the inputs it now sees (the pruned model's, layers before it already refit) closest to the full model's
outputs at the channels it keeps:

    W = argmin ||X W - Y||^2 + lam ||W - W0||^2,  lam = ridge * mean(diag(X^T X))

(ridge regression toward the weights materialize copied, W0; a bias, where the layer has one, is fit with it;
with fewer rows than features, a wide layer on few large inputs, it is solved in the dual: `ridge_solve`).
This is the channel-pruning reconstruction of He et al. 2017 and ThiNet (Luo et al. 2017), applied after the
architecture is chosen. Which output channels a layer keeps is read from the space's slicing rules
(`spaces.slicing`), so it holds for residual streams, concatenations and grouped layouts alike. Layers it cannot
refit exactly as one linear map are left as they are: other grouped convolutions, modules called more than once in a
forward, and layers the full model does not run. A subnet whose output would end up further from the full model's
than before (on the same inputs) keeps its copied weights, so reconstruction never makes the match worse.

The inputs are joined into one batch and the subnet runs once: a hook on each layer refits it from the input it is
about to take, before it runs, so every later layer sees the refit ones' outputs (one forward for the whole subnet,
not one prefix forward per layer). The full model's outputs at every layer come from one forward too, and are kept.
At most `MAX_ROWS` positions per layer are used, the same for its features and its targets.

BatchNorm statistics are not touched: the caller recalibrates them as usual.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .derive import PrunableModel
from .slicing import slice_tensor

#: rows (output positions) kept per layer over all inputs: enough for any layer's features, a bounded cost
MAX_ROWS = 32768
#: full-model targets kept between calls (float32 bytes); beyond it, a layer's targets are computed again
CACHE_BYTES = 512 * 2 ** 20
#: the most values a layer's unfolded input holds at once (inputs are unfolded a few at a time beyond it)
UNFOLD_ELEMENTS = 2 ** 26
#: the default number of inputs, and the input positions (pixels) they may hold in all (see `default_inputs`)
DEFAULT_INPUTS, DEFAULT_POSITIONS, FEWEST_INPUTS = 1024, 2 ** 20, 32
#: the most input positions a caller may ask for: the inputs run as one batch (8 x the default: 256 224 x 224 images)
MAX_POSITIONS = 2 ** 23


def positions(example: torch.Tensor) -> int:
    """An input's positions, for inputs shaped like `example` (a batch): an image's pixels, a sequence's tokens."""
    shape = tuple(example.shape[1:])
    return math.prod(shape[-2:]) if len(shape) >= 3 else math.prod(shape[:1]) if len(shape) == 2 else 1


def default_inputs(example: torch.Tensor) -> int:
    """How many inputs reconstruction uses by default for inputs shaped like `example` (a batch): 1024, fewer for
    large inputs so that they hold at most 2^20 positions in all (an image's pixels, a sequence's tokens), at
    least 32: 1024 on 8 x 8 digits and 32 x 32 CIFAR images, 256 at 64 x 64, 32 at 224 x 224. They run as one
    batch, so its memory is one forward's on that many positions."""
    return max(FEWEST_INPUTS, min(DEFAULT_INPUTS, DEFAULT_POSITIONS // max(positions(example), 1)))


class _Stop(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward is not run."""


@dataclass
class Reconstruction:
    """What one call did: the layers refit, and the output's distance to the full model before and after."""

    layers: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    error_before: float = math.nan
    error_after: float = math.nan
    kept: bool = False  # False: the refit weights matched worse and the copied ones were put back


def kept_indices(weight: torch.Tensor, uses, widths: Sequence[int], groups, axis: int) -> torch.Tensor:
    """The indices along `axis` of the full `weight` that the subnet at `widths` keeps, in its order."""
    shape = [1] * weight.dim()
    shape[axis] = weight.shape[axis]
    index = torch.arange(weight.shape[axis], dtype=torch.float64).view(shape).expand(weight.shape)
    cut = slice_tensor(index, uses, widths, groups)
    at = [0] * weight.dim()
    at[axis] = slice(None)
    return cut[tuple(at)].long()


def _refittable(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    return type(layer) is nn.Conv2d and isinstance(layer.padding, tuple) and (
        layer.groups == 1 or layer.groups == layer.in_channels == layer.out_channels) and (
        layer.padding_mode == "zeros")


def _depthwise(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Conv2d) and layer.groups > 1


def _pick(total: int, rows: int, device) -> torch.Tensor | None:
    """Which `rows` of a layer's `total` positions (over the batch) are kept, in increasing order: all (None), or a
    seeded random subset (the same for a layer's features and its targets, which have as many positions)."""
    if total <= rows:
        return None
    return torch.randperm(total, generator=torch.Generator().manual_seed(0))[:rows].sort().values.to(device)


def _columns(layer: nn.Module, x: torch.Tensor, rows: int) -> torch.Tensor:
    """The layer's input as rows of features, at most `rows` of them: (positions, features); depthwise:
    (positions, channels, k*k). A position is (input n, output pixel l), numbered n * L + l. Inputs are unfolded a
    few at a time (at most `UNFOLD_ELEMENTS` values), so memory stays bounded on large images."""
    if isinstance(layer, nn.Linear):
        flat = x.reshape(-1, x.shape[-1])
        keep = _pick(len(flat), rows, x.device)
        return flat if keep is None else flat.index_select(0, keep)

    def unfold(part):
        return F.unfold(part, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # n, C*k*k, L

    n = x.shape[0]
    ck, length = unfold(x[:1]).shape[1:]
    keep = _pick(n * length, rows, x.device)
    if keep is None:
        cols = unfold(x).transpose(1, 2).reshape(n * length, ck)
    else:
        sample, position = keep // length, keep % length
        step = max(1, UNFOLD_ELEMENTS // (ck * length))
        parts = []
        for start in range(0, n, step):
            inside = (sample >= start) & (sample < start + step)
            if inside.any():
                parts.append(unfold(x[start:start + step])[sample[inside] - start, :, position[inside]])
        cols = torch.cat(parts)
    if _depthwise(layer):
        c = layer.in_channels
        return cols.view(len(cols), c, ck // c)
    return cols


def _rows(y: torch.Tensor, rows: int) -> torch.Tensor:
    """A layer's output (N, C, H, W, or (..., C) for a Linear's) as at most `rows` rows: (positions, channels)."""
    if y.dim() != 4:
        flat = y.reshape(-1, y.shape[-1])
        keep = _pick(len(flat), rows, y.device)
        return flat if keep is None else flat.index_select(0, keep)
    n, c = y.shape[:2]
    length = y.shape[2] * y.shape[3]
    keep = _pick(n * length, rows, y.device)
    if keep is None:
        return y.permute(0, 2, 3, 1).reshape(-1, c)
    return y.reshape(n, c, length)[keep // length, :, keep % length]


class Reconstructor:
    """Refits materialized subnets of one prunable model on fixed inputs (see the module docstring).

    `inputs` (batches) are joined into one batch. `full` runs the full model (default: the prunable model's traced
    graph, with its current weights and BatchNorm statistics: give it the base model's). The full model's outputs
    at each layer are computed once, in one forward, and kept (up to `CACHE_BYTES`; layers beyond it are computed
    again when refit), so refitting many subnets of one search costs little more than their own forwards."""

    def __init__(self, prunable: PrunableModel | None, inputs: Sequence[torch.Tensor], *, ridge: float = 0.1,
                 full: nn.Module | None = None, max_rows: int = MAX_ROWS):
        if not inputs:
            raise ValueError("reconstruction needs at least one batch of inputs")
        if prunable is None and full is None:
            raise ValueError("reconstruction needs the full model (a prunable model, or full=)")
        self.prunable, self.ridge, self.max_rows = prunable, ridge, max_rows
        self.inputs = list(inputs)
        self.batch = self.inputs[0] if len(self.inputs) == 1 else torch.cat(self.inputs)
        self.full = full if full is not None else prunable.graph.gm
        self._targets: dict[str, torch.Tensor] = {}
        self._filled = False
        self._full_output: object = None

    # ------------------------------------------------------------------ the full model's outputs
    def _fill(self) -> None:
        """One forward of the full model keeps every layer's output rows, in the order they run, up to
        `CACHE_BYTES` (a layer run twice keeps its first call's)."""
        self._filled = True
        cached = 0

        def keep(name):
            def hook(_layer, _args, out):
                nonlocal cached
                if name in self._targets or not isinstance(out, torch.Tensor):
                    return
                rows = _rows(out, self.max_rows).float()
                if cached + rows.numel() * 4 <= CACHE_BYTES:
                    self._targets[name] = rows
                    cached += rows.numel() * 4
            return hook

        handles = [m.register_forward_hook(keep(n)) for n, m in self.full.named_modules()
                   if isinstance(m, (nn.Linear, nn.Conv2d))]
        try:
            self.full(self.batch)
        finally:
            for h in handles:
                h.remove()

    def _full_targets(self, name: str, layer: nn.Module) -> torch.Tensor:
        if not self._filled:
            self._fill()
        if name in self._targets:
            return self._targets[name]
        got: list[torch.Tensor] = []

        def stop(_m, _args, out):
            got.append(out)
            raise _Stop

        handle = layer.register_forward_hook(stop)
        try:
            self.full(self.batch)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not got:
            raise LookupError(f"the full model's {name} did not run")
        return _rows(got[0], self.max_rows).float()

    # ------------------------------------------------------------------ refitting
    def _order(self, module: nn.Module) -> tuple[list[str], set[str]]:
        """The subnet's Linear and Conv2d layers in the order they run, and those run more than once."""
        names = {m: n for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
        calls: list[str] = []
        handles = [m.register_forward_pre_hook(lambda m, a: calls.append(names[m])) for m in names]
        try:
            with torch.no_grad():
                module(self.batch[:2])
        finally:
            for h in handles:
                h.remove()
        once = list(dict.fromkeys(calls))
        return once, {n for n in once if calls.count(n) > 1}

    def _output_error(self, module: nn.Module) -> float:
        """Mean squared distance of the subnet's output to the full model's over the inputs (NaN: not comparable)."""
        if self._full_output is None:
            self._full_output = self.full(self.batch)
        ours, theirs = module(self.batch), self._full_output
        if not (isinstance(ours, torch.Tensor) and isinstance(theirs, torch.Tensor)) or ours.shape != theirs.shape:
            return math.nan
        return float((ours.double() - theirs.double()).pow(2).sum()) / max(ours.numel(), 1)

    def __call__(self, module: nn.Module, candidate: Mapping[str, int]) -> Reconstruction:
        """Refit `module` (the materialized `candidate` of the prunable model) in place; what was done."""
        if self.prunable is None or self.prunable.outside is not None:  # a submodule's space: not the graph's layers
            return Reconstruction()
        graph = self.prunable.graph
        widths = self.prunable.widths(self.prunable.space.validate(candidate))
        return self.refit(module, lambda name, full_layer: kept_indices(
            full_layer.weight, graph.uses.get(f"{name}.weight", []), widths, graph.groups, 0))

    @torch.no_grad()
    def refit(self, module: nn.Module, out_index: Callable[[str, nn.Module], torch.Tensor]) -> Reconstruction:
        """Refit `module`, a pruned copy of the full model with its module names, in place; `out_index(name,
        full_layer)` gives the full layer's output channels that the pruned layer keeps, in its order."""
        report = Reconstruction()
        full_modules = dict(self.full.named_modules())
        modes = [(m, m.training) for m in (module, self.full)]
        module.eval()
        self.full.eval()
        handles = []
        try:
            order, repeated = self._order(module)
            own = dict(module.named_modules())
            copied = {k: v.clone() for k, v in module.state_dict().items()}
            report.error_before = self._output_error(module)
            for name in order:
                layer, full_layer = own[name], full_modules.get(name)
                if (name in repeated or full_layer is None or type(full_layer) is not type(layer)
                        or not _refittable(layer)):
                    report.skipped.append(name)
                    continue
                kept = out_index(name, full_layer)
                if len(kept) != layer.weight.shape[0]:
                    report.skipped.append(name)
                    continue
                handles.append(layer.register_forward_pre_hook(self._hook(name, full_layer, kept)))
                report.layers.append(name)
            module(self.batch)  # each hook refits its layer from the input it is about to take
            for h in handles:
                h.remove()
            handles = []
            report.error_after = self._output_error(module)
            report.kept = not (report.error_after > report.error_before) and all(
                torch.isfinite(p).all() for p in module.parameters())
            if not report.kept:
                module.load_state_dict(copied)
        finally:
            for h in handles:
                h.remove()
            for m, training in modes:
                m.train(training)
        return report

    def _hook(self, name: str, full_layer: nn.Module, kept: torch.Tensor):
        def hook(layer, args):
            self._refit(layer, args[0], self._full_targets(name, full_layer), kept)
        return hook

    def _refit(self, layer: nn.Module, x: torch.Tensor, target: torch.Tensor, out_index: torch.Tensor) -> None:
        """Set `layer`'s weights (and bias) to the ridge solution mapping its input `x` to `target`'s kept rows."""
        cols = _columns(layer, x, self.max_rows).double()
        y = target.index_select(1, out_index.to(target.device)).double()
        weight = layer.weight
        w0 = weight.reshape(weight.shape[0], -1).double()
        if _depthwise(layer):  # one small problem per channel: (channels, k*k, k*k)
            if layer.bias is not None:
                y = y - layer.bias.double()
            gram, cross = torch.einsum("rck,rcj->ckj", cols, cols), torch.einsum("rck,rc->ck", cols, y)
            lam = self.ridge * torch.diagonal(gram, dim1=1, dim2=2).mean(1).clamp_min(1e-12)
            eye = torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
            solved = torch.linalg.solve(gram + lam.view(-1, 1, 1) * eye, (cross + lam.view(-1, 1) * w0).unsqueeze(-1))
            weight.copy_(solved.squeeze(-1).reshape(weight.shape).to(weight.dtype))
            return
        if layer.bias is not None:
            cols = torch.cat([cols, cols.new_ones(len(cols), 1)], 1)
            w0 = torch.cat([w0, layer.bias.double().view(-1, 1)], 1)
        solved = ridge_solve(cols, y, w0, self.ridge)
        if layer.bias is not None:
            layer.bias.copy_(solved[:, -1].to(layer.bias.dtype))
            solved = solved[:, :-1]
        weight.copy_(solved.reshape(weight.shape).to(weight.dtype))


def ridge_solve(cols: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, ridge: float, *,
                dual: bool | None = None) -> torch.Tensor:
    """argmin_W ||cols W^T - y||^2 + lam ||W - W0||^2 with lam = ridge * mean(diag(cols^T cols)); W is (outputs,
    features) like `w0`. Fewer rows than features (a wide Linear on few inputs) is solved in the dual,
    W = W0 + ((cols cols^T + lam I)^-1 (y - cols W0^T))^T cols, a rows x rows system instead of features x
    features (the same solution; `dual` forces either form)."""
    rows, features = cols.shape
    lam = (ridge * cols.pow(2).sum() / features).clamp_min(1e-12)
    if dual if dual is not None else rows < features:
        kernel = cols @ cols.T
        kernel.diagonal().add_(lam)
        return w0 + torch.linalg.solve(kernel, y - cols @ w0.T).T @ cols
    gram = cols.T @ cols
    gram.diagonal().add_(lam)
    return torch.linalg.solve(gram, cols.T @ y + lam * w0.T).T
