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

from benchmarks.setting import Setting  # noqa: E402
from evaluators.accuracy import AccuracyEvaluator, hits  # noqa: E402
from search.engine.config import SearchConfig  # noqa: E402
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
        hits(subnet(x), y).item()


def measure(model_spec: str = "resnet20", data_spec: str = "digits", *, candidates: int = 40,
            calib_batches: int = 8, batch_size: int = 64, eval_samples: int = 1024, device: str = "auto") -> dict:
    """Per-candidate seconds of the engine's score and of the bare forwards, and their ratios."""
    setting = Setting.of(SearchConfig(agent="random", budget=["1flops"], model=model_spec, data=data_spec, seed=0,
                                      calib_batches=calib_batches, batch_size=batch_size, eval_samples=eval_samples,
                                      device=device, baseline_epochs=0))  # untrained: only time matters
    prunable, evaluator, device = setting.prunable, setting.evaluator, setting.pipeline.device
    rng = np.random.default_rng(0)
    candidates = [prunable.space.sample(rng) for _ in range(candidates)]
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
    return {"model": model_spec, "data": data_spec, "device": str(device), "candidates": len(candidates),
            "samples": evaluator.samples, "engine_ms": 1e3 * statistics.median(engine),
            "bare_ms": 1e3 * statistics.median(bare), "median_ratio": statistics.median(ratios),
            "total_ratio": sum(engine) / sum(bare)}


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
    f = measure(args.model, args.data, candidates=args.candidates, calib_batches=args.calib_batches,
                batch_size=args.batch_size, eval_samples=args.eval_samples, device=args.device)
    calib, held = f["samples"]
    print(f"{f['model']} on {f['data']}, {f['device']}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; {f['candidates']} random candidates; per candidate {calib} calibration + {held} held-out samples")
    print(f"engine score (apply + recalibrate + top-1): median {f['engine_ms']:7.2f} ms")
    print(f"bare forwards of the materialized subnet  : median {f['bare_ms']:7.2f} ms")
    print(f"overhead ratio engine / bare               : median {f['median_ratio']:.3f}, total {f['total_ratio']:.3f}")


if __name__ == "__main__":
    main()
