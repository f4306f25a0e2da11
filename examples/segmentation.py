"""Search a pruned segmentation model scored by mean IoU, through the Python API (`search.prune`).

    python examples/segmentation.py                     # a tiny run on synthetic data, about a minute on CPU
    python examples/segmentation.py --trials 100 --size 128

The model is torchvision's LR-ASPP MobileNetV3 (random weights: nothing is downloaded), first trained
for a few steps on synthetic scenes (bright squares of three classes on a noisy background) so that
candidates differ. Its forward returns a dict (`{"out": logits}`); the search prunes the channels
inside and never the output classes. Candidates are scored by mean intersection-over-union on held-out
scenes, a metric top-1 cannot express; the test suite runs this file at tiny size.
"""
from __future__ import annotations

import argparse

import torch
import torchvision
from torch import nn

from search import prune

CLASSES = 3


def scenes(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images of noise with up to three squares, each a class (1, 2) brighter in one colour; masks."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g) * 0.3
    y = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for _ in range(3):
            cls = int(torch.randint(1, CLASSES, (1,), generator=g))
            s = int(torch.randint(size // 6, size // 2, (1,), generator=g))
            r, c = (int(v) for v in torch.randint(0, size - s, (2,), generator=g))
            x[i, cls - 1, r:r + s, c:c + s] += 1.5
            y[i, r:r + s, c:c + s] = cls
    return x, y


def mean_iou(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean IoU over the classes present, on `batches` ((images, masks)); the model returns {"out": logits}."""
    inter = torch.zeros(CLASSES)
    union = torch.zeros(CLASSES)
    with torch.no_grad():
        for x, y in batches:
            pred = model(x)["out"].argmax(1)
            for k in range(CLASSES):
                inter[k] += ((pred == k) & (y == k)).sum()
                union[k] += ((pred == k) | (y == k)).sum()
    present = union > 0
    return float((inter[present] / union[present]).mean())


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--size", type=int, default=64, help="image side")
    p.add_argument("--train-steps", type=int, default=30, help="steps of training before the search")
    p.add_argument("--budget", default="0.5flops")
    p.add_argument("--agent", default="random")
    p.add_argument("--out", default=None, help="run directory (default runs/<time>-...)")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=CLASSES)
    x, y = scenes(96, args.size, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(args.train_steps):
        i = torch.randint(0, 64, (16,), generator=torch.Generator().manual_seed(step))
        loss = nn.functional.cross_entropy(model(x[i])["out"], y[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

    train = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]      # BN recalibration batches
    held_out = [(x[i:i + 16], y[i:i + 16]) for i in range(64, 96, 16)]  # scored by mean IoU
    result = prune(model, budget=args.budget, agent=args.agent, trials=args.trials,
                   calibration=train, score=lambda m: mean_iou(m, held_out),
                   example_input=x[:1], out=args.out, progress=False, calib_batches=4, batch_size=16)
    print(f"base mean IoU {result.base['held_out']:.4f}; best {result.best.result.score:.4f} at "
          f"{result.best.result.costs['flops'] / result.base['flops']:.3f} x FLOPs; run {result.run_dir}")
    print(result.trials[["trial", "state", "score", "flops_ratio"]].head().to_string(index=False))
    return result.best.result.score


if __name__ == "__main__":
    main()
