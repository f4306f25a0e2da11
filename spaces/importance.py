"""Channel importance and the reordering that makes "keep `k` channels" mean "keep a prefix".

A criterion scores each element along one axis of one parameter; a channel's importance is the sum of
its scores over every parameter slice of its group: by default the squared L2 norm ("l2"), the
magnitude Torch-Pruning's group importance uses by default (p=2); "l1" sums absolute values. On the
digits ResNets, "l2" ranks better across groups (the global-magnitude warm start at 0.4 x FLOPs of
ResNet-56 scored 0.83 held-out with it against 0.60 with "l1"). `reorder` permutes the model's
weights in place so the most important channels of each group come first; the model computes
exactly the same function afterwards.

An attention head is one channel of `head_dim` elements (`Segment.inner`, see `ops._into_heads`): its
importance is the sum over its q, k and v rows (and biases) and its output projection's columns, so with
"l2" a head is ranked by the squared L2 norm of all its weights, and heads are reordered whole.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from .graph import ChannelGraph

#: (tensor, axis) -> one non-negative score per element along `axis`.
Criterion = Callable[[torch.Tensor, int], torch.Tensor]


def _reduce_except(t: torch.Tensor, axis: int, p: int) -> torch.Tensor:
    dims = [d for d in range(t.dim()) if d != axis]
    a = t.detach().abs().float()
    if p == 1:
        return a.sum(dim=dims) if dims else a
    return a.pow(2).sum(dim=dims) if dims else a.pow(2)


CRITERIA: dict[str, Criterion] = {
    "l1": lambda t, axis: _reduce_except(t, axis, 1),
    "l2": lambda t, axis: _reduce_except(t, axis, 2),
}


def _criterion(criterion: str | Criterion) -> Criterion:
    if callable(criterion):
        return criterion
    try:
        return CRITERIA[criterion]
    except KeyError:
        raise ValueError(f"unknown importance criterion {criterion!r}; choose from {sorted(CRITERIA)}") from None


def channel_importance(graph: ChannelGraph, criterion: str | Criterion = "l2") -> dict[int, torch.Tensor]:
    """Per prunable group: one score per channel (per position within a conv-group, if blocked)."""
    score_fn = _criterion(criterion)
    groups = graph.groups
    scores = {g.id: torch.zeros(g.size // g.blocks) for g in graph.prunable_groups}
    for name, uses in graph.uses.items():
        tensor = graph.tensors[name]
        if not isinstance(tensor, nn.Parameter):
            continue  # running statistics say nothing about importance
        for use in uses:
            element = score_fn(tensor, use.axis).cpu()
            if use.local:
                gid = use.layout[0].group
                if gid in scores:
                    scores[gid] += element
                continue
            offset = 0
            for seg in use.layout:
                if seg.group in scores:
                    per_channel = element[offset:offset + seg.length].view(seg.size, seg.inner).sum(1)
                    scores[seg.group] += per_channel.view(groups[seg.group].blocks, -1).sum(0)
                offset += seg.length
    return scores


def reorder(graph: ChannelGraph, criterion: str | Criterion = "l2", *,
            scores: Mapping[int, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """Permute every prunable group's channels, most important first. Returns each group's permutation.

    `scores`: the groups' `channel_importance`, if the caller has it already (else computed here).
    """
    perms: dict[int, torch.Tensor] = {}
    local: dict[int, torch.Tensor] = {}
    for gid, score in (channel_importance(graph, criterion) if scores is None else scores).items():
        group = graph.groups[gid]
        order = torch.argsort(-score, stable=True)
        local[gid] = order
        block = group.size // group.blocks
        perms[gid] = (torch.arange(group.blocks)[:, None] * block + order[None, :]).flatten()
    with torch.no_grad():
        for name, uses in graph.uses.items():
            tensor = graph.tensors[name]
            for use in uses:
                if use.local:
                    index = local.get(use.layout[0].group)
                    if index is None:
                        continue
                else:
                    parts, offset = [], 0
                    for seg in use.layout:
                        perm = perms.get(seg.group, torch.arange(seg.size))
                        parts.append(offset + (perm[:, None] * seg.inner + torch.arange(seg.inner)).flatten())
                        offset += seg.length
                    index = torch.cat(parts)
                tensor.data.copy_(tensor.data.index_select(use.axis, index.to(tensor.device)))
    return perms
