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

How channels flow through each layer and op is said by the layer table (`spaces.layers`) and the op
table (`spaces.ops`); this module holds the union-find, the walk that asks the tables, and the passes
that close the analysis. Anything the analysis does not understand freezes the groups it touches (a
`fixed` reason is kept), so an unsupported op yields a smaller search space, never a silently wrong subnet.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils.flop_counter import FlopCounterMode

from .channels import (ChannelGroup, ComputeSite, Layout, ResidualBlock, Segment, Spec, TensorUse, input_node,
                       op_name, tensor_shape)
from .layers import Layer, NotAParameter, arg, function_layer, layer_of, leaf_positions
from .ops import FRESH, Op, op_named, op_of
from .structure import describe, first_sample, graph_inputs
from .tracing import UntraceableModel, trace


def get_attr(module: nn.Module, target: str) -> torch.Tensor:
    """The tensor at dotted path `target` (a parameter, buffer or plain tensor attribute)."""
    obj = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


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


def measure_nodes(gm: fx.GraphModule, example_input: torch.Tensor, model: nn.Module | None = None) -> dict[str, int]:
    """Shapes into each node's meta; FLOPs per node and per sample (eval mode, MHA fast path off).

    A structured example (`spaces.structure`) is bound to `model`'s signature and run as one sample."""
    was_training = gm.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    gm.eval()
    torch.backends.mha.set_fastpath_enabled(False)  # its fused kernel hides its work from FlopCounterMode
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            probe = _Probe(gm, counter)
            probe.propagate(*graph_inputs(model or gm, first_sample(example_input)))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        gm.train(was_training)
    return probe.flops


class ChannelGraph:
    """The channel groups, tensor uses, compute sites and removable residual blocks of a model.

    `gm` is the traced graph module (it shares parameters with `model`); `tensors` maps every
    parameter and buffer name used by the graph to its tensor. `sites` are the conv/linear calls
    (FLOPs scale with their kept weights); `scaled_flops` are attention ops over heads (their FLOPs scale
    with the kept heads); `constant_flops` are the other ops FlopCounterMode counts (an opaque module):
    each is frozen and priced at its measured FLOPs.

    `blocks` are its removable residual blocks, found by `derive` (`spaces.blocks`).

    The graph walks the nodes once, in order, asking the layer table (`spaces.layers`) about each layer and
    the op table (`spaces.ops`) about each other call; their entries call the methods of `channels.Walk`.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor):
        self.model = model
        self.gm = trace(model, example_input)
        try:
            self.node_flops = measure_nodes(self.gm, example_input, model)
        except RuntimeError as error:  # a graph specialised to concrete shapes that folded the batch size in
            raise UntraceableModel(f"cannot trace {type(model).__name__}: its code branches on tensor shapes and "
                                   f"the shape-specialised graph does not run on other batch sizes "
                                   f"({str(error).splitlines()[0][:120]})") from error
        self.input_shape = describe(example_input)  # a tensor's shape, or the structure's shapes
        self.modules = dict(self.gm.named_modules())
        self.tensors: dict[str, torch.Tensor] = {}
        self._parent: list[int] = []
        self._groups: list[ChannelGroup] = []
        self._children: dict[int, list[int]] = {}  # a refined root -> its sub-groups, in channel order
        # the op entries' notes on nodes (see `channels.Walk`)
        self.split_pieces: dict[fx.Node, tuple[int, list[Layout]]] = {}
        self.slice_pieces: dict[fx.Node, tuple[int, list[Layout]]] = {}
        self.shape_reads: dict[fx.Node, Spec] = {}
        self.count_reads: dict[fx.Node, Layout] = {}
        self.rebuilds: dict[fx.Node, fx.Node] = {}
        self.vector_views: dict[fx.Node, tuple[fx.Node, int]] = {}
        self.param_views: dict[str, int] = {}
        self._constants: set[str] = set()  # get_attr targets the trace made (tensors built in forward)
        self._fresh: set[fx.Node] = set()  # tensors made in forward from sizes alone (`_note_fresh`)
        self._specs: dict[fx.Node, Spec] = {}
        self._uses: list[TensorUse] = []
        self._attr_uses: dict[fx.Node, int] = {}  # get_attr node -> how many users accounted for it
        self.sites: list[ComputeSite] = []
        self.constant_flops: list[tuple[str, int]] = []  # (node, FLOPs per sample) of frozen ops
        self._scaled: list[tuple[str, int, Layout]] = []  # (node, FLOPs per kept element, layout): attention
        self._retired: set[int] = set()  # groups regrained into heads (see `regrain`): no longer used
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
        self.blocks: list[ResidualBlock] = []

    # -- union-find (the methods that `channels.Walk` lists are documented there) ---------------
    def new_group(self, size: int, producer: str | None = None, fixed: str | None = None) -> Layout:
        gid = len(self._parent)
        self._parent.append(gid)
        self._groups.append(ChannelGroup(gid, size, [producer] if producer else [], 1, fixed))
        return (Segment(gid, size),)

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

    def pieces_of(self, layout: Layout, lengths: list[int]) -> list[Layout] | None:
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
        for seg in layout:
            self._fix_group(seg.group, reason)

    def regrain(self, layout: Layout, heads: int, head_dim: int, pieces: int) -> Layout | None:
        leaves = self._leaves(layout)
        if (len(leaves) == pieces and len({s.group for s in leaves}) == 1
                and all(s.size == heads and s.inner == head_dim for s in leaves)):
            return leaves  # already heads of this size
        if len(leaves) != 1 or leaves[0].inner != 1 or leaves[0].size != pieces * heads * head_dim:
            return None
        root = self._find(leaves[0].group)
        group = self._groups[root]
        if group.blocks != 1:
            return None
        names = [f"{p}.heads" for p in group.producers]
        new = self.new_group(heads, fixed=group.fixed)[0]
        self._groups[new.group].producers = names
        for p, name in zip(group.producers, names):
            if p in self.producer_nodes:
                self.producer_nodes.setdefault(name, self.producer_nodes[p])

        def swap(old: Layout) -> Layout:  # on leaves: a layout may hold the group inside its parent (q of qkv)
            leaves = self._leaves(old)
            if all(s.group != root for s in leaves):
                return old
            return tuple(t for s in leaves for t in ((Segment(new.group, heads, head_dim * s.inner),) * pieces
                                                      if s.group == root else (s,)))

        self._uses = [TensorUse(u.tensor, u.axis, swap(u.layout), u.local) for u in self._uses]
        self._specs = {n: Spec(s.axis, swap(s.layout)) for n, s in self._specs.items()}
        for notes in (self.split_pieces, self.slice_pieces):
            for n, (axis, parts) in notes.items():
                notes[n] = (axis, [swap(p) for p in parts])
        self.shape_reads = {n: Spec(s.axis, swap(s.layout)) for n, s in self.shape_reads.items()}
        self.count_reads = {n: swap(lay) for n, lay in self.count_reads.items()}
        self._retired.add(root)
        return swap(leaves)

    def scale_flops(self, node: fx.Node, layout: Layout | None) -> None:
        flops = self.node_flops.get(node.name, 0)
        if flops <= 0:
            return
        length = sum(s.length for s in layout) if layout else 0
        if not length or flops % length:
            self.constant_flops.append((node.name, flops))
            if layout:
                self.fix(layout, f"'{op_name(node)}' FLOPs not proportional to its heads")
            return
        self._scaled.append((node.name, flops // length, layout))

    def set_blocks(self, layout: Layout, blocks: int) -> bool:
        if len(layout) != 1 or layout[0].inner != 1 or self._find(layout[0].group) in self._children:
            return False
        group = self._groups[self._find(layout[0].group)]
        if group.blocks in (1, blocks):
            group.blocks = blocks
        else:
            group.fixed = group.fixed or f"grouped convolutions with {group.blocks} and {blocks} groups"
        return True

    def unify(self, a: Layout, b: Layout, reason: str) -> None:
        if [(s.size, s.inner) for s in a] == [(s.size, s.inner) for s in b]:
            for sa, sb in zip(a, b):
                self._union(sa.group, sb.group)
            return
        aligned = self._align(a, b)  # e.g. a concatenation added to one group: that group is split
        if aligned is None:
            self.fix(a, reason)
            self.fix(b, reason)
            return
        for sa, sb in zip(*aligned):
            self._union(sa.group, sb.group)

    # -- specs and tensor uses ------------------------------------------------------------------
    def spec(self, node: fx.Node) -> Spec | None:
        if node in self._specs:
            return self._specs[node]
        if node in self._fresh:
            return None
        shape = tensor_shape(node)
        if shape is None or len(shape) < 2:
            return None
        spec = Spec(1, self.new_group(shape[1], fixed=f"produced by unsupported op '{op_name(node)}'"))
        self._specs[node] = spec
        return spec

    def known_spec(self, node: fx.Node) -> Spec | None:
        return self._specs.get(node)

    def spec_at(self, node: fx.Node, axis: int, length: int, reason: str) -> Spec:
        spec = self.spec(node)
        if spec is not None and spec.axis == axis and spec.length == length:
            return spec
        if spec is not None:
            self.fix(spec.layout, reason)
        return Spec(axis, self.new_group(length, fixed=reason))

    def set_spec(self, node: fx.Node, axis: int, layout: Layout) -> None:
        self._specs[node] = Spec(axis, layout)

    @staticmethod
    def shape(node: fx.Node) -> tuple[int, ...] | None:
        return tensor_shape(node)

    def use(self, tensor: str, axis: int, layout: Layout, local: bool = False) -> None:
        if tensor in self._constants:  # the model's forward makes it anew: it can be neither permuted nor cut
            self.fix(layout, f"a tensor the forward makes ({tensor}) holds these channels")
            return
        self._uses.append(TensorUse(tensor, axis, layout, local))

    def account(self, node: fx.Node) -> None:
        self._attr_uses[node] += 1

    def disown(self, node: fx.Node) -> None:
        self._attr_uses[node] -= 10 ** 6  # never counts as accounted for

    def site(self, node: fx.Node, producer: str, weight: str, kind: str, options: dict) -> None:
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

    def _note_fresh(self, node: fx.Node) -> None:
        """A tensor the forward makes from sizes and constants alone (`x.new_zeros(...)`, filled, viewed and
        compared: torchvision Swin's shift mask) holds no channels of the model: `spec` invents none for it."""
        if node.op not in ("call_function", "call_method"):
            return
        inputs = node.all_input_nodes
        if op_name(node) in FRESH or (any(n in self._fresh for n in inputs) and all(
                n in self._fresh or tensor_shape(n) is None and n.op != "placeholder" for n in inputs)):
            self._fresh.add(node)

    # -- visiting ------------------------------------------------------------------------------
    def _visit(self, node: fx.Node) -> None:
        self._note_fresh(node)
        if node.op == "placeholder":
            shape = tensor_shape(node)
            if shape is not None and len(shape) >= 2:
                self._specs[node] = Spec(1, self.new_group(shape[1], fixed="model input"))
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
                    self.fix(spec.layout, "model output")
        elif node.op == "call_module":
            module = self.modules[node.target]
            self._module_tensors(node, module)
            layer = layer_of(module)
            op = op_of(module) if layer is None else None
            if layer is not None:
                self._visit_layer(node, layer, module)
            elif (op is not None and op.priced) or not self._priced_opaque(node):
                self._visit_op(node, op, module, f"unsupported module {type(module).__name__} ({node.target})")
        else:
            layer = function_layer(node.target) if node.op == "call_function" else None
            if layer is not None and layer.functional is not None:
                self._visit_layer(node, layer, None)
            else:
                op = op_named(op_name(node))
                if (op is not None and op.priced) or not self._priced_opaque(node):
                    self._visit_op(node, op, None, f"unsupported op '{op_name(node)}'")

    def _visit_op(self, node: fx.Node, op: Op | None, module: nn.Module | None, unsupported: str) -> None:
        """An op of the table (a module, or a function or method when `module` is None)."""
        x = input_node(node) if module is not None else node.args[0] if node.args else None
        has_input = isinstance(x, fx.Node)
        if op is None or (op.tensor_input and not has_input and module is None):
            self.opaque(node, unsupported)
        elif op.flow is not None and (has_input or not op.tensor_input):
            op.flow(self, node, module)

    def _priced_opaque(self, node: fx.Node) -> bool:
        """An op FlopCounterMode counts that is not a conv/linear of the table: frozen, priced as measured."""
        flops = self.node_flops.get(node.name, 0)
        if flops <= 0:
            return False
        self.constant_flops.append((node.name, flops))
        what = (f"{type(self.modules[node.target]).__name__} '{node.target}'" if node.op == "call_module"
                else f"'{op_name(node)}'")  # nn.MultiheadAttention, torchvision's shifted_window_attention
        self.opaque(node, f"{what} computes on channels (frozen, its FLOPs priced as measured)")
        return True

    def _visit_layer(self, node: fx.Node, layer: Layer, m: nn.Module | None) -> None:
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
        except NotAParameter:
            self.opaque(node, f"'{op_name(node)}' on a computed tensor (not a parameter)")
        if len(self.sites) == sites:  # not a compute site (an entry that froze it instead): priced as measured
            self._priced_constant(node)

    def _priced_constant(self, node: fx.Node) -> None:
        flops = self.node_flops.get(node.name, 0)
        if flops > 0:
            self.constant_flops.append((node.name, flops))

    def opaque(self, node: fx.Node, reason: str) -> None:
        for a in node.all_input_nodes:
            spec = self._specs.get(a)
            if spec is not None:
                self.fix(spec.layout, reason)
            for piece in self.split_pieces.get(a, (None, ()))[1]:  # a split's pieces, used whole
                self.fix(piece, reason)
            if a.op == "get_attr":
                self.disown(a)

    # -- closing passes ------------------------------------------------------------------------
    def _check_get_attrs(self) -> None:
        """A get_attr tensor read by an op that did not account for it must not be sliced."""
        for node, accounted in self._attr_uses.items():
            if accounted < len(node.users):
                for use in self._uses:
                    if use.tensor == node.target:
                        self.fix(use.layout, f"{node.target} is read by an unsupported op")

    def _check_counts(self) -> None:
        """A channel count read from a tensor follows its widths in the subnet: it may only size the channel
        axis of a reshape/expand that rebuilds that same layout. Any other use (`C // heads`, a view of
        another tensor) freezes the layout, so that the count stays what the code expects."""
        def same(a: Layout, b: Layout) -> bool:
            return [(s.group, s.size, s.inner) for s in self._leaves(a)] == [
                (s.group, s.size, s.inner) for s in self._leaves(b)]

        for reshape, size in self.rebuilds.items():
            layout = self._specs[reshape].layout
            if size not in self.count_reads or not same(self.count_reads[size], layout):
                self.fix(layout, f"'{op_name(reshape)}' sizes the channel axis with a computed value")
        for shape, spec in self.shape_reads.items():  # a whole shape used other than indexed (`y.view(x.shape)`)
            if any(op_name(user) not in ("getitem", "len") for user in shape.users):
                self.fix(spec.layout, "its shape, channel count included, is read whole")
        for count, layout in self.count_reads.items():
            for user in count.users:
                if self.rebuilds.get(user) is not count or not same(self._specs[user].layout, layout):
                    self.fix(layout, f"its channel count is read by '{op_name(user)}'")
                    break

    def _unify_shared_tensors(self) -> None:
        """Several uses of one tensor axis (a module called twice, a shared parameter) must agree."""
        first: dict[tuple[str, int, bool], TensorUse] = {}
        for use in self._uses:
            key = (use.tensor, use.axis, use.local)
            if key in first:
                self.unify(first[key].layout, use.layout, f"{use.tensor} is shared")
            else:
                first[key] = use

    def _finalize(self) -> None:
        for use in self._uses:  # a grouped conv's per-group input holds one block of one group
            if use.local and len(self._leaves(use.layout)) > 1:
                self.fix(use.layout, "grouped convolution over a split group")
        roots = sorted({self._find(g) for g in range(len(self._parent))} - set(self._children) - self._retired)
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
        #: ops whose FLOPs are proportional to kept heads (attention): (node, FLOPs per kept element, layout)
        self.scaled_flops: list[tuple[str, int, Layout]] = [(n, f, canon(lay)) for n, f, lay in self._scaled]
        self.specs: dict[str, Spec] = {n.name: Spec(s.axis, canon(s.layout)) for n, s in self._specs.items()}
        #: a split along channels -> (its axis, each piece's layout): piece sizes follow the widths
        self.splits: dict[str, tuple[int, list[Layout]]] = {
            n.name: (axis, [canon(p) for p in pieces]) for n, (axis, pieces) in self.split_pieces.items()
            if n.name in self.split_calls}
        #: a slice of the channel axis -> (its axis, the layouts before, in and after it)
        self.slices: dict[str, tuple[int, list[Layout]]] = {
            n.name: (axis, [canon(p) for p in pieces]) for n, (axis, pieces) in self.slice_pieces.items()}
        del self._scaled, self._specs, self._uses, self._groups, self._parent, self._children, self.split_pieces, self.slice_pieces
        del self.shape_reads, self.count_reads, self.rebuilds, self._constants

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


# the words of `spaces.channels` and the tracer's names, importable from here as they were
__all__ = ["ChannelGraph", "ChannelGroup", "ComputeSite", "Layout", "ResidualBlock", "Segment", "Spec",
           "TensorUse", "UntraceableModel", "measure_nodes", "op_name", "tensor_shape", "trace"]
