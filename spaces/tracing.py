"""Tracing a model into a torch.fx graph whose leaves are the modules of the layer and op tables.

`trace` tries plain symbolic tracing first. Where the model's Python code branches on tensor shapes
(timm's `pad_same`, a resize done only when sizes differ), it traces again with concrete shapes: every
op also runs on the example input as it is recorded, so `x.shape`, `x.size(i)`, `x.dim()` are plain
ints (the batch size stays symbolic) and the graph is specialised to the example's size, the size the
search space is derived for anyway. Where neither works (a branch on tensor *values*), it raises
`UntraceableModel` naming the module's source line.

A structured example (a tuple, dict or list: `spaces.structure`), or a `forward` with more arguments than
one tensor, is bound to `forward`'s signature and traced through torch.fx's `concrete_args`: its tensors
are the graph's inputs, everything else is fixed, and the graph returns the model's own structure. In
the concrete trace a branch on the batch size takes the traced path, checked against the model at batch 1.

A decorated `forward` (transformers' `can_return_tuple`) is called as a user calls it; `nn.MultiheadAttention`
and torchvision Swin's fx-wrapped attention are traced as the ops they compute (`spaces.mha`). In the concrete
trace, a first axis that is a multiple of the traced batch in a tensor computed from the inputs (Swin's
`batch x windows`) stays symbolic too, and where the trace still fails it is retried with `torch.arange` and
the other factories recorded (a mask made in forward, then sized from the input).

After tracing: `_assert` calls and the shape checks only they read are dropped (they would pin nodes
inside residual blocks), and functional dropout, traced in eval mode as a constant no-op, becomes a
dropout module again so that the subnet keeps its train-mode behaviour.
"""
from __future__ import annotations

import contextlib
import inspect
import operator
import traceback

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.node import map_aggregate
from torch.utils import _pytree as pytree

from .channels import arg, op_name
from . import mha
from .layers import layer_of
from .ops import NO_TENSOR_FLOW, op_of
from .structure import (Example, bound_arguments, call, concrete_args, first_sample, graph_inputs, placeholder_values,
                        tensors_of)

_ASSERTS = {"_assert", "_assert_async", "_assert_is_none"}
_DROPOUTS = {F.dropout: nn.Dropout, F.dropout1d: nn.Dropout1d, F.dropout2d: nn.Dropout2d,
             F.dropout3d: nn.Dropout3d, F.alpha_dropout: nn.AlphaDropout,
             F.feature_alpha_dropout: nn.FeatureAlphaDropout}
_MODULE_CALL, _MODULE_GETATTR = nn.Module.__call__, nn.Module.__getattr__  # as torch defines them
TRACE_BATCH = 5  # the batch the concrete trace runs: an unusual size, so that it is told from other axes


class UntraceableModel(TypeError):
    """The model cannot be traced (shape- or data-dependent Python control flow): says where, in one line."""


class _Tracer(fx.Tracer):
    """Leaves: standard torch.nn modules and every module of the layer and op tables (timm's norm+act layers...)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if m is getattr(self, "_through", None):
            return False
        return layer_of(m) is not None or op_of(m) is not None or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        """A self-attention `nn.MultiheadAttention` is traced as the ops it computes (`spaces.mha`)."""
        if not mha.traceable(m, args, kwargs):
            return super().call_module(m, forward, args, kwargs)
        self._through = m
        try:
            return super().call_module(m, lambda *a, **k: mha.forward(m, *a, **k), args, kwargs)
        finally:
            self._through = None

    def iter(self, obj: fx.Proxy):
        """Iterating the pieces of a split (`for p in x.split(sizes, 1)`, `zip`): one `getitem` per piece."""
        count = _known_length(obj)
        if count is None:
            return super().iter(obj)
        return iter([obj[i] for i in range(count)])

    def _proxy_placeholder(self, name, concrete_args, sig, fn_for_analysis):
        """`*args` / `**kwargs` given values (`return_dict=False` for a forward's `**kwargs`): torch.fx looks
        them up among the named parameters and fails. One placeholder per leaf, as for a named argument;
        a tensor's stands for it, any other value stays fixed."""
        if not (name.startswith("*") and concrete_args is not None and name in concrete_args):
            return super()._proxy_placeholder(name, concrete_args, sig, fn_for_analysis)
        count = iter(range(1, 1 << 30))

        def leaf(value):
            proxy = self.create_proxy("placeholder", f"{name.lstrip('*')}_{next(count)}", (), {})
            return proxy if value is fx.PH else value
        return pytree.tree_map(leaf, concrete_args[name])

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        """A library's function wrapped as a leaf that `spaces.mha` traces through: the ops it computes."""
        if kind == "call_function" and mha.traced_through(target, args, kwargs):
            return self.through(target, args, kwargs)
        return super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)

    def through(self, target, args, kwargs):
        """`target` called on the proxies: its own ops are recorded. torch.fx then marks the last of them as the
        wrapped call (`is_wrapped`), which would make the generated code wrap that op (`torch.cat`, say) for
        every later trace: the mark is taken off again (`unmark_wrapped`)."""
        out = target(*args, **kwargs)
        for leaf in pytree.tree_leaves(out):
            if isinstance(leaf, fx.Proxy) and "is_wrapped" not in leaf.node.meta:
                self.marked = [*getattr(self, "marked", []), leaf.node]
        return out

    def unmark_wrapped(self) -> None:
        for node in getattr(self, "marked", []):
            node.meta.pop("is_wrapped", None)

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        """A decorated forward (`functools.wraps`: transformers' `can_return_tuple`, `check_model_inputs`):
        torch.fx makes the placeholders from the function inside, then would call the decorator's
        `wrapper(self, *args, **kwargs)` with them as its own positional arguments; call it the way a user
        does instead, so the decorator runs (and pops its keywords) as it would."""
        inner = inspect.unwrap(root_fn)
        if inner is root_fn:
            return super().create_args_for_root(root_fn, is_module, concrete_args)
        _, args = super().create_args_for_root(inner, is_module, concrete_args)
        info = getattr(self.graph._codegen, "pytree_info", None)
        call = _caller(root_fn, inner)
        if info is None:
            return call, args

        def flat(*leaves):
            out, out_spec = pytree.tree_flatten(call(*pytree.tree_unflatten(list(leaves), info.in_spec)))
            self.graph._codegen.pytree_info = self.graph._codegen.pytree_info._replace(out_spec=out_spec)
            return out
        return flat, args


def _caller(decorated, inner):
    """A function taking `inner`'s arguments as torch.fx lays them out (its named ones, then `*args` as a
    tuple and `**kwargs` as a dict) that calls `decorated` with them, positionally and by keyword."""
    code = inner.__code__
    named = code.co_argcount + code.co_kwonlyargcount
    names = list(code.co_varnames[:named])
    names += ["*"] if code.co_flags & inspect.CO_VARARGS else []
    names += ["**"] if code.co_flags & inspect.CO_VARKEYWORDS else []

    def call(*values):
        positional, keywords = [], {}
        for i, (name, value) in enumerate(zip(names, values)):
            if name == "*":
                positional.extend(value)
            elif name == "**":
                keywords.update(value)
            elif i < code.co_argcount:
                positional.append(value)
            else:
                keywords[name] = value
        return decorated(*positional, **keywords)
    return call


def _known_length(proxy: fx.Proxy) -> int | None:
    """How many pieces a traced split/chunk makes, where its arguments or the traced value say."""
    value = proxy._value() if isinstance(proxy, _ConcreteProxy) else None
    if isinstance(value, (tuple, list)):
        return len(value)
    node = proxy.node
    if node.op not in ("call_function", "call_method") or len(node.args) < 2:
        return None
    name, pieces = op_name(node), node.args[1]
    if name in ("split", "split_with_sizes") and isinstance(pieces, (list, tuple)):
        return len(pieces)
    if name == "tensor_split":
        return len(pieces) + 1 if isinstance(pieces, (list, tuple)) else pieces if isinstance(pieces, int) else None
    if name == "chunk" and isinstance(pieces, int):
        return pieces  # torch.chunk makes fewer only when the size is not divisible: the graph then fails to run
    return None


def _strip_asserts(graph: fx.Graph) -> None:
    """Drop `_assert` calls and the shape checks only they read: they would pin nodes inside blocks."""
    for node in list(graph.nodes):
        if node.op == "call_function" and op_name(node) in _ASSERTS:
            graph.erase_node(node)
    changed = True
    while changed:
        changed = False
        for node in reversed(list(graph.nodes)):
            if not node.users and node.op in ("call_function", "call_method") and op_name(node) in NO_TENSOR_FLOW:
                graph.erase_node(node)
                changed = True


def _skip_identities(gm: fx.GraphModule) -> None:
    """Calls of `nn.Identity` pass their input on: drop them (a residual shortcut is then its input)."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and type(gm.get_submodule(node.target)) is nn.Identity and node.args:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)


def _dropout_modules(gm: fx.GraphModule) -> None:
    """Functional dropout traced in eval mode is a no-op call: make it a module that follows train/eval."""
    for i, node in enumerate(list(gm.graph.nodes)):
        kind = _DROPOUTS.get(node.target) if node.op == "call_function" else None
        p = arg(node, 1, "p", 0.5) if kind is not None else 0.0
        if kind is None or not isinstance(p, (int, float)) or p <= 0:
            continue
        name = f"_dropout_{i}"
        gm.add_submodule(name, kind(float(p)))
        with gm.graph.inserting_before(node):
            module_call = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(module_call)
        gm.graph.erase_node(node)


def _plain(model: nn.Module, example_input: Example | None) -> bool:
    """Whether `model(x)` traces with one plain placeholder: a tensor example and a one-argument forward."""
    if example_input is None:
        return True
    if not isinstance(example_input, torch.Tensor):
        return False
    try:
        names = list(bound_arguments(model, example_input))
    except TypeError:
        return True  # reported by the trace itself, as before
    return len(names) == 1 and not names[0].startswith("*")


def trace(model: nn.Module, example_input: Example | None = None) -> fx.GraphModule:
    """Trace `model` in eval mode (see the module docstring); asserts dropped, dropout kept.

    `example_input` may be structured (`spaces.structure`): the traced module then takes and returns the
    model's own structures. Raises `UntraceableModel` (a TypeError) naming the source line where tracing failed.
    """
    was_training = model.training
    model.eval()
    tracer: fx.Tracer = _Tracer()
    saved = [(m, dict(m.__dict__)) for m in model.modules()]  # what forward caches on itself while traced
    try:
        concrete = None
        if not _plain(model, example_input):
            try:
                concrete = concrete_args(model, example_input)
            except TypeError as error:
                raise UntraceableModel(f"cannot trace {type(model).__name__}: {error}") from None
        try:
            graph = tracer.trace(model, concrete_args=concrete)
        except Exception as error:  # noqa: BLE001 - shape-dependent code: trace again with concrete shapes
            if example_input is None:
                raise UntraceableModel(_where(error, model)) from error
            tracer = _ConcreteTracer(example_input, placeholder_values(model, example_input))
            try:
                with torch.no_grad():
                    graph = tracer.trace(model, concrete_args=concrete)
            except Exception as concrete_error:  # noqa: BLE001 - reported in one line, with where it happened
                tracer = _ConcreteTracer(example_input, placeholder_values(model, example_input))
                try:  # once more, with the tensors the forward makes recorded (`_recorded_factories`)
                    with torch.no_grad(), _recorded_factories(tracer):
                        graph = tracer.trace(model, concrete_args=concrete)
                except Exception:  # noqa: BLE001 - the first failure is the one reported
                    raise UntraceableModel(_where(concrete_error, model)) from concrete_error
    finally:
        _restore(saved)
        model.train(was_training)
    tracer.unmark_wrapped()
    _strip_asserts(graph)
    if concrete is not None:
        _drop_fixed_arguments(graph, model, example_input)
    gm = fx.GraphModule(tracer.root, graph, class_name=type(model).__name__)  # keeps a structured codegen
    _dropout_modules(gm)
    _skip_identities(gm)
    gm.graph.lint()
    gm.recompile()
    if getattr(tracer, "batch_branches", 0):
        _check_batch_branches(gm, model, example_input)
    return gm


def _restore(saved: list[tuple[nn.Module, dict]]) -> None:
    """Each module's attributes as before the trace: a forward that caches on itself (YOLO's anchors and
    last shape) cached proxies. What the tracer added (its `_tensor_constant`s) stays unless it holds one."""
    for m, before in saved:
        for key, value in list(m.__dict__.items()):
            if key in before:
                if value is not before[key]:
                    m.__dict__[key] = before[key]
            elif any(isinstance(leaf, fx.Proxy) for leaf in pytree.tree_leaves(value)):
                del m.__dict__[key]


def _check_batch_branches(gm: fx.GraphModule, model: nn.Module, example_input: Example) -> None:
    """The graph, traced with branches on the batch size taken at `TRACE_BATCH`, must equal the model at batch 1."""
    one = first_sample(example_input)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected, got = call(model, one), gm(*graph_inputs(model, one))
    finally:
        model.train(was_training)
    same = pytree.tree_structure(expected) == pytree.tree_structure(got) and all(
        not isinstance(a, torch.Tensor) or (a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5))
        for a, b in zip(pytree.tree_leaves(expected), pytree.tree_leaves(got)))
    if not same:
        raise UntraceableModel(f"cannot trace {type(model).__name__}: it branches on the batch size, and the "
                               f"graph traced at batch {TRACE_BATCH} differs from the model at batch 1")


def _drop_fixed_arguments(graph: fx.Graph, model: nn.Module, example_input: Example) -> None:
    """The traced module takes the arguments that hold tensors; the others (None, an int, `*args`) are fixed.

    Their placeholders only fed the asserts torch.fx adds for fixed values (dropped by now); torch.fx also
    keeps them in the flattening spec of a structured input, which the generated code cannot match.
    """
    bound = bound_arguments(model, example_input)
    placeholders = iter([n for n in graph.nodes if n.op == "placeholder"])
    for name, value in bound.items():
        for _ in pytree.tree_leaves(value):
            node = next(placeholders)
            if not tensors_of(value) and not node.users:
                graph.erase_node(node)
    info = getattr(graph._codegen, "pytree_info", None)
    if info is not None:
        for node in graph.nodes:  # a default (`pixel_values=None`) has no place in the flattening line
            if node.op == "placeholder":
                node.args = ()
        kept = [n for n, v in bound.items() if tensors_of(v)]
        spec = pytree.tree_structure((model, *graph_inputs(model, example_input)))
        graph._codegen.pytree_info = info._replace(orig_args=["self", *kept], in_spec=spec)


def _where(error: Exception, model: nn.Module) -> str:
    """'cannot trace <Class> (file:line `code`): <error>' for the innermost frame of the model's own code."""


    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if "/torch/" not in f.filename and "/spaces/tracing.py" not in f.filename]
    where = f"{frames[-1].filename}:{frames[-1].lineno} `{(frames[-1].line or '').strip()}`" if frames else "?"
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    hint = ""
    if isinstance(getattr(model, "backbone", None), nn.Module) and hasattr(model, "transform"):
        hint = ("; its pre- and post-processing (resize, anchors, NMS) cannot be traced: give it a list of images "
                "(its .backbone is then searched inside it) or search its .backbone alone")
    return f"cannot trace {type(model).__name__} at {where}: {message}{hint}"




class _ConcreteProxy(fx.Proxy):
    """A proxy whose shape queries answer with the traced value's ints (the batch axis stays symbolic)."""

    def _value(self) -> object:
        return self.tracer.values.get(self.node)

    def _size(self, *dims):
        value = self._value()
        if not isinstance(value, torch.Tensor):
            return fx.Proxy.__getattr__(self, "size")(*dims)
        batched = self._batched(value)
        if dims and dims[0] is not None:
            d = dims[0] + value.dim() if dims[0] < 0 else dims[0]
            return self._batch() if d == 0 and batched else int(value.shape[d])
        return tuple(self._batch() if i == 0 and batched else int(n) for i, n in enumerate(value.shape))

    def _batched(self, value: torch.Tensor) -> bool:
        """Whether the first axis scales with the batch: the traced batch, or a multiple of it in a tensor
        computed from the inputs (Swin's windows: batch x windows rows, as `B_, N, C = x.shape` reads them)."""
        if not value.dim():
            return False
        n = int(value.shape[0])
        return n == TRACE_BATCH or (n % TRACE_BATCH == 0 and self.node in self.tracer.batched)

    def _batch(self) -> fx.Proxy:
        return self.tracer.create_proxy("call_method", "size", (self, 0), {})

    def __getattr__(self, name: str):
        value = self._value()
        if isinstance(value, torch.Tensor):
            if name == "shape":
                return self._size()
            if name == "size":
                return self._size
            if name in ("ndim", "dim"):
                return value.dim() if name == "ndim" else value.dim
            if name in ("dtype", "device", "is_cuda"):
                return getattr(value, name)
        return super().__getattr__(name)

    def __setitem__(self, key, value) -> None:
        """`mask[a:b, c:d] = n` on a tensor made in forward (torchvision Swin's shift mask): recorded, and done
        on the traced value."""
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})

    def __len__(self) -> int:
        value = self._value()
        if isinstance(value, (torch.Tensor, tuple, list)):
            return len(value)
        return super().__len__()


class _ConcreteTracer(_Tracer):
    """Records each op and runs it on the example input (repeated to `TRACE_BATCH`) at the same time."""

    def __init__(self, example_input: Example, placeholders: list[object]):
        super().__init__()
        if isinstance(example_input, torch.Tensor):  # the batch axis is told apart by its unusual size
            placeholders = [example_input[:1].expand(TRACE_BATCH, *example_input.shape[1:]).contiguous()
                            if p is example_input else p for p in placeholders]
        self.placeholders = iter(placeholders)  # a structured example runs as it is (one sample)
        self.values: dict[fx.Node, object] = {}
        self.batch_branches = 0  # branches on the batch size, taken as at TRACE_BATCH
        self.batched: set[fx.Node] = set()  # nodes computed from the inputs (placeholders)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ConcreteProxy(node, self)

    def to_bool(self, obj: fx.Proxy) -> bool:
        """A branch on the batch size (the one size that stays symbolic, as in `if self.shape != x.shape`)
        takes the path the traced batch takes (`trace` then checks the graph against the model at batch 1);
        a branch on tensor values (`x.sum() > 0`, `.item()`) is refused as before."""
        value = self.values.get(obj.node)
        if isinstance(value, (bool, int)) and self._from_sizes(obj.node):
            self.batch_branches += 1
            return bool(value)
        return super().to_bool(obj)

    def _from_sizes(self, node: fx.Node) -> bool:
        """Whether `node` is computed from tensor sizes only (never from a tensor's values)."""
        todo, seen = [node], set()
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.op == "call_method" and n.target == "size":
                continue  # a size read: its tensor's values do not matter
            if isinstance(self.values.get(n), torch.Tensor) or n.op in ("placeholder", "get_attr"):
                return False
            todo.extend(n.all_input_nodes)
        return True

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        if kind == "call_function" and mha.traced_through(target, args, kwargs):
            return self.through(target, args, kwargs)  # its ops are recorded (and run) one by one
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        real = lambda a: self.values[a.node] if isinstance(a, fx.Proxy) else a  # noqa: E731
        args_, kwargs_ = map_aggregate(args, real), map_aggregate(kwargs, real)
        with _unpatched():
            value = self._run(kind, target, args_, kwargs_)
        self.values[proxy.node] = value
        if kind == "placeholder" or any(n in self.batched for n in proxy.node.all_input_nodes):
            self.batched.add(proxy.node)
        return proxy

    def _run(self, kind: str, target, args_, kwargs_) -> object:
        if kind == "placeholder":
            value = next(self.placeholders, None)
        elif kind == "get_attr":
            value = self.root
            for part in str(target).split("."):
                value = getattr(value, part)
        elif kind == "call_function":
            value = target(*args_, **kwargs_)
        elif kind == "call_method":
            value = getattr(args_[0], target)(*args_[1:], **kwargs_)
        elif kind == "call_module":
            value = self.root.get_submodule(target)(*args_, **kwargs_)
        else:
            value = None
        return value


#: torch's factories that make a tensor of the sizes given (see `_recorded_factories`)
FACTORIES = ("arange", "zeros", "ones", "full", "empty")


@contextlib.contextmanager
def _recorded_factories(tracer: _ConcreteTracer):
    """`torch.arange(n)` and the like recorded as graph nodes (their values computed too) rather than made as
    constants. Only where the trace failed without it: a constant made in forward and then sized from the
    input (transformers' Swin: its shift mask, `mask.expand(batch_size, ...)` with the batch symbolic) cannot
    take a traced size as an argument."""
    originals = {name: getattr(torch, name) for name in FACTORIES}

    def recorded(original):
        return lambda *args, **kwargs: tracer.create_proxy("call_function", original, args, kwargs)
    for name, original in originals.items():
        setattr(torch, name, recorded(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch, name, original)


@contextlib.contextmanager
def _unpatched():
    """torch.nn.Module as torch defines it, while the tracer (which patches its call) computes a value."""
    call, get = nn.Module.__call__, nn.Module.__getattr__
    nn.Module.__call__, nn.Module.__getattr__ = _MODULE_CALL, _MODULE_GETATTR
    try:
        yield
    finally:
        nn.Module.__call__, nn.Module.__getattr__ = call, get
