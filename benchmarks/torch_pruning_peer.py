"""Torch-Pruning, the peer: its global magnitude and uniform L1 pruning driven to a FLOPs target.

A benchmark-only dependency (`pip install -e ".[bench]"`). Torch-Pruning prunes by a channel ratio,
not by FLOPs, so `prune_to_flops` bisects the ratio (each try on a fresh deep copy of the base model)
and keeps the largest subnet within the target, the way a user would drive it to a budget:

- `global`: `GroupMagnitudeImportance(p=2)` ranked across all layers (`global_pruning=True`), the
  library's default importance; layers keep at least 5% of their channels (`max_pruning_ratio`);
- `uniform`: `GroupMagnitudeImportance(p=1)` (L1) with the same ratio in every layer.

The classifier (the last Linear) is never pruned: its outputs are the classes. FLOPs are counted by
`torch.utils.flop_counter.FlopCounterMode` for one sample, like the engine's cost model.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

METHODS = {"global": "Torch-Pruning global magnitude", "uniform": "Torch-Pruning uniform L1"}


def require() -> object:
    """The `torch_pruning` module, or a clear error naming the extra to install."""
    try:
        import torch_pruning
    except ImportError:
        print('Torch-Pruning is not installed (a benchmark-only dependency): pip install -e ".[bench]"',
              file=sys.stderr)
        raise SystemExit(2) from None
    return torch_pruning


def flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass on `example` (a multiply-add counts 2), like the engine's cost model."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(example)
    return counter.get_total_flops()


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Pruned:
    module: nn.Module
    method: str
    pruning_ratio: float   # the channel ratio Torch-Pruning was given
    flops_ratio: float
    params_ratio: float
    tries: int             # prunings the bisection took


def prune(model: nn.Module, example: torch.Tensor, method: str, ratio: float) -> nn.Module:
    """A pruned deep copy of `model`: Torch-Pruning's `method` at channel pruning ratio `ratio`."""
    tp = require()
    if method not in METHODS:
        raise ValueError(f"unknown Torch-Pruning method {method!r}; known: {', '.join(METHODS)}")
    module = copy.deepcopy(model).eval()
    classifier = [m for m in module.modules() if isinstance(m, nn.Linear)][-1:]
    importance = tp.importance.GroupMagnitudeImportance(p=2 if method == "global" else 1)
    pruner = tp.pruner.MetaPruner(module, example, importance=importance, global_pruning=method == "global",
                                  pruning_ratio=ratio, max_pruning_ratio=0.95, ignored_layers=classifier)
    pruner.step()
    return module


def prune_to_flops(model: nn.Module, example: torch.Tensor, method: str, target: float, *,
                   tries: int = 14) -> Pruned:
    """The largest subnet Torch-Pruning's `method` gives within `target` x the base FLOPs (bisection)."""
    base_flops, base_params = flops(model, example), params(model)
    low, high = 0.0, 0.95
    best = None
    for _ in range(tries):
        ratio = (low + high) / 2
        module = prune(model, example, method, ratio)
        ratio_flops = flops(module, example) / base_flops
        if ratio_flops <= target:
            high = ratio
            if best is None or ratio_flops > best[1]:
                best = (module, ratio_flops, ratio)
        else:
            low = ratio
    if best is None:  # even the most aggressive try was over: report the most aggressive
        module = prune(model, example, method, high)
        best = (module, flops(module, example) / base_flops, high)
    module, ratio_flops, ratio = best
    return Pruned(module, method, ratio, ratio_flops, params(module) / base_params, tries)


def kept_rows(pruned: nn.Module, base: nn.Module):
    """`out_index` for `spaces.reconstruct.Reconstructor.refit` on a Torch-Pruning subnet of `base`: which of the
    full layer's output channels a pruned layer kept, found by value (each kept row of its weight is a copy of a
    full row, cut to the kept inputs: the full row holding most of its values)."""
    layers = dict(pruned.named_modules())

    def out_index(name: str, full_layer: nn.Module) -> torch.Tensor:
        layer = layers[name]
        full = full_layer.weight.detach().reshape(full_layer.weight.shape[0], -1)
        rows = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        return torch.stack([torch.isin(full, row).sum(1).argmax() for row in rows])
    return out_index


def refit(pruned: nn.Module, base: nn.Module, inputs: list[torch.Tensor], *, ridge: float = 0.1):
    """Our reconstruction (`spaces.reconstruct`) applied to a Torch-Pruning subnet of `base`, in place: the same
    least-squares refit to the full model's outputs that search.run gives its own subnets. Not Torch-Pruning's
    method (its subnets are exported as pruned); measured to tell what the refit adds from what the search does."""
    from spaces.reconstruct import Reconstructor

    base = copy.deepcopy(base).eval()
    return Reconstructor(None, inputs, ridge=ridge, full=base).refit(pruned, kept_rows(pruned, base))
