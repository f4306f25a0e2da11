"""Latency predictor accuracy: predicted against directly measured latency of 20 random subnets.

    python benchmarks/latency.py [--models resnet20,mobilenet_v2,resnet18] [--batch 1] [--device cpu]

For each model: measure its latency table (fresh, not cached), then for 20 random candidates compare
the table's prediction with the measured latency of the materialized subnet (same timing method).
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

from evaluators.latency import measure_latency, measure_table  # noqa: E402
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
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.candidates} random candidates per model")
    header = f"{'model':14s} {'input':9s} {'base ms':>8s} {'median err':>10s} {'worst err':>9s} {'table s':>8s}"
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        model, shape = build(name)
        prunable = derive(model, torch.zeros(1, *shape))
        start = time.perf_counter()
        table = measure_table(prunable, shape, batch=args.batch, device=device, progress=False)
        seconds = time.perf_counter() - start
        rng = np.random.default_rng(0)
        errors = []
        for _ in range(args.candidates):
            candidate = prunable.space.sample(rng)
            measured = measure_latency(materialize(prunable, candidate), shape, batch=args.batch, device=device)
            errors.append(abs(table.predict(candidate) - measured) / measured)
        print(f"{name:14s} {'x'.join(map(str, shape)):9s} {table.meta['full_ms_measured']:8.3f} "
              f"{100 * statistics.median(errors):9.1f}% {100 * max(errors):8.1f}% {seconds:8.1f}", flush=True)


if __name__ == "__main__":
    main()
