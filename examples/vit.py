"""Search a pruned vision transformer, attention heads included, through the Python API (`search.prune`).

    python examples/vit.py                                   # a tiny ViT on synthetic data, about a minute on CPU
    python examples/vit.py --model vit_tiny_patch16_224 --size 224 --trials 100 --onnx vit.onnx

The model is a timm ViT built from its config (random weights: nothing is downloaded), first trained
for a few steps on synthetic images (a bright square in one of four quadrants: four classes) so that
candidates differ. The search space holds the number of heads of every attention layer (q, k, v and
the output projection cut together, head by head, the heads ranked by the L2 norm of their weights),
every MLP's hidden width, the residual stream's width and a keep flag per block. Candidates are scored
by top-1 on held-out images through `prune(score=...)`; the exported subnet's FLOPs are checked against
FlopCounterMode and, with `--onnx`, it is exported to ONNX. The test suite runs this file at tiny size.
"""
from __future__ import annotations

import argparse

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from search import prune

CLASSES = 4


def images(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` noisy images, each with a bright square in one quadrant (its class); labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    y = torch.randint(0, CLASSES, (n,), generator=g)
    half = size // 2
    for i in range(n):
        r, c = divmod(int(y[i]), 2)
        s = int(torch.randint(half // 2, half + 1, (1,), generator=g))
        x[i, :, r * half:r * half + s, c * half:c * half + s] += 1.5
    return x, y


def top1(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return hits / sum(len(y) for _, y in batches)


def heads_kept(candidate: dict[str, int]) -> dict[str, int]:
    """The number of heads each attention layer keeps (dimensions named `<qkv projection>.heads`)."""
    return {name.removesuffix(".qkv.heads"): width for name, width in candidate.items() if name.endswith(".heads")}


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_tiny_patch16_224", help="a timm ViT/DeiT name (built without weights)")
    p.add_argument("--size", type=int, default=32, help="image side (the model is built for it)")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--train-steps", type=int, default=30, help="steps of training before the search")
    p.add_argument("--budget", default="0.5flops")
    p.add_argument("--agent", default="random")
    p.add_argument("--onnx", default=None, help="export the subnet to this ONNX file")
    p.add_argument("--out", default=None, help="run directory (default runs/<time>-...)")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    patch = 16 if args.size >= 64 else 8
    model = timm.create_model(args.model, pretrained=False, num_classes=CLASSES, img_size=args.size, patch_size=patch)
    x, y = images(128, args.size, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step in range(args.train_steps):
        i = torch.randint(0, 96, (16,), generator=torch.Generator().manual_seed(step))
        loss = nn.functional.cross_entropy(model(x[i]), y[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

    calibration = [x[i:i + 16] for i in range(0, 32, 16)]
    held_out = [(x[i:i + 16], y[i:i + 16]) for i in range(96, 128, 16)]
    result = prune(model, budget=args.budget, agent=args.agent, trials=args.trials, calibration=calibration,
                   score=lambda m: top1(m, held_out), example_input=x[:1], out=args.out, progress=False,
                   finalists=0)
    subnet = result.subnet.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        subnet(x[:1])
    heads = heads_kept(result.best.candidate.to_dict())
    report = {"score": result.best.result.score, "base": result.base["held_out"],
              "flops": int(result.best.result.costs["flops"]), "counted": counter.get_total_flops(),
              "ratio": result.best.result.costs["flops"] / result.base["flops"], "heads": heads,
              "run_dir": str(result.run_dir)}
    print(f"base top-1 {report['base']:.3f}; best {report['score']:.3f} at {report['ratio']:.3f} x FLOPs "
          f"({report['flops']} priced, {report['counted']} counted by FlopCounterMode); run {result.run_dir}")
    print("heads kept: " + ", ".join(f"{name} {n}" for name, n in heads.items()))
    if args.onnx:
        torch.onnx.export(subnet, (x[:1],), args.onnx, dynamo=True, verbose=False)
        print(f"ONNX: {args.onnx}")
    return report


if __name__ == "__main__":
    main()
