"""Hot-path timings on torchvision ResNet-50 at 224x224: pricing a candidate and applying it elastically.

    python benchmarks/pricing.py [--candidates 500]

Side by side, on the same random candidates: analytic pricing (FLOPs + params), elastic apply, the
elastic model's one-time cut at its first forward after an apply, and, for scale, materializing a
real subnet (what a copy-and-prune approach pays per candidate before any forward pass).
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
import torchvision  # noqa: E402

from evaluators.cost import CostModel  # noqa: E402
from spaces.derive import derive  # noqa: E402
from spaces.elastic import ElasticModel  # noqa: E402
from spaces.materialize import materialize  # noqa: E402


def timed(fn, items) -> list[float]:
    out = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=500)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    prunable = derive(model, torch.randn(1, 3, 224, 224))
    cost, elastic = CostModel(prunable), ElasticModel(prunable).eval()
    rng = np.random.default_rng(0)
    candidates = [prunable.space.sample(rng) for _ in range(args.candidates)]
    cost.price(candidates[0])  # warm-up
    price = timed(cost.price, candidates)
    apply = timed(elastic.apply, candidates)
    few = candidates[:20]
    x = torch.randn(1, 3, 224, 224)

    def first_forward_cut(candidate):
        elastic.apply(candidate)
        for module in elastic.modules():
            if hasattr(module, "_fresh"):
                module._fresh()

    cut = timed(first_forward_cut, few)
    mat = timed(lambda c: materialize(prunable, c), few)
    with torch.no_grad():
        fwd = timed(lambda c: (elastic.apply(c), elastic(x)), few[:5])
    ms = lambda v: f"{statistics.median(v) * 1e3:8.3f} ms (p90 {np.percentile(v, 90) * 1e3:.3f})"  # noqa: E731
    print(f"torchvision resnet50, 224x224, {len(prunable.space)} dimensions, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"price (FLOPs+params), {len(price)} candidates : {ms(price)}")
    print(f"elastic apply,        {len(apply)} candidates : {ms(apply)}")
    print(f"elastic cut at first forward, {len(cut)} cand.  : {ms(cut)}")
    print(f"materialize subnet,   {len(mat)} candidates   : {ms(mat)}")
    print(f"elastic forward, batch 1, {len(fwd)} candidates : {ms(fwd)}")


if __name__ == "__main__":
    main()
