"""Removable residual blocks, found from what the graph computes, and why the other residual adds are not.

A **residual add** is an `add` (`+`, `+=`, `torch.add`, `add_`) of two tensors computed from the model's
input. It is a **removable block** when one operand, the *shortcut*, equals a tensor `x` through ops that
are the identity at export (`nn.Identity`, dropout and drop-path in eval mode, reshapes that are undone:
checked by running those ops on a random tensor in eval mode), and the other operand is computed from
`x` by a *branch*: nodes that read nothing from before `x` (parameters aside), whose results nothing
outside the block reads (shape assertions aside), holding at least one parameter. Whatever the branch
ends with (drop-path, a layer scale `gamma * f(x)`, an SE gate) and whatever follows the add (an
activation) does not matter. Removing the block replaces the add by `x`: the branch, the shortcut's
identity ops and the add are skipped (`ResidualBlock.branch` holds all of them but the add). A kept
block runs as `x + branch(x)` in the elastic model, so a dropout on the shortcut itself (an identity at
export, unseen in practice) would not run there in train mode; the materialized subnet keeps it.

Nested blocks are not offered: only the outermost block of a nest gets a decision. Every residual add
that is not offered gets a one-line reason. Consecutive blocks (the next block's input is the previous
block's add, through parameter-free ops such as an activation) form a **run**: a stage's removable
blocks, the unit of a stage-depth decision.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from .channels import ResidualBlock, op_name, tensor_shape
from .graph import ChannelGraph
from .ops import ADD

#: Nodes walked back from a shortcut in search of the tensor it equals (an identity chain is short).
_CHAIN_LIMIT = 32


@dataclass
class BlockAnalysis:
    """The removable blocks of a graph, the reasons the other residual adds are not offered, the runs."""

    blocks: list[ResidualBlock] = field(default_factory=list)
    #: a residual add's name (its module path) -> why it is not a removable block
    reasons: dict[str, str] = field(default_factory=dict)
    #: consecutive blocks (block indices, in graph order); every block is in exactly one run
    runs: list[tuple[int, ...]] = field(default_factory=list)
    #: every residual add's node name, in graph order (offered or not)
    adds: list[str] = field(default_factory=list)


# ---- graph helpers ---------------------------------------------------------------------------
def _module_path(node: fx.Node) -> str:
    """The module a node was called from (its own target for a module call), else the node's name."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0]
        if path:
            return str(path)
    return node.name


def _has_parameters(graph: ChannelGraph, node: fx.Node) -> bool:
    if node.op == "call_module":
        return any(True for _ in graph.modules[node.target].parameters())
    return node.op == "get_attr"


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen, stack = {node}, [node]
    while stack:
        for a in stack.pop().all_input_nodes:
            if a not in seen:
                seen.add(a)
                stack.append(a)
    return seen


def _live(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose results reach the graph's output (the rest: shape assertions and unused values)."""
    outputs = [n for n in gm.graph.nodes if n.op == "output"]
    return set().union(*(_ancestors(n) for n in outputs)) if outputs else set()


def _computed(node: fx.Node) -> bool:
    """Whether `node` holds a tensor computed from the model's input (not a parameter or constant)."""
    return tensor_shape(node) is not None and any(a.op == "placeholder" for a in _ancestors(node))


def _shape(node: fx.Node) -> str:
    shape = tensor_shape(node)
    return "x".join(str(s) for s in shape[1:]) if shape else "?"


# ---- identity at export ------------------------------------------------------------------------
def _evaluate(graph: ChannelGraph, node: fx.Node, env: dict[fx.Node, object]) -> object:
    """`node`'s value from `env` through parameter-free ops run in eval mode; KeyError where it needs more."""
    if node in env:
        return env[node]
    if node.op in ("placeholder", "get_attr", "output") or _has_parameters(graph, node):
        raise KeyError(node.name)

    def value(a):
        return _evaluate(graph, a, env) if isinstance(a, fx.Node) else a

    args = fx.node.map_aggregate(node.args, value)
    kwargs = fx.node.map_aggregate(node.kwargs, value)
    if node.op == "call_module":
        module = copy.deepcopy(graph.modules[node.target]).eval()
        out = module(*args, **kwargs)
    elif node.op == "call_method":
        out = getattr(args[0], node.target)(*args[1:], **kwargs)
    else:
        out = node.target(*args, **kwargs)
    env[node] = out
    return out


def _identity_roots(graph: ChannelGraph, shortcut: fx.Node) -> list[tuple[fx.Node, frozenset[fx.Node]]]:
    """`(x, ops)` for each tensor `x` the shortcut equals at export through the parameter-free `ops`.

    Nearest first; the shortcut itself comes first with no ops.
    """
    roots = [(shortcut, frozenset())]
    shape = tensor_shape(shortcut)
    frontier, seen = [shortcut], {shortcut}
    candidates: list[fx.Node] = []
    while frontier and len(seen) < _CHAIN_LIMIT:
        n = frontier.pop(0)
        if n.op not in ("call_module", "call_function", "call_method") or _has_parameters(graph, n):
            continue
        for a in n.all_input_nodes:
            if a not in seen:
                seen.add(a)
                frontier.append(a)
                if tensor_shape(a) == shape:
                    candidates.append(a)
    generator = torch.Generator().manual_seed(0)
    for x in candidates:
        probe = torch.randn(shape, generator=generator)
        env: dict[fx.Node, object] = {x: probe}
        try:
            with torch.no_grad():
                out = _evaluate(graph, shortcut, env)
        except Exception:  # an op that needs what lies before x, or fails on a random tensor
            continue
        if isinstance(out, torch.Tensor) and out.shape == probe.shape and torch.equal(out, probe):
            roots.append((x, frozenset(n for n in env if n is not x)))
    return roots


# ---- one residual add ----------------------------------------------------------------------
class _NotABlock(Exception):
    """Why a residual add is not a removable block (one line)."""


_NOT_FROM_SHORTCUT = "branch is not computed from the shortcut"


def _branch(graph: ChannelGraph, x: fx.Node, y: fx.Node, add: fx.Node, chain: frozenset[fx.Node],
            live: set[fx.Node]) -> set[fx.Node]:
    """The nodes skipped when the block is removed: the branch from `x` to `y`, the shortcut's identity
    ops `chain` and the shape assertions on them. Raises `_NotABlock` with the reason it is not one."""
    members: set[fx.Node] = set(chain)
    stack, reached, before = [y], False, False
    while stack:
        n = stack.pop()
        if n is x:
            reached = True
            continue
        if n in members:
            continue
        before |= n.op == "placeholder"
        members.add(n)
        stack.extend(n.all_input_nodes)
    if not reached:
        raise _NotABlock(_NOT_FROM_SHORTCUT)
    if before:
        raise _NotABlock(f"branch also reads tensors from before its input '{_module_path(x)}'")
    if not any(_has_parameters(graph, n) for n in members - chain):
        raise _NotABlock("branch has no parameters")
    # shape assertions and unused values hanging off the branch go with it
    stack = [u for n in members for u in n.users if u not in live and u not in members]
    while stack:
        n = stack.pop()
        if n in members:
            continue
        members.add(n)
        stack.extend(u for u in n.users if u not in members)
    for n in members:
        outside = [u for u in n.users if u not in members and u is not add]
        if outside and op_name(y) == "getitem" and y.args[0] is n:
            raise _NotABlock(f"partial residual: the add takes a slice of '{_module_path(n)}', the rest goes on")
        if outside:
            raise _NotABlock(f"'{_module_path(n)}' in the branch is also used by '{_module_path(outside[0])}'")
        inputs = [a for a in n.all_input_nodes if a not in members and a is not x and a.op != "get_attr"]
        if inputs and n not in live:
            raise _NotABlock(f"an assertion in the branch reads '{_module_path(inputs[0])}'")
    return members


def _why_not(graph: ChannelGraph, add: fx.Node, a: fx.Node, b: fx.Node) -> str:
    """Why neither operand is an identity shortcut of a branch computing the other."""
    common = {n for n in _ancestors(a) & _ancestors(b) if tensor_shape(n) is not None}
    if not common:
        return "operands share no input"
    order = {n: i for i, n in enumerate(graph.gm.graph.nodes)}
    fork = max(common, key=order.__getitem__)
    paths = []
    for operand in (a, b):
        path = [n for n in _ancestors(operand) - _ancestors(fork) if n.op != "get_attr"]
        paths.append(sorted(path, key=order.__getitem__))
    shortcut = min(paths, key=lambda path: (sum(_has_parameters(graph, n) for n in path), len(path)))
    projection = [_module_path(n) for n in shortcut if _has_parameters(graph, n)]
    ops = ", ".join(op_name(n) if n.op != "call_module" else _module_path(n) for n in shortcut[:3])
    what = f"projection shortcut ({projection[0]})" if projection else f"shortcut is not the identity ({ops})"
    if tensor_shape(fork) != tensor_shape(add):
        return f"branch changes shape ({_shape(fork)} -> {_shape(add)}), {what}"
    return what


def _residual_operands(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    if node.op not in ("call_function", "call_method") or op_name(node) not in ADD.names:
        return None
    operands = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]
    if len(operands) != 2 or not all(_computed(o) for o in operands):
        return None
    return operands[0], operands[1]


def analyze(graph: ChannelGraph) -> BlockAnalysis:
    """The removable blocks of `graph`, the reasons for the residual adds that are not, and the runs."""
    live = _live(graph.gm)
    found: list[tuple[fx.Node, fx.Node, fx.Node, set[fx.Node], bool]] = []
    rejected: list[tuple[fx.Node, str]] = []
    analysis = BlockAnalysis()
    for node in graph.gm.graph.nodes:
        operands = _residual_operands(node)
        if operands is None:
            continue
        analysis.adds.append(node.name)
        a, b = operands
        if len(node.args) != 2 or node.kwargs:
            rejected.append((node, "add with a scale or an output argument"))
            continue
        if tensor_shape(a) != tensor_shape(b):
            rejected.append((node, f"operands of different shapes ({_shape(a)} + {_shape(b)})"))
            continue
        reason, block = None, None
        for shortcut, y, branch_first in ((a, b, False), (b, a, True)):
            for x, chain in _identity_roots(graph, shortcut):
                try:
                    block = (node, x, y, _branch(graph, x, y, node, chain, live), branch_first)
                    break
                except _NotABlock as why:
                    if str(why) != _NOT_FROM_SHORTCUT:
                        reason = reason or str(why)
            if block:
                break
        if block:
            found.append(block)
        else:
            rejected.append((node, reason or _why_not(graph, node, a, b)))

    inside = {n: f[0] for f in found for n in f[3]}  # node -> the add of a block whose branch holds it
    names: dict[str, int] = {}

    def name_of(add: fx.Node) -> str:
        base = _module_path(add)
        names[base] = names.get(base, 0) + 1
        return base if names[base] == 1 else f"{base}#{names[base]}"

    nested: dict[fx.Node, str] = {}
    for add, x, y, branch, branch_first in found:
        if add in inside:
            outer = inside[add]
            while outer in inside:
                outer = inside[outer]
            nested[add] = _module_path(outer)
            continue
        analysis.blocks.append(ResidualBlock(
            index=len(analysis.blocks), name=name_of(add), add=add.name, input=x.name, output=y.name,
            branch=frozenset(n.name for n in branch), branch_first=branch_first))
    order = {n: i for i, n in enumerate(graph.gm.graph.nodes)}
    for add, reason in sorted([*rejected, *((a, f"nested inside block {o}") for a, o in nested.items())],
                              key=lambda r: order[r[0]]):
        analysis.reasons[name_of(add)] = reason
    analysis.runs = _runs(graph, analysis.blocks)
    return analysis


def _follows(graph: ChannelGraph, block: ResidualBlock, previous: ResidualBlock) -> bool:
    """Whether `block` reads `previous`'s add directly or through parameter-free single-input ops."""
    node = graph.node(block.input)
    for _ in range(_CHAIN_LIMIT):
        if node.name == previous.add:
            return True
        inputs = [a for a in node.all_input_nodes if _computed(a)]
        if len(inputs) != 1 or _has_parameters(graph, node) or node.op == "placeholder":
            return False
        node = inputs[0]
    return False


def _runs(graph: ChannelGraph, blocks: list[ResidualBlock]) -> list[tuple[int, ...]]:
    runs: list[list[int]] = []
    for i, block in enumerate(blocks):
        if runs and _follows(graph, block, blocks[i - 1]):
            runs[-1].append(block.index)
        else:
            runs.append([block.index])
    return [tuple(r) for r in runs]


def run_name(blocks: Iterable[ResidualBlock]) -> str:
    """A run's name: its blocks' common module path (`layer1`), else `first..last`."""
    names = [b.name for b in blocks]
    parts = [n.split(".") for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    if common and len(names) > 1:
        return ".".join(common)
    return names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"


__all__ = ["BlockAnalysis", "analyze", "run_name"]
