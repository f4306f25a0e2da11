"""Per-candidate scoring cost against the bare forward passes it cannot avoid, side by side.

    python benchmarks/eval_overhead.py [--model resnet20] [--data digits] [--candidates 40]

For each random candidate, on the same cached batches and in the same run:
- engine: `AccuracyEvaluator.score` = elastic apply + BN reset + recalibration forwards + held-out forwards;
- bare:   the same forwards through the already materialized subnet (BN in train mode for the
          calibration batches, eval mode for the held-out ones), nothing else.
The ratio engine / bare is the overhead of the hot path (target: at most 1.15). The two are timed in
alternating order to cancel drift; medians over candidates are printed, and the totals.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from evaluators.accuracy import AccuracyEvaluator  # noqa: E402
from search.training import resolve_device  # noqa: E402
from search.zoo import load_data, load_model  # noqa: E402
from spaces.derive import derive  # noqa: E402
from spaces.materialize import materialize  # noqa: E402


@torch.no_grad()
def bare_forwards(subnet: nn.Module, evaluator: AccuracyEvaluator) -> None:
    bns = [m for m in subnet.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    subnet.eval()
    for bn in bns:
        bn.train()
    for x in evaluator.calibration:
        subnet(x)
    for bn in bns:
        bn.eval()
    for x, y in evaluator.held_out:
        (subnet(x).argmax(1) == y).sum().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--calib-batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-samples", type=int, default=1024)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    data = load_data(args.data, seed=0)
    model = load_model(args.model, num_classes=data.num_classes, input_shape=data.input_shape).eval()
    prunable = derive(model, data.train_eval[0][0].unsqueeze(0))
    evaluator = AccuracyEvaluator.from_dataset(prunable, data.train_eval, data.fit, data.held_out,
                                               calib_batches=args.calib_batches, batch_size=args.batch_size,
                                               eval_samples=args.eval_samples, device=device)
    rng = np.random.default_rng(0)
    candidates = [prunable.space.sample(rng) for _ in range(args.candidates)]
    subnets = [materialize(prunable, c).to(device) for c in candidates]
    for c, s in zip(candidates[:3], subnets[:3]):  # warm-up both paths
        evaluator.score(c)
        bare_forwards(s, evaluator)
    engine, bare = [], []
    for i, (candidate, subnet) in enumerate(zip(candidates, subnets)):
        order = [("engine", lambda: evaluator.score(candidate)), ("bare", lambda: bare_forwards(subnet, evaluator))]
        for name, fn in (order if i % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            fn()
            (engine if name == "engine" else bare).append(time.perf_counter() - start)
    evaluator.restore()
    ratios = [e / b for e, b in zip(engine, bare)]
    calib, held = evaluator.samples
    print(f"{args.model} on {args.data}, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{len(candidates)} random candidates; per candidate {calib} calibration + {held} held-out samples")
    print(f"engine score (apply + recalibrate + top-1): median {statistics.median(engine) * 1e3:7.2f} ms")
    print(f"bare forwards of the materialized subnet  : median {statistics.median(bare) * 1e3:7.2f} ms")
    print(f"overhead ratio engine / bare               : median {statistics.median(ratios):.3f}, "
          f"total {sum(engine) / sum(bare):.3f}")


if __name__ == "__main__":
    main()
