"""Search traceable submodules inside a model that cannot be traced whole (a torchvision detector's backbone).

A torchvision detector takes a list of images, resizes each in its transform and decodes boxes with anchors
and NMS: Python that branches on values, which no trace follows. Its backbone + FPN is a plain graph (a batch
tensor in, an `OrderedDict` of feature maps out), and so are its heads. `derive(detector, [image, ...])`
therefore searches the submodules at some paths (`detector_parts`: `.backbone`, and `.head` of RetinaNet and
FCOS or `.rpn.head` of R-CNN, whose inner convolutions are searched; any modules for
`derive(model, example, submodule="path" or ["path", ...])`):

- each one's example input is what the whole model passes it: captured by a hook during one forward of the
  whole model on the user's example (in eval mode), so the model's own transform decides its size and batch;
- several submodules are traced side by side as one graph (`Parts`): their channel groups never meet (each
  one's inputs and outputs are the graph's, never cut), and one candidate prices and cuts them all; the
  elastic or materialized graph is split back into one module per path (`split`, `Part`);
- the elastic submodules replace them inside a shallow copy of the model (`swapped`), so a score sees the
  whole model; `materialize` returns a copy of the whole model holding the pruned submodules (`within`);
- costs: the submodules' FLOPs are priced per candidate; the rest of the model (`Outside`) costs what
  FlopCounterMode counts for the whole model minus what it counts inside them, measured once. That is exact
  when the rest's cost depends neither on the submodules' widths (their outputs are never cut) nor on values
  (dense heads: convolutions over every feature position; box decoding and NMS count no FLOPs).
  `check_outside` measures it again with other values out of the submodules (what pruned ones change) and
  refuses the model (`UnpricedModel`) where the two differ.
- two-stage R-CNN detectors run their RoI box head once per proposal, and how many proposals survive the
  RPN's NMS depends on values: that head is priced at the most proposals the RPN keeps in eval
  (`post_nms_top_n` per image), an upper bound that FlopCounterMode meets whenever the RPN keeps that many
  (at their own sizes it does: with random weights fasterrcnn_resnet50_fpn and _mobilenet_v3_large_fpn keep
  1000 of a 800 px image, _mobilenet_v3_large_320_fpn its 150). Mask and keypoint heads run on the
  detections that pass a score threshold, which no width decides: those models are refused (`UnpricedModel`).
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import FlopCounterMode

from .rewrite import graph_module
from .structure import Example, call


class UnpricedModel(ValueError):
    """The cost of what runs outside the searched submodules cannot be priced from widths: says why, in one line."""


@dataclass(frozen=True)
class Outside:
    """What a model computes outside its searched submodules, priced as constants added to every candidate.

    `flops` and `params` are per call on the example as given (FLOPs counted as FlopCounterMode counts
    them); `upper_bound` says why `flops` is a bound rather than exact (empty when it is exact).
    """

    paths: tuple[str, ...]  # the searched submodules, dotted paths inside the model (traced together if several)
    flops: int
    params: int
    upper_bound: str = ""
    per_proposal: int = 0  # R-CNN: the RoI box head's FLOPs per proposal (its cost at the most proposals)
    inputs: tuple[int, ...] = ()  # several submodules: the tensors each is called with, in the joint graph's order

    def describe(self) -> str:
        how = f"an upper bound: {self.upper_bound}" if self.upper_bound else "exact, measured once"
        where = ", ".join(f".{p}" for p in self.paths)
        return (f"searched: {where} inside the whole model; the rest costs {self.flops} FLOPs and "
                f"{self.params} params per call on the example ({how})")


def detector_parts(model: nn.Module, example: Example) -> tuple[str, ...]:
    """A torchvision detector called on a list of images: its backbone and the heads whose inner convolutions
    can be searched (RetinaNet's and FCOS's towers, the RPN's conv); otherwise nothing."""
    if not (isinstance(getattr(model, "backbone", None), nn.Module) and hasattr(model, "transform")
            and isinstance(example, list)):
        return ()
    head = getattr(model, "head", None)
    # RetinaNet's and FCOS's heads hold conv towers (`conv`); SSD's heads map each feature map to its outputs at once
    towers = ("head",) if hasattr(getattr(head, "classification_head", None), "conv") else ()
    rpn = ("rpn.head",) if isinstance(getattr(getattr(model, "rpn", None), "head", None), nn.Module) else ()
    return ("backbone", *towers, *rpn)


def _key(model: nn.Module, path: str) -> str:
    """How FlopCounterMode's module tracker names the submodule at `path`."""
    return f"{type(model).__name__}.{path}"


@dataclass
class _Run:
    """One forward of the whole model: total FLOPs, the submodules', and what each was called with."""

    total: int
    inside: int
    calls: dict[str, list[tuple[tuple, dict]]]
    proposals: int | None  # R-CNN: the proposals the RoI heads got (all images)
    per_proposal: int      # R-CNN: the FLOPs of the RoI box head per proposal
    most: int = 0          # R-CNN: the most proposals its RPN keeps in eval (post_nms_top_n per image)


def _forward(model: nn.Module, example: Example, paths: Sequence[str]) -> _Run:
    calls: dict[str, list[tuple[tuple, dict]]] = {path: [] for path in paths}
    proposals: list[int] = []
    hooks = [model.get_submodule(path).register_forward_pre_hook(
        lambda m, args, kwargs, seen=calls[path]: seen.append((args, kwargs)), with_kwargs=True) for path in paths]
    roi = getattr(model, "roi_heads", None) if hasattr(model, "rpn") else None
    if roi is not None:
        hooks.append(roi.register_forward_pre_hook(lambda m, args: proposals.append(sum(len(p) for p in args[1]))))
    was_training = model.training
    model.eval()
    images = len(example) if isinstance(example, list) else 1
    most = model.rpn.post_nms_top_n() * images if roi is not None else 0
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            call(model, example)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    per_proposal = 0
    if proposals and proposals[0]:
        box = sum(counts.get(_key(model, f"roi_heads.{part}"), 0) for part in ("box_head", "box_predictor"))
        per_proposal = box // proposals[0]
    inside = sum(counts.get(_key(model, path), 0) for path in paths)
    return _Run(counter.get_total_flops(), inside, calls, proposals[0] if proposals else None, per_proposal, most)


def _rest(run: _Run, per_proposal: int) -> tuple[int, str]:
    """The rest's FLOPs as priced (R-CNN: the box head at the RPN's most proposals) and why it is a bound."""
    rest = run.total - run.inside
    if run.proposals is None:
        return rest, ""
    bound = (f"the RoI box head is priced at the {run.most} proposals the RPN keeps at most in eval "
             f"(post_nms_top_n per image; it kept {run.proposals} on the example)")
    return rest + (run.most - run.proposals) * per_proposal, bound


class Parts(nn.Module):
    """Several submodules side by side, to be traced as one graph: each runs on its own inputs.

    Children are named by their paths with dots as underscores (`rpn.head` -> `rpn_head`)."""

    def __init__(self, modules: dict[str, nn.Module]):
        super().__init__()
        for path, module in modules.items():
            self.add_module(path.replace(".", "_"), module)

    def forward(self, inputs: tuple) -> tuple:
        return tuple(module(*args) for module, args in zip(self.children(), inputs))


def _positional(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """A call's arguments as positional ones (keyword-only ones refused)."""
    if not kwargs:
        return args
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    if bound.kwargs:
        raise UnpricedModel(f"{type(module).__name__} is called with keyword-only arguments: search it alone")
    return bound.args


def capture(model: nn.Module, example: Example, paths: Sequence[str]) -> tuple[nn.Module, Example, Outside]:
    """What to trace (the submodule at `paths[0]`, or several side by side as `Parts`), the example it is
    called with inside `model(example)`, and the rest's costs.

    Raises `UnpricedModel` where the rest's cost cannot be priced (see the module docstring)."""
    modules: dict[str, nn.Module] = {}
    for path in paths:
        try:
            modules[path] = model.get_submodule(path)
        except AttributeError:
            raise UnpricedModel(f"{type(model).__name__} has no submodule {path!r}") from None
    nested = [(a, b) for a in paths for b in paths if a != b and b.startswith(f"{a}.")]
    if nested:
        raise UnpricedModel(f"searched submodules may not hold each other: .{nested[0][0]} holds .{nested[0][1]}")
    roi = getattr(model, "roi_heads", None)
    if roi is not None and (getattr(roi, "mask_roi_pool", None) is not None
                            or getattr(roi, "keypoint_roi_pool", None) is not None):
        raise UnpricedModel(f"{type(model).__name__}'s mask/keypoint head runs on the detections that pass its "
                            f"score threshold (values, not widths): its FLOPs cannot be priced; search .backbone alone")
    run = _forward(model, example, paths)
    for path, seen in run.calls.items():
        if len(seen) != 1:
            raise UnpricedModel(f"{type(model).__name__}.{path} runs {len(seen)} times in one forward of the model "
                                f"(searched submodules must run exactly once)")
    if run.proposals is not None and not run.per_proposal:
        raise UnpricedModel(f"{type(model).__name__}'s RPN kept no proposals on the example: its RoI head's cost "
                            f"per proposal cannot be measured (give a larger image)")
    flops, upper = _rest(run, run.per_proposal)
    inside = {id(p) for module in modules.values() for p in module.parameters()}
    params = sum(p.numel() for p in model.parameters() if id(p) not in inside)
    calls = {path: _positional(modules[path], *run.calls[path][0]) for path in paths}
    if len(paths) == 1:
        args = calls[paths[0]]
        # one tensor is taken as a tuple: the batch the model made is priced as it is, per call
        return modules[paths[0]], tuple(args), Outside(tuple(paths), flops, params, upper, run.per_proposal)
    for path, args in calls.items():
        if not all(isinstance(leaf, torch.Tensor) for leaf in pytree.tree_leaves(args)):
            raise UnpricedModel(f"{type(model).__name__}.{path} is called with values other than tensors: "
                                f"search it alone")
    inputs = tuple(len(pytree.tree_leaves(args)) for args in calls.values())
    parts = Parts(modules)
    parts.training = model.training  # in the model's mode (tracing restores it on the parts)
    return (parts, (tuple(calls.values()),),
            Outside(tuple(paths), flops, params, upper, run.per_proposal, inputs))


def check_outside(model: nn.Module, example: Example, outside: Outside) -> None:
    """Refuse (`UnpricedModel`) where the rest of `model` costs other FLOPs once its submodules' outputs change.

    A candidate never changes the shapes of those outputs (they are never cut), only their values: the model
    runs again with other values there (seeded noise of the same shapes and scale), as pruned submodules
    would give it. Where the rest then counts other FLOPs, its cost depends on values."""
    generator = torch.Generator().manual_seed(0)

    def other(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return t
        noise = torch.randn(t.shape, generator=generator).to(t)
        return noise * t.float().std().nan_to_num(1.0) + t.float().mean()

    hooks = [model.get_submodule(path).register_forward_hook(lambda m, args, out: pytree.tree_map(other, out))
             for path in outside.paths]
    try:
        run = _forward(model, example, outside.paths)
    finally:
        for hook in hooks:
            hook.remove()
    flops, _ = _rest(run, outside.per_proposal)
    if flops != outside.flops:
        where = ", ".join(f".{p}" for p in outside.paths)
        raise UnpricedModel(f"the rest of {type(model).__name__} (outside {where}) costs {outside.flops} FLOPs on "
                            f"the example and {flops} once {where} give other values: its cost depends on values, "
                            f"so no budget can be priced")


class Part(nn.Module):
    """One submodule's share of a joint graph (`Parts` traced), as a module: its call in, its output out.

    Any other attribute is the original submodule's (a detector's head computes its loss with its own
    `compute_loss`, from the outputs and settings, not from weights), read from a copy without its tensors."""

    def __init__(self, gm: fx.GraphModule, out_spec: pytree.TreeSpec, original: nn.Module):
        super().__init__()
        self.gm, self.out_spec = gm, out_spec
        self.__dict__["_original"] = _skeleton(original)  # not a child, and holding no weights

    def forward(self, *args):
        return pytree.tree_unflatten(list(self.gm(*pytree.tree_leaves(args))), self.out_spec)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("_original")
            if original is None:  # while being copied or unpickled
                raise
            return getattr(original, name)


def _skeleton(module: nn.Module) -> nn.Module:
    """A shallow copy of `module` and its children, its parameters and buffers None: its settings and methods."""
    out = copy.copy(module)
    out._parameters, out._buffers = dict.fromkeys(module._parameters), dict.fromkeys(module._buffers)
    out._modules = {name: _skeleton(child) for name, child in module._modules.items() if child is not None}
    return out


def split(gm: fx.GraphModule, outside: Outside, model: nn.Module) -> dict[str, nn.Module]:
    """Each searched path -> its share of the joint graph `gm` (an elastic or materialized `Parts` of `model`)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    output = next(n for n in gm.graph.nodes if n.op == "output")
    spec = gm.graph._codegen.pytree_info.out_spec
    flat, specs = list(output.args[0]), spec.children() if hasattr(spec, "children") else spec.children_specs
    parts: dict[str, nn.Module] = {}
    first_in = first_out = 0
    for path, count, spec in zip(outside.paths, outside.inputs, specs):
        inputs = placeholders[first_in:first_in + count]
        outputs = flat[first_out:first_out + spec.num_leaves]
        first_in, first_out = first_in + count, first_out + spec.num_leaves
        needed: set[fx.Node] = set()
        todo = [o for o in outputs if isinstance(o, fx.Node)]
        while todo:
            node = todo.pop()
            if node not in needed:
                needed.add(node)
                todo.extend(node.all_input_nodes)
        if any(n.op == "placeholder" and n not in inputs for n in needed):
            raise UnpricedModel(f".{path} reads another searched submodule's inputs: they cannot be split")
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        root: dict[str, object] = {}
        prefix = f"{path.replace('.', '_')}."  # the part's own modules lose the `Parts` child name they had
        for node in gm.graph.nodes:
            if node in inputs:
                env[node] = graph.placeholder(node.name)
            elif node in needed:
                env[node] = new = graph.node_copy(node, env.__getitem__)
                if node.op in ("call_module", "get_attr"):
                    new.target = node.target.removeprefix(prefix)
                    root[new.target] = _attr(gm, node.target)
        graph.output([env[o] if isinstance(o, fx.Node) else o for o in outputs])
        parts[path] = Part(graph_module(root, graph, type(gm).__name__), spec, model.get_submodule(path))
    return parts


def _attr(module: nn.Module, target: str) -> object:
    """The module, parameter or tensor at dotted path `target`."""
    for name in target.split("."):
        module = getattr(module, name)
    return module



def placed(model: nn.Module, outside: Outside, net: nn.Module, *, copied: bool) -> nn.Module:
    """`model` running `net` (the traced submodule, or `Parts`, elastic or materialized) at its paths: a shallow
    copy sharing all else (the elastic model), or a deep copy (`copied`: a materialized subnet)."""
    parts = split(net, outside, model) if len(outside.paths) > 1 else {outside.paths[0]: net}
    return within(model, parts) if copied else swapped(model, parts)


def _shallow(module: nn.Module) -> nn.Module:
    out = copy.copy(module)
    out._modules = dict(module._modules)
    return out


def swapped(model: nn.Module, parts: dict[str, nn.Module]) -> nn.Module:
    """A shallow copy of `model` running `parts[path]` at each path; every other module is `model`'s own."""
    top = _shallow(model)
    copies = {"": top}
    for path, module in parts.items():
        *parents, leaf = path.split(".")
        node, prefix = top, ""
        for name in parents:
            prefix = f"{prefix}.{name}" if prefix else name
            if prefix not in copies:
                node._modules[name] = copies[prefix] = _shallow(node._modules[name])
            node = copies[prefix]
        node._modules[leaf] = module
    return top


def within(model: nn.Module, parts: dict[str, nn.Module]) -> nn.Module:
    """A deep copy of `model` holding `parts[path]` (not copied) at each path: the whole model, pruned."""
    out = copy.deepcopy(model, {id(model.get_submodule(path)): module for path, module in parts.items()})
    out.train(model.training)
    return out


__all__ = ["Outside", "Part", "Parts", "UnpricedModel", "capture", "check_outside", "detector_parts", "placed",
           "split", "swapped", "within"]
