"""Detectors: Ultralytics YOLOv8 searched through its layer routing with exact costs and its head's outputs
kept; torchvision detectors' backbones + FPNs searched (dict outputs), the whole detector traced whole refused
in one line (searched around its backbone: test_detection_whole.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import FlopCounterMode

from evaluators.cost import CostModel
from spaces.derive import derive
from spaces.elastic import ElasticModel
from spaces.materialize import materialize
from spaces.tracing import UntraceableModel


def _shapes(out):
    return pytree.tree_map(lambda t: tuple(t.shape), out)


def _same_structure_and_exact(prunable, x, reference, candidates):
    cost, elastic = CostModel(prunable), ElasticModel(prunable).eval()
    for candidate in candidates:
        subnet = materialize(prunable, candidate).eval()
        elastic.apply(candidate)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            subnet(x[:1])
        with torch.no_grad():
            out, live = subnet(x), elastic(x)
        price = cost.price(candidate)
        assert price.flops == counter.get_total_flops()
        assert price.params == sum(p.numel() for p in subnet.parameters())
        assert _shapes(out) == _shapes(reference)  # an OrderedDict comes back as a dict with the same keys
        for a, b in zip(pytree.tree_leaves(live), pytree.tree_leaves(out)):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    return out


@pytest.fixture(scope="module")
def yolo():
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    torch.manual_seed(0)
    model = tasks.DetectionModel("yolov8n.yaml", nc=3, verbose=False).eval()  # from its config: no download
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
    return model, x, reference, derive(model, x[:1])


def test_yolov8_is_searched_through_its_layer_routing_with_exact_costs(yolo):
    model, x, reference, prunable = yolo
    space = prunable.space
    assert len(space.widths) >= 40 and len(space.keeps) == 6  # the backbone C2f bottlenecks are keep flags
    assert all(name.startswith("keep:model.") and ".m." in name for name in prunable.dimension_blocks)
    assert model.stride.tolist() == [8.0, 16.0, 32.0]  # set at construction, kept
    with torch.no_grad():  # reordering channels keeps the outputs
        for a, b in zip(pytree.tree_leaves(model(x)), pytree.tree_leaves(reference)):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    rng = np.random.default_rng(0)
    out = _same_structure_and_exact(prunable, x, reference, [space.smallest(), *(space.sample(rng) for _ in range(2))])
    assert pytree.tree_structure(out) == pytree.tree_structure(reference)  # (y, {"boxes", "scores", "feats"})
    assert CostModel(prunable).ratios(space.smallest())["flops"] < 0.2


def test_yolov8_head_outputs_are_never_cut_with_reasons_and_nms_runs_on_the_subnet(yolo):
    _, x, reference, prunable = yolo
    frozen = {p: prunable.frozen_groups[g.producers[0]] for g in prunable.graph.groups  # the levels' outputs,
              if g.producers and g.producers[0] in prunable.frozen_groups for p in g.producers}  # joined by the cat
    for i in range(3):
        assert "4 x 16 box distribution bins" in frozen[f"model.22.cv2.{i}.2"]
        assert "3 class scores" in frozen[f"model.22.cv3.{i}.2"]
    assert all(not name.startswith("model.22.cv2.0.2") for name in prunable.dimension_groups)
    subnet = materialize(prunable, prunable.space.smallest()).eval()
    with torch.no_grad():
        out = subnet(x)
    assert out[0].shape == reference[0].shape  # (batch, 4 + nc, anchors), as NMS reads it
    from ultralytics.utils import nms

    kept = nms.non_max_suppression(out, conf_thres=0.0, max_det=10)
    assert len(kept) == 2 and all(k.shape[1] == 6 for k in kept)


def _tv_detector(name: str):
    detection = pytest.importorskip("torchvision.models.detection")
    torch.manual_seed(0)
    return getattr(detection, name)(weights=None, weights_backbone=None, num_classes=3).eval()


def test_a_torchvision_detector_traced_whole_is_refused_in_one_line_and_its_backbone_fpn_is_searched():
    model = _tv_detector("fasterrcnn_mobilenet_v3_large_fpn")
    with pytest.raises(UntraceableModel) as info:  # traced whole (its backbone alone: test_detection_whole.py)
        derive(model, [torch.rand(3, 64, 64)], submodule="")
    message = str(info.value)
    assert "\n" not in message and message.startswith("cannot trace FasterRCNN at ") and ".backbone" in message
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        reference = model.backbone(x)  # an OrderedDict of FPN levels
    prunable = derive(model.backbone, x[:1])
    assert len(prunable.space.widths) >= 10
    assert all(reason == "model output" for name, reason in prunable.frozen_groups.items() if name.startswith("fpn."))
    out = _same_structure_and_exact(prunable, x, reference, [prunable.space.smallest()])
    assert list(out) == list(reference)


def test_the_yolov8_subnet_exports_and_trains_with_ultralytics_loss(yolo):
    model, x, reference, prunable = yolo
    subnet = materialize(prunable, prunable.space.smallest()).eval()
    program = torch.export.export(subnet, (x[:1],))
    with torch.no_grad():
        for a, b in zip(pytree.tree_leaves(program.module()(x[:1])), pytree.tree_leaves(subnet(x[:1]))):
            assert torch.allclose(a, b, atol=1e-5)
    # in train mode the graph keeps Detect's inference structure, which Ultralytics' loss reads as well
    from ultralytics.cfg import get_cfg
    from ultralytics.utils.loss import v8DetectionLoss

    model.args = get_cfg()
    batch = {"img": x, "batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([[0.0], [2.0]]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.3, 0.6, 0.2, 0.4]])}
    loss, _ = v8DetectionLoss(model)(subnet.train()(x), batch)
    loss.sum().backward()
    assert all(p.grad is not None for p in subnet.parameters() if p.requires_grad)
    assert pytree.tree_structure(subnet(x)) == pytree.tree_structure(reference)


def test_a_pruned_torchvision_backbone_plugs_back_into_its_detector_for_inference_and_training():
    model = _tv_detector("fasterrcnn_mobilenet_v3_large_fpn")
    model.transform.min_size, model.transform.max_size = (64,), 64
    prunable = derive(model.backbone, torch.rand(1, 3, 64, 64))
    model.backbone = materialize(prunable, prunable.space.smallest())
    with torch.no_grad():
        detections = model([torch.rand(3, 64, 64), torch.rand(3, 48, 64)])
    assert len(detections) == 2 and all(set(d) == {"boxes", "labels", "scores"} for d in detections)
    losses = model.train()([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]),
                                                      "labels": torch.tensor([1])}])
    sum(losses.values()).backward()
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} == set(losses)
