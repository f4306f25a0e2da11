"""Channel analysis: trace a model with torch.fx and find its channel groups and their tensor uses.

A **channel group** is a set of channels that must be pruned together: a conv's output channels, the
BatchNorm after it, every consumer's input channels, every tensor joined to them by an elementwise op
(residual `add`, squeeze-and-excitation `mul`) and every depthwise conv that passes them through.
Groups are found by walking the graph once in topological order, giving each tensor a `Spec` (which
axis holds channels and which groups lie along it, in order: a `cat` makes a tensor whose channel
axis is a concatenation of segments of several groups) and joining groups with union-find.
A `split` (or `chunk`, `tensor_split`) along channels, or an elementwise op joining a concatenation
with a single group, **refines** a group: it becomes sub-groups, one per piece, each pruned on its own
(a conv whose output is split three ways lays out its rows as three segments). Refinement is a tree
over union-find roots; layouts are expanded to its leaves when the analysis closes.

Every parameter or buffer slice that belongs to a group is recorded as a `TensorUse`: tensor name,
axis, and the layout of groups along that axis. Pruning a group to width `k` keeps the first `k`
channels of each of its segments (after `importance.reorder` has put the most important first); a
group feeding a grouped convolution keeps `k / blocks` channels of each conv-group instead.

Anything the analysis does not understand freezes the groups it touches (a `fixed` reason is kept),
so an unsupported op yields a smaller search space, never a silently wrong subnet.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils.flop_counter import FlopCounterMode

from .layers import _NotParameter as _NOT_PARAMETER
from .layers import arg, function_layer, layer_of, leaf_positions
from .tracing import NO_TENSOR_FLOW, UntraceableModel, op_name, trace


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


# ---- op tables -------------------------------------------------------------------------------
_PASS_FUNCTIONS = {
    "relu", "relu_", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "hardswish",
    "hardsigmoid", "hardtanh", "sigmoid", "tanh", "softplus", "dropout", "dropout1d", "dropout2d",
    "dropout3d", "alpha_dropout", "contiguous", "clone", "detach", "float", "half", "double", "to",
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "interpolate", "upsample", "neg", "abs", "exp",
    "stochastic_depth", "sigmoid_", "hardsigmoid_", "hardswish_", "silu_", "gelu_", "tanh_", "relu6_",
}
_ELEMENTWISE = {"add", "iadd", "add_", "sub", "isub", "sub_", "mul", "imul", "mul_", "truediv", "itruediv",
                "div", "div_", "maximum", "minimum"}
_ADDS = {"add", "iadd", "add_"}
_REDUCTIONS = {"mean", "sum", "amax", "amin"}
_SPLITS = {"split", "chunk", "tensor_split", "split_with_sizes"}


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


def full_index(index: object, ndim: int) -> tuple[slice | int, ...] | None:
    """A basic index (slices, integers, one Ellipsis) as one entry per axis; None for any other index."""
    parts = index if isinstance(index, tuple) else (index,)
    if sum(p is Ellipsis for p in parts) > 1:
        return None
    if Ellipsis in parts:
        at = parts.index(Ellipsis)
        parts = parts[:at] + (slice(None),) * (ndim - len(parts) + 1) + parts[at + 1:]
    if len(parts) > ndim or not all(isinstance(p, (slice, int)) and not isinstance(p, bool) for p in parts):
        return None
    return tuple(parts) + (slice(None),) * (ndim - len(parts))


def get_attr(module: nn.Module, target: str) -> torch.Tensor:
    """The tensor at dotted path `target` (a parameter, buffer or plain tensor attribute)."""
    obj = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def tensor_shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(meta.shape)


def _intact_axis(shape: tuple[int, ...], out_shape: tuple[int, ...], axis: int) -> int | None:
    """The axis of a reshape's output that holds input axis `axis` unchanged (same size, same elements
    before it), or None: row-major order then keeps every channel's elements together."""
    before, product = math.prod(shape[:axis]), 1
    for j, n in enumerate(out_shape):
        if product == before and n == shape[axis]:
            return j
        product *= n
        if product > before:
            return None
    return None


def _normalize_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


# ---- the analysis ----------------------------------------------------------------------------
class _Probe(ShapeProp):
    """ShapeProp that also records the FLOPs FlopCounterMode counts for each node."""

    def __init__(self, gm: fx.GraphModule, counter: FlopCounterMode):
        super().__init__(gm)
        self.counter = counter
        self.flops: dict[str, int] = {}

    def run_node(self, n: fx.Node):
        before = self.counter.get_total_flops()
        out = super().run_node(n)
        self.flops[n.name] = self.counter.get_total_flops() - before
        return out


def measure_nodes(gm: fx.GraphModule, example_input: torch.Tensor) -> dict[str, int]:
    """Shapes into each node's meta; FLOPs per node and per sample (eval mode, MHA fast path off)."""
    was_training = gm.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    gm.eval()
    torch.backends.mha.set_fastpath_enabled(False)  # its fused kernel hides its work from FlopCounterMode
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            probe = _Probe(gm, counter)
            probe.propagate(example_input[:1])
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        gm.train(was_training)
    return probe.flops


class ChannelGraph:
    """The channel groups, tensor uses, compute sites and removable residual blocks of a model.

    `gm` is the traced graph module (it shares parameters with `model`); `tensors` maps every
    parameter and buffer name used by the graph to its tensor. `sites` are the conv/linear calls
    (FLOPs scale with their kept weights); `constant_flops` are the other ops FlopCounterMode counts
    (attention matmuls, an opaque module): each is frozen and priced at its measured FLOPs.

    The public methods `spec`, `spec_at`, `shape`, `new_group`, `use`, `set_spec`, `set_blocks`, `site`,
    `fix`, `opaque`, `account` and `flatten` are what a layer-table entry (`spaces.layers`) calls.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor):
        self.model = model
        self.gm = trace(model, example_input)
        try:
            self.node_flops = measure_nodes(self.gm, example_input)
        except RuntimeError as error:  # a graph specialised to concrete shapes that folded the batch size in
            raise UntraceableModel(f"cannot trace {type(model).__name__}: its code branches on tensor shapes and "
                                   f"the shape-specialised graph does not run on other batch sizes "
                                   f"({str(error).splitlines()[0][:120]})") from error
        self.input_shape = tuple(example_input.shape)
        self.modules = dict(self.gm.named_modules())
        self.tensors: dict[str, torch.Tensor] = {}
        self._parent: list[int] = []
        self._groups: list[ChannelGroup] = []
        self._children: dict[int, list[int]] = {}  # a refined root -> its sub-groups, in channel order
        self._pieces: dict[fx.Node, tuple[int, list[Layout]]] = {}  # a split -> (axis, each piece's layout)
        self._slices: dict[fx.Node, tuple[int, list[Layout]]] = {}  # x[:, a:b] -> (axis, before/kept/after)
        self._shapes: dict[fx.Node, Spec] = {}  # x.shape / x.size(): the spec of x
        self._constants: set[str] = set()  # get_attr targets the trace made (tensors built in forward)
        self._param_views: dict[fx.Node, tuple[fx.Node, int]] = {}  # scale.view(C, 1, 1) -> (scale, axis of C)
        self.param_views: dict[str, int] = {}  # such views used as per-channel: view node -> axis of C
        self._counts: dict[fx.Node, Layout] = {}  # a node whose value is the channel count of a layout
        self._rebuilds: dict[fx.Node, fx.Node] = {}  # reshape/expand -> the node giving its channel axis size
        self._specs: dict[fx.Node, Spec] = {}
        self._uses: list[TensorUse] = []
        self._attr_uses: dict[fx.Node, int] = {}  # get_attr node -> how many users accounted for it
        self.sites: list[ComputeSite] = []
        self.constant_flops: list[tuple[str, int]] = []  # (node, FLOPs per sample) of frozen ops
        self.resized_calls: list[str] = []  # functional calls whose size arguments follow the widths
        self.split_calls: list[str] = []  # splits along channels: their piece sizes follow the widths
        self.producer_nodes: dict[str, str] = {}  # producer name -> the first node that produces
        self.tensor_users: dict[str, list[str]] = {}  # tensor -> node names that read it
        for node in self.gm.graph.nodes:
            self._visit(node)
        self._check_get_attrs()
        self._check_counts()
        self._unify_shared_tensors()
        self._finalize()
        from .blocks import find_residual_blocks  # local import: blocks builds on this module
        self.blocks: list[ResidualBlock] = find_residual_blocks(self)

    # -- union-find --------------------------------------------------------------------------
    def new_group(self, size: int, producer: str | None = None, fixed: str | None = None) -> Layout:
        """A fresh channel group of `size` channels (made by `producer`, or frozen for `fixed`)."""
        gid = len(self._parent)
        self._parent.append(gid)
        self._groups.append(ChannelGroup(gid, size, [producer] if producer else [], 1, fixed))
        return (Segment(gid, size),)

    _new_group = new_group

    def _find(self, g: int) -> int:
        while self._parent[g] != g:
            self._parent[g] = self._parent[self._parent[g]]
            g = self._parent[g]
        return g

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        if ra > rb:
            ra, rb = rb, ra
        ga, gb = self._groups[ra], self._groups[rb]
        if ga.size != gb.size:  # cannot happen for shape-checked ops; stay safe anyway
            self._fix_group(ra, "joined with a group of another size")
            self._fix_group(rb, "joined with a group of another size")
            return
        if ra in self._children or rb in self._children:  # join sub-group by sub-group
            aligned = self._align((Segment(ra, ga.size),), (Segment(rb, gb.size),))
            if aligned is None:
                self._fix_group(ra, "joined with a group split otherwise")
                self._fix_group(rb, "joined with a group split otherwise")
                return
            self._parent[rb] = ra
            for sa, sb in zip(*aligned):
                self._union(sa.group, sb.group)
            return
        self._parent[rb] = ra
        ga.producers += [p for p in gb.producers if p not in ga.producers]
        ga.fixed = ga.fixed or gb.fixed
        if ga.blocks != gb.blocks:
            if 1 in (ga.blocks, gb.blocks):
                ga.blocks = max(ga.blocks, gb.blocks)
            else:
                ga.fixed = ga.fixed or f"grouped convolutions with {ga.blocks} and {gb.blocks} groups"

    def _fix_group(self, g: int, reason: str) -> None:
        root = self._find(g)
        for child in self._children.get(root, ()):
            self._fix_group(child, reason)
        group = self._groups[root]
        group.fixed = group.fixed or reason

    # -- refinement: a group cut into sub-groups ---------------------------------------------------
    def _leaves(self, layout: Iterable[Segment]) -> Layout:
        """`layout` with every refined group replaced by its sub-groups (recursively), on roots."""
        out: list[Segment] = []
        for seg in layout:
            root = self._find(seg.group)
            children = self._children.get(root)
            if children is None:
                out.append(Segment(root, seg.size, seg.inner))
            else:
                out.extend(self._leaves(Segment(c, self._groups[self._find(c)].size, seg.inner) for c in children))
        return tuple(out)

    def _cut_group(self, g: int, at: int) -> bool:
        """Make channel `at` of group `g` a sub-group boundary (refining it); False if it cannot be."""
        root = self._find(g)
        group = self._groups[root]
        if not 0 < at < group.size:
            return True
        children = self._children.get(root)
        if children is not None:
            offset = 0
            for child in children:
                size = self._groups[self._find(child)].size
                if offset < at < offset + size:
                    return self._cut_group(child, at - offset)
                offset += size
            return True
        if group.blocks > 1:
            return False
        parts = [self.new_group(size, fixed=group.fixed)[0].group for size in (at, group.size - at)]
        for part in parts:
            self._groups[part].producers = list(group.producers)
        self._children[root] = parts
        return True

    def _cut(self, layout: Layout, offsets: Iterable[int]) -> bool:
        """Make each element offset along `layout` a boundary between sub-groups; False if one cannot be."""
        for offset in sorted(set(offsets)):
            start = 0
            for seg in self._leaves(layout):
                if start < offset < start + seg.length:
                    if (offset - start) % seg.inner or not self._cut_group(seg.group, (offset - start) // seg.inner):
                        return False
                    break
                start += seg.length
        return True

    @staticmethod
    def _bounds(layout: Layout) -> list[int]:
        ends, total = [], 0
        for seg in layout:
            total += seg.length
            ends.append(total)
        return ends[:-1]

    def _align(self, a: Layout, b: Layout) -> tuple[Layout, Layout] | None:
        """Both layouts refined to the same boundaries: their leaves, which pair up; None if impossible."""
        if sum(s.length for s in a) != sum(s.length for s in b):
            return None
        la, lb = self._leaves(a), self._leaves(b)
        bounds = set(self._bounds(la)) | set(self._bounds(lb))
        if not (self._cut(a, bounds) and self._cut(b, bounds)):
            return None
        la, lb = self._leaves(a), self._leaves(b)
        if [(s.size, s.inner) for s in la] != [(s.size, s.inner) for s in lb]:
            return None
        return la, lb

    def _pieces_of(self, layout: Layout, lengths: list[int]) -> list[Layout] | None:
        """`layout` cut into consecutive pieces of `lengths` elements (refining groups as needed)."""
        offsets = [sum(lengths[:i]) for i in range(1, len(lengths))]
        if not self._cut(layout, offsets):
            return None
        pieces: list[list[Segment]] = [[] for _ in lengths]
        start, index = 0, 0
        for seg in self._leaves(layout):
            while index < len(lengths) - 1 and start >= offsets[index]:
                index += 1
            pieces[index].append(seg)
            start += seg.length
        return [tuple(p) for p in pieces]

    def fix(self, layout: Iterable[Segment], reason: str) -> None:
        """Freeze every group along `layout`, for `reason` (the first reason given is kept)."""
        for seg in layout:
            self._fix_group(seg.group, reason)

    _fix = fix

    def set_blocks(self, layout: Layout, blocks: int) -> bool:
        """Split the single group of `layout` into `blocks` conv-groups; False if it cannot be."""
        if len(layout) != 1 or layout[0].inner != 1 or self._find(layout[0].group) in self._children:
            return False
        group = self._groups[self._find(layout[0].group)]
        if group.blocks in (1, blocks):
            group.blocks = blocks
        else:
            group.fixed = group.fixed or f"grouped convolutions with {group.blocks} and {blocks} groups"
        return True

    def _unify_layouts(self, a: Layout, b: Layout, reason: str) -> None:
        if [(s.size, s.inner) for s in a] == [(s.size, s.inner) for s in b]:
            for sa, sb in zip(a, b):
                self._union(sa.group, sb.group)
            return
        aligned = self._align(a, b)  # e.g. a concatenation added to one group: that group is split
        if aligned is None:
            self._fix(a, reason)
            self._fix(b, reason)
            return
        for sa, sb in zip(*aligned):
            self._union(sa.group, sb.group)

    # -- specs ---------------------------------------------------------------------------------
    def spec(self, node: fx.Node) -> Spec | None:
        """The node's spec; an unknown tensor gets a fresh fixed group along axis 1."""
        if node in self._specs:
            return self._specs[node]
        shape = tensor_shape(node)
        if shape is None or len(shape) < 2:
            return None
        spec = Spec(1, self._new_group(shape[1], fixed=f"produced by unsupported op '{op_name(node)}'"))
        self._specs[node] = spec
        return spec

    _spec = spec

    def spec_at(self, node: fx.Node, axis: int, length: int, reason: str) -> Spec:
        """The node's spec if its channels lie on `axis` with `length` elements, else a fixed one."""
        spec = self._spec(node)
        if spec is not None and spec.axis == axis and spec.length == length:
            return spec
        if spec is not None:
            self._fix(spec.layout, reason)
        return Spec(axis, self._new_group(length, fixed=reason))

    _spec_at = spec_at

    def set_spec(self, node: fx.Node, axis: int, layout: Layout) -> None:
        """The node's output holds the channels of `layout` along `axis`."""
        self._specs[node] = Spec(axis, layout)

    @staticmethod
    def shape(node: fx.Node) -> tuple[int, ...] | None:
        return tensor_shape(node)

    def use(self, tensor: str, axis: int, layout: Layout, local: bool = False) -> None:
        """Axis `axis` of `tensor` holds the channels of `layout` (it is cut with them)."""
        if tensor in self._constants:  # the model's forward makes it anew: it can be neither permuted nor cut
            self.fix(layout, f"a tensor the forward makes ({tensor}) holds these channels")
            return
        self._uses.append(TensorUse(tensor, axis, layout, local))

    _use = use

    def account(self, node: fx.Node) -> None:
        """A get_attr node's read by the current op is understood (its tensor is sliced as used)."""
        self._attr_uses[node] += 1

    def site(self, node: fx.Node, producer: str, weight: str, kind: str, options: dict) -> None:
        """A conv/linear call (its FLOPs were checked to be 2 x positions x weight elements)."""
        positions = leaf_positions(self.node_flops.get(node.name, 0), self.tensors[weight].numel())
        kernel = tuple(self.tensors[weight].shape[2:])
        self.sites.append(ComputeSite(node.name, producer, weight, positions or 0, kind, {**options, "kernel": kernel}))
        self.producer_nodes.setdefault(producer, node.name)

    def _read(self, node: fx.Node, *tensor_names: str) -> None:
        for name in tensor_names:
            self.tensor_users.setdefault(name, []).append(node.name)

    def _module_tensors(self, node: fx.Node, module: nn.Module) -> None:
        """Every tensor of a leaf module, its children's included (MultiheadAttention's out_proj)."""
        for kind in (module.named_parameters(), module.named_buffers()):
            for pname, t in kind:
                name = f"{node.target}.{pname}"
                self.tensors[name] = t
                self._read(node, name)

    # -- visiting ------------------------------------------------------------------------------
    def _visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            shape = tensor_shape(node)
            if shape is not None and len(shape) >= 2:
                self._specs[node] = Spec(1, self._new_group(shape[1], fixed="model input"))
        elif node.op == "get_attr":
            self.tensors[node.target] = get_attr(self.gm, node.target)
            if node.target.rpartition(".")[2].startswith("_tensor_constant"):  # made in forward, captured by fx
                self._constants.add(node.target)
            self._read(node, node.target)
            self._attr_uses[node] = 0
        elif node.op == "output":
            for arg_node in node.all_input_nodes:
                spec = self._specs.get(arg_node)
                if spec is not None:
                    self._fix(spec.layout, "model output")
        elif node.op == "call_module":
            self._visit_module(node, self.modules[node.target])
        else:
            layer = function_layer(node.target) if node.op == "call_function" else None
            if layer is not None and layer.functional is not None:
                self._visit_layer(node, layer, None)
            elif not self._priced_opaque(node):
                self._visit_function(node, op_name(node))

    def _priced_opaque(self, node: fx.Node) -> bool:
        """An op FlopCounterMode counts that is not a conv/linear of the table: frozen, priced as measured."""
        flops = self.node_flops.get(node.name, 0)
        if flops <= 0:
            return False
        self.constant_flops.append((node.name, flops))
        self._opaque(node, f"'{op_name(node)}' computes on channels (frozen, its FLOPs priced as measured)")
        return True

    def _visit_module(self, node: fx.Node, m: nn.Module) -> None:
        self._module_tensors(node, m)
        layer = layer_of(m)
        if layer is None:
            if not self._priced_opaque(node):
                self._opaque(node, f"unsupported module {type(m).__name__} ({node.target})")
            return
        self._visit_layer(node, layer, m)

    def _visit_layer(self, node: fx.Node, layer, m: nn.Module | None) -> None:
        """A layer of the table (a module, or a functional form when `m` is None)."""
        flops = self.node_flops.get(node.name, 0)
        if layer.flops:
            weight = m.weight if m is not None else arg(node, 1, "weight")
            numel = weight.numel() if isinstance(weight, torch.Tensor) else (
                self.tensors[weight.target].numel() if isinstance(weight, fx.Node) and weight.op == "get_attr" else 0)
            if leaf_positions(flops, numel) is None and flops > 0:
                self._priced_opaque(node)  # it does more (or other) work than a conv/linear
                return
        elif flops > 0:
            self._priced_opaque(node)
            return
        sites = len(self.sites)
        try:
            if m is not None:
                layer.channels(self, node, m)
            else:
                layer.functional(self, node)
        except _NOT_PARAMETER:
            self._opaque(node, f"'{op_name(node)}' on a computed tensor (not a parameter)")
        if len(self.sites) == sites:  # not a compute site (an entry that froze it instead): priced as measured
            self._priced_constant(node)

    def _priced_constant(self, node: fx.Node) -> None:
        flops = self.node_flops.get(node.name, 0)
        if flops > 0:
            self.constant_flops.append((node.name, flops))

    def opaque(self, node: fx.Node, reason: str) -> None:
        """An op we do not understand: freeze every group flowing into it."""
        for a in node.all_input_nodes:
            spec = self._specs.get(a)
            if spec is not None:
                self._fix(spec.layout, reason)
            for piece in self._pieces.get(a, (None, ()))[1]:  # a split's pieces, used whole
                self._fix(piece, reason)
            if a.op == "get_attr":
                self._attr_uses[a] -= 10 ** 6  # never counts as accounted for

    _opaque = opaque

    def _visit_function(self, node: fx.Node, name: str) -> None:
        args = node.args
        x = args[0] if args and isinstance(args[0], fx.Node) else None
        out_shape = tensor_shape(node)
        if name == "getitem" and x in self._pieces:
            axis, pieces = self._pieces[x]
            index = args[1]
            if isinstance(index, int) and -len(pieces) <= index < len(pieces):
                self._specs[node] = Spec(axis, pieces[index])
            else:
                self._opaque(node, "a split's pieces indexed by other than an integer")
            return
        if self._shape_read(node, name, x):
            return
        if name in NO_TENSOR_FLOW or (name == "getitem" and (x is None or tensor_shape(x) is None)):
            return
        if name == "getitem":
            self._index(node, x, args[1])
            return
        if name in _ELEMENTWISE:
            self._elementwise(node, out_shape)
        elif name in _PASS_FUNCTIONS and x is not None:
            if name == "stochastic_depth":
                self._opaque(node, "functional stochastic_depth (trace StochasticDepth modules instead)")
                return
            spec = self._spec(x)
            if spec is not None and out_shape is not None and len(out_shape) == len(tensor_shape(x)):
                self._specs[node] = spec
            else:
                self._opaque(node, f"'{name}' changed the tensor's rank")
        elif name == "pad" and x is not None:
            spec = self._spec(x)
            pads = args[1] if len(args) > 1 else node.kwargs.get("pad", ())
            if spec is not None and len(pads) // 2 < len(out_shape) - spec.axis:
                self._specs[node] = spec
            else:
                self._opaque(node, "padding of the channel axis")
        elif name == "expand" and x is not None:
            self._expand(node, x, out_shape)
        elif name in ("cat", "concat", "concatenate"):
            self._cat(node, out_shape)
        elif name in _SPLITS and x is not None:
            self._split(node, x)
        elif name == "stack":
            self._stack(node, out_shape)
        elif name == "flatten" and x is not None:
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
            self._flatten(node, x, start, end)
        elif name in ("view", "reshape") and x is not None:
            self._reshape(node, x, out_shape)
        elif name == "permute" and x is not None:
            dims = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
            dims = node.kwargs.get("dims", dims)
            spec = self._spec(x)
            if spec is not None:
                dims = [_normalize_dim(d, len(dims)) for d in dims]
                self._specs[node] = Spec(dims.index(spec.axis), spec.layout)
        elif name == "transpose" and x is not None:
            spec = self._spec(x)
            if spec is not None:
                ndim = len(tensor_shape(x))
                d0, d1 = (_normalize_dim(int(d), ndim) for d in args[1:3])
                axis = {d0: d1, d1: d0}.get(spec.axis, spec.axis)
                self._specs[node] = Spec(axis, spec.layout)
        elif name in _REDUCTIONS and x is not None:
            self._reduce(node, x, out_shape)
        else:
            self._opaque(node, f"unsupported op '{name}'")

    def _shape_read(self, node: fx.Node, name: str, x: fx.Node | None) -> bool:
        """`x.size(d)`, `x.shape[d]`, `B, C, H, W = x.shape`: remember the nodes that carry a channel count
        (checked in `_check_counts`). True when `node` was such a read."""
        if x is None:
            return False
        if name == "size" and x in self._specs:
            dim = arg(node, 1, "dim")
            spec = self._specs[x]
            if dim is None:
                self._shapes[node] = spec
            elif isinstance(dim, int) and _normalize_dim(dim, len(tensor_shape(x))) == spec.axis:
                self._counts[node] = spec.layout
            return True
        if name == "getattr" and len(node.args) > 1 and node.args[1] == "shape" and x in self._specs:
            self._shapes[node] = self._specs[x]
            return True
        if name == "getitem" and x in self._shapes:
            spec, index, ndim = self._shapes[x], node.args[1], len(tensor_shape(x.args[0]))
            if isinstance(index, int):
                held = _normalize_dim(index, ndim) == spec.axis
            else:  # a slice of the shape (`x.shape[2:]`, spatial sizes) holds the count if it covers the axis
                plain = isinstance(index, slice) and all(isinstance(v, (int, type(None)))
                                                         for v in (index.start, index.stop, index.step))
                held = not plain or spec.axis in range(ndim)[index]
            if held:
                self._counts[node] = spec.layout
            return True
        if name == "numel" and x in self._specs:
            self._counts[node] = self._specs[x].layout
            return True
        return False

    def _elementwise(self, node: fx.Node, out_shape: tuple[int, ...] | None) -> None:
        if out_shape is None:
            return
        ndim = len(out_shape)
        main: tuple[Spec, int] | None = None  # (spec, axis counted from the end)
        params: list[fx.Node] = []
        broadcast: list[tuple[int, ...]] = []  # shapes of operands taken for broadcast over channels
        views: list[fx.Node] = []
        for operand in node.all_input_nodes:
            if operand.op == "get_attr":
                params.append(operand)
                continue
            if operand in self._param_views:
                views.append(operand)
                continue
            shape = tensor_shape(operand)
            spec = self._spec(operand) if shape is not None else None
            if spec is None or shape[spec.axis] == 1:
                if shape is not None:
                    broadcast.append(shape)
                continue  # a scalar or a tensor broadcast over channels
            from_end = len(shape) - spec.axis
            if main is None:
                main = (spec, from_end)
            elif from_end == main[1]:
                self._unify_layouts(main[0].layout, spec.layout, "elementwise op over mismatched channels")
            else:
                self._fix(main[0].layout, "elementwise op mixing channel and other axes")
                self._fix(spec.layout, "elementwise op mixing channel and other axes")
        if main is None:
            for p in [*params, *(self._param_views[v][0] for v in views)]:
                self._attr_uses[p] -= 10 ** 6
            return
        spec, from_end = main
        out_axis = ndim - from_end
        for view in views:  # a vector parameter viewed to broadcast: per-channel if its length lines up
            attr, axis = self._param_views[view]
            shape = tensor_shape(view)
            if axis == len(shape) - from_end and shape[axis] == spec.length:
                self._use(attr.target, 0, spec.layout)
                self._attr_uses[attr] += 1
                self.param_views[view.name] = axis
            else:
                broadcast.append(shape)
        for shape in broadcast:  # what lines up with the channels must really be broadcast over them
            at = len(shape) - from_end
            if 0 <= at < len(shape) and shape[at] != 1:
                self._fix(spec.layout, "elementwise op with a tensor whose channels are not known")
        for p in params:
            pshape = tuple(self.tensors[p.target].shape)
            paxis = out_axis - (ndim - len(pshape))
            if 0 <= paxis < len(pshape) and pshape[paxis] == spec.length:
                self._use(p.target, paxis, spec.layout)
                self._attr_uses[p] += 1
            elif 0 <= paxis < len(pshape) and pshape[paxis] != 1:
                self._fix(spec.layout, f"parameter {p.target} does not broadcast over channels")
            else:
                self._attr_uses[p] += 1
        self._specs[node] = Spec(out_axis, spec.layout)

    def _operands(self, node: fx.Node) -> list[Spec | None]:
        """The specs of a cat/stack's tensors: a list of nodes, or a split's pieces passed as one tuple."""
        tensors = arg(node, 0, "tensors")
        if isinstance(tensors, fx.Node):
            axis, pieces = self._pieces.get(tensors, (None, [None]))
            return [Spec(axis, p) if p is not None else None for p in pieces]
        return [self._spec(t) if isinstance(t, fx.Node) else None for t in tensors]

    def _expand(self, node: fx.Node, x: fx.Node, out_shape: tuple[int, ...]) -> None:
        """A broadcast: the channel axis moves by the axes it prepends and must not itself be broadcast."""
        if x.op == "get_attr":
            return  # a parameter broadcast (ViT's class token): its consumer relates it to channels (`_cat`)
        spec = self._spec(x)
        if spec is None:
            return
        axis = spec.axis + len(out_shape) - len(tensor_shape(x))
        sizes = node.args[1:] if len(node.args) > 2 or not isinstance(node.args[1], (list, tuple)) else node.args[1]
        if out_shape[axis] == spec.length and len(sizes) == len(out_shape) and (
                isinstance(sizes[axis], fx.Node) or sizes[axis] == -1):
            self._specs[node] = Spec(axis, spec.layout)
            if isinstance(sizes[axis], fx.Node):
                self._rebuilds[node] = sizes[axis]
        else:
            self._opaque(node, "'expand' with the channel count written out")

    def _parameter(self, node: object) -> tuple[fx.Node, int] | None:
        """A parameter read directly or through `expand`: (its get_attr, the axes `expand` prepended)."""
        if not isinstance(node, fx.Node):
            return None
        if node.op == "get_attr":
            return node, 0
        if node.op in ("call_method", "call_function") and op_name(node) == "expand" and len(node.users) == 1:
            source = node.args[0]
            if isinstance(source, fx.Node) and source.op == "get_attr" and tensor_shape(node) is not None:
                return source, len(tensor_shape(node)) - self.tensors[source.target].dim()
        return None

    def _cat(self, node: fx.Node, out_shape: tuple[int, ...]) -> None:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        dim = _normalize_dim(dim, len(out_shape))
        if self._cat_with_parameters(node, dim):
            return
        specs = self._operands(node)
        if any(s is None for s in specs):
            self._opaque(node, "concatenation of tensors without channels")
            return
        if all(s.axis == dim for s in specs):
            self._specs[node] = Spec(dim, tuple(seg for s in specs for seg in s.layout))
        elif all(s.axis != dim and s.axis == specs[0].axis for s in specs):
            for s in specs[1:]:
                self._unify_layouts(specs[0].layout, s.layout, "concatenation over mismatched channels")
            self._specs[node] = specs[0]
        else:
            self._opaque(node, "concatenation mixing channel and other axes")

    def _split(self, node: fx.Node, x: fx.Node) -> None:
        """`split`/`chunk`/`tensor_split`: each piece of the channel axis holds its own part of the layout."""
        spec, metas = self._spec(x), node.meta.get("tensor_meta")
        if spec is None:
            return
        if not isinstance(metas, (tuple, list)) or not all(hasattr(m, "shape") for m in metas) or not metas:
            self._opaque(node, f"'{op_name(node)}' with pieces of unknown shape")
            return
        axis = _normalize_dim(arg(node, 2, "dim", 0), len(tensor_shape(x)))
        if axis != spec.axis:
            self._pieces[node] = (spec.axis, [spec.layout] * len(metas))
            return
        pieces = self._pieces_of(spec.layout, [m.shape[axis] for m in metas])
        if pieces is None:
            self._opaque(node, f"'{op_name(node)}' cuts the channel axis inside a channel or a conv-group")
            return
        self._pieces[node] = (axis, pieces)
        self.split_calls.append(node.name)

    def _index(self, node: fx.Node, x: fx.Node, index: object) -> None:
        """`x[...]` with basic slices: a slice of the channel axis keeps that part of its layout."""
        spec, shape = self._spec(x), tensor_shape(x)
        if spec is None:
            return
        parts = full_index(index, len(shape))
        if parts is None:
            self._opaque(node, "indexing other than by slices and integers")
            return
        cut = parts[spec.axis]
        axis = spec.axis - sum(isinstance(p, int) for p in parts[:spec.axis])  # integers drop their axes
        if isinstance(cut, int):
            self._opaque(node, "indexing a single channel")
            return
        if cut == slice(None):
            self._specs[node] = Spec(axis, spec.layout)
            return
        if not all(isinstance(v, (int, type(None))) for v in (cut.start, cut.stop, cut.step)) or cut.step not in (None, 1):
            self._opaque(node, "a slice of the channel axis with a step or computed bounds")
            return
        start, stop, _ = cut.indices(spec.length)
        pieces = self._pieces_of(spec.layout, [start, max(stop - start, 0), spec.length - max(stop, start)])
        if pieces is None or stop <= start:
            self._opaque(node, "a slice of the channel axis inside a channel or a conv-group")
            return
        self._specs[node] = Spec(axis, pieces[1])
        self._slices[node] = (spec.axis, pieces)

    def _cat_with_parameters(self, node: fx.Node, dim: int) -> bool:
        """Tensors joined along another axis than their channels with parameters (ViT's class token):
        the parameters hold those channels too, and are cut with them. False if that is not the case."""
        tensors = arg(node, 0, "tensors")
        if not isinstance(tensors, (list, tuple)):
            return False
        params = {i: self._parameter(t) for i, t in enumerate(tensors)}
        params = {i: p for i, p in params.items() if p is not None}
        if not params or len(params) == len(tensors):
            return False
        specs = [self._spec(t) if isinstance(t, fx.Node) else None for i, t in enumerate(tensors) if i not in params]
        if any(s is None for s in specs) or any(s.axis == dim or s.axis != specs[0].axis for s in specs):
            return False
        for s in specs[1:]:
            self._unify_layouts(specs[0].layout, s.layout, "concatenation over mismatched channels")
        axis, layout = specs[0].axis, specs[0].layout
        for attr, prepended in params.values():
            tensor, at = self.tensors[attr.target], axis - prepended
            if 0 <= at < tensor.dim() and tensor.shape[at] == specs[0].length:
                self._use(attr.target, at, layout)
                self._attr_uses[attr] += 1
            else:
                self._fix(layout, f"parameter {attr.target} concatenated across the channels")
        self._specs[node] = specs[0]
        return True

    def _stack(self, node: fx.Node, out_shape: tuple[int, ...]) -> None:
        """Tensors of one channel layout stacked along a new axis (timm's selective kernel paths)."""
        dim = _normalize_dim(arg(node, 1, "dim", 0), len(out_shape))
        specs = self._operands(node)
        if any(s is None for s in specs) or any(s.axis != specs[0].axis for s in specs):
            self._opaque(node, "stack of tensors without a common channel axis")
            return
        for s in specs[1:]:
            self._unify_layouts(specs[0].layout, s.layout, "stack over mismatched channels")
        axis = specs[0].axis + (1 if dim <= specs[0].axis else 0)
        self._specs[node] = Spec(axis, specs[0].layout)

    def _flatten(self, node: fx.Node, x: fx.Node, start: int, end: int) -> None:
        spec, shape = self._spec(x), tensor_shape(x)
        if spec is None:
            return
        start, end = _normalize_dim(start, len(shape)), _normalize_dim(end, len(shape))
        if spec.axis < start:
            self._specs[node] = spec
        elif spec.axis > end:
            self._specs[node] = Spec(spec.axis - (end - start), spec.layout)
        elif spec.axis == start:
            inner = math.prod(shape[start + 1:end + 1])
            self._specs[node] = Spec(start, tuple(Segment(s.group, s.size, s.inner * inner) for s in spec.layout))
        else:
            self._opaque(node, "flatten that interleaves channels")

    flatten = _flatten

    def _reshape(self, node: fx.Node, x: fx.Node, out_shape: tuple[int, ...]) -> None:
        """A reshape keeping the channel axis whole, or flattening it with everything after it; a vector
        parameter viewed for broadcasting (`scale.view(C, 1, 1)`) is left to the op that uses it."""
        if x.op == "get_attr" and self.tensors[x.target].dim() == 1 and out_shape is not None:
            length = self.tensors[x.target].shape[0]
            if length > 1 and sorted(out_shape) == [1] * (len(out_shape) - 1) + [length]:
                self._param_views[node] = (x, out_shape.index(length))
                return
        spec, shape = self._spec(x), tensor_shape(x)
        if spec is None:
            return
        sizes = node.args[1:] if len(node.args) > 2 or not isinstance(node.args[1], (list, tuple)) else node.args[1]
        a = spec.axis
        intact = _intact_axis(shape, out_shape, a)
        if intact is not None and len(sizes) == len(out_shape) and (isinstance(sizes[intact], fx.Node)
                                                                    or sizes[intact] == -1):
            self._specs[node] = Spec(intact, spec.layout)  # only the axes around the channels are reshaped
            if isinstance(sizes[intact], fx.Node):
                self._rebuilds[node] = sizes[intact]
        elif (len(out_shape) == a + 1 and out_shape[:a] == shape[:a] and len(sizes) == a + 1
                and sizes[a] == -1):
            self._flatten(node, x, a, -1)
        else:
            self._opaque(node, f"'{op_name(node)}' splits or merges the channel axis (attention heads, a channel shuffle)")

    def _reduce(self, node: fx.Node, x: fx.Node, out_shape: tuple[int, ...]) -> None:
        spec, shape = self._spec(x), tensor_shape(x)
        if spec is None or out_shape is None:
            return
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if dims is None:
            self._opaque(node, "reduction over every axis")
            return
        dims = [_normalize_dim(d, len(shape)) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        if spec.axis in dims:
            self._opaque(node, "reduction over the channel axis")
            return
        keep = len(out_shape) == len(shape)
        self._specs[node] = Spec(spec.axis if keep else spec.axis - sum(d < spec.axis for d in dims), spec.layout)

    # -- closing passes ------------------------------------------------------------------------
    def _check_get_attrs(self) -> None:
        """A get_attr tensor read by an op that did not account for it must not be sliced."""
        for node, accounted in self._attr_uses.items():
            if accounted < len(node.users):
                for use in self._uses:
                    if use.tensor == node.target:
                        self._fix(use.layout, f"{node.target} is read by an unsupported op")

    def _check_counts(self) -> None:
        """A channel count read from a tensor follows its widths in the subnet: it may only size the channel
        axis of a reshape/expand that rebuilds that same layout. Any other use (`C // heads`, a view of
        another tensor) freezes the layout, so that the count stays what the code expects."""
        def same(a: Layout, b: Layout) -> bool:
            return [(s.group, s.size, s.inner) for s in self._leaves(a)] == [
                (s.group, s.size, s.inner) for s in self._leaves(b)]

        for reshape, size in self._rebuilds.items():
            layout = self._specs[reshape].layout
            if size not in self._counts or not same(self._counts[size], layout):
                self._fix(layout, f"'{op_name(reshape)}' sizes the channel axis with a computed value")
        for shape, spec in self._shapes.items():  # a whole shape used other than indexed (`y.view(x.shape)`)
            if any(op_name(user) not in ("getitem", "len") for user in shape.users):
                self._fix(spec.layout, "its shape, channel count included, is read whole")
        for count, layout in self._counts.items():
            for user in count.users:
                if self._rebuilds.get(user) is not count or not same(self._specs[user].layout, layout):
                    self._fix(layout, f"its channel count is read by '{op_name(user)}'")
                    break

    def _unify_shared_tensors(self) -> None:
        """Several uses of one tensor axis (a module called twice, a shared parameter) must agree."""
        first: dict[tuple[str, int, bool], TensorUse] = {}
        for use in self._uses:
            key = (use.tensor, use.axis, use.local)
            if key in first:
                self._unify_layouts(first[key].layout, use.layout, f"{use.tensor} is shared")
            else:
                first[key] = use

    def _finalize(self) -> None:
        for use in self._uses:  # a grouped conv's per-group input holds one block of one group
            if use.local and len(self._leaves(use.layout)) > 1:
                self._fix(use.layout, "grouped convolution over a split group")
        roots = sorted({self._find(g) for g in range(len(self._parent))} - set(self._children))
        renumber = {r: i for i, r in enumerate(roots)}
        self.groups: list[ChannelGroup] = []
        for r in roots:
            g = self._groups[r]
            self.groups.append(ChannelGroup(renumber[r], g.size, list(g.producers), g.blocks, g.fixed))
        for g in self.groups:
            if g.blocks > 1 and g.size % g.blocks:
                g.fixed = g.fixed or f"{g.size} channels in {g.blocks} conv-groups"
            if not g.producers and not g.fixed:
                g.fixed = "no layer of the table produces these channels"

        def canon(layout: Layout) -> Layout:
            return tuple(Segment(renumber[s.group], s.size, s.inner) for s in self._leaves(layout))

        uses: dict[tuple[str, int, bool], TensorUse] = {}
        for u in self._uses:
            uses.setdefault((u.tensor, u.axis, u.local), TensorUse(u.tensor, u.axis, canon(u.layout), u.local))
        self.uses: dict[str, list[TensorUse]] = {}
        for u in uses.values():
            self.uses.setdefault(u.tensor, []).append(u)
        self.specs: dict[str, Spec] = {n.name: Spec(s.axis, canon(s.layout)) for n, s in self._specs.items()}
        #: a split along channels -> (its axis, each piece's layout): piece sizes follow the widths
        self.splits: dict[str, tuple[int, list[Layout]]] = {
            n.name: (axis, [canon(p) for p in pieces]) for n, (axis, pieces) in self._pieces.items()
            if n.name in self.split_calls}
        #: a slice of the channel axis -> (its axis, the layouts before, in and after it)
        self.slices: dict[str, tuple[int, list[Layout]]] = {
            n.name: (axis, [canon(p) for p in pieces]) for n, (axis, pieces) in self._slices.items()}
        del self._specs, self._uses, self._groups, self._parent, self._children, self._pieces, self._slices
        del self._shapes, self._counts, self._rebuilds, self._constants

    # -- queries -------------------------------------------------------------------------------
    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def node(self, name: str) -> fx.Node:
        return self._nodes_by_name()[name]

    def _nodes_by_name(self) -> dict[str, fx.Node]:
        if not hasattr(self, "_node_index"):
            self._node_index = {n.name: n for n in self.gm.graph.nodes}
        return self._node_index

    def fixed_reasons(self) -> dict[str, int]:
        """How many groups each reason froze (input and output excluded): every frozen group has one."""
        reasons: dict[str, int] = {}
        for g in self.groups:
            if g.fixed and g.fixed not in ("model input", "model output") and g.size > 1:
                reasons[g.fixed] = reasons.get(g.fixed, 0) + 1
        return reasons


__all__ = ["ChannelGraph", "ChannelGroup", "ComputeSite", "Layout", "ResidualBlock", "Segment", "Spec",
           "TensorUse", "UntraceableModel", "op_name", "tensor_shape", "trace"]
