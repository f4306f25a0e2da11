"""The words of channel analysis (segments, specs, groups, tensor uses) and what a table entry may ask of it.

The layer table (`spaces.layers`) and the op table (`spaces.ops`) say how channels flow through each
layer and op; the channel graph (`spaces.graph`) walks a traced model and asks them. An entry sees the
graph only through `Walk`, the part of `ChannelGraph` it may call, so that neither table imports the
graph (the graph imports both).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.fx as fx
from torch import nn


@dataclass(frozen=True)
class Segment:
    """`size` channels of one group laid along an axis, each taking `inner` consecutive elements."""

    group: int
    size: int
    inner: int = 1

    @property
    def length(self) -> int:
        return self.size * self.inner


Layout = tuple[Segment, ...]


@dataclass(frozen=True)
class Spec:
    """The channel structure of a tensor: the axis that holds channels and the groups along it."""

    axis: int
    layout: Layout

    @property
    def length(self) -> int:
        return sum(s.length for s in self.layout)


@dataclass(frozen=True)
class TensorUse:
    """Axis `axis` of parameter/buffer `tensor` is laid out as `layout`.

    `local`: the axis is the per-conv-group input of a grouped convolution; it holds the
    channels of one block of its (single) group, and keeps `width / blocks` of them.
    """

    tensor: str
    axis: int
    layout: Layout
    local: bool = False


@dataclass
class ChannelGroup:
    id: int
    size: int
    producers: list[str] = field(default_factory=list)
    blocks: int = 1
    fixed: str | None = None

    @property
    def prunable(self) -> bool:
        return self.fixed is None and bool(self.producers) and self.size > 1


@dataclass
class ComputeSite:
    """A conv/linear call: its FLOPs are 2 x `positions` x (kept elements of `weight`), per sample.

    `kind` names its layer-table entry ("conv", "linear"); `options` holds what its latency call needs.
    """

    node: str
    module: str
    weight: str
    positions: int
    kind: str = "conv"
    options: dict = field(default_factory=dict)


@dataclass
class ResidualBlock:
    """`add` computes `input + branch(input)` with equal shapes; removing it replaces `add` by `input`."""

    index: int
    name: str
    add: str
    input: str
    output: str
    branch: frozenset[str]
    branch_first: bool


# ---- reading fx nodes ------------------------------------------------------------------------
def op_name(node: fx.Node) -> str:
    """The name an op is known by in the op table: a method's name, a function's `__name__`."""
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def tensor_shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(meta.shape)


def arg(node: fx.Node, index: int, name: str, default: object = None) -> object:
    """Positional argument `index` of a call, or its keyword `name`."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def input_node(node: fx.Node) -> fx.Node | None:
    """The tensor a call works on: its first argument, or its `input` keyword; None if not a node."""
    x = node.args[0] if node.args else node.kwargs.get("input")
    return x if isinstance(x, fx.Node) else None


def holds_tensors(module: nn.Module) -> bool:
    """Whether `module` or any of its children holds a parameter or a buffer."""
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


# ---- what an entry may ask of the graph -----------------------------------------------------------
class Walk(Protocol):
    """The part of `ChannelGraph` a layer or op entry calls while the graph walks the model.

    Groups are joined with union-find; a node's `Spec` says which axis of its output holds which
    groups. An entry reads its inputs' specs, records the tensors it cuts (`use`), sets its output's
    spec, and freezes (`fix`, `opaque`) what it does not understand.
    """

    #: parameter/buffer name -> tensor, for every tensor the graph reads
    tensors: dict[str, torch.Tensor]
    #: functional calls whose size arguments follow the widths (their layer's `call_resize`)
    resized_calls: list[str]
    #: per-node notes of the op entries, read by the graph's closing passes:
    #: a split -> (its axis, each piece's layout); the node names of those along channels
    split_pieces: dict[fx.Node, tuple[int, list[Layout]]]
    split_calls: list[str]
    #: x[:, a:b] -> (its axis, the layouts before, in and after it)
    slice_pieces: dict[fx.Node, tuple[int, list[Layout]]]
    #: x.shape / x.size(): the spec of x; a node whose value is the channel count of a layout
    shape_reads: dict[fx.Node, Spec]
    count_reads: dict[fx.Node, Layout]
    #: a reshape/expand -> the node giving the size of its channel axis
    rebuilds: dict[fx.Node, fx.Node]
    #: scale.view(C, 1, 1) -> (scale's get_attr, the axis of C); a view/reshape whose size at an axis follows
    #: the widths (a per-channel parameter's view, a reshape into or out of attention heads): name -> axis,
    #: written `-1` in the subnet
    vector_views: dict[fx.Node, tuple[fx.Node, int]]
    param_views: dict[str, int]

    def new_group(self, size: int, producer: str | None = None, fixed: str | None = None) -> Layout:
        """A fresh channel group of `size` channels (made by `producer`, or frozen for `fixed`)."""

    def spec(self, node: fx.Node) -> Spec | None:
        """The node's spec; an unknown tensor gets a fresh fixed group along axis 1."""

    def known_spec(self, node: fx.Node) -> Spec | None:
        """The node's spec if an entry has set one, else None (nothing is made)."""

    def spec_at(self, node: fx.Node, axis: int, length: int, reason: str) -> Spec:
        """The node's spec if its channels lie on `axis` with `length` elements, else a fixed one."""

    def set_spec(self, node: fx.Node, axis: int, layout: Layout) -> None:
        """The node's output holds the channels of `layout` along `axis`."""

    def shape(self, node: fx.Node) -> tuple[int, ...] | None:
        """The node's output shape (from the shape propagation), None where it is not one tensor."""

    def use(self, tensor: str, axis: int, layout: Layout, local: bool = False) -> None:
        """Axis `axis` of `tensor` holds the channels of `layout` (it is cut with them)."""

    def account(self, node: fx.Node) -> None:
        """A get_attr node's read by the current op is understood (its tensor is sliced as used)."""

    def disown(self, node: fx.Node) -> None:
        """A get_attr node is read by an op that does not relate it to channels: it is never cut."""

    def site(self, node: fx.Node, producer: str, weight: str, kind: str, options: dict) -> None:
        """A conv/linear call (its FLOPs were checked to be 2 x positions x weight elements)."""

    def scale_flops(self, node: fx.Node, layout: Layout | None) -> None:
        """The node's measured FLOPs are proportional to the kept length of `layout` (attention over heads:
        each head costs the same); None, or FLOPs that do not divide evenly: priced as measured, frozen."""

    def regrain(self, layout: Layout, heads: int, head_dim: int, pieces: int) -> Layout | None:
        """The channels of `layout` (one group) are `pieces` x `heads` x `head_dim` elements: from now on
        the group is `heads` channels of `head_dim` elements each, laid `pieces` times along the axis (fused
        q, k, v rows); returns that layout (one segment per piece), or None if the group cannot be regrained."""

    def set_blocks(self, layout: Layout, blocks: int) -> bool:
        """Split the single group of `layout` into `blocks` conv-groups; False if it cannot be."""

    def unify(self, a: Layout, b: Layout, reason: str) -> None:
        """The channels of `a` and `b` are the same ones (refining groups to line up); else freeze both."""

    def pieces_of(self, layout: Layout, lengths: list[int]) -> list[Layout] | None:
        """`layout` cut into consecutive pieces of `lengths` elements (refining groups as needed)."""

    def fix(self, layout: Iterable[Segment], reason: str) -> None:
        """Freeze every group along `layout`, for `reason` (the first reason given is kept)."""

    def opaque(self, node: fx.Node, reason: str) -> None:
        """An op we do not understand: freeze every group flowing into it."""


__all__ = ["ChannelGroup", "ComputeSite", "Layout", "ResidualBlock", "Segment", "Spec", "TensorUse", "Walk",
           "arg", "holds_tensors", "input_node", "op_name", "tensor_shape"]
