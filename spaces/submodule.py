"""Search a traceable submodule inside a model that cannot be traced whole (a torchvision detector's backbone).

A torchvision detector takes a list of images, resizes each in its transform and decodes boxes with anchors
and NMS: Python that branches on values, which no trace follows. Its backbone + FPN is a plain graph (a batch
tensor in, an `OrderedDict` of feature maps out). `derive(detector, [image, ...])` therefore searches the
submodule at `path` (`.backbone` for torchvision detectors, found by `detector_submodule`; any module for
`derive(model, example, submodule="path")`):

- its example input is what the whole model passes it: captured by a hook during one forward of the whole
  model on the user's example (in eval mode), so the model's own transform decides its size and batch;
- the elastic submodule replaces it inside a shallow copy of the model (`swapped`), so a score sees the
  whole model; `materialize` returns a copy of the whole model holding the pruned submodule (`within`);
- costs: the submodule's FLOPs are priced per candidate; the rest of the model (`Outside`) costs what
  FlopCounterMode counts for the whole model minus what it counts inside the submodule, measured once. That
  is exact when the rest's cost depends neither on the submodule's widths (its outputs are never cut) nor on
  values (dense heads: convolutions over every feature position; box decoding and NMS count no FLOPs).
  `check_outside` measures it again with other values out of the submodule (what a pruned one changes)
  and refuses the model (`UnpricedModel`) where the two differ.
- two-stage R-CNN detectors run their RoI box head once per proposal, and how many proposals survive the
  RPN's NMS depends on values: that head is priced at the most proposals the RPN keeps in eval
  (`post_nms_top_n` per image), an upper bound that FlopCounterMode meets whenever the RPN keeps that many
  (at common image sizes it does). Mask and keypoint heads run on the detections that pass a score
  threshold, which no width decides: those models are refused (`UnpricedModel`).
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import FlopCounterMode

from .structure import Example, call


class UnpricedModel(ValueError):
    """The cost of what runs outside the searched submodule cannot be priced from widths: says why, in one line."""


@dataclass(frozen=True)
class Outside:
    """What a model computes outside its searched submodule, priced as constants added to every candidate.

    `flops` and `params` are per call on the example as given (FLOPs counted as FlopCounterMode counts
    them); `upper_bound` says why `flops` is a bound rather than exact (empty when it is exact).
    """

    path: str          # the searched submodule, a dotted path inside the model
    flops: int
    params: int
    upper_bound: str = ""
    per_proposal: int = 0  # R-CNN: the RoI box head's FLOPs per proposal (its cost at the most proposals)

    def describe(self) -> str:
        how = f"an upper bound: {self.upper_bound}" if self.upper_bound else "exact, measured once"
        return (f"searched: .{self.path} inside the whole model; the rest costs {self.flops} FLOPs and "
                f"{self.params} params per call on the example ({how})")


def detector_submodule(model: nn.Module, example: Example) -> str | None:
    """`"backbone"` for a torchvision detector called on a list of images, else None."""
    detector = isinstance(getattr(model, "backbone", None), nn.Module) and hasattr(model, "transform")
    return "backbone" if detector and isinstance(example, list) else None


def _key(model: nn.Module, path: str) -> str:
    """How FlopCounterMode's module tracker names the submodule at `path`."""
    return f"{type(model).__name__}.{path}"


@dataclass
class _Run:
    """One forward of the whole model: total FLOPs, the submodule's, and what the submodule was called with."""

    total: int
    inside: int
    args: tuple
    kwargs: dict[str, Any]
    calls: int
    proposals: int | None  # R-CNN: the proposals the RoI heads got (all images)
    per_proposal: int      # R-CNN: the FLOPs of the RoI box head per proposal
    most: int = 0          # R-CNN: the most proposals its RPN keeps in eval (post_nms_top_n per image)


def _forward(model: nn.Module, example: Example, path: str) -> _Run:
    inner = model.get_submodule(path)
    seen: list[tuple[tuple, dict]] = []
    proposals: list[int] = []

    def grab(module, args, kwargs):
        seen.append((args, kwargs))

    hooks = [inner.register_forward_pre_hook(grab, with_kwargs=True)]
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
    args, kwargs = seen[0] if seen else ((), {})
    return _Run(counter.get_total_flops(), counts.get(_key(model, path), 0), args, kwargs, len(seen),
                proposals[0] if proposals else None, per_proposal, most)


def _rest(run: _Run, per_proposal: int) -> tuple[int, str]:
    """The rest's FLOPs as priced (R-CNN: the box head at the RPN's most proposals) and why it is a bound."""
    rest = run.total - run.inside
    if run.proposals is None:
        return rest, ""
    bound = (f"the RoI box head is priced at the {run.most} proposals the RPN keeps at most in eval "
             f"(post_nms_top_n per image; it kept {run.proposals} on the example)")
    return rest + (run.most - run.proposals) * per_proposal, bound


def capture(model: nn.Module, example: Example, path: str) -> tuple[nn.Module, Example, Outside]:
    """The submodule at `path`, the example it is called with inside `model(example)`, and the rest's costs.

    Raises `UnpricedModel` where the rest's cost cannot be priced (see the module docstring)."""
    try:
        inner = model.get_submodule(path)
    except AttributeError:
        raise UnpricedModel(f"{type(model).__name__} has no submodule {path!r}") from None
    roi = getattr(model, "roi_heads", None)
    if roi is not None and (getattr(roi, "mask_roi_pool", None) is not None
                            or getattr(roi, "keypoint_roi_pool", None) is not None):
        raise UnpricedModel(f"{type(model).__name__}'s mask/keypoint head runs on the detections that pass its "
                            f"score threshold (values, not widths): its FLOPs cannot be priced; search .{path} alone")
    run = _forward(model, example, path)
    if run.calls != 1:
        raise UnpricedModel(f"{type(model).__name__}.{path} runs {run.calls} times in one forward of the model "
                            f"(searched submodules must run exactly once)")
    if run.proposals is not None and not run.per_proposal:
        raise UnpricedModel(f"{type(model).__name__}'s RPN kept no proposals on the example: its RoI head's cost "
                            f"per proposal cannot be measured (give a larger image)")
    if run.kwargs:
        bound = inspect.signature(inner.forward).bind(*run.args, **run.kwargs)
        inner_example: Example = dict(bound.arguments)
    elif len(run.args) == 1 and isinstance(run.args[0], torch.Tensor):
        inner_example = (run.args[0],)  # a tuple: the batch the model made is priced as it is, per call
    else:
        inner_example = tuple(run.args)
    flops, upper = _rest(run, run.per_proposal)
    inside = {id(p) for p in inner.parameters()}
    params = sum(p.numel() for p in model.parameters() if id(p) not in inside)
    return inner, inner_example, Outside(path, flops, params, upper, run.per_proposal)


def check_outside(model: nn.Module, example: Example, outside: Outside) -> None:
    """Refuse (`UnpricedModel`) where the rest of `model` costs other FLOPs once its submodule's outputs change.

    A candidate never changes the shapes of those outputs (they are never cut), only their values: the model
    runs again with other values there (seeded noise of the same shapes and scale), as a pruned submodule
    would give it. Where the rest then counts other FLOPs, its cost depends on values."""
    generator = torch.Generator().manual_seed(0)

    def other(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return t
        noise = torch.randn(t.shape, generator=generator).to(t)
        return noise * t.float().std().nan_to_num(1.0) + t.float().mean()

    hook = model.get_submodule(outside.path).register_forward_hook(lambda m, args, out: pytree.tree_map(other, out))
    try:
        run = _forward(model, example, outside.path)
    finally:
        hook.remove()
    flops, _ = _rest(run, outside.per_proposal)
    if flops != outside.flops:
        raise UnpricedModel(f"the rest of {type(model).__name__} (outside .{outside.path}) costs {outside.flops} "
                            f"FLOPs on the example and {flops} once .{outside.path} gives other values: its cost "
                            f"depends on values, so no budget can be priced")


def _shallow(module: nn.Module) -> nn.Module:
    out = copy.copy(module)
    out._modules = dict(module._modules)
    return out


def swapped(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """A shallow copy of `model` running `module` at `path`; every other module is `model`'s own (shared)."""
    *parents, leaf = path.split(".")
    top = node = _shallow(model)
    for name in parents:
        node._modules[name] = _shallow(node._modules[name])
        node = node._modules[name]
    node._modules[leaf] = module
    return top


def within(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """A deep copy of `model` holding `module` (not copied) at `path`: the whole model with a pruned submodule."""
    out = copy.deepcopy(model, {id(model.get_submodule(path)): module})
    out.train(model.training)
    return out


__all__ = ["Outside", "UnpricedModel", "capture", "check_outside", "detector_submodule", "swapped", "within"]
