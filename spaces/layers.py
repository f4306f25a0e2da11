"""The layer table: one entry per layer type says everything the engine knows about that layer.

An entry (`Layer`) says, for one `nn.Module` type and its functional forms (`F.conv2d` on a model's
own parameters is a convolution like `nn.Conv2d`):

- `channels(graph, node, module)`: its channel uses: which axis of which of its tensors belongs to which
  channel group, and the channel structure of its output (through `channels.Walk`, the graph's
  `spec_at`, `new_group`, `use`, `set_spec`, `site`, `opaque`). `functional(graph, node)` does the same
  for a call of one of its `functions`;
- `resize(module)`: once its tensors are cut, update its size attributes (`in_channels`,
  `num_features`, ...) so that its **own forward** runs at the new widths. The elastic model (on views
  of the base tensors) and `materialize` (on copies) shrink a layer this way, so a subclass keeps its
  behaviour (timm's `BatchNormAct2d` keeps its activation, `Conv2dSame` its padding);
- `flops`: True when FlopCounterMode counts 2 x positions x (elements of its weight) per sample (conv,
  linear). FLOPs of any other op are measured once and the op is frozen (see `graph`);
- `export(site, in_shape, out_len, in_len, batch)`: the layer alone at kept sizes as a module, and an
  input for it: what the per-layer latency table times on any runtime (layers with `flops` only; its
  weights are parameters and its input an input, so that a runtime does not fold them);
- `latency(site, in_shape, out_len, in_len, batch, device)`: optionally, a closure running the same
  computation in eager torch with less call overhead (the built-in conv and linear time so on torch);
- `running_stats`: a norm whose running statistics scoring resets and re-estimates (BatchNorm);
- for functional calls whose size arguments follow the widths (`F.layer_norm`'s `normalized_shape`,
  a depthwise `F.conv2d`'s `groups`; the entry's `functional` lists them in `graph.resized_calls`):
  `call_resize(node, width)` rewrites the call's arguments for a materialized subnet, and `call_elastic`
  is a function taking the call's arguments that derives those sizes from its input (the elastic model).

Ops that hold no tensors (activations, pooling, reshapes, `cat`, `add`) are in the op table (`spaces.ops`).
A subclass of a known layer is that layer when the entry allows it (`subclasses`) and the subclass adds
no tensors of its own and its children hold none (an activation, a dropout): timm's norm+act layers
are their norm. `LayerNorm` subclasses are traced through instead (timm's and torchvision's
`LayerNorm2d` permute around `F.layer_norm`, whose functional form is understood).

`register_layer` adds an entry for a user's own layer (see its docstring).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .channels import ComputeSite, Walk, arg, input_node
from .ops import pass_through

Channels = Callable[[Walk, fx.Node, nn.Module], None]
Functional = Callable[[Walk, fx.Node], None]
LatencyCall = Callable[[ComputeSite, tuple, int, int, int, torch.device], Callable[[], object]]
#: (site, input shape, kept output length, kept input length, batch) -> (the layer alone, an input for it)
Export = Callable[[ComputeSite, tuple, int, int, int], tuple[nn.Module, torch.Tensor]]


@dataclass(frozen=True)
class Layer:
    """What the engine knows about one layer type; see the module docstring."""

    name: str
    kind: type[nn.Module] | None
    channels: Channels
    resize: Callable[[nn.Module], None] | None = None
    flops: bool = False
    latency: LatencyCall | None = None
    subclasses: bool = True
    functions: tuple[Callable, ...] = ()
    functional: Functional | None = None
    match: Callable[[nn.Module], bool] | None = None  # instead of `kind`: a predicate on the module
    call_resize: Callable[[fx.Node, int], None] | None = None
    call_elastic: Callable | None = None
    export: Export | None = None
    running_stats: bool = False

    def matches(self, module: nn.Module) -> bool:
        if self.match is not None:
            return self.match(module)
        if type(module) is self.kind:
            return True
        return self.subclasses and isinstance(module, self.kind) and _adds_no_tensors(module, self.kind)


_TABLE: list[Layer] = []
_FUNCTIONS: dict[Callable, Layer] = {}


def register_layer(kind: type[nn.Module] | None, channels: Channels, *, name: str | None = None,
                   resize: Callable[[nn.Module], None] | None = None, flops: bool = False,
                   latency: LatencyCall | None = None, subclasses: bool = True,
                   functions: Iterable[Callable] = (), functional: Functional | None = None,
                   match: Callable[[nn.Module], bool] | None = None,
                   call_resize: Callable[[fx.Node, int], None] | None = None,
                   call_elastic: Callable | None = None, export: Export | None = None,
                   running_stats: bool = False) -> Layer:
    """Teach the engine a layer type. Later registrations win over earlier ones.

    A per-channel scale, say, that multiplies its input's channels (axis 1) by its own weight:

        class Scale(nn.Module):
            def __init__(self, c):
                super().__init__()
                self.weight = nn.Parameter(torch.ones(c))
            def forward(self, x):
                return x * self.weight.view(1, -1, 1, 1)

        def scale_channels(graph, node, module):
            x = node.args[0]
            spec = graph.spec_at(x, 1, module.weight.shape[0], f"input of {node.target} not understood")
            graph.use(f"{node.target}.weight", 0, spec.layout)  # its weight follows the input's channels
            graph.set_spec(node, spec.axis, spec.layout)        # its output has the input's channels

        register_layer(Scale, scale_channels)

    The module is then a leaf of the trace; its tensors are cut along the uses given, and its own
    forward runs at the cut widths (give `resize` when it stores sizes as attributes). A layer that
    makes new channels calls `graph.new_group(size, producer=name)` and lays its weight's output axis
    out with it; a conv/linear-like layer also calls `graph.site(node, name, weight, kind, options)` with
    `kind` its entry's `name`, sets `flops=True`, and gives `export` (the layer alone at kept sizes), which
    the latency table times on every runtime.
    """
    layer = Layer(name or (kind.__name__ if kind is not None else "layer"), kind, channels, resize, flops,
                  latency, subclasses, tuple(functions), functional, match, call_resize, call_elastic, export,
                  running_stats)
    _TABLE.insert(0, layer)
    for fn in layer.functions:
        _FUNCTIONS[fn] = layer
    return layer


def running_stat_norms(module: nn.Module) -> list[nn.Module]:
    """Every submodule of `module` (itself included) of a kind whose entry has `running_stats` (BatchNorm)."""
    kinds = tuple(layer.kind for layer in _TABLE if layer.running_stats)
    return [m for m in module.modules() if isinstance(m, kinds)]


def layer_of(module: nn.Module) -> Layer | None:
    """The table's entry for `module`, or None (the module is then traced through, or opaque)."""
    for layer in _TABLE:
        if layer.matches(module):
            return layer
    return None


def layer_named(name: str) -> Layer:
    """The entry registered under `name` (a compute site's `kind`)."""
    return next(layer for layer in _TABLE if layer.name == name)


def function_layer(fn: object) -> Layer | None:
    """The entry whose functional form `fn` is (F.conv2d -> convolution), or None."""
    try:
        return _FUNCTIONS.get(fn)
    except TypeError:  # unhashable target
        return None


def _adds_no_tensors(module: nn.Module, kind: type[nn.Module]) -> bool:
    """A subclass is its base layer when it has the base's tensors only and its children hold none."""
    for child in module.children():
        if any(True for _ in child.parameters()) or any(True for _ in child.buffers()):
            return False
    base_fields = _BASE_FIELDS.get(kind)
    own = {n for n, t in [*module._parameters.items(), *module._buffers.items()] if t is not None}
    return base_fields is None or own <= base_fields | _per_channel_extras(module)


def _per_channel_extras(module: nn.Module) -> set[str]:
    """Extra parameters of a conv subclass that hold one value per output channel (timm's `gain`)."""
    out = getattr(module, "out_channels", None)
    return {n for n, t in module._parameters.items()
            if t is not None and out is not None and t.shape[:1] == (out,) and t.numel() == out}


_BASE_FIELDS: dict[type, set[str]] = {}


def shrink(module: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """A shallow copy of `module` holding `tensors` (cut to the widths) in place of its own, resized.

    The copy shares everything else (children, hooks, attributes as they are now) with `module`; the
    elastic model makes one per forward, on views of the base tensors. Tensors go straight into
    `_parameters`/`_buffers` (views need not be Parameters, as in `torch.func.functional_call`).
    """
    layer = layer_of(module)
    new = object.__new__(type(module))
    new.__dict__ = {**module.__dict__,
                    "_parameters": {k: tensors.get(k, v) for k, v in module._parameters.items()},
                    "_buffers": {k: tensors.get(k, v) for k, v in module._buffers.items()}}
    if layer is not None and layer.resize is not None:
        layer.resize(new)
    return new


def resize(module: nn.Module, like: nn.Module | None = None) -> None:
    """Update `module`'s size attributes from its (cut) tensors, per the table entry of `like` (itself)."""
    layer = layer_of(like if like is not None else module)
    if layer is not None and layer.resize is not None:
        layer.resize(module)


def is_depthwise(groups: int, in_channels: int, out_channels: int) -> bool:
    """A depthwise convolution passes each channel through on its own (and stays depthwise when cut)."""
    return groups > 1 and groups == in_channels == out_channels


# ---- argument helpers ---------------------------------------------------------------------------
def _attr_name(graph: Walk, value: object) -> str | None:
    """The tensor name of a `get_attr` argument, marked accounted for; None for None; raises otherwise."""
    if value is None:
        return None
    if isinstance(value, fx.Node) and value.op == "get_attr":
        graph.account(value)
        return str(value.target)
    raise NotAParameter


class NotAParameter(Exception):
    """A functional layer called on a computed tensor, not on a parameter: it is frozen (opaque)."""


def _owner(tensor_name: str) -> str:
    return tensor_name.rpartition(".")[0] or tensor_name


# ---- convolution ----------------------------------------------------------------------------------
def _conv_core(graph: Walk, node: fx.Node, x: fx.Node, weight: str, bias: str | None, extras: list[str],
               groups: int, producer: str, options: dict) -> None:
    w = graph.tensors[weight]
    out_channels, in_channels = w.shape[0], w.shape[1] * groups
    spec = graph.spec_at(x, 1, in_channels, f"input of {producer} not understood")
    if groups == 1:
        graph.use(weight, 1, spec.layout)
        out = graph.new_group(out_channels, producer=producer)
    elif is_depthwise(groups, in_channels, out_channels):  # passes its input group through
        out = spec.layout
    elif in_channels == out_channels and graph.set_blocks(spec.layout, groups):
        out = spec.layout
        graph.use(weight, 1, spec.layout, local=True)
    else:
        reason = f"grouped convolution {producer} with {in_channels} -> {out_channels} channels"
        graph.fix(spec.layout, reason)
        out = graph.new_group(out_channels, producer=producer, fixed=reason)
    for t in [weight, *([bias] if bias else []), *extras]:
        graph.use(t, 0, out)
    graph.set_spec(node, 1, out)
    graph.site(node, producer, weight, "conv", {**options, "groups": groups,
                                                "depthwise": is_depthwise(groups, in_channels, out_channels)})


def _conv_channels(graph: Walk, node: fx.Node, m: nn.Module) -> None:
    x = input_node(node)
    if m.transposed or x is None:
        graph.opaque(node, f"transposed convolution {node.target}")
        return
    name = str(node.target)
    extras = [f"{name}.{n}" for n in sorted(_per_channel_extras(m) - {"weight", "bias"})]
    _conv_core(graph, node, x, f"{name}.weight", f"{name}.bias" if m.bias is not None else None, extras,
               m.groups, name, {"stride": m.stride, "padding": m.padding, "dilation": m.dilation})


def _conv_functional(graph: Walk, node: fx.Node) -> None:
    x = input_node(node)
    weight = _attr_name(graph, arg(node, 1, "weight"))
    bias = _attr_name(graph, arg(node, 2, "bias"))
    groups = arg(node, 6, "groups", 1)
    options = {"stride": arg(node, 3, "stride", 1), "padding": arg(node, 4, "padding", 0),
               "dilation": arg(node, 5, "dilation", 1)}
    w = graph.tensors[weight]
    if x is None or not isinstance(groups, int):
        graph.opaque(node, "functional convolution with computed groups")
        return
    _conv_core(graph, node, x, weight, bias, [], groups, _owner(weight), options)
    if is_depthwise(groups, w.shape[1] * groups, w.shape[0]):
        graph.resized_calls.append(node.name)  # its `groups` argument follows the width


def _conv_call_resize(node: fx.Node, width: int) -> None:
    """A depthwise F.conv*d call at `width` channels: `groups` is the width."""
    if len(node.args) > 6:
        node.args = (*node.args[:6], width, *node.args[7:])
    else:
        node.update_kwarg("groups", width)


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
                   dilation=1, groups: int = 1) -> torch.Tensor:
    """A depthwise F.conv*d at whatever width its input has now (`groups` follows it)."""
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[weight.dim()]
    return conv(x, weight, bias, stride, padding, dilation, x.shape[1])


def _conv_resize(m: nn.Module) -> None:
    w = m.weight
    if is_depthwise(m.groups, m.in_channels, m.out_channels):
        m.groups = w.shape[0]  # depthwise stays depthwise
    m.out_channels = w.shape[0]
    m.in_channels = w.shape[1] * m.groups


def _conv_latency(site: ComputeSite, in_shape: tuple, out_len: int, in_len: int, batch: int,
                  device: torch.device) -> Callable[[], object]:
    o = site.options
    groups = out_len if o["depthwise"] else o["groups"]
    x = torch.randn(batch, in_len * groups, *in_shape[2:], device=device)
    w = torch.randn(out_len, in_len, *o["kernel"], device=device)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[w.dim() - 2]
    return lambda: conv(x, w, None, o["stride"], o["padding"], o["dilation"], groups)


def _conv_export(site: ComputeSite, in_shape: tuple, out_len: int, in_len: int, batch: int
                 ) -> tuple[nn.Module, torch.Tensor]:
    o = site.options
    groups = out_len if o["depthwise"] else o["groups"]
    kernel = tuple(o["kernel"])
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(kernel)]
    layer = conv(in_len * groups, out_len, kernel, o["stride"], o["padding"], o["dilation"], groups, bias=False)
    return layer.eval(), torch.randn(batch, in_len * groups, *in_shape[2:])


# ---- linear ---------------------------------------------------------------------------------------
def _linear_core(graph: Walk, node: fx.Node, x: fx.Node, weight: str, bias: str | None,
                 producer: str) -> None:
    out_features, in_features = graph.tensors[weight].shape
    in_shape = graph.shape(x)
    spec = graph.spec_at(x, len(in_shape) - 1, in_features, f"input of {producer} not understood")
    graph.use(weight, 1, spec.layout)
    out = graph.new_group(out_features, producer=producer)
    graph.use(weight, 0, out)
    if bias:
        graph.use(bias, 0, out)
    graph.set_spec(node, len(graph.shape(node)) - 1, out)
    graph.site(node, producer, weight, "linear", {})


def _linear_channels(graph: Walk, node: fx.Node, m: nn.Module) -> None:
    x = input_node(node)
    if x is None:
        graph.opaque(node, f"{node.target} without a tensor input")
        return
    name = str(node.target)
    _linear_core(graph, node, x, f"{name}.weight", f"{name}.bias" if m.bias is not None else None, name)


def _linear_functional(graph: Walk, node: fx.Node) -> None:
    x = input_node(node)
    weight = _attr_name(graph, arg(node, 1, "weight"))
    bias = _attr_name(graph, arg(node, 2, "bias"))
    if x is None:
        graph.opaque(node, "linear without a tensor input")
        return
    _linear_core(graph, node, x, weight, bias, _owner(weight))


def _linear_resize(m: nn.Module) -> None:
    m.out_features, m.in_features = m.weight.shape


def _linear_latency(site: ComputeSite, in_shape: tuple, out_len: int, in_len: int, batch: int,
                    device: torch.device) -> Callable[[], object]:
    x = torch.randn(batch, *in_shape[1:-1], in_len, device=device)
    w = torch.randn(out_len, in_len, device=device)
    return lambda: F.linear(x, w)


def _linear_export(site: ComputeSite, in_shape: tuple, out_len: int, in_len: int, batch: int
                   ) -> tuple[nn.Module, torch.Tensor]:
    return nn.Linear(in_len, out_len, bias=False).eval(), torch.randn(batch, *in_shape[1:-1], in_len)


# ---- normalization: one value per channel ---------------------------------------------------------
def _per_channel(graph: Walk, node: fx.Node, x: fx.Node | None, axis: int | None, length: int,
                 tensors: list[str], what: str, blocks: int = 1) -> None:
    """Every tensor in `tensors` holds one value per channel of `x` along `axis` (None: the last)."""
    if x is None or graph.shape(x) is None:
        graph.opaque(node, f"{what} without a tensor input")
        return
    ndim = len(graph.shape(x))
    axis = ndim - 1 if axis is None else axis
    spec = graph.spec_at(x, axis, length, f"input of {what} not understood")
    if blocks > 1 and not graph.set_blocks(spec.layout, blocks):
        graph.fix(spec.layout, f"{what} with {blocks} groups over channels grouped otherwise")
    for t in tensors:
        graph.use(t, 0, spec.layout)
    graph.set_spec(node, axis, spec.layout)


def _tensors(m: nn.Module, name: str, fields: Iterable[str]) -> list[str]:
    return [f"{name}.{f}" for f in fields if getattr(m, f, None) is not None and f in {**m._parameters, **m._buffers}]


_NORM_FIELDS = ("weight", "bias", "running_mean", "running_var")


def _norm_channels(graph: Walk, node: fx.Node, m: nn.Module) -> None:
    name = str(node.target)
    _per_channel(graph, node, input_node(node), 1, m.num_features, _tensors(m, name, _NORM_FIELDS), name)


def _batch_norm_functional(graph: Walk, node: fx.Node) -> None:
    names = [_attr_name(graph, arg(node, i, f)) for i, f in
             ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))]
    names = [n for n in names if n]
    length = graph.tensors[names[0]].shape[0] if names else 0
    _per_channel(graph, node, input_node(node), 1, length, names, "batch_norm")


def _norm_resize(m: nn.Module) -> None:
    ref = next((t for t in (m.running_mean, m.weight) if t is not None), None)
    if ref is not None:
        m.num_features = ref.shape[0]


def _group_norm_channels(graph: Walk, node: fx.Node, m: nn.Module) -> None:
    name = str(node.target)
    _per_channel(graph, node, input_node(node), 1, m.num_channels, _tensors(m, name, ("weight", "bias")), name,
                 blocks=m.num_groups)


def _group_norm_functional(graph: Walk, node: fx.Node) -> None:
    groups = arg(node, 1, "num_groups")
    names = [n for n in (_attr_name(graph, arg(node, 2, "weight")), _attr_name(graph, arg(node, 3, "bias"))) if n]
    x = input_node(node)
    length = graph.tensors[names[0]].shape[0] if names else (graph.shape(x) or (0, 0))[1]
    _per_channel(graph, node, x, 1, length, names, "group_norm", blocks=groups)


def _group_norm_resize(m: nn.Module) -> None:
    if m.weight is not None:
        m.num_channels = m.weight.shape[0]


def _layer_norm_channels(graph: Walk, node: fx.Node, m: nn.Module) -> None:
    name = str(node.target)
    if len(m.normalized_shape) != 1:
        graph.opaque(node, f"{name} normalizes several axes")
        return
    _per_channel(graph, node, input_node(node), None, m.normalized_shape[0], _tensors(m, name, ("weight", "bias")),
                 name)


def _layer_norm_functional(graph: Walk, node: fx.Node) -> None:
    normalized = arg(node, 1, "normalized_shape")
    names = [_attr_name(graph, arg(node, 2, "weight")), _attr_name(graph, arg(node, 3, "bias"))]
    if len(normalized) != 1:
        graph.opaque(node, "layer_norm over several axes")
        return
    _per_channel(graph, node, input_node(node), None, normalized[0], [n for n in names if n], "layer_norm")
    graph.resized_calls.append(node.name)  # its normalized_shape argument follows the width


def _layer_norm_call_resize(node: fx.Node, width: int) -> None:
    if len(node.args) > 1:
        node.args = (node.args[0], (width,), *node.args[2:])
    else:
        node.update_kwarg("normalized_shape", (width,))


def layer_norm_last_axis(x: torch.Tensor, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """F.layer_norm over the last axis at whatever width it has now."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def _layer_norm_resize(m: nn.Module) -> None:
    if m.weight is not None:
        m.normalized_shape = (m.weight.shape[0],)


def _prelu_channels(graph: Walk, node: fx.Node, m: nn.Module) -> None:
    name = str(node.target)
    if m.num_parameters > 1:
        _per_channel(graph, node, input_node(node), 1, m.num_parameters, [f"{name}.weight"], name)
    else:
        pass_through(graph, node, m)


def _prelu_resize(m: nn.Module) -> None:
    m.num_parameters = m.weight.shape[0]


register_layer(nn.PReLU, _prelu_channels, resize=_prelu_resize, subclasses=False)
register_layer(nn.LayerNorm, _layer_norm_channels, resize=_layer_norm_resize, subclasses=False,
               functions=(F.layer_norm,), functional=_layer_norm_functional, call_resize=_layer_norm_call_resize,
               call_elastic=layer_norm_last_axis)
register_layer(nn.GroupNorm, _group_norm_channels, resize=_group_norm_resize,
               functions=(F.group_norm,), functional=_group_norm_functional)
register_layer(nn.modules.instancenorm._InstanceNorm, _norm_channels, resize=_norm_resize)
register_layer(nn.modules.batchnorm._BatchNorm, _norm_channels, resize=_norm_resize,
               functions=(F.batch_norm,), functional=_batch_norm_functional, running_stats=True)
register_layer(nn.Linear, _linear_channels, name="linear", resize=_linear_resize, flops=True, latency=_linear_latency,
               export=_linear_export, functions=(F.linear,), functional=_linear_functional)
register_layer(nn.modules.conv._ConvNd, _conv_channels, name="conv", resize=_conv_resize, flops=True, latency=_conv_latency,
               export=_conv_export, functions=(F.conv1d, F.conv2d, F.conv3d), functional=_conv_functional,
               call_resize=_conv_call_resize, call_elastic=depthwise_conv)
_BASE_FIELDS.update({
    nn.modules.conv._ConvNd: {"weight", "bias"}, nn.Linear: {"weight", "bias"},
    nn.modules.batchnorm._BatchNorm: {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"},
    nn.modules.instancenorm._InstanceNorm: {"weight", "bias", "running_mean", "running_var",
                                            "num_batches_tracked"},
    nn.GroupNorm: {"weight", "bias"},
})


def leaf_positions(flops: int, weight_numel: int) -> int | None:
    """Positions per sample of a conv/linear whose measured FLOPs are `flops`; None if not 2 x p x numel."""
    if weight_numel and flops % (2 * weight_numel) == 0 and flops > 0:
        return flops // (2 * weight_numel)
    return None


__all__ = ["Layer", "arg", "function_layer", "is_depthwise", "layer_named", "layer_of", "leaf_positions",
           "register_layer", "resize", "running_stat_norms", "shrink"]
