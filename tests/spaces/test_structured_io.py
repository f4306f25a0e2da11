"""Inputs and outputs of any structure (tuple, list, dict; lists of dicts out) through trace, price, elastic,
materialize and export; what cannot be traced is refused in one line naming the source line."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import FlopCounterMode

from evaluators.cost import CostModel
from spaces.derive import derive
from spaces.elastic import ElasticModel
from spaces.materialize import materialize
from spaces.structure import call
from spaces.tracing import UntraceableModel


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class TwoInputs(nn.Module):
    """forward(x, y, scale=2.0): a tuple of positional tensors; returns a tuple (logits, features)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = block(3, 16), block(1, 16), block(16, 24)
        self.head = nn.Linear(24, 5)

    def forward(self, x, y, scale=2.0):
        f = self.c(self.a(x) + self.b(y) * scale)
        return self.head(f.mean((2, 3))), f.mean(1)


class Detector(nn.Module):
    """forward(images: list of (3, H, W) tensors) -> one {"boxes", "scores", "labels"} dict per image."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(block(3, 16), block(16, 32))
        self.boxes, self.scores = nn.Conv2d(32, 4, 1), nn.Conv2d(32, 3, 1)

    def forward(self, images):
        out = []
        for image in images:
            f = self.body(image.unsqueeze(0))
            scores = self.scores(f).flatten(2)[0].t()
            out.append({"boxes": self.boxes(f).flatten(2)[0].t(), "scores": scores.amax(1),
                        "labels": scores.argmax(1)})
        return out


class Keywords(nn.Module):
    """forward(pixel_values, mask=None, *args, **kwargs), called with a dict of keywords; returns a dict."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(block(3, 16), block(16, 16))
        self.head = nn.Linear(16, 4)

    def forward(self, pixel_values, mask=None, *args, **kwargs):
        f = self.body(pixel_values)
        if mask is not None:
            f = f * mask
        return {"logits": self.head(f.mean((2, 3))), "hidden": [f.mean(1)]}


class ValueBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = block(3, 8)

    def forward(self, images):
        f = self.body(images[0].unsqueeze(0))
        if f.sum() > 0:  # a branch on tensor values: cannot be traced
            f = f * 2
        return [f]


def _leaves(out):
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _check(model: nn.Module, example, *, samples: int = 3) -> None:
    """Every candidate: exact FLOPs and params, elastic equal to materialized, the output's structure kept."""
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():
        before = call(model, example)
    prunable = derive(model, example)
    with torch.no_grad():
        after = call(model, example)
    assert pytree.tree_structure(after) == pytree.tree_structure(before)
    for a, b in zip(_leaves(after), _leaves(before)):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)  # reordering keeps the function
    assert prunable.space.widths
    cost, elastic = CostModel(prunable), ElasticModel(prunable).eval()
    rng = np.random.default_rng(0)
    space = prunable.space
    for candidate in [space.full(), space.smallest(), *(space.sample(rng) for _ in range(samples))]:
        subnet = materialize(prunable, candidate).eval()
        elastic.apply(candidate)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = call(subnet, example)
        with torch.no_grad():
            live = call(elastic, example)
        price = cost.price(candidate)
        assert price.flops == counter.get_total_flops()
        assert price.params == sum(p.numel() for p in subnet.parameters())
        assert pytree.tree_structure(out) == pytree.tree_structure(before)
        assert pytree.tree_structure(live) == pytree.tree_structure(before)
        for a, b in zip(_leaves(live), _leaves(out)):
            assert torch.allclose(a.float(), b.float(), atol=1e-5)


def test_a_tuple_is_positional_arguments_and_a_tuple_comes_back():
    _check(TwoInputs(), (torch.randn(1, 3, 8, 8), torch.randn(1, 1, 8, 8)))


def test_a_list_of_images_in_and_a_list_of_dicts_out():
    _check(Detector(), [torch.randn(3, 8, 8), torch.randn(3, 6, 10)])


def test_a_dict_is_keyword_arguments_and_fixed_star_args_leave_the_signature():
    model = Keywords()
    _check(model, {"pixel_values": torch.randn(1, 3, 8, 8)})
    prunable = derive(model, {"pixel_values": torch.randn(1, 3, 8, 8)})
    subnet = materialize(prunable, prunable.space.smallest())
    assert list(subnet(torch.randn(2, 3, 8, 8))) == ["logits", "hidden"]  # positionally too; the batch is free


def test_the_materialized_subnet_exports_with_its_structures():
    model = TwoInputs()
    example = (torch.randn(1, 3, 8, 8), torch.randn(1, 1, 8, 8))
    prunable = derive(model, example)
    subnet = materialize(prunable, prunable.space.smallest()).eval()
    program = torch.export.export(subnet, example)
    for a, b in zip(program.module()(*example), subnet(*example)):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_branch_on_tensor_values_is_refused_in_one_line_naming_it():
    with pytest.raises(UntraceableModel) as info:
        derive(ValueBranch(), [torch.randn(3, 8, 8)])
    message = str(info.value)
    assert "\n" not in message and "test_structured_io.py" in message and "if f.sum() > 0" in message


def test_an_example_that_does_not_fit_the_signature_is_refused_in_one_line():
    with pytest.raises(UntraceableModel, match=r"^cannot trace TwoInputs: example_input does not fit"):
        derive(TwoInputs(), {"nope": torch.randn(1, 3, 8, 8)})


def test_prune_refuses_a_structured_example_in_one_user_error():
    from search import prune
    from search.errors import UserError

    with pytest.raises(UserError, match=r"^prune\(\) takes a tensor example_input .* got list; .*spaces\.derive"):
        prune(Detector(), calibration=[torch.randn(2, 3, 8, 8)], score=lambda m: 0.0, trials=1,
              example_input=[torch.randn(3, 8, 8)], progress=False)


class BatchBranch(nn.Module):
    """Branches on the batch size the way a cached-shape check does (`if self.shape != x.shape`), or not."""

    def __init__(self, differs: bool):
        super().__init__()
        self.body, self.differs, self.shape = nn.Sequential(block(3, 8), block(8, 8)), differs, (2, 3, 8, 8)

    def forward(self, x, *args):
        f = self.body(x)
        if self.differs and x.shape[0] == 1:  # batch 1 computes something else: no single graph
            return f * 2
        if self.shape != tuple(x.shape):  # a cache refreshed when the shape changes: the same result
            f = f + 0
        return f.mean((2, 3))


class ItemBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = block(3, 8)

    def forward(self, x, *args):
        f = self.body(x)
        return f * 2 if f.sum().item() > 0 else f


def test_a_branch_on_the_batch_size_is_traced_when_the_graph_agrees_with_the_model_at_batch_one():
    _check(BatchBranch(differs=False), torch.randn(1, 3, 8, 8))
    with pytest.raises(UntraceableModel, match="branches on the batch size"):
        derive(BatchBranch(differs=True), torch.randn(1, 3, 8, 8))


def test_a_branch_on_an_item_is_refused_naming_its_line():
    with pytest.raises(UntraceableModel, match=r"test_structured_io.py:\d+ `return f \* 2 if f.sum\(\).item\(\) > 0"):
        derive(ItemBranch(), torch.randn(1, 3, 8, 8))


class Caching(nn.Module):
    """Caches a value computed from its input's shape on itself, as YOLO's Detect caches its anchors."""

    def __init__(self):
        super().__init__()
        self.body, self.shape, self.grid = nn.Sequential(block(3, 8), block(8, 8)), None, None

    def forward(self, x):
        if self.shape != x.shape:
            self.shape, self.grid = x.shape, torch.arange(x.shape[-1], dtype=x.dtype)
        return (self.body(x) * self.grid).mean((2, 3))


def test_tracing_leaves_no_proxy_cached_on_the_model():
    model = Caching()
    _check(model, torch.randn(1, 3, 8, 8))
    assert all(not isinstance(v, torch.fx.Proxy) for m in model.modules() for v in vars(m).values())
    model.to(torch.float64)  # moving it touches what it cached
