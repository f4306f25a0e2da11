"""The op table: one entry per op kind says how channels flow through it (pass-through, reshape, split, add...).

An **op** holds no tensors of its own: it passes, moves, cuts or joins the channels of its inputs. Its
entry (`Op`) names its function and method forms (`names`: `relu` is `torch.relu`, `F.relu` and
`x.relu()`) and its module forms (`modules`: `nn.ReLU`) together: both are one op, with one `flow`.
`flow(graph, node, module)` reads the specs of the node's inputs and sets the spec of its output (through
`channels.Walk`); `module` is the module called, or None for a function or method call. An op whose
flow is None carries no channels (`x.dim()`, comparisons, asserts).

Layers, which hold tensors that are cut with the channels (conv, linear, norms), are in the layer table
(`spaces.layers`); the graph asks the layer table first. A call that neither table knows freezes the
channels flowing into it. `register_op` adds an entry (later registrations win over earlier ones).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from .channels import Layout, Segment, Spec, Walk, arg, holds_tensors, input_node, op_name

Flow = Callable[[Walk, fx.Node, "nn.Module | None"], None]


@dataclass(frozen=True)
class Op:
    """How channels flow through one op kind; see the module docstring.

    `tensor_input`: the op works on the tensor in its first argument; a function call without one is
    not understood (frozen), a module call without one is left alone. `match`: a predicate on a module,
    besides `modules`; `subclasses`: a subclass of one of `modules` holding no tensors is that op too.
    `priced`: the flow prices the FLOPs FlopCounterMode counts for the op itself (`Walk.scale_flops`,
    attention over heads); any other op that FlopCounterMode counts is frozen and priced as measured.
    """

    name: str
    flow: Flow | None
    names: tuple[str, ...] = ()
    modules: tuple[type[nn.Module], ...] = ()
    match: Callable[[nn.Module], bool] | None = None
    subclasses: bool = True
    tensor_input: bool = True
    priced: bool = False

    def matches(self, module: nn.Module) -> bool:
        if type(module) in self.modules or (self.match is not None and self.match(module)):
            return True
        return self.subclasses and isinstance(module, self.modules) and not holds_tensors(module)


_MODULE_OPS: list[Op] = []
_NAMED: dict[str, Op] = {}


def register_op(name: str, flow: Flow | None, *, names: Iterable[str] = (), modules: Iterable[type[nn.Module]] = (),
                match: Callable[[nn.Module], bool] | None = None, subclasses: bool = True,
                tensor_input: bool = True, priced: bool = False) -> Op:
    """Teach the engine an op: its function/method `names`, its `modules`, and how channels flow through it.

    An activation of a user's own, say, in both forms:

        register_op("my_act", pass_through, names=("my_act",), modules=(MyAct,))

    where `pass_through(graph, node, module)` is this module's own pass-through flow (`ops.pass_through`).
    """
    op = Op(name, flow, tuple(names), tuple(modules), match, subclasses, tensor_input, priced)
    if op.modules or op.match is not None:
        _MODULE_OPS.insert(0, op)
    for n in op.names:
        _NAMED[n] = op
    return op


def op_named(name: str) -> Op | None:
    """The entry of the function or method called `name`, or None."""
    return _NAMED.get(name)


def op_of(module: nn.Module) -> Op | None:
    """The entry whose module form `module` is, or None."""
    return next((op for op in _MODULE_OPS if op.matches(module)), None)


# ---- helpers -----------------------------------------------------------------------------------
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


def _first(node: fx.Node) -> fx.Node | None:
    x = node.args[0] if node.args else None
    return x if isinstance(x, fx.Node) else None


def _what(node: fx.Node, module: nn.Module | None) -> str:
    return type(module).__name__ if module is not None else f"'{op_name(node)}'"


def _sizes(node: fx.Node) -> tuple:
    """The size arguments of a view/reshape/expand: `x.view(a, b)` or `x.view((a, b))`."""
    return node.args[1:] if len(node.args) > 2 or not isinstance(node.args[1], (list, tuple)) else node.args[1]


# ---- pass-through ----------------------------------------------------------------------------------
def pass_through(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """The output has the input's channels on the same axis (activations, dropout, pooling, resizing)."""
    x = input_node(node)
    spec, out_shape = graph.spec(x), graph.shape(node)
    if spec is not None and out_shape is not None and len(out_shape) == len(graph.shape(x)):
        graph.set_spec(node, spec.axis, spec.layout)
    elif spec is not None or module is None:
        graph.opaque(node, f"{_what(node, module)} changed the tensor's rank")


def _type_as(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """`x.type_as(other)`: `x`'s channels; `other` only lends its dtype (its channels are not read)."""
    if graph.spec(input_node(node)) is not None:
        pass_through(graph, node, module)


def _new_tensor(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """`x.new_full(size, v)` and the like: a fresh tensor of its own size; `x` lends only its dtype and device."""


def _stochastic_depth(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    if module is None:
        graph.opaque(node, "functional stochastic_depth (trace StochasticDepth modules instead)")
    else:
        pass_through(graph, node, module)


def _pad(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """Padding of the axes after the channels only."""
    x, out_shape = input_node(node), graph.shape(node)
    spec = graph.spec(x)
    pads = module.padding if module is not None else arg(node, 1, "pad", ())
    at = 2 * (len(out_shape) - 1 - spec.axis) if spec is not None else 0  # the channel axis' pair, if padded
    if spec is not None and (len(pads) // 2 < len(out_shape) - spec.axis
                             or tuple(pads[at:at + 2]) == (0, 0)):  # channels-last padding (timm's Swin)
        graph.set_spec(node, spec.axis, spec.layout)
    else:
        graph.opaque(node, "padding of the channel axis")


#: layers that are random in train mode and the identity in eval mode (torchvision's StochasticDepth, timm's
#: DropPath and DropBlock2d, transformers' `SwinDropPath` and its kin): kept as leaves so that the subnet keeps
#: its train-mode behaviour.
STOCHASTIC = ("StochasticDepth", "DropPath", "DropBlock2d")


def is_stochastic(module: nn.Module) -> bool:
    name = type(module).__name__
    return (name in STOCHASTIC or name.endswith("DropPath")) and not any(True for _ in module.parameters())


# ---- axes moved, merged or reduced --------------------------------------------------------------
def flatten(graph: Walk, node: fx.Node, x: fx.Node, start: int, end: int) -> None:
    """Axes `start`..`end` of `x` merged: the channels keep their axis if it is the first of them."""
    spec, shape = graph.spec(x), graph.shape(x)
    if spec is None:
        return
    start, end = _normalize_dim(start, len(shape)), _normalize_dim(end, len(shape))
    if spec.axis < start:
        graph.set_spec(node, spec.axis, spec.layout)
    elif spec.axis > end:
        graph.set_spec(node, spec.axis - (end - start), spec.layout)
    elif spec.axis == start:
        inner = math.prod(shape[start + 1:end + 1])
        graph.set_spec(node, start, tuple(Segment(s.group, s.size, s.inner * inner) for s in spec.layout))
    elif spec.axis == end:  # the channels last of the merged axes (timm Swin's patch merging): one copy per position
        graph.set_spec(node, start, tuple(spec.layout) * math.prod(shape[start:end]))
    else:
        graph.opaque(node, "flatten that interleaves channels")


def _flatten(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    if module is not None:
        flatten(graph, node, input_node(node), module.start_dim, module.end_dim)
    else:
        flatten(graph, node, input_node(node), arg(node, 1, "start_dim", 0), arg(node, 2, "end_dim", -1))


def _reshape(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """A reshape keeping the channel axis whole, or flattening it with everything after it; a vector
    parameter viewed for broadcasting (`scale.view(C, 1, 1)`) is left to the op that uses it."""
    x, out_shape = input_node(node), graph.shape(node)
    if x.op == "get_attr" and graph.tensors[x.target].dim() == 1 and out_shape is not None:
        length = graph.tensors[x.target].shape[0]
        if length > 1 and sorted(out_shape) == [1] * (len(out_shape) - 1) + [length]:
            graph.vector_views[node] = (x, out_shape.index(length))
            return
    spec, shape = graph.spec(x), graph.shape(x)
    if spec is None:
        return
    sizes, a = _sizes(node), spec.axis
    intact = _intact_axis(shape, out_shape, a)
    if intact is not None and len(sizes) == len(out_shape) and (isinstance(sizes[intact], fx.Node)
                                                                or sizes[intact] == -1):
        graph.set_spec(node, intact, spec.layout)  # only the axes around the channels are reshaped
        if isinstance(sizes[intact], fx.Node):
            graph.rebuilds[node] = sizes[intact]
    elif intact is not None and len(sizes) == len(out_shape) and -1 not in sizes:
        graph.set_spec(node, intact, spec.layout)  # the channel count written out (torchvision's ViT patches)
        graph.param_views[node.name] = intact  # it follows the widths
    elif intact is not None and len(sizes) == len(out_shape) and sizes[intact] == shape[a]:
        _count_read(graph, node, x, a, intact)  # the count written beside a -1 (Swin's `view(-1, ws, ws, C)`)
        graph.set_spec(node, intact, spec.layout)
    elif len(out_shape) == a + 1 and out_shape[:a] == shape[:a] and len(sizes) == a + 1 and (
            sizes[a] == -1 or isinstance(sizes[a], int)):
        flatten(graph, node, x, a, -1)  # heads merged back (`x.reshape(B, N, heads * head_dim)`)
        if sizes[a] != -1 and graph.known_spec(node) is not None:
            if -1 in sizes:  # LeViT's `reshape(B, -1, C)`: a second -1 cannot be written, so it flattens
                _as_flatten(node, x, a)
            else:
                graph.param_views[node.name] = a  # the written length follows the widths
    elif not _into_heads(graph, node, x, spec, sizes):
        graph.opaque(node, f"'{op_name(node)}' splits or merges the channel axis other than into attention heads "
                           f"(a channel shuffle, heads of computed sizes)")


def _as_flatten(node: fx.Node, x: fx.Node, start: int) -> None:
    """A view/reshape that merges every axis from `start` on, rewritten as `x.flatten(start)`: the merged
    length then follows the widths without being written."""
    node.target = "flatten" if node.op == "call_method" else torch.flatten
    node.args, node.kwargs = (x, start), {}


def _count_read(graph: Walk, node: fx.Node, x: fx.Node, axis: int, at: int) -> None:
    """A reshape's channel count, written out beside an inferred axis (-1), is read from its input instead
    (`x.size(axis)`, inserted before it): it then follows the widths while the other axis stays inferred."""
    with node.graph.inserting_before(node):
        count = node.graph.call_method("size", (x, axis))
    _write_size(node, at, count)
    graph.count_reads[count] = graph.spec(x).layout
    graph.rebuilds[node] = count


def _into_heads(graph: Walk, node: fx.Node, x: fx.Node, spec: Spec, sizes: tuple) -> bool:
    """The last axis, holding the channels, split into (pieces..., heads, head_dim): timm's
    `qkv(x).reshape(B, N, 3, heads, head_dim)`, a query's `view(B, N, heads, head_dim)`. Its group becomes
    one of `heads` channels of `head_dim` elements (`Walk.regrain`; q, k and v rows of a fused projection
    are cut together, head by head), the heads axis holds it, and the written head count follows the width."""
    shape, out_shape, a = graph.shape(x), graph.shape(node), spec.axis
    after = len(shape) - a - 1
    k = len(out_shape) - a - after
    if (after or k < 2 or out_shape[:a] != shape[:a] or tuple(out_shape[a + k:]) != tuple(shape[a + 1:])
            or math.prod(out_shape[a:a + k]) != shape[a] or len(sizes) != len(out_shape)):
        return False
    at = a + k - 2
    inferred = [i for i, s in enumerate(sizes) if s == -1 and i != at]  # timm's Swin: `reshape(.., heads, -1)`
    if not isinstance(sizes[at], int) or any(i < a for i in inferred):
        return False
    heads, head_dim, pieces = out_shape[at], out_shape[at + 1], math.prod(out_shape[a:at])
    layout = graph.regrain(spec.layout, heads, head_dim, pieces)
    if layout is None:
        return False
    for i in inferred:  # head_dim (or the pieces) written out: they never change, and the heads axis takes -1
        _write_size(node, i, out_shape[i])
    graph.set_spec(node, at, (Segment(layout[0].group, heads),))
    if sizes[at] != -1:
        graph.param_views[node.name] = at
    return True


def _write_size(node: fx.Node, axis: int, value: int) -> None:
    """Set the size a view/reshape node gives axis `axis` (`x.view(a, b)` or `x.view((a, b))`)."""
    if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)):
        sizes = list(node.args[1])
        sizes[axis] = value
        node.args = (node.args[0], type(node.args[1])(sizes))
    else:
        node.args = (*node.args[:axis + 1], value, *node.args[axis + 2:])


def _expand(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """A broadcast: the channel axis moves by the axes it prepends and must not itself be broadcast."""
    x, out_shape = input_node(node), graph.shape(node)
    if x.op == "get_attr":
        return  # a parameter broadcast (ViT's class token): its consumer relates it to channels (`_cat`)
    spec = graph.spec(x)
    if spec is None:
        return
    axis = spec.axis + len(out_shape) - len(graph.shape(x))
    sizes = _sizes(node)
    if out_shape[axis] == spec.length and len(sizes) == len(out_shape) and (
            isinstance(sizes[axis], fx.Node) or sizes[axis] == -1):
        graph.set_spec(node, axis, spec.layout)
        if isinstance(sizes[axis], fx.Node):
            graph.rebuilds[node] = sizes[axis]
    else:
        graph.opaque(node, "'expand' with the channel count written out")


def _permute(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    args = node.args
    dims = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
    dims = node.kwargs.get("dims", dims)
    spec = graph.spec(input_node(node))
    if spec is not None:
        dims = [_normalize_dim(d, len(dims)) for d in dims]
        graph.set_spec(node, dims.index(spec.axis), spec.layout)


def _transpose(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    x = input_node(node)
    spec = graph.spec(x)
    if spec is not None:
        ndim = len(graph.shape(x))
        d0, d1 = (_normalize_dim(int(d), ndim) for d in node.args[1:3])
        graph.set_spec(node, {d0: d1, d1: d0}.get(spec.axis, spec.axis), spec.layout)


def _unsqueeze(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """`x.unsqueeze(d)`: a new axis of size 1; the channels move one axis up if it is put at or before them."""
    x = input_node(node)
    spec, out_shape, dim = graph.spec(x), graph.shape(node), arg(node, 1, "dim")
    if spec is None or out_shape is None:
        return
    if not isinstance(dim, int):
        graph.opaque(node, "'unsqueeze' at a computed axis")
        return
    graph.set_spec(node, spec.axis + (_normalize_dim(dim, len(out_shape)) <= spec.axis), spec.layout)


def _unbind(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """`x.unbind(d)` along another axis than the channels (q, k, v of a fused projection): each piece
    holds the channels, on an axis one lower if `d` was before it."""
    x = input_node(node)
    spec, metas = graph.spec(x), node.meta.get("tensor_meta")
    if spec is None:
        return
    dim = _normalize_dim(arg(node, 1, "dim", 0), len(graph.shape(x)))
    if dim == spec.axis or not isinstance(metas, (tuple, list)) or not metas:
        graph.opaque(node, "'unbind' of the channel axis")
        return
    graph.split_pieces[node] = (spec.axis - (dim < spec.axis), [spec.layout] * len(metas))


def _roll(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """`torch.roll` along other axes than the channels (Swin's shifted windows)."""
    x = input_node(node)
    spec = graph.spec(x)
    dims = arg(node, 2, "dims")
    if spec is None:
        return
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    if any(not isinstance(d, int) for d in dims) or spec.axis in [_normalize_dim(d, len(graph.shape(x))) for d in dims]:
        graph.opaque(node, "'roll' along the channel axis")
    else:
        graph.set_spec(node, spec.axis, spec.layout)


def _softmax(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """A softmax over another axis than the channels (attention weights over keys)."""
    x = input_node(node)
    spec = graph.spec(x)
    dim = module.dim if module is not None else arg(node, 1, "dim")
    if spec is None:
        return
    if not isinstance(dim, int) or _normalize_dim(dim, len(graph.shape(x))) == spec.axis:
        graph.opaque(node, "softmax over the channel axis")
    else:
        graph.set_spec(node, spec.axis, spec.layout)


def _over_heads(graph: Walk, node: fx.Node, operands: list[object], what: str) -> None:
    """Operands with the heads on one batch axis (not the last two): their heads are one group, the output
    has them on that axis, and the op's FLOPs are priced per kept head."""
    out_shape = graph.shape(node)
    specs = [graph.spec(t) if isinstance(t, fx.Node) and graph.shape(t) is not None else None for t in operands]
    if (out_shape is None or any(s is None for s in specs) or len({s.axis for s in specs}) != 1
            or specs[0].axis >= len(out_shape) - 2 or any(len(graph.shape(t)) != len(out_shape) for t in operands)):
        graph.opaque(node, f"{what} whose operands do not hold the heads on one batch axis")
        graph.scale_flops(node, None)
        return
    for s in specs[1:]:
        graph.unify(specs[0].layout, s.layout, f"{what} over mismatched heads")
    graph.scale_flops(node, specs[0].layout)
    graph.set_spec(node, specs[0].axis, specs[0].layout)


def _attention(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """`F.scaled_dot_product_attention(q, k, v)`: one head of q, k and v makes one head of the output;
    a mask must be broadcast over the heads."""
    operands = [arg(node, i, n) for i, n in enumerate(("query", "key", "value"))]
    mask = arg(node, 3, "attn_mask")
    spec = graph.spec(operands[0]) if isinstance(operands[0], fx.Node) else None
    if isinstance(mask, fx.Node) and graph.shape(mask) is not None and spec is not None:
        mshape, ndim = graph.shape(mask), len(graph.shape(operands[0]))
        at = spec.axis - (ndim - len(mshape))
        mspec = graph.spec(mask)
        if mspec is not None and mspec.axis == at:  # a bias per head (Swin's, gathered from its table): cut with them
            graph.unify(spec.layout, mspec.layout, "an attention mask over mismatched heads")
        elif 0 <= at < len(mshape) and mshape[at] != 1:
            graph.fix(spec.layout, "an attention mask per head whose heads are not known (built in forward, "
                                   "or written out: Swin's shifted-window mask)")
    _over_heads(graph, node, operands, "attention")


def _matmul(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """`a @ b` batched over heads (`q @ k.transpose(-2, -1)`, `attn @ v`)."""
    _over_heads(graph, node, list(node.args[:2]), f"'{op_name(node)}'")


def _frozen_attention(reason: str) -> Flow:
    """An attention op whose heads cannot be cut: it freezes what flows into it, for `reason`, and is priced
    at its measured FLOPs."""
    def flow(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
        graph.opaque(node, reason)
        graph.scale_flops(node, None)
    return flow


def _reduce(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """A reduction over other axes than the channels (a global pool written as `mean`)."""
    x, out_shape = input_node(node), graph.shape(node)
    spec, shape = graph.spec(x), graph.shape(x)
    if spec is None or out_shape is None:
        return
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dims is None:
        graph.opaque(node, "reduction over every axis")
        return
    dims = [_normalize_dim(d, len(shape)) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    if spec.axis in dims:
        graph.opaque(node, "reduction over the channel axis")
        return
    keep = len(out_shape) == len(shape)
    graph.set_spec(node, spec.axis if keep else spec.axis - sum(d < spec.axis for d in dims), spec.layout)


# ---- elementwise: tensors joined channel by channel ------------------------------------------------
def _elementwise(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """`a + b`, `x * gate`, `x * scale.view(C, 1, 1)`: the channels of every operand are one, parameters
    that line up with them are cut with them, and anything broadcast over them must really be."""
    out_shape = graph.shape(node)
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
        if operand in graph.vector_views:
            views.append(operand)
            continue
        shape = graph.shape(operand)
        spec = graph.spec(operand) if shape is not None else None
        if spec is None or shape[spec.axis] == 1:
            if shape is not None:
                broadcast.append(shape)
            continue  # a scalar or a tensor broadcast over channels
        from_end = len(shape) - spec.axis
        if main is None:
            main = (spec, from_end)
        elif from_end == main[1]:
            graph.unify(main[0].layout, spec.layout, "elementwise op over mismatched channels")
        else:
            graph.fix(main[0].layout, "elementwise op mixing channel and other axes")
            graph.fix(spec.layout, "elementwise op mixing channel and other axes")
    if main is None:
        for p in [*params, *(graph.vector_views[v][0] for v in views)]:
            graph.disown(p)
        return
    spec, from_end = main
    out_axis = ndim - from_end
    for view in views:  # a vector parameter viewed to broadcast: per-channel if its length lines up
        attr, axis = graph.vector_views[view]
        shape = graph.shape(view)
        if axis == len(shape) - from_end and shape[axis] == spec.length:
            graph.use(attr.target, 0, spec.layout)
            graph.account(attr)
            graph.param_views[view.name] = axis
        else:
            broadcast.append(shape)
    for shape in broadcast:  # what lines up with the channels must really be broadcast over them
        at = len(shape) - from_end
        if 0 <= at < len(shape) and shape[at] != 1:
            graph.fix(spec.layout, "elementwise op with a tensor whose channels are not known")
    for p in params:
        pshape = tuple(graph.tensors[p.target].shape)
        paxis = out_axis - (ndim - len(pshape))
        if 0 <= paxis < len(pshape) and pshape[paxis] == spec.length:
            graph.use(p.target, paxis, spec.layout)
            graph.account(p)
        elif 0 <= paxis < len(pshape) and pshape[paxis] != 1:
            graph.fix(spec.layout, f"parameter {p.target} does not broadcast over channels")
        else:
            graph.account(p)
    graph.set_spec(node, out_axis, spec.layout)


# ---- joined and cut: cat, stack, split, x[a:b] ----------------------------------------------------
def _operands(graph: Walk, node: fx.Node) -> list[Spec | None]:
    """The specs of a cat/stack's tensors: a list of nodes, or a split's pieces passed as one tuple."""
    tensors = arg(node, 0, "tensors")
    if isinstance(tensors, fx.Node):
        axis, pieces = graph.split_pieces.get(tensors, (None, [None]))
        return [Spec(axis, p) if p is not None else None for p in pieces]
    return [graph.spec(t) if isinstance(t, fx.Node) else None for t in tensors]


def _parameter(graph: Walk, node: object) -> tuple[fx.Node, int] | None:
    """A parameter read directly or through `expand`: (its get_attr, the axes `expand` prepended)."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "get_attr":
        return node, 0
    if node.op in ("call_method", "call_function") and op_name(node) == "expand" and len(node.users) == 1:
        source = node.args[0]
        if isinstance(source, fx.Node) and source.op == "get_attr" and graph.shape(node) is not None:
            return source, len(graph.shape(node)) - graph.tensors[source.target].dim()
    return None


def _cat_with_parameters(graph: Walk, node: fx.Node, dim: int) -> bool:
    """Tensors joined along another axis than their channels with parameters (ViT's class token):
    the parameters hold those channels too, and are cut with them. False if that is not the case."""
    tensors = arg(node, 0, "tensors")
    if not isinstance(tensors, (list, tuple)):
        return False
    params = {i: _parameter(graph, t) for i, t in enumerate(tensors)}
    params = {i: p for i, p in params.items() if p is not None}
    if not params or len(params) == len(tensors):
        return False
    specs = [graph.spec(t) if isinstance(t, fx.Node) else None for i, t in enumerate(tensors) if i not in params]
    if any(s is None for s in specs) or any(s.axis == dim or s.axis != specs[0].axis for s in specs):
        return False
    for s in specs[1:]:
        graph.unify(specs[0].layout, s.layout, "concatenation over mismatched channels")
    axis, layout = specs[0].axis, specs[0].layout
    for attr, prepended in params.values():
        tensor, at = graph.tensors[attr.target], axis - prepended
        if 0 <= at < tensor.dim() and tensor.shape[at] == specs[0].length:
            graph.use(attr.target, at, layout)
            graph.account(attr)
        else:
            graph.fix(layout, f"parameter {attr.target} concatenated across the channels")
    graph.set_spec(node, axis, layout)
    return True


def _cat(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """Along the channels, the output's layout is the operands' one after another; along another axis,
    the operands' channels are one."""
    out_shape = graph.shape(node)
    dim = _normalize_dim(arg(node, 1, "dim", 0), len(out_shape))
    if _cat_with_parameters(graph, node, dim):
        return
    specs = _operands(graph, node)
    if any(s is None for s in specs):
        graph.opaque(node, "concatenation of tensors without channels")
        return
    if all(s.axis == dim for s in specs):
        graph.set_spec(node, dim, tuple(seg for s in specs for seg in s.layout))
    elif all(s.axis != dim and s.axis == specs[0].axis for s in specs):
        for s in specs[1:]:
            graph.unify(specs[0].layout, s.layout, "concatenation over mismatched channels")
        graph.set_spec(node, specs[0].axis, specs[0].layout)
    else:
        graph.opaque(node, "concatenation mixing channel and other axes")


def _stack(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """Tensors of one channel layout stacked along a new axis (timm's selective kernel paths)."""
    dim = _normalize_dim(arg(node, 1, "dim", 0), len(graph.shape(node)))
    specs = _operands(graph, node)
    if any(s is None for s in specs) or any(s.axis != specs[0].axis for s in specs):
        graph.opaque(node, "stack of tensors without a common channel axis")
        return
    for s in specs[1:]:
        graph.unify(specs[0].layout, s.layout, "stack over mismatched channels")
    graph.set_spec(node, specs[0].axis + (1 if dim <= specs[0].axis else 0), specs[0].layout)


def _split(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """`split`/`chunk`/`tensor_split`: each piece of the channel axis holds its own part of the layout."""
    x = input_node(node)
    spec, metas = graph.spec(x), node.meta.get("tensor_meta")
    if spec is None:
        return
    if not isinstance(metas, (tuple, list)) or not all(hasattr(m, "shape") for m in metas) or not metas:
        graph.opaque(node, f"'{op_name(node)}' with pieces of unknown shape")
        return
    axis = _normalize_dim(arg(node, 2, "dim", 0), len(graph.shape(x)))
    if axis != spec.axis:
        graph.split_pieces[node] = (spec.axis, [spec.layout] * len(metas))
        return
    pieces = graph.pieces_of(spec.layout, [m.shape[axis] for m in metas])
    if pieces is None:
        graph.opaque(node, f"'{op_name(node)}' cuts the channel axis inside a channel or a conv-group")
        return
    graph.split_pieces[node] = (axis, pieces)
    graph.split_calls.append(node.name)


def _index(graph: Walk, node: fx.Node, x: fx.Node, index: object) -> None:
    """`x[...]` with basic slices: a slice of the channel axis keeps that part of its layout."""
    spec, shape = graph.spec(x), graph.shape(x)
    if spec is None:
        return
    parts = full_index(index, len(shape))
    if parts is None:
        graph.opaque(node, "indexing other than by slices and integers")
        return
    cut = parts[spec.axis]
    axis = spec.axis - sum(isinstance(p, int) for p in parts[:spec.axis])  # integers drop their axes
    if isinstance(cut, int):
        graph.opaque(node, "indexing a single channel")
        return
    if cut == slice(None):
        graph.set_spec(node, axis, spec.layout)
        return
    if not all(isinstance(v, (int, type(None))) for v in (cut.start, cut.stop, cut.step)) or cut.step not in (None, 1):
        graph.opaque(node, "a slice of the channel axis with a step or computed bounds")
        return
    start, stop, _ = cut.indices(spec.length)
    pieces = graph.pieces_of(spec.layout, [start, max(stop - start, 0), spec.length - max(stop, start)])
    if pieces is None or stop <= start:
        graph.opaque(node, "a slice of the channel axis inside a channel or a conv-group")
        return
    graph.set_spec(node, axis, pieces[1])
    graph.slice_pieces[node] = (spec.axis, pieces)


def _getitem(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """A split's piece, a shape's entry (a channel count, see `_shape_read`) or `x[...]` (`_index`)."""
    x = _first(node)
    if x in graph.split_pieces:
        axis, pieces = graph.split_pieces[x]
        index = node.args[1]
        if isinstance(index, int) and -len(pieces) <= index < len(pieces):
            graph.set_spec(node, axis, pieces[index])
        else:
            graph.opaque(node, "a split's pieces indexed by other than an integer")
    elif x in graph.shape_reads:
        spec, index, ndim = graph.shape_reads[x], node.args[1], len(graph.shape(x.args[0]))
        if isinstance(index, int):
            held = _normalize_dim(index, ndim) == spec.axis
        else:  # a slice of the shape (`x.shape[2:]`, spatial sizes) holds the count if it covers the axis
            plain = isinstance(index, slice) and all(isinstance(v, (int, type(None)))
                                                     for v in (index.start, index.stop, index.step))
            held = not plain or spec.axis in range(ndim)[index]
        if held:
            graph.count_reads[node] = spec.layout
    elif x is not None and x.op == "get_attr" and _gathers(node.args[1]):
        _gather(graph, node, x, node.args[1])
    elif x is not None and graph.shape(x) is not None:
        _index(graph, node, x, node.args[1])


def _gathers(index: object) -> bool:
    """`[tensor]`, `[tensor,]` or `[:, tensor]`: one axis gathered by a tensor of indices, the other whole."""
    if isinstance(index, fx.Node):
        return True
    return isinstance(index, tuple) and (
        (len(index) == 1 and isinstance(index[0], fx.Node))
        or (len(index) == 2 and index[0] == slice(None) and isinstance(index[1], fx.Node)))


def _gather(graph: Walk, node: fx.Node, table: fx.Node, index: object) -> None:
    """`table[index]` or `table[:, index]`: a 2-D parameter gathered along one axis by a tensor of indices (Swin's
    relative position bias, `table[index.view(-1)]`, one column per head; EfficientFormer's attention biases,
    `biases[:, index]`, one row per head). The other axis is kept whole: it becomes a group of its own, cut with
    whatever channels it meets (the heads, when the bias is added to the scores)."""
    tensor, out_shape = graph.tensors[table.target], graph.shape(node)
    kept = 1 if isinstance(index, fx.Node) or (isinstance(index, tuple) and len(index) == 1) else 0
    out_axis = len(out_shape) - 1 if kept == 1 and out_shape is not None else 0
    if tensor.dim() != 2 or out_shape is None or out_shape[out_axis] != tensor.shape[kept]:
        return  # left to the get_attr check: frozen where it is read
    layout = graph.new_group(tensor.shape[kept])
    graph.use(table.target, kept, layout)
    graph.account(table)
    graph.set_spec(node, out_axis, layout)


def _shape_read(graph: Walk, node: fx.Node, module: nn.Module | None) -> None:
    """`x.size(d)`, `x.shape`, `x.numel()`: remember the nodes that carry a channel count (the graph checks
    that a count only sizes the channel axis of a reshape rebuilding the same channels)."""
    x = _first(node)
    spec = graph.known_spec(x) if x is not None else None
    name = op_name(node)
    if spec is None:
        return
    if name == "size":
        dim = arg(node, 1, "dim")
        if dim is None:
            graph.shape_reads[node] = spec
        elif isinstance(dim, int) and _normalize_dim(dim, len(graph.shape(x))) == spec.axis:
            graph.count_reads[node] = spec.layout
    elif name == "getattr" and len(node.args) > 1 and node.args[1] == "shape":
        graph.shape_reads[node] = spec
    elif name == "numel":
        graph.count_reads[node] = spec.layout


# ---- the table -------------------------------------------------------------------------------------
register_op(
    "pass-through", pass_through,
    names=("relu", "relu_", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "hardswish",
           "hardsigmoid", "hardtanh", "sigmoid", "tanh", "softplus", "dropout", "dropout1d", "dropout2d",
           "dropout3d", "alpha_dropout", "contiguous", "clone", "detach", "float", "half", "double", "to",
           "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
           "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
           "adaptive_max_pool2d", "adaptive_max_pool3d", "interpolate", "upsample", "neg", "abs", "exp",
           "sigmoid_", "hardsigmoid_", "hardswish_", "silu_", "gelu_", "tanh_", "relu6_"),
    modules=(nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
             nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity,
             nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
             nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
             nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
             nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample,
             nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d))
register_op("type_as", _type_as, names=("type_as",))
#: ops that make a tensor of their own (an argument tensor lends a dtype and device only)
FRESH = ("new_full", "new_zeros", "new_ones", "new_empty", "new_tensor", "arange", "zeros", "ones", "full", "empty")
register_op("new tensor", _new_tensor, names=FRESH[:5])
register_op("factory", _new_tensor, names=FRESH[5:], tensor_input=False)
register_op("stochastic depth", _stochastic_depth, names=("stochastic_depth",), match=is_stochastic)
register_op("pad", _pad, names=("pad",),
            modules=(nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d))
register_op("flatten", _flatten, names=("flatten",), modules=(nn.Flatten,), subclasses=False)
register_op("reshape", _reshape, names=("view", "reshape"))
register_op("expand", _expand, names=("expand",))
register_op("permute", _permute, names=("permute",))
register_op("transpose", _transpose, names=("transpose",))
register_op("unbind", _unbind, names=("unbind",))
register_op("unsqueeze", _unsqueeze, names=("unsqueeze",))
register_op("roll", _roll, names=("roll",))
register_op("softmax", _softmax, names=("softmax", "log_softmax"), modules=(nn.Softmax, nn.LogSoftmax))
register_op("attention", _attention, names=("scaled_dot_product_attention",), priced=True)
register_op("matmul", _matmul, names=("matmul", "bmm"), tensor_input=False, priced=True)
register_op("multihead attention", _frozen_attention(
    "nn.MultiheadAttention other than a self-attention without attention weights, masks, attention dropout or "
    "bias_k/v (`spaces.mha` traces that one through): heads and embedding frozen, its FLOPs priced as measured"),
    modules=(nn.MultiheadAttention,), priced=True)
register_op("shifted window attention", _frozen_attention(
    "torchvision's shifted_window_attention takes its weights as arguments: heads and channels frozen, its FLOPs "
    "priced as measured"), names=("shifted_window_attention",), priced=True, tensor_input=False)
#: timm's attention-mask helpers: a mask over tokens built from the scores' shape, added to the scores
register_op("attention mask", None, names=("resolve_self_attn_mask",), tensor_input=False)
register_op("masked scores", _elementwise, names=("maybe_add_mask",), tensor_input=False)
register_op("reduce", _reduce, names=("mean", "sum", "amax", "amin"))
#: a residual add is one of these (see `spaces.blocks`)
ADD = register_op("add", _elementwise, names=("add", "iadd", "add_"), tensor_input=False)
register_op("elementwise", _elementwise, names=("sub", "isub", "sub_", "mul", "imul", "mul_", "truediv", "itruediv",
                                                "div", "div_", "maximum", "minimum"), tensor_input=False)
register_op("cat", _cat, names=("cat", "concat", "concatenate"), tensor_input=False)
register_op("stack", _stack, names=("stack",), tensor_input=False)
register_op("split", _split, names=("split", "chunk", "tensor_split", "split_with_sizes"))
register_op("getitem", _getitem, names=("getitem",), tensor_input=False)
SHAPE_READ = register_op("shape read", _shape_read, names=("size", "getattr", "numel"), tensor_input=False)
NO_TENSOR = register_op("no tensor", None, names=("dim", "floordiv", "mod", "eq", "ne", "lt", "gt", "le", "ge", "_assert",
                                                  "len", "not_", "and_", "or_", "is_", "is_not"),
                        tensor_input=False)
#: calls that make no tensor: the tracer drops those nothing reads
NO_TENSOR_FLOW = frozenset(SHAPE_READ.names + NO_TENSOR.names)

__all__ = ["ADD", "FRESH", "NO_TENSOR_FLOW", "Op", "STOCHASTIC", "flatten", "full_index",
           "is_stochastic", "op_named", "op_of", "pass_through", "register_op"]
