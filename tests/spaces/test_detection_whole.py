"""Whole torchvision detectors (a list of images in, a list of dicts out): their backbone + FPN and their heads'
inner convolutions searched inside the whole model, the rest priced as a constant (R-CNN's RoI head at its most proposals), exact FLOPs of the whole
detector, the pruned detector detecting and training, a budget respected by a search; models whose rest costs
depend on values refused in one line."""
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
from spaces.submodule import UnpricedModel

detection = pytest.importorskip("torchvision.models.detection")
IMAGES = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1)),
          torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(2))]
TARGETS = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([1])},
           {"boxes": torch.tensor([[10.0, 8.0, 30.0, 40.0]]), "labels": torch.tensor([2])}]


def _detector(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(detection, name)(weights=None, weights_backbone=None, num_classes=3, **kwargs).eval()
    if not name.startswith("ssd"):
        model.transform.min_size, model.transform.max_size = (64,), 64  # small images stay small
    return model


def _counted(model: nn.Module, images: list[torch.Tensor] = IMAGES) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops()


def _check(prunable, candidates, reference, *, bound: bool = False) -> nn.Module:
    """Each candidate: priced FLOPs and params equal the whole pruned detector's (at most, for a `bound`), the
    output has the detector's structure, and the elastic detector computes what the pruned one does."""
    cost, elastic = CostModel(prunable), ElasticModel(prunable).eval()
    for candidate in candidates:
        pruned = materialize(prunable, candidate).eval()
        assert type(pruned) is type(prunable.model)
        price, counted = cost.price(candidate), _counted(pruned)
        assert price.flops >= counted if bound else price.flops == counted
        assert price.params == sum(p.numel() for p in pruned.parameters())
        elastic.apply(candidate)
        with torch.no_grad():
            out, live = pruned(IMAGES), elastic(IMAGES)
        assert pytree.tree_structure(out) == pytree.tree_structure(reference)
        assert all(set(d) == {"boxes", "labels", "scores"} for d in out)
        for a, b in zip(pytree.tree_leaves(out), pytree.tree_leaves(live)):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    return pruned


@pytest.mark.parametrize("name", ["retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large"])
def test_a_whole_dense_detector_is_searched_with_exact_costs(name):
    model = _detector(name)
    with torch.no_grad():
        reference = model(IMAGES)
    prunable = derive(model, IMAGES)  # found on its own: the backbone, fed by the detector's transform, and towers
    assert prunable.model is model and not prunable.outside.upper_bound
    assert not any(m.training for m in model.modules())  # still in eval mode, all of it
    assert len(prunable.space.widths) >= 25
    if name.startswith("ssd"):  # its head's convolutions read the backbone's outputs and emit its own
        assert prunable.outside.paths == ("backbone",)
    else:  # RetinaNet's and FCOS's 4-conv towers are searched; their class and box outputs are not, with reasons
        assert prunable.outside.paths == ("backbone", "head")
        assert sum(d.name.startswith("head.classification_head.conv") for d in prunable.space.widths) == 4
        assert "class scores" in prunable.frozen_groups["head.classification_head.cls_logits"]
        assert "box regression" in prunable.frozen_groups["head.regression_head.bbox_reg"]
    assert "inside the whole model" in prunable.explain()
    assert CostModel(prunable).base.flops == _counted(model)
    rng = np.random.default_rng(0)
    pruned = _check(prunable, [prunable.space.smallest(), prunable.space.sample(rng)], reference)
    losses = pruned.train()(IMAGES, TARGETS)  # trains: its head's own loss reads the pruned head's outputs
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in pruned.parameters() if p.requires_grad)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_faster_rcnn_prices_its_roi_head_at_the_most_proposals_and_the_pruned_detector_trains():
    model = _detector("fasterrcnn_mobilenet_v3_large_fpn", rpn_post_nms_top_n_test=10)
    with torch.no_grad():
        reference = model(IMAGES)
    prunable = derive(model, IMAGES)
    assert "upper bound" in prunable.explain() and "20 proposals" in prunable.outside.upper_bound
    assert prunable.outside.paths == ("backbone", "rpn.head") and "rpn_head.conv.0.0" in prunable.dimension_groups
    assert "objectness" in prunable.frozen_groups["rpn_head.cls_logits"]
    rng = np.random.default_rng(0)
    candidates = [prunable.space.smallest(), prunable.space.sample(rng)]
    pruned = _check(prunable, candidates, reference)  # the RPN keeps its 10 per image: the price is exact
    losses = pruned.train()(IMAGES, TARGETS)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in pruned.backbone.parameters() if p.requires_grad)
    # where the RPN keeps fewer than its most (1000 per image, on 64 px images), the price is a bound
    _check(derive(_detector("fasterrcnn_mobilenet_v3_large_fpn"), IMAGES), candidates, reference, bound=True)


class Picky(nn.Module):
    """Its head reads only the positions whose first feature passes a threshold: its FLOPs depend on values."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        features = self.backbone(x).flatten(2).transpose(1, 2)
        return self.head(features[features[..., 0] > -0.15])  # about half of them, with seed 0


def test_a_model_whose_rest_costs_depend_on_values_is_refused_in_one_line():
    torch.manual_seed(0)
    with pytest.raises(UnpricedModel) as info:
        derive(Picky().eval(), torch.rand(1, 3, 16, 16), submodule="backbone")
    assert "\n" not in str(info.value) and "depends on values" in str(info.value)
    with pytest.raises(UnpricedModel, match="mask/keypoint head .* cannot be priced"):
        derive(_detector("maskrcnn_resnet50_fpn"), IMAGES)


def test_a_library_search_of_a_whole_detector_respects_its_budget():
    from agents import make_agent
    from search.engine.loop import Engine
    from spaces.budget import Budget, Limit
    from spaces.records import TrialState

    model = _detector("ssdlite320_mobilenet_v3_large")
    prunable = derive(model, IMAGES[:1])
    cost, elastic = CostModel(prunable), ElasticModel(prunable).eval()
    budget = Budget([Limit("flops", 0.5, relative=True)]).resolve(cost.base.as_dict())

    class DetectorScore:  # the user's score sees the whole detector: here, its detections' mean confidence
        def score(self, candidate):
            elastic.apply(candidate)
            with torch.no_grad():
                return float(torch.cat([d["scores"] for d in elastic(IMAGES[:1])]).mean())

    agent = make_agent("random", prunable.space, budget, price=cost.costs, seed=0, trials=4)
    outcome = Engine(agent, cost.costs, budget, DetectorScore(), trials=4, progress=False).run()
    complete = [t for t in outcome.trials if t.result.state is TrialState.COMPLETE]
    assert complete and all(t.result.costs["flops"] <= 0.5 * cost.base.flops for t in complete)
    best = materialize(prunable, outcome.best.candidate).eval()
    assert _counted(best, IMAGES[:1]) == outcome.best.result.costs["flops"] <= 0.5 * _counted(model, IMAGES[:1])
