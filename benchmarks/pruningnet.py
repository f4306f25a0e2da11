"""PruningNet (MetaPruning) on the default model and data: training time and how it ranks candidates.

    python benchmarks/pruningnet.py [--epochs 80] [--lr 1e-3] [--candidates 50] [--budget 0.4flops]
                                    [--sampler budget|uniform] [--seed 0] [--finetune 0]

The base model is the cached default ResNet-20 baseline on digits (as in benchmarks/agents.py); the
scorer is `AccuracyEvaluator` with the CLI defaults (8 calibration batches of 64, up to 1024 held-out
samples). A PruningNet is trained on the fit split (one candidate per mini-batch: within the budget,
or uniform over the space), then `--candidates` random candidates within the budget are scored twice:
with the base weights (BN-recalibrated, as every agent is scored) and with the PruningNet's generated
weights (BN-recalibrated the same way). Printed: training time and losses, the Spearman rank
correlation between the two scores, both means, and the same for the untrained (warm-start)
PruningNet, which generates exactly the base weights (1.0 by construction). With `--finetune N`, the
first N candidates are also fine-tuned briefly from the base weights, and both scores are correlated
with their held-out top-1 after fine-tuning (what a search score should predict).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from benchmarks.setting import Setting  # noqa: E402
from evaluators.accuracy import top1  # noqa: E402
from evaluators.pruningnet import PruningNet, PruningNetEvaluator, train_pruningnet  # noqa: E402
from search.engine.config import SearchConfig  # noqa: E402
from search.finetune.step import TrainConfig, train  # noqa: E402
from spaces.materialize import materialize  # noqa: E402
from spaces.sampling import feasible_sampler  # noqa: E402


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their average rank (as Spearman's rho needs)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    start = np.cumsum(counts) - counts
    return (start + (counts - 1) / 2.0)[inverse]


def spearman(a, b) -> float:
    ra, rb = ranks(np.asarray(a, dtype=float)), ranks(np.asarray(b, dtype=float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--budget", default="0.4flops")
    parser.add_argument("--sampler", choices=("budget", "uniform"), default="budget",
                        help="training candidates: within the budget, or uniform over the whole space")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--finetune", type=int, default=0,
                        help="also fine-tune this many of the candidates (base weights) and correlate both scores "
                             "with their held-out top-1 after fine-tuning")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    args = parser.parse_args()
    setting = Setting.of(SearchConfig(agent="random", budget=[args.budget], model="resnet20", data="digits", seed=0,
                                      device=args.device))
    prunable, cost, evaluator, base = setting.prunable, setting.cost, setting.evaluator, setting.base
    data, test_top1, device = setting.inputs.data, setting.inputs.base_test, setting.pipeline.device
    budget = setting.pipeline.budget
    feasible = lambda c: budget.feasible(setting.price(c))  # noqa: E731
    base_score = evaluator.score(prunable.space.full())
    evaluator.restore()
    print(f"resnet20 on digits: base held-out {base_score:.4f}, test {test_top1:.4f}; {prunable.space}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}")

    pick = feasible_sampler(prunable.space, feasible)
    rng = np.random.default_rng(1000 + args.seed)  # not the training draws
    candidates = []
    while len(candidates) < args.candidates:
        c = pick(rng)
        if c not in candidates:
            candidates.append(c)
    ratios = [cost.price(c).flops / base["flops"] for c in candidates]
    print(f"{len(candidates)} random candidates within {budget}: FLOPs ratio {np.mean(ratios):.3f} mean, "
          f"[{min(ratios):.3f}, {max(ratios):.3f}]")

    start = time.perf_counter()
    base_scores = [evaluator.score(c) for c in candidates]
    base_seconds = time.perf_counter() - start
    evaluator.restore()

    net = PruningNet(prunable, hidden=args.hidden).to(device)
    print(f"PruningNet: {len(net.names)} generated layers, {net.generator_parameters:,} generator parameters "
          f"(hidden {args.hidden})")
    with PruningNetEvaluator.of(evaluator, net) as fresh:
        start = time.perf_counter()
        warm = [fresh.score(c) for c in candidates]
        warm_seconds = time.perf_counter() - start
    print(f"warm start (untrained): Spearman {spearman(base_scores, warm):.4f}; mean base {np.mean(base_scores):.4f}, "
          f"PruningNet {np.mean(warm):.4f}; identical scores: {warm == base_scores}")

    loader = DataLoader(Subset(data.train, data.fit.tolist()), batch_size=64, shuffle=True, drop_last=True)
    sample = pick if args.sampler == "budget" else prunable.space.sample
    start = time.perf_counter()
    history = train_pruningnet(net, loader, epochs=args.epochs, lr=args.lr, sample=sample, seed=args.seed,
                               progress=False)
    train_seconds = time.perf_counter() - start
    losses = ", ".join(f"{h['loss']:.3f}" for h in history)
    print(f"trained {args.epochs} epochs x {len(loader)} batches of 64 ({args.sampler} candidates, Adam lr {args.lr}, "
          f"cosine) in {train_seconds:.1f} s; loss per epoch: {losses}")

    with PruningNetEvaluator.of(evaluator, net) as trained:
        start = time.perf_counter()
        scores = [trained.score(c) for c in candidates]
        net_seconds = time.perf_counter() - start
        full = trained.score(prunable.space.full())
    rho = spearman(base_scores, scores)
    print(f"trained PruningNet: Spearman {rho:.4f} vs base-weight scores; mean base {np.mean(base_scores):.4f}, "
          f"PruningNet {np.mean(scores):.4f} (full model: base {base_score:.4f}, PruningNet {full:.4f})")
    best_base, best_net = int(np.argmax(base_scores)), int(np.argmax(scores))
    print(f"best of {len(candidates)} by base weights: #{best_base} ({base_scores[best_base]:.4f} base, "
          f"{scores[best_base]:.4f} PruningNet); by PruningNet: #{best_net} ({base_scores[best_net]:.4f} base, "
          f"{scores[best_net]:.4f} PruningNet)")
    print(f"scoring {len(candidates)} candidates: base weights {base_seconds:.1f} s, warm-start PruningNet "
          f"{warm_seconds:.1f} s, trained PruningNet {net_seconds:.1f} s")
    if args.finetune:
        finetuned(args, prunable, evaluator, data, candidates[:args.finetune], base_scores, scores)


def finetuned(args, prunable, evaluator, data, candidates, base_scores, scores) -> None:
    """Fine-tune each candidate's base-weight subnet briefly; which score predicted the result better?"""
    start = time.perf_counter()
    after = []
    for i, candidate in enumerate(candidates):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed + i)
            subnet = materialize(prunable, candidate).to(evaluator.device)
            loader = DataLoader(Subset(data.train, data.fit.tolist()), batch_size=64, shuffle=True, drop_last=True,
                                generator=torch.Generator().manual_seed(args.seed + i))
            train(subnet, loader, TrainConfig(epochs=args.finetune_epochs, lr=0.05), device=evaluator.device,
                  progress=False)
        evaluator.recalibrated(subnet)
        after.append(top1(subnet.eval(), evaluator.held_out))
    n = len(candidates)
    print(f"fine-tuned {n} candidates ({args.finetune_epochs} epochs each, SGD lr 0.05 cosine, "
          f"{time.perf_counter() - start:.1f} s): held-out top-1 mean {np.mean(after):.4f}; Spearman with it: "
          f"base-weight score {spearman(base_scores[:n], after):.4f}, PruningNet score {spearman(scores[:n], after):.4f}")


if __name__ == "__main__":
    main()
