"""Removable residual blocks: an `add` of `x` and `branch(x)` with equal shapes, where the branch is private.

A branch is the set of nodes between `x` and the `add`'s other operand. It is removable when it reads
nothing from before `x` (parameters aside), nothing outside it reads its nodes, and it holds at least one
parameterized layer. Removing the block replaces the `add` by `x` (the identity), so the branch is skipped.
Nested blocks are not offered: only the innermost block of a nest gets a keep flag.
"""
from __future__ import annotations

import torch.fx as fx

from .graph import _ADDS, ChannelGraph, ResidualBlock, op_name, tensor_shape


def _branch(x: fx.Node, y: fx.Node, add: fx.Node) -> set[fx.Node] | None:
    """The private nodes that compute `y` from `x`, or None if `y` is not such a function of `x`."""
    seen: set[fx.Node] = set()
    stack = [y]
    reached_x = False
    while stack:
        n = stack.pop()
        if n is x:
            reached_x = True
            continue
        if n in seen:
            continue
        if n.op == "placeholder":
            return None
        seen.add(n)
        stack.extend(n.all_input_nodes)
    if not reached_x:
        return None
    for n in seen:
        if any(u not in seen and u is not add for u in n.users):
            return None
    return seen


def _has_parameters(graph: ChannelGraph, node: fx.Node) -> bool:
    return any(True for _ in graph.modules[node.target].parameters(recurse=False))


def _block_name(add: fx.Node) -> str:
    stack = add.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0]
        if path:
            return str(path)
    return add.name


def find_residual_blocks(graph: ChannelGraph) -> list[ResidualBlock]:
    found: list[tuple[fx.Node, fx.Node, fx.Node, set[fx.Node], bool]] = []
    for node in graph.gm.graph.nodes:
        if node.op not in ("call_function", "call_method") or op_name(node) not in _ADDS:
            continue
        operands = [a for a in node.args if isinstance(a, fx.Node)]
        if len(operands) != 2 or len(node.args) != 2 or node.kwargs:
            continue
        shape = tensor_shape(node)
        if shape is None or any(tensor_shape(a) != shape for a in operands):
            continue
        a, b = operands
        for x, y, branch_first in ((a, b, False), (b, a, True)):
            branch = _branch(x, y, node)
            if branch and any(n.op == "call_module" and _has_parameters(graph, n) for n in branch):
                found.append((node, x, y, branch, branch_first))
                break
    adds = {f[0] for f in found}
    blocks: list[ResidualBlock] = []
    for add, x, y, branch, branch_first in found:
        if branch & adds:
            continue  # an outer block of a nest
        blocks.append(ResidualBlock(index=len(blocks), name=_block_name(add), add=add.name, input=x.name,
                                    output=y.name, branch=frozenset(n.name for n in branch),
                                    branch_first=branch_first))
    return blocks
