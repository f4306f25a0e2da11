"""Finalists and filling the budget, judged after fine-tuning: does the finalists' pick beat the proxy's, and
does `--fill` or a finer width grid give a better model after the same fine-tune?

    python benchmarks/finalists.py [--models resnet20,mobilenetv2] [--seeds 0,1,2] [--budget 0.15flops]
                                   [--trials 60] [--finetune-epochs 1] [--quick]

Each search (agent `--agent`, default tpe, on hard digits, seeded, warm-started as `search.run` does) yields
its top 5 distinct candidates (`search.selection.finalists.top_distinct`), ranked by the proxy (BN-recalibrated
held-out top-1). Every one of the 5 is materialized with the base weights, recalibrated and fine-tuned
with one recipe (`search.finetune.finetune_module`, `--finetune-epochs`, seed 0), and its test top-1
after that is its truth, so that any rule that picks among the 5 is judged by the same truth:
- proxy: the search's best (what is exported with `--finalists 0`);
- bn_ce: the lowest held-out cross-entropy with the base weights (no training);
- steps=S lr=L [kd] / R: each finalist trained S steps on the fit split (cosine from L; kd: distilled from the
  base model's outputs instead of the labels), then ranked by `search.selection.finalists.rank_finalists` (R: top1 or ce,
  held-out top-1 or cross-entropy after the steps; "+ proxy": plus the proxy's rank, ties in the proxy's order).
Printed per rule: the truth of its pick, median [min, max] over searches, and wins/ties/losses against the
proxy's pick. Separately, "extra steps": each of `--rules`' pick fine-tuned from the weights its steps left
(what `search.run` exports) against the same candidate fine-tuned from the base weights.

Fill and grid: uniform and the agent searched with the ten-ratio grid and with a finer one (`--fine-ratios`),
each with and without `search.engine.pipeline.Pipeline.fill` (the best candidates widened until the budget binds,
scored as extra trials); the proxy's pick of each is fine-tuned the same way. Printed: FLOPs ratio used and
test top-1 after fine-tuning, median [min, max], and wins/ties/losses against ten ratios without fill.
Every figure is printed by this script; nothing is timed (the seconds shown are for orientation only).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.setting import Setting  # noqa: E402
from evaluators.accuracy import recalibrate  # noqa: E402
from search.engine.config import SearchConfig  # noqa: E402
from search.engine.loop import Engine  # noqa: E402
from search.selection.finalists import (Finalist, FinalistSettings, ShuffledBatches, held_out_loss, rank_finalists,  # noqa: E402
                              score_module, short_finetune, top_distinct)
from search.finetune import finetune_module  # noqa: E402
from spaces.materialize import materialize  # noqa: E402
from spaces.space import Candidate  # noqa: E402

HARD_DIGITS = "benchmarks.hard_digits:hard_digits"
TEN = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"
FINE = ",".join(f"{0.05 * i:.2f}" for i in range(1, 21))
COUNT = 5


@dataclass(frozen=True)
class Training:
    """One way of training the finalists briefly."""
    steps: int
    lr: float
    kd: bool = False

    @property
    def label(self) -> str:
        return f"steps={self.steps} lr={self.lr:g}" + (" kd" if self.kd else "")


TRAININGS = ("50:0.01", "50:0.05", "100:0.05", "50:0.05:kd")  # STEPS:LR[:kd]
DEFAULT_RULE = "steps=50 lr=0.01 / top1"   # what search.run did before this study


@dataclass
class Pool:
    """One search's top candidates, their scores under every rule's signal, and their truths."""
    model: str
    seed: int
    candidates: list[Candidate]
    flops: list[float]
    signals: dict[str, list[float]] = field(default_factory=dict)   # one per candidate (see `picks`)
    trials: list = field(default_factory=list)
    truth: list[float] = field(default_factory=list)
    trained: dict[str, list[nn.Module]] = field(default_factory=dict)


class Bench:
    """One model's setting per width grid, and the fine-tune every pick gets."""

    def __init__(self, model: str, args: argparse.Namespace):
        self.model, self.args = model, args
        config = SearchConfig(agent=args.agent, budget=[args.budget], model=model, data=args.data, seed=0,
                              device="cpu", baseline_epochs=args.baseline_epochs, trials=args.trials)
        self.settings = {"ten": Setting.of(config)}
        inputs = self.settings["ten"].inputs
        if args.fine_ratios:
            self.settings["fine"] = Setting.of(replace(config, width_ratios=args.fine_ratios), inputs=inputs)
        self.data = inputs.data
        self.fit = torch.utils.data.Subset(self.data.train, self.data.fit.tolist())
        self._truth: dict[tuple[str, Candidate], float] = {}

    def search(self, grid: str, agent: str, seed: int):
        setting = self.settings[grid]
        pipeline = setting.at(self.args.budget)
        chooser = pipeline.agent(setting.prunable, setting.price, name=agent, seed=seed, trials=self.args.trials)
        outcome = Engine(chooser, setting.price, pipeline.budget, setting.evaluator, trials=self.args.trials,
                         progress=False, canonical=setting.prunable.canonical).run()
        setting.evaluator.restore()
        return outcome.trials

    def filled(self, grid: str, trials) -> list:
        """The search's trials and the fill step's extra ones (as `search.run --fill` adds them)."""
        setting = self.settings[grid]
        pipeline = setting.at(self.args.budget)
        extra = pipeline.fill(setting.prunable, list(trials), setting.evaluator, setting.price)
        setting.evaluator.restore()
        return list(trials) + extra

    def finetuned(self, module: nn.Module) -> float:
        _, history = finetune_module(module, self.data, epochs=self.args.finetune_epochs, seed=0)
        return history[-1]["test_top1"]

    def truth(self, grid: str, candidate: Candidate) -> float:
        """Test top-1 of `candidate` (base weights, recalibrated) after the common fine-tune (cached)."""
        key = (grid, candidate)
        if key not in self._truth:
            setting = self.settings[grid]
            self._truth[key] = self.finetuned(setting.evaluator.recalibrated(materialize(setting.prunable, candidate)))
        return self._truth[key]

    def flops_ratio(self, grid: str, candidate: Candidate) -> float:
        setting = self.settings[grid]
        return setting.price(candidate)["flops"] / setting.base["flops"]

    def pool(self, trials, seed: int, trainings: Sequence[Training]) -> Pool:
        """The top candidates of a ten-ratio search, every signal and every truth."""
        setting = self.settings["ten"]
        evaluator = setting.evaluator
        chosen = top_distinct(trials, COUNT, setting.prunable.canonical)
        pool = Pool(self.model, seed, [t.candidate for t in chosen], [self.flops_ratio("ten", t.candidate)
                                                                          for t in chosen])
        pool.trials = chosen
        pool.signals["proxy"] = [t.result.score for t in chosen]
        pool.signals["bn_ce"] = [-held_out_loss(evaluator.recalibrated(materialize(setting.prunable, c)),
                                              evaluator.held_out) for c in pool.candidates]
        teacher = setting.inputs.model.eval()
        for training in trainings:
            tops, ces, modules = [], [], []
            for rank, candidate in enumerate(pool.candidates):
                module = materialize(setting.prunable, candidate)
                torch.manual_seed(rank)
                short_finetune(module.train(), ShuffledBatches(self.fit, 64)(0),
                               FinalistSettings(count=COUNT, steps=training.steps, lr=training.lr),
                               device=torch.device("cpu"), teacher=teacher if training.kd else None)
                recalibrate(module, evaluator.calibration)
                tops.append(score_module(module, evaluator.held_out))
                ces.append(held_out_loss(module, evaluator.held_out))
                modules.append(module)
            pool.signals[f"{training.label} / top1"] = tops
            pool.signals[f"{training.label} / ce"] = ces  # the loss itself (lower is better)
            pool.trained[training.label] = modules
        pool.truth = [self.truth("ten", c) for c in pool.candidates]
        return pool


RULES = {"top1": "score", "top1 + proxy": "score+proxy", "ce": "ce", "ce + proxy": "ce+proxy"}  # -> rank_finalists


def rule_of(steps: int, lr: float, rank: str) -> str:
    """The study's name for `search.run`'s finalists with these settings."""
    return f"steps={steps} lr={lr:g} / {next(k for k, v in RULES.items() if v == rank)}"


CHOSEN_RULE = rule_of(SearchConfig.finalist_steps, SearchConfig.finalist_lr, SearchConfig.finalist_rank)  # today's


def picks(pool: Pool) -> dict[str, int]:
    """Every rule's pick (an index into the pool): proxy, bn_ce, and each training under each of
    `search.selection.finalists.rank_finalists`' rankings."""
    chosen = {"proxy": 0, "bn_ce": max(range(len(pool.trials)), key=lambda i: (pool.signals["bn_ce"][i], -i))}
    trainings = dict.fromkeys(name.split(" / ")[0] for name in pool.signals if " / " in name)
    for training in trainings:
        finalists = [Finalist(trial, top1, 0.0, loss=loss) for trial, top1, loss in
                     zip(pool.trials, pool.signals[f"{training} / top1"], pool.signals[f"{training} / ce"])]
        for rule, rank in RULES.items():
            chosen[f"{training} / {rule}"] = finalists.index(rank_finalists(finalists, rank)[0])
    return chosen


def median_range(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def record(wins: list[float], against: list[float], tol: float = 1e-9) -> str:
    w = sum(a > b + tol for a, b in zip(wins, against))
    l = sum(a < b - tol for a, b in zip(wins, against))  # noqa: E741
    return f"{w}/{len(wins) - w - l}/{l}"


def selection_table(pools: Sequence[Pool]) -> list[str]:
    """Each rule's pick's truth over all searches, against the proxy's pick."""
    chosen = [picks(p) for p in pools]
    proxy = [p.truth[c["proxy"]] for p, c in zip(pools, chosen)]
    best = [max(p.truth) for p in pools]
    lines = ["| picked by | test top-1 after FT, median [min, max] | mean | w/t/l vs proxy | picks the top-5's best |",
             "|---|---|---|---|---|"]
    for name in chosen[0]:
        values = [p.truth[c[name]] for p, c in zip(pools, chosen)]
        hits = sum(v >= b - 1e-9 for v, b in zip(values, best))
        lines.append(f"| {name} | {median_range(values)} | {statistics.mean(values):.4f} | {record(values, proxy)} | "
                     f"{hits}/{len(pools)} |")
    lines.append(f"| (best of the top {COUNT}, by test: an oracle) | {median_range(best)} | "
                 f"{statistics.mean(best):.4f} | {record(best, proxy)} | {len(pools)}/{len(pools)} |")
    return lines


def per_search_table(pools: Sequence[Pool]) -> list[str]:
    lines = ["| model | seed | FLOPs of the 5 | proxy of the 5 | truth of the 5 |", "|---|---|---|---|---|"]
    for p in pools:
        lines.append(f"| {p.model} | {p.seed} | {' '.join(f'{f:.3f}' for f in p.flops)} | "
                     f"{' '.join(f'{v:.4f}' for v in p.signals['proxy'])} | "
                     f"{' '.join(f'{v:.4f}' for v in p.truth)} |")
    return lines


@dataclass
class FillRow:
    model: str
    agent: str
    seed: int
    variant: str       # "ten" / "fine", with or without " + fill"
    flops: float
    proxy: float
    truth: float


def fill_rows(bench: Bench, agent: str, seed: int, ten_trials=None) -> list[FillRow]:
    """The proxy's pick of one search per grid, with and without fill, each fine-tuned."""
    rows = []
    for grid in bench.settings:
        trials = ten_trials if grid == "ten" and ten_trials is not None else bench.search(grid, agent, seed)
        for variant, pool in ((grid, trials), (f"{grid} + fill", bench.filled(grid, trials))):
            best = top_distinct(pool, 1)[0]
            rows.append(FillRow(bench.model, agent, seed, variant, bench.flops_ratio(grid, best.candidate),
                                best.result.score, bench.truth(grid, best.candidate)))
    return rows


def fill_table(rows: Sequence[FillRow]) -> list[str]:
    lines = ["| model | agent | grid | FLOPs ratio | held-out (proxy) | test top-1 after FT | w/t/l vs ten ratios |",
             "|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r.model, r.agent) for r in rows))
    for model, agent in keys:
        mine = [r for r in rows if (r.model, r.agent) == (model, agent)]
        reference = {r.seed: r.truth for r in mine if r.variant == "ten"}
        for variant in dict.fromkeys(r.variant for r in mine):
            group = [r for r in mine if r.variant == variant]
            vs = "-" if variant == "ten" else record([r.truth for r in group], [reference[r.seed] for r in group])
            flops = [r.flops for r in group]
            lines.append(f"| {model} | {agent} | {variant} | {statistics.median(flops):.3f} "
                         f"[{min(flops):.3f}, {max(flops):.3f}] | "
                         f"{median_range([r.proxy for r in group])} | {median_range([r.truth for r in group])} | {vs} |")
    totals = {}
    for r in rows:
        if r.variant != "ten":
            ref = next(x.truth for x in rows if (x.model, x.agent, x.seed, x.variant) == (r.model, r.agent, r.seed, "ten"))
            totals.setdefault(r.variant, []).append((r.truth, ref))
    lines += ["", "| grid | w/t/l vs ten ratios over every model, agent and seed | mean change |", "|---|---|---|"]
    for variant, pairs in totals.items():
        lines.append(f"| {variant} | {record([a for a, _ in pairs], [b for _, b in pairs])} | "
                     f"{statistics.mean(a - b for a, b in pairs):+.4f} |")
    return lines


def study(args: argparse.Namespace, progress: Callable[[str], None] = print) -> dict:
    """Every pool and fill row; see the module docstring."""
    pools, fills, extra = [], [], {}
    for model in args.models:
        started = time.perf_counter()
        bench = Bench(model, args)
        for seed in args.seeds:
            trials = bench.search("ten", args.agent, seed)
            pool = bench.pool(trials, seed, args.trainings)
            pools.append(pool)
            progress(f"  {model} seed {seed}: truth of the 5 {' '.join(f'{v:.4f}' for v in pool.truth)} "
                     f"({time.perf_counter() - started:.0f} s)")
            if args.fill:
                fills += fill_rows(bench, args.agent, seed, trials)
            for rule in args.rules:
                index = picks(pool)[rule]
                trained = pool.trained[rule.split(" / ")[0]][index]
                extra[id(pool), rule] = bench.finetuned(copy.deepcopy(trained))
            pool.trained = {}  # the modules are not needed any more
        if args.fill:
            fills += fill_rows(bench, "uniform", 0)
        progress(f"  {model} done ({time.perf_counter() - started:.0f} s)")
    return {"pools": pools, "fills": fills, "extra": extra}


def extra_table(result: dict, rule: str) -> list[str]:
    pools = result["pools"]
    index = [picks(p)[rule] for p in pools]
    base = [p.truth[i] for p, i in zip(pools, index)]
    trained = [result["extra"][id(p), rule] for p in pools]
    return [f"| the pick of `{rule}`, fine-tuned from | test top-1 after FT, median [min, max] | w/t/l vs base weights |",
            "|---|---|---|", f"| the base weights (recalibrated) | {median_range(base)} | - |",
            f"| the weights its finalist steps left (what search.run exports) | {median_range(trained)} | "
            f"{record(trained, base)} |"]


def lines_of(result: dict, args: argparse.Namespace) -> list[str]:
    pools = result["pools"]
    out = [f"{args.agent} searches ({args.trials} trials) at {args.budget} on {args.data}, models "
           f"{', '.join(args.models)}, seeds {', '.join(map(str, args.seeds))}: the top {COUNT} distinct candidates "
           f"of each, every one fine-tuned {args.finetune_epochs} epoch(s) from the base weights (the truth).", "",
           *selection_table(pools), ""]
    for rule in args.rules:
        out += [*extra_table(result, rule), ""]
    out += per_search_table(pools)
    if result["fills"]:
        out += ["", f"Fill and width grid: the proxy's pick, fine-tuned {args.finetune_epochs} epoch(s) from the base "
                f"weights; ten = ratios {TEN}; fine = ratios 0.05, 0.10, ..., 1 (every width of a 16-channel group).",
                "", *fill_table(result["fills"])]
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet20,mobilenetv2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--agent", default="tpe")
    p.add_argument("--budget", default="0.15flops")
    p.add_argument("--data", default=HARD_DIGITS)
    p.add_argument("--baseline-epochs", type=int, default=10)
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--fine-ratios", default=FINE, help="the finer grid compared with ten ratios ('' : none)")
    p.add_argument("--no-fill", dest="fill", action="store_false", help="skip the fill and grid study")
    p.add_argument("--trainings", default=",".join(TRAININGS),
                   help="the finalists' short trainings compared: STEPS:LR[:kd], comma-separated")
    p.add_argument("--rules", default=f"{DEFAULT_RULE},{CHOSEN_RULE}",
                   help="the rules whose pick's extra steps are measured (comma-separated)")
    p.add_argument("--quick", action="store_true", help="ResNet-20, 1 seed, 8 trials, digits")
    return p


def configure(args: argparse.Namespace) -> argparse.Namespace:
    if args.quick:
        args.models, args.seeds, args.trials, args.data, args.baseline_epochs = "resnet20", "0", 8, "digits", 30
    args.models = args.models.split(",")
    args.seeds = [int(s) for s in str(args.seeds).split(",")]
    args.trainings = [Training(int(t.split(":")[0]), float(t.split(":")[1]), t.endswith(":kd"))
                      for t in args.trainings.split(",")]
    args.rules = args.rules.split(",")
    return args


def main() -> None:
    args = configure(parser().parse_args())
    torch.set_num_threads(1)
    started = time.perf_counter()
    result = study(args)
    print()
    print("\n".join(lines_of(result, args)))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
