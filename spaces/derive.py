"""Derive a model's search space: trace, find channel groups and blocks, reorder channels, name dimensions."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .blocks import analyze, run_name
from .graph import ChannelGraph, tensor_shape
from .heads import head_outputs
from .importance import Criterion, channel_importance, reorder
from .space import BLOCK_ENCODINGS, DEFAULT_RATIOS, DEPTH, KEEP, WIDTH, Candidate, Dimension, SearchSpace, width_choices
from .structure import Example
from .submodule import Outside, capture, check_outside, detector_parts


@dataclass
class PrunableModel:
    """A model, its channel analysis and its search space, tied together.

    `dimension_groups` maps each width dimension to its channel group; `dimension_blocks` maps each
    keep flag to its residual block, `dimension_runs` each stage depth to its run of blocks (in order:
    depth d keeps the first d). Everything else (elastic, materialize, cost) reads from here.
    """

    model: nn.Module
    graph: ChannelGraph
    space: SearchSpace
    dimension_groups: dict[str, int]
    dimension_blocks: dict[str, int]
    #: width dimension -> its channels' importance in kept order (most important first), divided by the
    #: group's mean so that groups compare (Torch-Pruning's "mean" normalizer); empty without importance
    channel_scores: dict[str, tuple[float, ...]] = field(default_factory=dict)
    dimension_runs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: residual add (module path) -> why it is not offered as a removable block
    block_reasons: dict[str, str] = field(default_factory=dict)
    #: producer of a channel group that is not searched -> why
    frozen_groups: dict[str, str] = field(default_factory=dict)
    #: when the graph is a submodule of `model` (a detector's backbone): where, and what the rest costs
    #: (`spaces.submodule`); None when the graph is the whole model
    outside: Outside | None = None
    _blocks_of_width: dict[str, frozenset[int]] | None = field(default=None, init=False, repr=False, compare=False)

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
        for name, run in self.dimension_runs.items():
            depth = int(candidate[name])
            for position, index in enumerate(run):
                keeps[index] = position < depth
        return keeps

    def canonical(self, candidate: Mapping[str, int]) -> Candidate:
        """`candidate` with every width that only removed blocks read set to its full value: the same subnet (the
        same layers, weights, costs and outputs), one name for it. Candidates that differ only in the widths
        inside blocks they both remove are one subnet, and are scored, ranked and kept once under this name."""
        keeps = self.keeps(candidate)
        full = {name: self.space[name].full for name, blocks in self._width_blocks().items()
                if blocks and not any(keeps[b] for b in blocks) and candidate[name] != self.space[name].full}
        if full:
            return Candidate({**candidate, **full})
        return candidate if isinstance(candidate, Candidate) else Candidate(candidate)

    def _width_blocks(self) -> dict[str, frozenset[int]]:
        """Width dimension -> the removable blocks that hold every node reading its group (a weight or buffer laid
        out on it, an activation, split or attention op carrying it); empty when some such node lies outside
        every block (a residual stream, a stem): that width matters whatever is removed."""
        if self._blocks_of_width is None:
            graph = self.graph
            touching: dict[int, set[str]] = {}

            def touch(layout, nodes) -> None:
                for segment in layout:
                    touching.setdefault(segment.group, set()).update(nodes)

            for tensor, uses in graph.uses.items():
                for use in uses:
                    touch(use.layout, graph.tensor_users.get(tensor, ()))
            for node, spec in graph.specs.items():
                touch(spec.layout, (node,))
            for node, _, layout in graph.scaled_flops:
                touch(layout, (node,))
            for node, (_, pieces) in graph.splits.items():
                for layout in pieces:
                    touch(layout, (node,))
            holder = {n: b.index for b in graph.blocks for n in (*b.branch, b.add)}
            out: dict[str, frozenset[int]] = {}
            for name, gid in self.dimension_groups.items():
                nodes = touching.get(gid, set())
                inside = nodes and all(n in holder for n in nodes)
                out[name] = frozenset(holder[n] for n in nodes) if inside else frozenset()
            self._blocks_of_width = out
        return self._blocks_of_width

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
                "removed_blocks": [b.name for b, keep in zip(self.graph.blocks, self.keeps(candidate)) if not keep]}

    def explain(self) -> str:
        """What the space searches and what it leaves alone, with a reason for each thing left alone."""
        space = self.space
        lines = [f"{space!r}"]
        if self.outside is not None:
            lines.append(self.outside.describe())
        if self.dimension_runs:
            lines.append(f"stage depths ({len(self.dimension_runs)}): each keeps the first d blocks of its stage")
            for name, run in self.dimension_runs.items():
                lines.append(f"  {name}: 0..{len(run)} of {', '.join(self.graph.blocks[i].name for i in run)}")
        elif self.dimension_blocks:
            lines.append(f"removable blocks ({len(self.dimension_blocks)}): {', '.join(self.dimension_blocks)}")
        lines.append(f"channel groups not searched ({len(self.frozen_groups)}):")
        lines += [f"  {producer}: {reason}" for producer, reason in self.frozen_groups.items()]
        lines.append(f"residual adds not offered as removable blocks ({len(self.block_reasons)}):")
        lines += [f"  {add}: {reason}" for add, reason in self.block_reasons.items()]
        return "\n".join(lines)


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}#{i}", i + 1
    taken.add(out)
    return out


def derive(model: nn.Module, example_input: Example, *, ratios: Sequence[float] = DEFAULT_RATIOS,
           round_to: int = 1, importance: str | Criterion | None = "l2",
           removable_blocks: bool = True, block_encoding: str = "flags",
           submodule: str | Sequence[str] | None = None) -> PrunableModel:
    """Derive the search space of `model` for inputs shaped like `example_input`.

    `example_input` is a tensor (one sample is enough), or a tuple of positional arguments, a dict of
    keyword arguments or a list, nesting freely (`spaces.structure`); outputs may be any such structure.

    The model's weights are permuted in place so each group's most important channels come first
    (`importance=None` skips it); the model's function does not change. Widths are the `ratios` of
    each group's full width, rounded to a multiple of `round_to` (and of its conv-group count); attention
    head counts are never rounded.
    Removable blocks (`removable_blocks`) are searched as one keep flag per block
    (`block_encoding="flags"`) or one depth per run of consecutive blocks (`"depth"`).

    `submodule` (a dotted path, or several traced side by side) searches only those parts of a model that
    cannot be traced whole, inside the whole model (`spaces.submodule`): a torchvision detector called on a
    list of images searches its `.backbone` and its heads' inner convolutions (`.head` of RetinaNet and FCOS,
    `.rpn.head` of R-CNN) without being told (`submodule=""` traces the whole model all the same). `model`
    stays the whole model, which elastic and materialized subnets are too; the rest is priced as a constant.
    """
    paths = ((submodule,) if isinstance(submodule, str) else tuple(submodule)) if submodule is not None else \
        detector_parts(model, example_input)
    if any(paths):
        inner, inner_example, outside = capture(model, example_input, paths)
        check_outside(model, example_input, outside)
        prunable = derive(inner, inner_example, ratios=ratios, round_to=round_to, importance=importance,
                          removable_blocks=removable_blocks, block_encoding=block_encoding)
        prunable.model, prunable.outside = model, outside
        return prunable
    if round_to < 1:
        raise ValueError("round_to must be at least 1")
    if block_encoding not in BLOCK_ENCODINGS:
        raise ValueError(f"block_encoding must be one of {', '.join(BLOCK_ENCODINGS)}, got {block_encoding!r}")
    graph = ChannelGraph(model, example_input)
    blocks = analyze(graph)
    graph.blocks = blocks.blocks
    scores: dict[int, torch.Tensor] = {}
    if importance is not None:
        scores = channel_importance(graph, importance)
        reorder(graph, scores=scores)
        scores = {gid: score.sort(descending=True, stable=True).values for gid, score in scores.items()}  # kept order

    node_order = {n.name: i for i, n in enumerate(graph.gm.graph.nodes)}
    site_flops = [graph.node_flops.get(s.node, 0) for s in graph.sites]
    total_flops = sum(site_flops) or 1

    entries: list[tuple[int, Dimension, str, int | tuple[int, ...]]] = []
    taken: set[str] = set()
    frozen = {g.producers[0]: g.fixed or "a single channel" for g in graph.groups if g.producers and not g.prunable}
    heads = head_outputs(model)  # a detection head's outputs are never cut, whatever the graph allows
    frozen.update({p: heads[p] for p in frozen if p in heads})
    for group in graph.prunable_groups:
        producer = group.producers[0]
        if producer in heads:
            frozen[producer] = heads[producer]
            continue
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
        # a head count is never rounded: each head is head_dim channels already (a 3-head layer stays searched)
        multiple = 1 if producer.endswith(".heads") else math.lcm(round_to, group.blocks)
        if group.size < multiple or group.size % group.blocks:
            frozen[producer] = f"{group.size} channels, not a multiple of {multiple}"
            continue
        choices = width_choices(group.size, ratios, multiple=multiple)
        if len(choices) < 2:
            frozen[producer] = f"{group.size} channels allow a single width at multiples of {multiple}"
            continue
        dim = Dimension(_unique(producer, taken), WIDTH, group.size, choices, features)
        entries.append((node_order[graph.producer_nodes[producer]], dim, WIDTH, group.id))
    def block_features(run: Sequence[int]) -> dict[str, float]:
        members = [graph.blocks[i] for i in run]
        branch_flops = sum(f for s, f in zip(graph.sites, site_flops) if any(s.node in b.branch for b in members))
        return {"flops_share": branch_flops / total_flops,
                "positions": float(math.prod(tensor_shape(graph.node(members[0].add))[2:]))}

    reasons = dict(blocks.reasons)
    if not removable_blocks:
        reasons.update({b.name: "block removal is turned off" for b in graph.blocks})
    elif block_encoding == "depth":
        for run in blocks.runs:
            first = graph.blocks[run[0]]
            name = _unique(f"depth:{run_name(graph.blocks[i] for i in run)}", taken)
            dim = Dimension(name, DEPTH, len(run), tuple(range(len(run) + 1)), block_features(run))
            entries.append((node_order[first.add], dim, DEPTH, run))
    else:
        for block in graph.blocks:
            dim = Dimension(_unique(f"keep:{block.name}", taken), KEEP, 1, (0, 1), block_features([block.index]))
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
        dimension_runs={d.name: e[3] for d, e in zip(dims, entries) if e[2] == DEPTH},
        block_reasons=reasons, frozen_groups=frozen,
    )
