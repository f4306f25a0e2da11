"""Layer-wise reconstruction: a materialized subnet's weights refit, by least squares, so that each layer's output
matches the full model's on training inputs (no labels, no SGD step).

Pruning removes channels; what the removed channels contributed to the next layer is lost, and the error compounds
through the depth (on ResNet-20 at 0.1 x FLOPs BN recalibration alone leaves held-out top-1 near chance). Here, in
the order the subnet runs its layers, each `nn.Linear`, `nn.Conv2d` and depthwise `nn.Conv2d` gets the weights
that map the inputs it now sees (the pruned model's, layers before it already refit) closest to the full model's
outputs at the channels it keeps:

    W = argmin ||X W - Y||^2 + lam ||W - W0||^2,  lam = ridge * mean(diag(X^T X))

(ridge regression toward the weights materialize copied, W0; a bias, where the layer has one, is fit with it).
This is the channel-pruning reconstruction of He et al. 2017 and ThiNet (Luo et al. 2017), applied after the
architecture is chosen. Which output channels a layer keeps is read from the space's slicing rules
(`spaces.slicing`), so it holds for residual streams, concatenations and grouped layouts alike. Layers it cannot
refit exactly as one linear map are left as they are: other grouped convolutions, modules called more than once in a
forward, and layers the full model does not run. A subnet whose output would end up further from the full model's
than before (on the same inputs) keeps its copied weights, so reconstruction never makes the match worse.

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
#: the default number of inputs, and the input positions (pixels) they may hold in all (see `default_inputs`)
DEFAULT_INPUTS, DEFAULT_POSITIONS, FEWEST_INPUTS = 1024, 2 ** 20, 32


def default_inputs(example: torch.Tensor) -> int:
    """How many inputs reconstruction uses by default for inputs shaped like `example` (a batch): 1024, fewer for
    large inputs so that they hold at most 2^20 positions in all (an image's pixels, a sequence's tokens), at
    least 32: 1024 on 8 x 8 digits and 32 x 32 CIFAR images, 256 at 64 x 64, 32 at 224 x 224. Every refit layer
    runs the subnet up to itself, so the cost grows with the inputs' positions, not their count."""
    shape = tuple(example.shape[1:])
    positions = math.prod(shape[-2:]) if len(shape) >= 3 else math.prod(shape[:1]) if len(shape) == 2 else 1
    return max(FEWEST_INPUTS, min(DEFAULT_INPUTS, DEFAULT_POSITIONS // max(positions, 1)))


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


def _columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of features: (positions, features); depthwise: (positions, channels, k*k)."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # N, C*k*k, L
    n, ck, length = cols.shape
    if _depthwise(layer):
        c = layer.in_channels
        return cols.view(n, c, ck // c, length).permute(0, 3, 1, 2).reshape(n * length, c, ck // c)
    return cols.transpose(1, 2).reshape(n * length, ck)


def _rows(y: torch.Tensor, linear: bool) -> torch.Tensor:
    """A layer's output as rows: (positions, channels)."""
    return y.reshape(-1, y.shape[-1]) if linear else y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])


class Reconstructor:
    """Refits materialized subnets of one prunable model on fixed inputs (see the module docstring).

    `full` runs the full model (default: the prunable model's traced graph, with its current weights and BatchNorm
    statistics: give it the base model's). The full model's outputs at each layer are computed once and kept (up to
    `CACHE_BYTES`), so refitting many subnets of one search costs little more than their own forwards."""

    def __init__(self, prunable: PrunableModel | None, inputs: Sequence[torch.Tensor], *, ridge: float = 0.1,
                 full: nn.Module | None = None, max_rows: int = MAX_ROWS):
        if not inputs:
            raise ValueError("reconstruction needs at least one batch of inputs")
        if prunable is None and full is None:
            raise ValueError("reconstruction needs the full model (a prunable model, or full=)")
        self.prunable, self.inputs, self.ridge = prunable, list(inputs), ridge
        self.full = full if full is not None else prunable.graph.gm
        self.per_batch = max(1, math.ceil(max_rows / len(self.inputs)))
        self._targets: dict[str, list[torch.Tensor]] = {}
        self._cached = 0

    # ------------------------------------------------------------------ capturing activations
    @staticmethod
    def _capture(model: nn.Module, layer: nn.Module, x: torch.Tensor, output: bool) -> torch.Tensor:
        got: list[torch.Tensor] = []

        def pre(_m, args):
            got.append(args[0])
            raise _Stop

        def post(_m, _args, out):
            got.append(out)
            raise _Stop

        handle = layer.register_forward_hook(post) if output else layer.register_forward_pre_hook(pre)
        try:
            model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not got:
            raise LookupError("the layer did not run")
        return got[0]

    def _pick(self, total: int, batch: int, device) -> torch.Tensor | None:
        """The rows kept of a batch's `total` positions (seeded by the batch, so features and targets agree)."""
        if total <= self.per_batch:
            return None
        generator = torch.Generator().manual_seed(batch)
        return torch.randperm(total, generator=generator)[:self.per_batch].to(device)

    def _full_targets(self, name: str, layer: nn.Module) -> list[torch.Tensor]:
        if name in self._targets:
            return self._targets[name]
        linear = isinstance(layer, nn.Linear)
        targets = []
        for b, x in enumerate(self.inputs):
            rows = _rows(self._capture(self.full, layer, x, output=True), linear)
            keep = self._pick(len(rows), b, rows.device)
            targets.append((rows if keep is None else rows.index_select(0, keep)).float())
        size = sum(t.numel() * 4 for t in targets)
        if self._cached + size <= CACHE_BYTES:
            self._targets[name] = targets
            self._cached += size
        return targets

    # ------------------------------------------------------------------ refitting
    def _order(self, module: nn.Module) -> tuple[list[str], set[str]]:
        """The subnet's Linear and Conv2d layers in the order they run, and those run more than once."""
        names = {m: n for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
        calls: list[str] = []
        handles = [m.register_forward_pre_hook(lambda m, a: calls.append(names[m])) for m in names]
        try:
            with torch.no_grad():
                module(self.inputs[0][:2])
        finally:
            for h in handles:
                h.remove()
        once = list(dict.fromkeys(calls))
        return once, {n for n in once if calls.count(n) > 1}

    def _output_error(self, module: nn.Module) -> float:
        """Mean squared distance of the subnet's output to the full model's over the inputs (NaN: not comparable)."""
        total, count = 0.0, 0
        for x in self.inputs:
            ours, theirs = module(x), self.full(x)
            if not (isinstance(ours, torch.Tensor) and isinstance(theirs, torch.Tensor)) or ours.shape != theirs.shape:
                return math.nan
            total += float((ours.double() - theirs.double()).pow(2).sum())
            count += ours.numel()
        return total / max(count, 1)

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
                self._refit(module, name, layer, full_layer, kept)
                report.layers.append(name)
            report.error_after = self._output_error(module)
            report.kept = not (report.error_after > report.error_before) and all(
                torch.isfinite(p).all() for p in module.parameters())
            if not report.kept:
                module.load_state_dict(copied)
        finally:
            for m, training in modes:
                m.train(training)
        return report

    def _refit(self, module: nn.Module, name: str, layer: nn.Module, full_layer: nn.Module,
               out_index: torch.Tensor) -> None:
        linear, depthwise = isinstance(layer, nn.Linear), _depthwise(layer)
        targets = self._full_targets(name, full_layer)
        gram = cross = None
        for b, (x, target) in enumerate(zip(self.inputs, targets)):
            cols = _columns(layer, self._capture(module, layer, x, output=False))
            keep = self._pick(len(cols), b, cols.device)
            if keep is not None:
                cols = cols.index_select(0, keep)
            y = target.index_select(1, out_index.to(target.device)).double()
            cols = cols.double()
            if depthwise:  # one small problem per channel: (channels, k*k, k*k)
                if layer.bias is not None:
                    y = y - layer.bias.double()
                g, c = torch.einsum("rck,rcj->ckj", cols, cols), torch.einsum("rck,rc->ck", cols, y)
            else:
                if layer.bias is not None:
                    cols = torch.cat([cols, cols.new_ones(len(cols), 1)], 1)
                g, c = cols.T @ cols, cols.T @ y
            gram, cross = (g, c) if gram is None else (gram + g, cross + c)
        weight = layer.weight
        if depthwise:
            w0 = weight.reshape(weight.shape[0], -1).double()
            lam = self.ridge * torch.diagonal(gram, dim1=1, dim2=2).mean(1).clamp_min(1e-12)
            eye = torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
            solved = torch.linalg.solve(gram + lam.view(-1, 1, 1) * eye, (cross + lam.view(-1, 1) * w0).unsqueeze(-1))
            weight.copy_(solved.squeeze(-1).reshape(weight.shape).to(weight.dtype))
            return
        w0 = weight.reshape(weight.shape[0], -1).double()
        if layer.bias is not None:
            w0 = torch.cat([w0, layer.bias.double().view(-1, 1)], 1)
        lam = self.ridge * torch.diagonal(gram).mean().clamp_min(1e-12)
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        solved = torch.linalg.solve(gram + lam * eye, cross + lam * w0.T).T
        if layer.bias is not None:
            layer.bias.copy_(solved[:, -1].to(layer.bias.dtype))
            solved = solved[:, :-1]
        weight.copy_(solved.reshape(weight.shape).to(weight.dtype))
