"""Latency predictor accuracy: predicted against directly measured latency of 20 random subnets.

    python benchmarks/latency.py [--models resnet20,mobilenet_v2,resnet18] [--batch 1] [--device cpu]
                                 [--threads 1,2]

For each model: measure its latency table (fresh, not cached), then for 20 random candidates compare
the table's prediction with the measured latency of the materialized subnet (same timing method:
the median of interleaved rounds).
Printed: base latency, median and worst absolute error relative to the measurement, and the time the
table took to measure. Inputs: the default digits shape (1x8x8) for resnet20, 3x64x64 otherwise.
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

from evaluators.latency import measure_latencies, measure_table  # noqa: E402
from search.cifar_resnet import resnet20  # noqa: E402
from search.training import resolve_device  # noqa: E402
from spaces.derive import derive  # noqa: E402
from spaces.materialize import materialize  # noqa: E402


def build(name: str):
    torch.manual_seed(0)
    if name == "resnet20":
        return resnet20(num_classes=10, in_channels=1).eval(), (1, 8, 8)
    return torchvision.models.get_model(name, weights=None).eval(), (3, 64, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,mobilenet_v2,resnet18")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", default="1,2", help="CPU intra-op thread counts to measure with, in turn")
    args = parser.parse_args()
    device = resolve_device(args.device)
    threads = [int(t) for t in args.threads.split(",")] if device.type == "cpu" else [torch.get_num_threads()]
    print(f"device {device}, torch {torch.__version__}, batch {args.batch}, {args.candidates} random candidates "
          f"per model")
    header = (f"{'model':14s} {'input':9s} {'threads':>7s} {'base ms':>8s} {'median err':>10s} {'worst err':>9s} "
              f"{'table s':>8s}")
    print(header)
    print("-" * len(header))
    for count, name in ((count, name) for count in threads for name in args.models.split(",")):
        torch.set_num_threads(count)
        model, shape = build(name)
        prunable = derive(model, torch.zeros(1, *shape))
        start = time.perf_counter()
        table = measure_table(prunable, shape, batch=args.batch, device=device, progress=False)
        seconds = time.perf_counter() - start
        rng = np.random.default_rng(0)
        candidates = [prunable.space.sample(rng) for _ in range(args.candidates)]
        measured = measure_latencies([materialize(prunable, c) for c in candidates], shape, batch=args.batch,
                                     device=device)
        errors = [abs(table.predict(c) - ms) / ms for c, ms in zip(candidates, measured)]
        print(f"{name:14s} {'x'.join(map(str, shape)):9s} {count:7d} {table.meta['full_ms_measured']:8.3f} "
              f"{100 * statistics.median(errors):9.1f}% {100 * max(errors):8.1f}% {seconds:8.1f}", flush=True)


if __name__ == "__main__":
    main()
