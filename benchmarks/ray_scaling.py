"""Scoring throughput: in-process against Ray actor pools, on the default model, side by side.

    python benchmarks/ray_scaling.py [--candidates 80]

The same random candidates are scored by: the local executor (torch's default threads, then 1
thread), a Ray pool of 1 worker and of 2 workers (1 CPU and 1 torch thread each). Printed:
candidates per second, the speed-up of 2 workers over 1, and Ray's dispatch overhead per candidate
(1-worker Ray time minus 1-thread local time).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.setting import Setting  # noqa: E402
from evaluators.accuracy import EvaluatorPayload, build_evaluator  # noqa: E402
from evaluators.executors import LocalExecutor, RayExecutor  # noqa: E402
from search.engine.config import SearchConfig  # noqa: E402


def throughput(executor, candidates) -> float:
    """Candidates per second, keeping every slot busy."""
    start = time.perf_counter()
    pending, done = list(enumerate(candidates)), 0
    in_flight = 0
    while done < len(candidates):
        while pending and in_flight < executor.slots:
            executor.submit(*pending.pop(0))
            in_flight += 1
        finished = executor.wait()
        done += len(finished)
        in_flight -= len(finished)
    return len(candidates) / (time.perf_counter() - start)


def measure(candidates: int = 80) -> dict:
    """Candidates per second of each executor (`rates`), the 2-over-1 worker speed-up and Ray's overhead (ms)."""
    config = SearchConfig(agent="random", budget=["1flops"], model="resnet20", data="digits", seed=0, device="cpu",
                          baseline_epochs=0)  # untrained: only time matters
    setting = Setting.of(config)
    prunable, evaluator = setting.prunable, setting.evaluator
    rng = np.random.default_rng(0)
    candidates = [prunable.space.sample(rng).to_dict() for _ in range(candidates)]
    threads = torch.get_num_threads()
    rows = {}
    rows[f"local, {threads} threads"] = throughput(LocalExecutor(evaluator), candidates)
    torch.set_num_threads(1)
    rows["local, 1 thread"] = throughput(LocalExecutor(evaluator), candidates)
    torch.set_num_threads(threads)
    payload = EvaluatorPayload.of(evaluator, config.derive_options(), "cpu")
    for workers in (1, 2):
        executor = RayExecutor(build_evaluator, payload, workers=workers)
        throughput(executor, candidates[:4])  # warm-up: actors built, first cuts done
        rows[f"ray, {workers} worker{'s' if workers > 1 else ''} x 1 thread"] = throughput(executor, candidates)
        executor.close()
    evaluator.restore()
    one, two = rows["ray, 1 worker x 1 thread"], rows["ray, 2 workers x 1 thread"]
    return {"candidates": len(candidates), "samples": evaluator.samples, "threads": threads, "rates": rows,
            "speedup_2_over_1": two / one, "dispatch_ms": 1e3 / one - 1e3 / rows["local, 1 thread"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=80)
    figures = measure(parser.parse_args().candidates)
    calib, held = figures["samples"]
    print(f"resnet20 on digits, {figures['candidates']} random candidates, {calib} calibration + {held} held-out "
          f"samples each; torch {torch.__version__}, {figures['threads']} cores")
    for name, rate in figures["rates"].items():
        print(f"{name:28s}: {rate:6.1f} candidates/s ({1e3 / rate:6.1f} ms each)")
    print(f"speed-up of 2 Ray workers over 1: x{figures['speedup_2_over_1']:.2f}")
    print(f"Ray dispatch overhead per candidate: {figures['dispatch_ms']:.2f} ms")


if __name__ == "__main__":
    main()
