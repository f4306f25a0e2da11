"""Rewriting a traced graph into a subnet: the fx surgery the elastic model and `materialize` share."""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch import nn


def graph_module(root: dict[str, object], graph: fx.Graph, class_name: str) -> fx.GraphModule:
    """A GraphModule over `graph` whose attributes come from `root` (qualified name -> module/tensor).

    Only the attributes `graph` reads are taken from `root` (a branch of the elastic model reads a few);
    GraphModule registers every tensor of a dict root as a buffer: parameters are put back as parameters.
    """
    module = fx.GraphModule(root, graph, class_name=class_name)
    targets = {n.target for n in graph.nodes if n.op == "get_attr"}
    for target in targets:
        value = root.get(target)
        if isinstance(value, nn.Parameter):
            owner_name, _, field = target.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            owner._buffers.pop(field, None)
            owner.register_parameter(field, value)
    return module


def empty_like(graph: fx.Graph) -> fx.Graph:
    """An empty graph that takes and returns what `graph` does (a structured input/output's flattening kept)."""
    new = fx.Graph()
    new._codegen = copy.deepcopy(graph._codegen)
    return new


def out_of_place_consumers(node: fx.Node, root: dict[str, object]) -> None:
    """Make every consumer of `node` work out of place (`root`: the graph's qualified name -> module).

    Needed where `node` may stand in for a fresh tensor (a removed residual block passes its input
    through): an in-place activation would then overwrite a tensor that is used, or saved for
    backward, elsewhere. Modules are replaced by copies, never changed: `root` may hold the user's own.
    """
    for user in node.users:
        if user.op == "call_module" and getattr(root[user.target], "inplace", False):
            module = copy.copy(root[user.target])
            module.inplace = False
            root[user.target] = module
        elif user.kwargs.get("inplace"):
            user.update_kwarg("inplace", False)


def split_by(graph: fx.Graph, node: fx.Node, sizes: object, axis: int) -> fx.Node:
    """Replace the split/chunk `node` by `torch.split(x, sizes, axis)` (`sizes`: a list, or a node making one)."""
    with graph.inserting_before(node):
        new = graph.call_function(torch.split, (node.args[0], sizes), {"dim": axis})
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    return new


def view_any_length(node: fx.Node, axis: int) -> tuple:
    """The arguments of a view/reshape node with `-1` as the size of `axis` (it follows the widths)."""
    sizes = list(node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)) else node.args[1:])
    sizes[axis] = -1
    return (node.args[0], tuple(sizes))


__all__ = ["empty_like", "graph_module", "out_of_place_consumers", "split_by", "view_any_length"]
