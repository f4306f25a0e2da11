"""Proxy fidelity: how well each cheap score of a candidate ranks candidates by their test top-1 after the
standard fine-tune, the model the user keeps; and what picking among the top few by a short fine-tune
(the finalists) gains over picking by the proxy alone.

    python benchmarks/fidelity.py [--model resnet20] [--budget 0.15flops] [--candidates 30]
                                  [--finetune-epochs 2] [--steps 50] [--pruningnet-epochs 10] [--quick]

Candidates: `--candidates` distinct candidates drawn uniformly from the part of the space whose FLOPs lie
between 0.7 x and 1 x the budget (a search's final candidates are near the budget, so that is where the
proxy must rank well), seeded. Each is scored by every proxy, then materialized with the base weights,
BN-recalibrated and fine-tuned with one recipe (`search.finetune.finetune_module`: the same epochs, lr and
seed for all), and its test top-1 after that is the truth. Proxies (higher is better for all):
- bn_top1: held-out top-1 after BN recalibration (EagleEye's adaptive BN; today's default score);
- bn_neg_ce: minus the held-out cross-entropy after BN recalibration;
- bn_neg_kl: minus KL(base model's outputs || candidate's) on the held-out batches (no labels used);
- pruningnet: held-out top-1 with MetaPruning's generated weights (a PruningNet trained on the budget);
- steps_N: held-out top-1 after N SGD steps on the fit split (what `--finalists` does).
Printed: Spearman and Kendall rank correlation of each proxy with the truth, the overlap of its top-5 with
the truth's top-5, and the truth of its pick. Then the selection study: over 2000 random subsets of 20
of the candidates (a search's scored pool), the truth of the candidate picked by bn_top1 alone and of the
one picked by finalists (bn_top1's top-5, re-ranked by steps_N), and how often each pick is the subset's
best. Every figure is printed by this script; nothing is timed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.setting import Setting  # noqa: E402
from evaluators.accuracy import recalibrate  # noqa: E402
from search.engine.config import SearchConfig  # noqa: E402
from search.selection.finalists import FinalistSettings, ShuffledBatches, score_module, short_finetune  # noqa: E402
from search.finetune import finetune_module  # noqa: E402
from spaces.materialize import materialize  # noqa: E402
from spaces.space import Candidate  # noqa: E402


def near_budget(setting: Setting, budget: str, count: int, seed: int, low: float = 0.7) -> list[Candidate]:
    """`count` distinct candidates drawn uniformly among those with low x cap <= FLOPs <= cap."""
    pipeline = setting.at(budget)
    cap = pipeline.budget.caps["flops"]
    rng = np.random.default_rng(seed)
    space = setting.prunable.space
    found: dict[Candidate, None] = {}
    for _ in range(200_000):
        candidate = space.sample(rng)
        flops = setting.price(candidate)["flops"]
        if low * cap <= flops <= cap:
            found.setdefault(candidate)
            if len(found) == count:
                break
    if len(found) < count:
        raise SystemExit(f"only {len(found)} candidates found between {low} x and 1 x the budget")
    return list(found)


@torch.no_grad()
def bn_proxies(setting: Setting, candidate: Candidate, base_logp: list[torch.Tensor]) -> dict[str, float]:
    """bn_top1, bn_neg_ce and bn_neg_kl of one candidate (one recalibration, one held-out pass)."""
    evaluator = setting.evaluator
    top1 = evaluator.score(candidate)  # leaves the elastic model at the candidate, recalibrated, in eval mode
    ce = kl = 0.0
    total = 0
    for (x, y), teacher in zip(evaluator.held_out, base_logp):
        logp = F.log_softmax(evaluator.elastic(x), dim=1)
        ce += F.nll_loss(logp, y, reduction="sum").item()
        kl += F.kl_div(logp, teacher, reduction="sum", log_target=True).item()
        total += y.numel()
    return {"bn_top1": top1, "bn_neg_ce": -ce / total, "bn_neg_kl": -kl / total}


def fidelity(model: str = "resnet20", budget: str = "0.15flops", candidates: int = 30, finetune_epochs: int = 2,
             steps: int = 50, pruningnet_epochs: int = 10, seed: int = 0, lr: float = SearchConfig.finalist_lr,
             progress: bool = True, data: str = "digits", baseline_epochs: int = 30) -> dict:
    """Every proxy and the truth for `candidates` candidates; see the module docstring."""
    config = SearchConfig(agent="random", budget=[budget], model=model, data=data, seed=seed, no_warm_start=True,
                          pruningnet_epochs=max(1, pruningnet_epochs), baseline_epochs=baseline_epochs)
    setting = Setting.of(config)
    bundle = setting.inputs.data
    evaluator = setting.evaluator
    device = evaluator.device
    pool = near_budget(setting, budget, candidates, seed)
    with torch.no_grad():
        evaluator.restore()
        base_logp = [F.log_softmax(evaluator.elastic(x), dim=1) for x, _ in evaluator.held_out]
    rows = [bn_proxies(setting, c, base_logp) for c in pool]
    evaluator.restore()
    for row, c in zip(rows, pool):
        row["flops_ratio"] = setting.price(c)["flops"] / setting.base["flops"]

    if pruningnet_epochs > 0:
        from evaluators.pruningnet import PruningNetEvaluator

        started = time.perf_counter()
        net = setting.at(budget).train_pruningnet(setting.prunable, setting.price)
        scorer = PruningNetEvaluator.of(evaluator, net)
        for row, c in zip(rows, pool):
            row["pruningnet"] = scorer.score(c)
        scorer.restore()
        evaluator.restore()
        if progress:
            print(f"  PruningNet: {pruningnet_epochs} epochs, {time.perf_counter() - started:.0f} s", flush=True)

    fit = torch.utils.data.Subset(bundle.train, bundle.fit.tolist())
    short = FinalistSettings(count=1, steps=steps, lr=lr, seed=seed)
    for i, (row, c) in enumerate(zip(rows, pool)):
        module = materialize(setting.prunable, c).to(device)
        torch.manual_seed(seed)
        short_finetune(module.train(), ShuffledBatches(fit, config.batch_size)(seed), short, device=device)
        recalibrate(module, evaluator.calibration)
        row[f"steps_{steps}"] = score_module(module, evaluator.held_out)

        module = evaluator.recalibrated(materialize(setting.prunable, c))  # the base weights, as exported
        _, history = finetune_module(module, bundle, epochs=finetune_epochs, seed=0, device=device)
        row["truth"] = history[-1]["test_top1"]
        if progress:
            print(f"  candidate {i + 1:2d}/{len(pool)}: FLOPs x{row['flops_ratio']:.3f}  "
                  + "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "flops_ratio"), flush=True)
    return {"rows": rows, "model": model, "data": data, "base_test": setting.inputs.base_test, "budget": budget,
            "finetune_epochs": finetune_epochs, "steps": steps,
            "pruningnet_epochs": pruningnet_epochs, "held_out": evaluator.samples[1]}


def proxy_table(result: dict) -> list[str]:
    rows = result["rows"]
    truth = np.array([r["truth"] for r in rows])
    best5 = set(np.argsort(-truth, kind="stable")[:5])
    proxies = [k for k in rows[0] if k not in ("truth", "flops_ratio")]
    base_test = result['base_test'] if result['base_test'] is not None else float('nan')
    lines = [f"{result['model']} on {result['data']} (base test {base_test:.4f}) at {result['budget']}: "
             f"{len(rows)} candidates, truth = test top-1 after "
             f"{result['finetune_epochs']} fine-tuning epochs (truth range {truth.min():.4f}-{truth.max():.4f}, "
             f"best {truth.max():.4f})",
             "| proxy | Spearman | Kendall | top-5 overlap | truth of its pick |", "|---|---|---|---|---|"]
    for name in proxies:
        values = np.array([r[name] for r in rows])
        rho = stats.spearmanr(values, truth).statistic
        tau = stats.kendalltau(values, truth).statistic
        top5 = set(np.argsort(-values, kind="stable")[:5])
        lines.append(f"| {name} | {rho:.3f} | {tau:.3f} | {len(top5 & best5)}/5 | "
                     f"{truth[int(np.argmax(values))]:.4f} |")
    return lines


def selection_table(result: dict, subsets: int = 2000, size: int = 20, finalists: int = 5, seed: int = 0) -> list[str]:
    """Picking by the proxy alone vs. by finalists, over random subsets of the candidates."""
    rows = result["rows"]
    truth = np.array([r["truth"] for r in rows])
    proxy = np.array([r["bn_top1"] for r in rows])
    short = np.array([r[f"steps_{result['steps']}"] for r in rows])
    rng = np.random.default_rng(seed)
    picks = {"proxy alone (bn_top1)": [], f"finalists (top-{finalists} by bn_top1, then steps_{result['steps']})": []}
    wins = {k: 0 for k in picks}
    size = min(size, len(rows))
    for _ in range(subsets):
        subset = rng.choice(len(rows), size=size, replace=False)
        order = subset[np.lexsort((subset, -proxy[subset]))]         # by proxy, ties by index
        by_proxy = order[0]
        top = order[:finalists]
        by_finalists = top[np.lexsort((np.arange(len(top)), -short[top]))][0]
        best = truth[subset].max()
        for key, pick in zip(picks, (by_proxy, by_finalists)):
            picks[key].append(truth[pick])
            wins[key] += truth[pick] >= best
    lines = [f"selection over {subsets} random subsets of {size} candidates (a search's pool): truth of the pick",
             "| picked by | mean | median | picks the subset's best |", "|---|---|---|---|"]
    for key, values in picks.items():
        lines.append(f"| {key} | {np.mean(values):.4f} | {np.median(values):.4f} | {wins[key] / subsets:.0%} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="repeatable; default resnet20")
    parser.add_argument("--budget", default="0.15flops")
    parser.add_argument("--data", default="digits", help="e.g. benchmarks.hard_digits:hard_digits (harder, larger)")
    parser.add_argument("--baseline-epochs", type=int, default=30, help="epochs of the cached zoo baseline")
    parser.add_argument("--candidates", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--lr", type=float, default=SearchConfig.finalist_lr,
                        help="the short fine-tune's peak learning rate (default: search.run's --finalist-lr)")
    parser.add_argument("--pruningnet-epochs", type=int, default=10, help="0: no PruningNet proxy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="8 candidates, 1 epoch, 10 steps, no PruningNet")
    args = parser.parse_args()
    if args.quick:
        args.candidates, args.finetune_epochs, args.steps, args.pruningnet_epochs = 8, 1, 10, 0
    torch.set_num_threads(1)
    for model in args.model or ["resnet20"]:
        started = time.perf_counter()
        result = fidelity(model, args.budget, args.candidates, args.finetune_epochs, args.steps,
                          args.pruningnet_epochs, args.seed, args.lr, data=args.data,
                          baseline_epochs=args.baseline_epochs)
        print()
        print("\n".join(proxy_table(result)))
        print()
        print("\n".join(selection_table(result)))
        print(f"({time.perf_counter() - started:.0f} s, held-out {result['held_out']} samples, seed {args.seed})\n",
              flush=True)


if __name__ == "__main__":
    main()
