"""Agent comparison on the default model and data: best held-out score, trials to reach it, wall time.

    python benchmarks/agents.py [--agents uniform,random,abc,tpe] [--budgets 0.4flops,0.25flops]
                                [--trials 150] [--seeds 0,1,2]

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

from agents import make_agent  # noqa: E402
from evaluators.accuracy import AccuracyEvaluator  # noqa: E402
from evaluators.cost import CostModel  # noqa: E402
from search.baseline import trained_baseline  # noqa: E402
from search.budget import parse_budget  # noqa: E402
from search.engine import Engine  # noqa: E402
from search.zoo import load_data, load_model  # noqa: E402
from spaces.derive import derive  # noqa: E402


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
    args = parser.parse_args()
    torch.manual_seed(0)
    data = load_data("digits", seed=0)
    model = load_model("resnet20", num_classes=data.num_classes, input_shape=data.input_shape)
    model, test_top1 = trained_baseline(model, "resnet20", "digits", data, epochs=30, seed=0, batch_size=64,
                                        device=torch.device("cpu"), progress=False)
    prunable = derive(model.eval(), data.train_eval[0][0].unsqueeze(0))
    cost = CostModel(prunable)
    base = cost.base.as_dict()
    evaluator = AccuracyEvaluator.from_dataset(prunable, data.train_eval, data.fit, data.held_out,
                                               calib_batches=8, batch_size=64, eval_samples=1024)
    base_score = evaluator.score(prunable.space.full())
    price = lambda c: cost.price(c).as_dict()  # noqa: E731
    scorers = {}
    if "metapruning" in args.agents:
        from evaluators.pruningnet import PruningNet, PruningNetEvaluator, feasible_sampler, train_pruningnet
        from torch.utils.data import DataLoader, Subset

        net = PruningNet(prunable, seed=0)
        loader = DataLoader(Subset(data.train, data.fit.tolist()), batch_size=64, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        budget04 = parse_budget(["0.4flops"]).resolve(base)
        train_pruningnet(net, loader, epochs=30, seed=0, progress=False,
                         sample=feasible_sampler(prunable.space, lambda c: budget04.feasible(price(c))))
        print(f"PruningNet trained in {time.perf_counter() - start:.1f} s (30 epochs)")
        scorers["metapruning"] = PruningNetEvaluator.of(evaluator, net)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"resnet20 on digits: base held-out {base_score:.4f}, test {test_top1:.4f}; {prunable.space}; "
          f"{args.trials} trials, seeds {seeds}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = f"{'budget':10s} {'agent':8s} {'best held-out: median [min, max]':34s} {'FLOPs':>6s} " \
             f"{'trials to 99%':>13s} {'wall s':>7s}"
    print(header)
    print("-" * len(header))
    for budget_text in args.budgets.split(","):
        budget = parse_budget([budget_text]).resolve(base)
        for name in args.agents.split(","):
            bests, reach, walls, ratios = [], [], [], []
            for seed in seeds:
                agent = make_agent(name, prunable.space, budget, price=price, seed=seed, trials=args.trials)
                scorer = scorers.get(name, evaluator)
                start = time.perf_counter()
                outcome = Engine(agent, price, budget, scorer, trials=args.trials, progress=False).run()
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
