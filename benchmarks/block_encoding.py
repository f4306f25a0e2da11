"""Which block encoding do agents search better: one keep flag per block, or one depth per stage?

    python benchmarks/block_encoding.py [--models resnet20,resnet56] [--agents random,abc,tpe]
                                        [--budget 0.25flops] [--trials 100] [--seeds 0,1,2]

Per model, the baseline (trained once on digits and cached, as the default job does) is derived twice,
with `block_encoding="flags"` and `"depth"`; every agent then searches each space with the same scorer
(same calibration and held-out batches), the same budget and trials, for every seed. Printed per model,
agent and encoding: the median and range over seeds of the best held-out score (what the search
maximizes), the median test top-1 of that best candidate (BN recalibrated on the same calibration
batches, no fine-tuning), its FLOPs ratio and how many blocks it removed. `--warm-start` gives every
agent the global-magnitude candidate first, as the default job does; without it, the agents' own
search is compared.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from agents import make_agent  # noqa: E402
from evaluators.accuracy import AccuracyEvaluator, stack_batches  # noqa: E402
from evaluators.cost import CostModel  # noqa: E402
from search.models.baseline import trained_baseline  # noqa: E402
from search.engine.budget import parse_budget  # noqa: E402
from search.engine.loop import Engine  # noqa: E402
from search.models.zoo import load_data, load_model  # noqa: E402
from spaces.derive import derive  # noqa: E402
from spaces.space import BLOCK_ENCODINGS  # noqa: E402
from spaces.warm_start import magnitude_candidate  # noqa: E402


def median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def compare(model_name: str, data, args) -> list[tuple[str, str, list[float], list[float]]]:
    model = load_model(model_name, num_classes=data.num_classes, input_shape=data.input_shape)
    model, test_top1 = trained_baseline(model, model_name, "digits", data, epochs=30, seed=0, batch_size=64,
                                        device=torch.device("cpu"), progress=False)
    example = data.train_eval[0][0].unsqueeze(0)
    rows = []
    for encoding in BLOCK_ENCODINGS:
        prunable = derive(model.eval(), example, block_encoding=encoding)
        cost = CostModel(prunable)
        base = cost.base.as_dict()
        budget = parse_budget([args.budget]).resolve(base)
        price = lambda c, cost=cost: cost.price(c).as_dict()  # noqa: E731
        evaluator = AccuracyEvaluator.from_dataset(prunable, data.train_eval, data.fit, data.held_out,
                                                   calib_batches=8, batch_size=64, eval_samples=1024)
        tester = AccuracyEvaluator(prunable, evaluator.calibration,
                                   stack_batches(data.test, range(len(data.test)), 256, "cpu"))
        print(f"{model_name} {encoding}: {prunable.space}; base held-out {evaluator.score(prunable.space.full()):.4f}"
              f", test {test_top1:.4f}", flush=True)
        for name in args.agents.split(","):
            bests, tests, ratios, removed = [], [], [], []
            for seed in args.seeds:
                initial = [magnitude_candidate(prunable, lambda c: budget.feasible(price(c)))] if args.warm_start else []
                agent = make_agent(name, prunable.space, budget, price=price, seed=seed, trials=args.trials,
                                   initial=[c for c in initial if c is not None])
                best = Engine(agent, price, budget, evaluator, trials=args.trials, progress=False,
                              canonical=prunable.canonical).run().best
                bests.append(best.result.score)
                tests.append(tester.score(best.candidate))
                ratios.append(best.result.costs["flops"] / base["flops"])
                removed.append(sum(not k for k in prunable.keeps(best.candidate)))
            print(f"  {name:8s} {encoding:6s} held-out {median_range(bests)}  test {median_range(tests)}  "
                  f"FLOPs x{statistics.median(ratios):.3f}  blocks removed {statistics.median(removed):.0f}",
                  flush=True)
            rows.append((name, encoding, bests, tests))
        evaluator.restore()
        tester.restore()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet56")
    parser.add_argument("--agents", default="random,abc,tpe")
    parser.add_argument("--budget", default="0.25flops")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--warm-start", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = load_data("digits", seed=0)
    print(f"budget {args.budget}, {args.trials} trials, seeds {args.seeds}, warm start {args.warm_start}, "
          f"torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    wins = {e: 0 for e in BLOCK_ENCODINGS}
    for model_name in args.models.split(","):
        rows = compare(model_name, data, args)
        for name in args.agents.split(","):
            medians = {e: statistics.median(b) for n, e, b, _ in rows if n == name}
            if medians["flags"] != medians["depth"]:
                wins[max(medians, key=medians.get)] += 1
    print("median held-out wins (model x agent): " + ", ".join(f"{e} {n}" for e, n in wins.items()))


if __name__ == "__main__":
    main()
