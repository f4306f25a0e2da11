"""Derive a model's search space: trace, find channel groups and blocks, reorder channels, name dimensions."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .graph import ChannelGraph, tensor_shape
from .importance import Criterion, channel_importance, reorder
from .space import DEFAULT_RATIOS, KEEP, WIDTH, Dimension, SearchSpace, width_choices


@dataclass
class PrunableModel:
    """A model, its channel analysis and its search space, tied together.

    `dimension_groups` maps each width dimension to its channel group; `dimension_blocks` maps each
    keep flag to its residual block. Everything else (elastic, materialize, cost) reads from here.
    """

    model: nn.Module
    graph: ChannelGraph
    space: SearchSpace
    dimension_groups: dict[str, int]
    dimension_blocks: dict[str, int]
    #: width dimension -> its channels' importance in kept order (most important first), divided by the
    #: group's mean so that groups compare (Torch-Pruning's "mean" normalizer); empty without importance
    channel_scores: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def widths(self, candidate: Mapping[str, int]) -> list[int]:
        """The width of every channel group (fixed groups at full width), indexed by group id."""
        widths = [g.size for g in self.graph.groups]
        for name, gid in self.dimension_groups.items():
            widths[gid] = int(candidate[name])
        return widths

    def keeps(self, candidate: Mapping[str, int]) -> list[bool]:
        """Whether each residual block is kept, indexed by block index."""
        keeps = [True] * len(self.graph.blocks)
        for name, index in self.dimension_blocks.items():
            keeps[index] = bool(candidate[name])
        return keeps

    def removed_nodes(self, keeps: Sequence[bool]) -> set[str]:
        """The graph nodes a candidate skips: every removed block's branch and its `add`."""
        removed: set[str] = set()
        for block, keep in zip(self.graph.blocks, keeps):
            if not keep:
                removed |= block.branch | {block.add}
        return removed

    def describe(self, candidate: Mapping[str, int]) -> dict[str, object]:
        """A readable summary: per-dimension ratio and which blocks are removed."""
        return {"widths": {d.name: round(d.ratio(candidate[d.name]), 3) for d in self.space.widths},
                "removed_blocks": [d.name for d in self.space.keeps if not candidate[d.name]]}


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}#{i}", i + 1
    taken.add(out)
    return out


def derive(model: nn.Module, example_input: torch.Tensor, *, ratios: Sequence[float] = DEFAULT_RATIOS,
           round_to: int = 1, importance: str | Criterion | None = "l2",
           removable_blocks: bool = True) -> PrunableModel:
    """Derive the search space of `model` for inputs shaped like `example_input`.

    The model's weights are permuted in place so each group's most important channels come first
    (`importance=None` skips it); the model's function does not change. Widths are the `ratios` of
    each group's full width, rounded to a multiple of `round_to` (and of its conv-group count).
    """
    if round_to < 1:
        raise ValueError("round_to must be at least 1")
    graph = ChannelGraph(model, example_input)
    scores: dict[int, torch.Tensor] = {}
    if importance is not None:
        scores = channel_importance(graph, importance)
        reorder(graph, scores=scores)
        scores = {gid: score.sort(descending=True, stable=True).values for gid, score in scores.items()}  # kept order

    node_order = {n.name: i for i, n in enumerate(graph.gm.graph.nodes)}
    site_flops = [graph.node_flops.get(s.node, 0) for s in graph.sites]
    total_flops = sum(site_flops) or 1

    entries: list[tuple[int, Dimension, str, int]] = []
    taken: set[str] = set()
    for group in graph.prunable_groups:
        producer = group.producers[0]
        site = next((s for s in graph.sites if s.module == producer), None)
        module = graph.modules.get(producer, nn.Identity())  # a functional layer's owner may be anything
        touching = [f for s, f in zip(graph.sites, site_flops)
                    if any(seg.group == group.id for u in graph.uses.get(s.weight, []) for seg in u.layout)]
        features = {
            "kernel": float(math.prod(getattr(module, "kernel_size", (1,)))),
            "stride": float(math.prod(getattr(module, "stride", (1,)))),
            "positions": float(site.positions if site else 1),
            "in_width": float(getattr(module, "in_channels", getattr(module, "in_features", 0))),
            "out_width": float(group.size),
            "conv_groups": float(group.blocks),
            "flops_share": sum(touching) / total_flops,
        }
        multiple = math.lcm(round_to, group.blocks)
        if group.size < multiple or group.size % group.blocks:
            continue
        choices = width_choices(group.size, ratios, multiple=multiple)
        if len(choices) < 2:
            continue
        dim = Dimension(_unique(producer, taken), WIDTH, group.size, choices, features)
        entries.append((node_order[graph.producer_nodes[producer]], dim, WIDTH, group.id))
    if removable_blocks:
        for block in graph.blocks:
            branch_flops = sum(f for s, f in zip(graph.sites, site_flops) if s.node in block.branch)
            features = {"flops_share": branch_flops / total_flops,
                        "positions": float(math.prod(tensor_shape(graph.node(block.add))[2:]))}
            dim = Dimension(_unique(f"keep:{block.name}", taken), KEEP, 1, (0, 1), features)
            entries.append((node_order[block.add], dim, KEEP, block.index))
    entries.sort(key=lambda e: e[0])
    dims = []
    for position, (_, dim, _, _) in enumerate(entries):
        features = {"position": position / max(1, len(entries) - 1), **dim.features}
        dims.append(Dimension(dim.name, dim.kind, dim.full, dim.choices, features))
    return PrunableModel(
        model=model, graph=graph, space=SearchSpace(dims),
        dimension_groups={d.name: e[3] for d, e in zip(dims, entries) if e[2] == WIDTH},
        dimension_blocks={d.name: e[3] for d, e in zip(dims, entries) if e[2] == KEEP},
        channel_scores={d.name: tuple((scores[e[3]] / scores[e[3]].mean().clamp_min(1e-12)).tolist())
                        for d, e in zip(dims, entries) if e[2] == WIDTH and e[3] in scores},
    )
