"""Exact analytic FLOPs and parameter counts of a candidate, from its widths alone (no forward pass).

Conventions, stated once:
- FLOPs are counted the way `torch.utils.flop_counter.FlopCounterMode` counts them (with the fused
  MultiheadAttention fast path off, which hides work from it): convolutions and matrix products
  (Linear, attention matmuls, scaled-dot-product attention) only, one multiply-add = 2 FLOPs;
  normalization, activations, pooling and additions count 0. Per sample (batch 1), at the input size
  the space was derived for; for a structured example (a list of images, a tuple of inputs: see
  `spaces.structure`), per call on the example as it was given. A conv/linear costs 2 x positions x (its
  kept weight elements); attention over heads (`scaled_dot_product_attention`, q @ k^T, attn @ v) costs its
  measured FLOPs per kept head (FlopCounterMode counts no FLOPs for CPU's fused attention kernel in torch
  2.14, so neither do we there); every
  other op FlopCounterMode counts was measured when the space was derived, its channel groups frozen,
  and costs that constant (while the residual block around it, if any, is kept).
- Params are the elements of the materialized subnet's parameters (buffers such as BN running
  statistics are not parameters).
- A space searched inside a larger model (`prunable.outside`: a torchvision detector's backbone, see
  `spaces.submodule`) adds the rest of the model as constants: its FLOPs as FlopCounterMode counted them
  once (whole model minus the submodule; R-CNN's RoI box head at its most proposals, an upper bound said
  in `explain()`) and its params.
- Latency, when a measured `LatencyTable` is given, is predicted milliseconds (see `latency`).
- A budget such as `0.4flops` means: the subnet's FLOPs are at most 0.4 x the FLOPs of the full model,
  both counted this way.

Every figure is exact: it equals FlopCounterMode and `sum(p.numel())` on `materialize(candidate)`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from typing import TYPE_CHECKING

from torch import nn

from spaces.channels import TensorUse
from spaces.derive import PrunableModel
from spaces.slicing import kept_length

if TYPE_CHECKING:
    from .latency import LatencyTable


@dataclass(frozen=True)
class Costs:
    flops: int
    params: int
    latency: float | None = None  # predicted milliseconds, when a latency table is in use

    def ratios(self, base: Costs) -> dict[str, float]:
        out = {"flops": self.flops / base.flops, "params": self.params / base.params}
        if self.latency is not None and base.latency:
            out["latency"] = self.latency / base.latency
        return out

    def as_dict(self) -> dict[str, float]:
        """The costs a budget reads (latency only when it is predicted)."""
        out: dict[str, float] = {"flops": self.flops, "params": self.params}
        if self.latency is not None:
            out["latency"] = self.latency
        return out


class CostModel:
    """Prices candidates of one `PrunableModel` in microseconds."""

    def __init__(self, prunable: PrunableModel, latency: LatencyTable | None = None):
        self.prunable = prunable
        self.latency = latency
        graph = prunable.graph
        groups = graph.groups
        node_blocks: dict[str, tuple[int, ...]] = {}
        for block in graph.blocks:
            for name in block.branch | {block.add}:
                node_blocks[name] = node_blocks.get(name, ()) + (block.index,)
        self._groups = groups

        def axes(name: str) -> list[object]:
            """Per axis: a fixed size (int) or the TensorUse whose kept length it is."""
            shape = list(graph.tensors[name].shape)
            for use in graph.uses.get(name, []):
                shape[use.axis] = use
            return shape

        def sites(name: str) -> list[tuple[int, ...]]:
            """The blocks around each node that reads the tensor: it is live if any reader is."""
            return [node_blocks.get(n, ()) for n in graph.tensor_users.get(name, [])]

        self._param_terms = [(axes(name), sites(name)) for name, t in graph.tensors.items()
                             if isinstance(t, nn.Parameter)]
        self._flop_terms = [(2 * s.positions, axes(s.weight), [node_blocks.get(s.node, ())])
                            for s in graph.sites]
        self._flop_terms += [(flops, [], [node_blocks.get(node, ())]) for node, flops in graph.constant_flops]
        self._flop_terms += [(flops, [TensorUse(node, 0, layout)], [node_blocks.get(node, ())])
                             for node, flops, layout in graph.scaled_flops]  # attention: per kept head
        self.base = self.price(prunable.space.full())

    def _sum(self, terms, widths: list[int], keeps: list[bool]) -> int:
        total = 0
        groups = self._groups
        for term in terms:
            *scale, axes, sites = term
            if not any(all(keeps[b] for b in blocks) for blocks in sites):
                continue
            n = scale[0] if scale else 1
            for a in axes:
                n *= a if isinstance(a, int) else kept_length(a, widths, groups)
            total += n
        return total

    def price(self, candidate: Mapping[str, int]) -> Costs:
        widths = self.prunable.widths(candidate)
        keeps = self.prunable.keeps(candidate)
        outside = self.prunable.outside  # a submodule's space: the rest of the model, a constant
        return Costs(flops=self._sum(self._flop_terms, widths, keeps) + (outside.flops if outside else 0),
                     params=self._sum(self._param_terms, widths, keeps) + (outside.params if outside else 0),
                     latency=self.latency.predict(candidate) if self.latency is not None else None)

    def costs(self, candidate: Mapping[str, int]) -> dict[str, float]:
        """`price` as the plain dict agents and budgets take (`agents.base.Price`)."""
        return self.price(candidate).as_dict()

    def flops(self, candidate: Mapping[str, int]) -> int:
        return self.price(candidate).flops

    def params(self, candidate: Mapping[str, int]) -> int:
        return self.price(candidate).params

    def ratios(self, candidate: Mapping[str, int]) -> dict[str, float]:
        return self.price(candidate).ratios(self.base)
