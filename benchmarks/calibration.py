"""How many calibration batches the proxy needs: its ranking of candidates against the number of BN batches.

    python benchmarks/calibration.py [--models resnet20,resnet56] [--candidates 60] [--budget 0.4flops]

For each model (the cached baseline on digits, as the default job trains it), the random agent's first
`--candidates` proposals at `--budget` (the default job's candidates) are scored with BatchNorm
recalibrated on 1, 2, 4, 8, 16 and 32 calibration batches of `--batch-size` samples, then top-1 on all
held-out samples. The statistics are a cumulative average (`momentum=None`), so one pass over the 32
batches gives every count: after the K-th batch the running statistics are exactly those K batches'
(the held-out pass in between runs in eval mode and leaves them untouched). Against the 32-batch
ranking it prints Spearman's rho, the top-10 overlap, whether the winner is the same, and how far the
BN statistics still move (the median relative change of the running variances from K/2 to K batches).

Digits has only 1150 training samples outside the held-out split, so the batches here are of 32
samples (32 x 32 = 1024); the counts are read as samples (32 K) when a default is picked for the
configuration's batches of 64.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from benchmarks.setting import Setting  # noqa: E402
from evaluators.accuracy import AccuracyEvaluator, hits  # noqa: E402
from search.engine.config import SearchConfig  # noqa: E402
from spaces.records import Result, TrialState  # noqa: E402

COUNTS = (1, 2, 4, 8, 16, 32)


def candidate_list(setting: Setting, budget: str, n: int, seed: int = 0) -> list:
    """The random agent's first `n` proposals at `budget` (warm start included), told a dummy score."""
    agent = setting.at(budget).agent(setting.prunable, setting.price, name="random", seed=seed, trials=n)
    out = []
    for ticket in range(n):
        candidate = agent.ask(ticket)
        out.append(candidate)
        agent.tell(ticket, Result(TrialState.COMPLETE, 0.0))
    return out


@torch.no_grad()
def scores_by_count(evaluator: AccuracyEvaluator, candidate, counts=COUNTS) -> tuple[list[float], list[float]]:
    """Held-out top-1 after each count of calibration batches, and the variances' relative move to it."""
    elastic, bns = evaluator.elastic, evaluator.elastic.batchnorms()
    elastic.apply(candidate)
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    scores, moves, previous = [], [], None
    for k, x in enumerate(evaluator.calibration[:max(counts)], 1):
        for bn in bns:
            bn.train()
        elastic(x)
        if k not in counts:
            continue
        variances = torch.cat([bn.running_var.flatten() for bn in bns])
        if previous is not None:  # the channels the candidate keeps (a pruned one keeps its reset variance, 1)
            kept = variances != 1
            moves.append(float(((variances - previous).abs() / previous.abs().clamp_min(1e-8))[kept].median()))
        previous = variances
        for bn in bns:
            bn.eval()
        correct = total = 0
        for xb, yb in evaluator.held_out:
            correct += int(hits(elastic(xb), yb))
            total += len(yb)
        scores.append(correct / total)
    return scores, moves


def top_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> int:
    return len(set(np.argsort(-a, kind="stable")[:k]) & set(np.argsort(-b, kind="stable")[:k]))


def study(model: str, *, candidates: int, budget: str, batch_size: int, seed: int = 0) -> dict:
    config = SearchConfig(agent="random", budget=[budget], model=model, data="digits", seed=seed, device="cpu",
                          calib_batches=max(COUNTS), batch_size=batch_size, no_racing=True)
    setting = Setting.of(config)
    evaluator = setting.evaluator
    if len(evaluator.calibration) < max(COUNTS):
        raise SystemExit(f"only {len(evaluator.calibration)} calibration batches of {batch_size}: lower --batch-size")
    started = time.perf_counter()
    rows, moves = [], []
    for candidate in candidate_list(setting, budget, candidates, seed):
        s, m = scores_by_count(evaluator, candidate)
        rows.append(s)
        moves.append(m)
    evaluator.restore()
    table, moves = np.array(rows), np.array(moves)   # candidates x counts; candidates x (counts - 1)
    ref = table[:, -1]
    return {"model": model, "candidates": candidates, "held_out": evaluator.samples[1], "seconds":
            time.perf_counter() - started, "rows": [
                {"batches": k, "samples": k * batch_size, "rho": float(spearmanr(table[:, j], ref).statistic),
                 "top10": top_overlap(table[:, j], ref), "winner": bool(np.argmax(table[:, j]) == np.argmax(ref)),
                 "mean_abs_diff": float(np.abs(table[:, j] - ref).mean()),
                 "var_move": float(np.median(moves[:, j - 1])) if j else float("nan")}
                for j, k in enumerate(COUNTS)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet56")
    parser.add_argument("--candidates", type=int, default=60)
    parser.add_argument("--budget", default="0.4flops")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for model in args.models.split(","):
        r = study(model, candidates=args.candidates, budget=args.budget, batch_size=args.batch_size)
        print(f"\n{model} on digits, {r['candidates']} random-agent candidates at {args.budget}, {r['held_out']} "
              f"held-out samples, calibration batches of {args.batch_size} ({r['seconds']:.0f} s, 1 thread)")
        print(f"{'batches':>7} {'samples':>7} {'spearman':>8} {'top-10':>6} {'winner':>6} {'|diff|':>7} "
              f"{'var move':>8}   (against 32 batches)")
        for row in r["rows"]:
            print(f"{row['batches']:7d} {row['samples']:7d} {row['rho']:8.3f} {row['top10']:4d}/10 "
                  f"{'same' if row['winner'] else 'other':>6} {row['mean_abs_diff']:7.4f} {row['var_move']:8.4f}")


if __name__ == "__main__":
    main()
