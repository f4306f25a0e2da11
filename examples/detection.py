"""Search a pruned YOLOv8n scored by mAP@0.5 on synthetic boxes, through the Python API (`search.prune`).

    python examples/detection.py                        # a tiny run on synthetic data, a minute or two on CPU
    python examples/detection.py --trials 100          # the run quoted in the README (2 minutes on 2 CPU cores)

The model is Ultralytics' YOLOv8n built from its config (`yolov8n.yaml`: random weights, nothing is
downloaded), first trained for a few steps with Ultralytics' own loss on synthetic scenes (squares, discs
and bars of three colours on noisy backgrounds) so that candidates differ. The search traces through its
layer routing, prunes the channels inside (the Detect head's box bins and class scores are never cut) and
keeps its output structure, so Ultralytics' own NMS reads every candidate's output unchanged. Candidates
are scored by mAP@0.5 from torchmetrics' `MeanAveragePrecision` on held-out scenes; the exported subnet's
FLOPs are checked against FlopCounterMode. Needs `pip install prunesearch[detect]`; the test suite runs
this file at tiny size.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import FlopCounterMode

from search import prune

CLASSES = ("square", "disc", "bar")


def scenes(n: int, size: int, seed: int) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """`n` noisy images with one to three shapes each, and per image its boxes (xyxy pixels) and labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 1, 1, generator=g) * 0.4 + torch.randn(n, 3, size, size, generator=g) * 0.08
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    targets = []
    for i in range(n):
        boxes, labels = [], []
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            label = int(torch.randint(0, len(CLASSES), (1,), generator=g))
            h = w = int(torch.randint(size // 6, size // 3, (1,), generator=g))
            if label == 2:
                w = min(size - 2, 3 * w)
            r, c = int(torch.randint(0, size - h, (1,), generator=g)), int(torch.randint(0, size - w, (1,), generator=g))
            mask = (rows >= r) & (rows < r + h) & (cols >= c) & (cols < c + w)
            if label == 1:
                mask = ((rows - r - h / 2 + 0.5) ** 2 + (cols - c - w / 2 + 0.5) ** 2) <= (h / 2) ** 2
            x[i, label][mask] = 0.6 + 0.4 * torch.rand(1, generator=g)
            boxes.append([c, r, c + w, r + h])
            labels.append(label)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return x.clamp(0, 1), targets


def yolo_batch(x: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Images and targets as Ultralytics' loss takes them (normalized xywh, one row per box)."""
    size = x.shape[-1]
    index = torch.cat([torch.full((len(t["labels"]),), i) for i, t in enumerate(targets)])
    boxes = torch.cat([t["boxes"] for t in targets]) / size
    xywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
    labels = torch.cat([t["labels"] for t in targets]).float()[:, None]
    return {"img": x, "batch_idx": index.float(), "cls": labels, "bboxes": xywh}


def map50(model: nn.Module, batches: list[tuple[torch.Tensor, list[dict[str, torch.Tensor]]]]) -> float:
    """mAP@0.5 (torchmetrics) of the model's detections after Ultralytics' NMS, over `batches`."""
    from torchmetrics.detection import MeanAveragePrecision
    from ultralytics.utils.nms import non_max_suppression

    metric = MeanAveragePrecision(iou_thresholds=[0.5], box_format="xyxy")
    with torch.no_grad():
        for x, targets in batches:
            detections = non_max_suppression(model(x), conf_thres=0.01, iou_thres=0.6, max_det=50)
            metric.update([{"boxes": d[:, :4], "scores": d[:, 4], "labels": d[:, 5].long()} for d in detections],
                          targets)
    return float(metric.compute()["map_50"])


def build(size: int, train_steps: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor, list]:
    """YOLOv8n from its config, trained `train_steps` steps on synthetic scenes; (model, images, targets)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    model = DetectionModel("yolov8n.yaml", nc=len(CLASSES), verbose=False)
    model.args = get_cfg()  # the loss gains (box, cls, dfl) of Ultralytics' defaults
    x, targets = scenes(160, size, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for step in range(train_steps):
        i = torch.randint(0, 128, (16,), generator=torch.Generator().manual_seed(step)).tolist()
        loss, _ = model.loss(yolo_batch(x[i], [targets[j] for j in i]))
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
    return model.eval(), x, targets


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--size", type=int, default=64, help="image side (a multiple of 32)")
    p.add_argument("--train-steps", type=int, default=150, help="steps of training before the search")
    p.add_argument("--budget", default="0.5flops")
    p.add_argument("--agent", default="random")
    p.add_argument("--out", default=None, help="run directory (default runs/<time>-...)")
    args = p.parse_args(argv)

    model, x, targets = build(args.size, args.train_steps)
    calibration = [x[i:i + 16] for i in range(0, 64, 16)]                                # BN recalibration
    held_out = [(x[i:i + 16], targets[i:i + 16]) for i in range(128, 160, 16)]          # scored by mAP@0.5
    result = prune(model, budget=args.budget, agent=args.agent, trials=args.trials,
                   calibration=calibration, score=lambda m: map50(m, held_out), example_input=x[:1],
                   out=args.out, progress=False, calib_batches=4, batch_size=16, finalists=0)
    from ultralytics.utils.nms import non_max_suppression

    subnet = result.subnet.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = subnet(x[:1])
    flops = result.best.result.costs["flops"]
    with torch.no_grad():
        reference = model(x[:1])
    same = pytree.tree_structure(out) == pytree.tree_structure(reference)
    print(f"base mAP@0.5 {result.base['held_out']:.4f}; best {result.best.result.score:.4f} at "
          f"{flops / result.base['flops']:.3f} x FLOPs; run {result.run_dir}")
    print(f"exported subnet: {counter.get_total_flops()} FLOPs counted by FlopCounterMode, {int(flops)} priced; "
          f"output structure {'the same as' if same else 'DIFFERENT from'} the model's; "
          f"Ultralytics' NMS on it: {[tuple(d.shape) for d in non_max_suppression(out)]} (boxes x 6)")
    return result.best.result.score


if __name__ == "__main__":
    main()
