"""Fine-tuning: the gain of distillation from the base model, and Ray Train's overhead per epoch.

    python benchmarks/finetune.py                      # both parts, about 10-20 min on 2 busy CPU cores
    python benchmarks/finetune.py --part distill --seeds 0 1 2 3 4
    python benchmarks/finetune.py --part ray --epochs 3

distill: the discriminating regime of the quality benchmark, an aggressive budget and a short fine-tune.
For each seed, one search (`--model` on digits, `--budget`, random agent, `--trials`, that seed: its own
split, baseline and subnet), then the same subnet fine-tuned `--ft-epochs` epochs twice from the same
start, with and without distillation (T=4, a=0.5); test top-1 of each and the paired gain.
ray: one subnet fine-tuned `--epochs` epochs in this process (one torch thread, like each Ray worker),
then on Ray Train with 1 and 2 CPU workers (gloo); the median seconds per epoch (training + rank 0's
test pass, as each records it) and the wall time of the whole call (Ray and worker start included).

Measured 2026-11-30 on 2 CPU cores shared with other jobs (load 13-24: times are inflated), median paired gain
of distillation in test top-1: ResNet-20 at 0.12flops, 2 epochs, seeds 0-4: +0.0000 (min -0.0028, max
+0.0111); 1 epoch: -0.0028 (min -0.0167, max +0.0083); ResNet-56 at 0.1flops, 2 epochs, seeds 0-5: +0.0042
(-0.0278 to +0.0917; +0.014 to +0.092 where the teacher is good, base >= 0.92; negative where the cached
baseline trained badly, base 0.40-0.60). No consistent win, so `search.finetune` keeps plain cross-entropy
by default and `--distill` is opt-in. Ray Train (3 epochs): plain 0.52 s/epoch, 1 worker 0.61 (x1.17),
2 workers 1.08 (x2.09, gloo all-reduce on a tiny model over 2 busy cores); ~45 s of Ray start per call.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from search import run as run_module  # noqa: E402
from search.finetune import finetune  # noqa: E402


def search(out: Path, args, seed: int) -> Path:
    code = run_module.main(["--agent", "random", "--budget", args.budget, "--model", args.model, "--trials",
                            str(args.trials), "--seed", str(seed), "--out", str(out), "--no-progress", "--quiet"])
    if code != 0:
        raise SystemExit(f"search failed with exit {code}")
    return out


def distill_part(args, root: Path) -> None:
    rows = []
    for seed in args.seeds:
        run = search(root / f"{args.model}-s{seed}", args, seed)
        tops = {}
        for distill in (False, True):
            copy = shutil.copytree(run, root / f"{run.name}-{'kd' if distill else 'ce'}")
            started = time.perf_counter()
            result = finetune(copy, epochs=args.ft_epochs, distill=distill, progress=False)
            tops[distill] = result.test_top1
            print(f"seed {seed}: {'distilled' if distill else 'plain CE '} test top-1 {result.test_top1:.4f} "
                  f"(before {result.before_top1:.4f}, base {result.base_test_top1:.4f}; "
                  f"{time.perf_counter() - started:.0f} s)", flush=True)
        rows.append((seed, tops[False], tops[True]))
    gains = [kd - ce for _, ce, kd in rows]
    print(f"\n{args.model} / digits, budget {args.budget}, {args.ft_epochs} fine-tuning epochs (lr 0.05, cosine), "
          f"seeds {', '.join(map(str, args.seeds))}")
    print("| seed | plain CE | distilled (T=4, a=0.5) | gain |\n|---|---|---|---|")
    for (seed, ce, kd), gain in zip(rows, gains):
        print(f"| {seed} | {ce:.4f} | {kd:.4f} | {gain:+.4f} |")
    print(f"distillation gain: median {statistics.median(gains):+.4f}, min {min(gains):+.4f}, max {max(gains):+.4f}; "
          f"median top-1 plain {statistics.median(r[1] for r in rows):.4f}, distilled "
          f"{statistics.median(r[2] for r in rows):.4f}; wins {sum(g > 0 for g in gains)}/{len(gains)}")


def ray_part(args, root: Path) -> None:
    run = search(root / f"{args.model}-ray", args, 0)
    print(f"{args.model} / digits subnet at {args.budget}, {args.epochs} epochs, batch 64, no distillation")
    print("| path | median s / epoch | wall s (whole call) | test top-1 |\n|---|---|---|---|")
    base = None
    for workers in (0, 1, 2):
        copy = shutil.copytree(run, root / f"ray-{workers}")
        started = time.perf_counter()
        result = finetune(copy, epochs=args.epochs, distill=False, workers=workers, progress=False)
        wall = time.perf_counter() - started
        per_epoch = statistics.median(r["seconds"] for r in result.history)
        base = per_epoch if workers == 0 else base
        name = "plain loop (1 thread)" if workers == 0 else f"Ray Train, {workers} CPU worker{'s' * (workers > 1)}"
        ratio = "" if workers == 0 else f" (x{per_epoch / base:.2f})"
        print(f"| {name} | {per_epoch:.2f}{ratio} | {wall:.1f} | {result.test_top1:.4f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("distill", "ray", "all"), default="all")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--budget", default="0.12flops")
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ft-epochs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3, help="ray part: epochs per path")
    p.add_argument("--keep", default=None, help="keep the run directories here (default: a temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(1)  # the load of a shared machine; each Ray worker also runs one thread
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-finetune-"))
    root.mkdir(parents=True, exist_ok=True)
    if args.part in ("distill", "all"):
        distill_part(args, root)
    if args.part in ("ray", "all"):
        ray_part(args, root)
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
