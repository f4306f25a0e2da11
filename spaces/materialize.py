"""Materialize a candidate: a real, smaller `nn.Module` with its own (sliced, copied) weights.

The result is a `torch.fx.GraphModule` keeping the base model's module names, so its `state_dict`
keys are the base model's (a subset, with smaller tensors). It can be saved, scripted, exported and
fine-tuned like any module, and it never shares storage with the base model.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.fx as fx
from torch import nn

from .derive import PrunableModel
from .layers import function_layer, resize
from .ops import full_index
from .rewrite import empty_like, graph_module, out_of_place_consumers, split_by, view_any_length
from .slicing import kept_slice, piece_sizes, slice_tensor
from .submodule import placed


def _cut(t: torch.Tensor, uses, prunable: PrunableModel, widths: list[int]) -> torch.Tensor:
    """A new tensor holding `t` cut to the widths (a parameter if `t` is one)."""
    cut = slice_tensor(t, uses, widths, prunable.graph.groups) if uses else t
    out = cut.detach().clone(memory_format=torch.contiguous_format)
    return nn.Parameter(out, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else out


def pruned_module(module: nn.Module, target: str, prunable: PrunableModel, widths: list[int]) -> nn.Module:
    """A copy of a leaf module with each tensor cut to `widths` and its size attributes updated."""
    graph = prunable.graph
    own = {**module._parameters, **module._buffers}
    memo = {id(t): None for t in own.values() if t is not None}
    new = copy.deepcopy(module, memo)  # copies everything but the tensors, which are sliced below
    for slot in ("_parameters", "_buffers"):
        for name, t in getattr(module, slot).items():
            if t is not None:
                uses = graph.uses.get(f"{target}.{name}", [])
                getattr(new, slot)[name] = _cut(t, uses, prunable, widths)
    resize(new, like=module)  # its size attributes follow its cut tensors (see the layer table)
    return new


def materialize(prunable: PrunableModel, candidate: Mapping[str, int]) -> nn.Module:
    """The subnet of `candidate` as a standalone module (in the base model's train/eval mode).

    When the space is a submodule's (`prunable.outside`: a detector's backbone), the whole model comes back,
    copied, with the pruned submodule in its place."""
    candidate = prunable.space.validate(candidate)
    graph = prunable.graph
    widths = prunable.widths(candidate)
    keeps = prunable.keeps(candidate)

    new_graph = empty_like(graph.gm.graph)
    val_map: dict[fx.Node, fx.Node] = {}
    new_graph.output(new_graph.graph_copy(graph.gm.graph, val_map))
    new_nodes = {old.name: new for old, new in val_map.items()}
    for block, keep in zip(graph.blocks, keeps):  # in graph order, so chains resolve forwards
        if not keep:
            new_nodes[block.add].replace_all_uses_with(new_nodes[block.input])
            new_nodes[block.add] = new_nodes[block.input]
    removed = {val_map[graph.node(n)] for n in prunable.removed_nodes(keeps)}
    for node in reversed(list(new_graph.nodes)):
        if node in removed:
            new_graph.erase_node(node)

    root: dict[str, object] = {}
    for node in new_graph.nodes:
        if node.op == "call_module" and node.target not in root:
            module = graph.modules[node.target]
            has_uses = any(f"{node.target}.{n}" in graph.uses
                           for n in [*module._parameters, *module._buffers])
            root[node.target] = (pruned_module(module, node.target, prunable, widths) if has_uses
                                 else copy.deepcopy(module))
        elif node.op == "get_attr" and node.target not in root:
            t = graph.tensors[node.target]
            uses = graph.uses.get(node.target, [])
            root[node.target] = _cut(t, uses, prunable, widths)
    for name in graph.resized_calls:  # functional calls whose size arguments follow the widths
        node = val_map[graph.node(name)]
        if node not in removed:
            width = sum(widths[seg.group] * seg.inner for seg in graph.specs[name].layout)
            function_layer(graph.node(name).target).call_resize(node, width)
    for name, (axis, pieces) in graph.splits.items():  # a split along channels: its pieces' kept sizes
        node = val_map[graph.node(name)]
        if node not in removed:
            split_by(new_graph, node, piece_sizes(pieces, widths), axis)
    for name, axis in graph.param_views.items():  # scale.view(C, 1, 1): C follows the width
        node = val_map[graph.node(name)]
        if node not in removed:
            node.args = view_any_length(node, axis)
    for name, (axis, pieces) in graph.slices.items():  # x[:, a:b]: the bounds of what is kept of it
        node = val_map[graph.node(name)]
        if node not in removed:
            x, index = node.args
            node.args = (x, kept_slice(full_index(index, len(graph.shape(graph.node(name)))), axis, pieces, widths))
    for block, keep in zip(graph.blocks, keeps):
        if not keep:  # the add made a fresh tensor; its stand-in is saved for backward elsewhere
            out_of_place_consumers(new_nodes[block.add], root)
    new_graph.lint()
    subnet = graph_module(root, new_graph, f"Pruned{type(prunable.graph.model).__name__}")
    subnet.train(prunable.model.training)
    if prunable.outside is not None:
        return placed(prunable.model, prunable.outside, subnet, copied=True)
    return subnet
