"""Agent comparison on the default model and data: best held-out score, trials to reach it, wall time.

    python benchmarks/agents.py [--agents uniform,random,abc,tpe] [--budgets 0.4flops,0.25flops]
                                [--trials 150] [--seeds 0,1,2] [--pruningnet-epochs 30]

Every agent gets the same base model (the cached default ResNet-20 baseline on digits), the same
scorer (same calibration and held-out batches) and the same number of trials; only its seed changes.
Printed per agent and budget: the median and range over seeds of the best held-out score, the median
trials needed to reach 99% of that seed's own final best, and the median wall time of a search.
`metapruning` searches with PruningNet scores (its PruningNet trained once, beforehand, and not counted
in the wall time); its row reports the base-weight score of the subnet it picks, like every other row.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.setting import Setting  # noqa: E402
from search.engine.config import SearchConfig  # noqa: E402
from search.engine.loop import Engine  # noqa: E402


def trials_to_reach(trials, fraction: float = 0.99) -> int:
    scores = [t.result.score if t.result.ok else float("-inf") for t in trials]
    final = max(scores)
    running = float("-inf")
    for i, s in enumerate(scores):
        running = max(running, s)
        if running >= fraction * final:
            return i + 1
    return len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="uniform,random,abc,tpe,amc")
    parser.add_argument("--budgets", default="0.4flops,0.25flops")
    parser.add_argument("--trials", type=int, default=150)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pruningnet-epochs", type=int, default=30, help="metapruning's PruningNet training")
    args = parser.parse_args()
    budgets = args.budgets.split(",")
    setting = Setting.of(SearchConfig(agent="random", budget=budgets[:1], model="resnet20", data="digits", seed=0,
                                      device="cpu", no_warm_start=True, pruningnet_epochs=args.pruningnet_epochs))
    prunable, evaluator, price, base = setting.prunable, setting.evaluator, setting.price, setting.base
    base_score = evaluator.score(prunable.space.full())
    scorers = {}
    if "metapruning" in args.agents:
        from evaluators.pruningnet import PruningNetEvaluator

        start = time.perf_counter()
        net = setting.at("0.4flops").train_pruningnet(prunable, price)
        print(f"PruningNet trained in {time.perf_counter() - start:.1f} s ({args.pruningnet_epochs} epochs)")
        scorers["metapruning"] = PruningNetEvaluator.of(evaluator, net)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"resnet20 on digits: base held-out {base_score:.4f}, test {setting.inputs.base_test:.4f}; {prunable.space}; "
          f"{args.trials} trials, seeds {seeds}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = f"{'budget':10s} {'agent':8s} {'best held-out: median [min, max]':34s} {'FLOPs':>6s} " \
             f"{'trials to 99%':>13s} {'wall s':>7s}"
    print(header)
    print("-" * len(header))
    for budget_text in budgets:
        pipeline = setting.at(budget_text)
        for name in args.agents.split(","):
            bests, reach, walls, ratios = [], [], [], []
            for seed in seeds:
                agent = pipeline.agent(prunable, price, name=name, seed=seed, trials=args.trials)
                scorer = scorers.get(name, evaluator)
                start = time.perf_counter()
                outcome = Engine(agent, price, pipeline.budget, scorer, trials=args.trials, progress=False,
                                 canonical=prunable.canonical).run()
                walls.append(time.perf_counter() - start)
                best = outcome.best
                if scorer is not evaluator:
                    scorer.restore()
                bests.append(evaluator.score(best.candidate) if scorer is not evaluator else best.result.score)
                ratios.append(best.result.costs["flops"] / base["flops"])
                reach.append(trials_to_reach(outcome.trials))
            print(f"{budget_text:10s} {name:8s} {statistics.median(bests):.4f} [{min(bests):.4f}, {max(bests):.4f}]"
                  f"{'':12s} {statistics.median(ratios):6.3f} {statistics.median(reach):13.0f} "
                  f"{statistics.median(walls):7.1f}", flush=True)
    evaluator.restore()


if __name__ == "__main__":
    main()
