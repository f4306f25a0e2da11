"""The benchmark report: regenerates docs/benchmarks.md (tables and plots) from one run, side by side.

    pip install -e ".[bench]"          # Torch-Pruning, the peer
    python benchmarks/report.py        # about 90 min on 2 CPU cores; --quick for a smoke run

Everything in the report is measured by this run, except sections it carries over from the previous
report (marked as such: the digits tables, the speed and agent-cost sections when not regenerated); no
figure is typed by hand. Sections:
1. Peer comparison in a regime where fine-tuning does not erase the differences: ResNet-20 and a
   CIFAR-style MobileNetV2 (depthwise convs) on hard digits (`benchmarks/hard_digits.py`: distorted,
   noisy digits, 8622 training and 1800 test images) at 0.15 x FLOPs with a 2-epoch fine-tune: Torch-Pruning's global
   magnitude and uniform L1 pruning driven to each FLOPs target, against the best subnet of each of
   our agents after the same number of trials (seeds 0-2). Every method's subnet is exported, its
   BatchNorms recalibrated on the same calibration batches, scored on the same held-out samples,
   then fine-tuned with one recipe (`search.finetune.finetune_module`: same epochs, lr, seed) and
   tested. Our agents are ranked by their median held-out score (what a user sees), never by test.
   Agents start, as `search.run` does by default, from our own global-magnitude candidate at the
   budget (`spaces.warm_start`); that candidate alone is reported too ("magnitude start"). Rows "X +
   finalists" are what `search.run` exports by default: agent X's best 5 candidates, each fine-tuned
   50 steps and scored again, the first by `--finalist-rank` exported with its trained weights
   (`search.finalists`).
   Proxy fidelity (`benchmarks/fidelity.py`): how each cheap score ranks candidates by test top-1
   after the fine-tune. Finalists and fill (`benchmarks/finalists.py`, `--finalists-agent`): the
   finalists' pick against the proxy's, each search's top 5 all fine-tuned; `--fill` on and off.
2. Search cost: wall time and evaluations until each agent reached its best.
3. Speed: per-candidate cost against a Torch-Pruning user's loop (ResNet-50, 64x64), the engine's
   overhead over bare forward passes, Ray scaling.
Writes `--out` (markdown) and its plots beside it (`docs/benchmarks/*.png`); prints progress; copies
the headline table into README.md between its `benchmark-headline` markers (`--sync-readme` does
only that, from an existing report).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import torch_pruning_peer as peer  # noqa: E402
from benchmarks.setting import Setting  # noqa: E402
from evaluators.accuracy import AccuracyEvaluator, recalibrate, top1  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from search.finalists import FinalistSettings, ShuffledBatches, run_finalists  # noqa: E402
from search.engine import Engine  # noqa: E402
from search.finetune import finetune_module  # noqa: E402
from search.pipeline import Pipeline  # noqa: E402
from search.training import evaluate  # noqa: E402
from spaces.materialize import materialize  # noqa: E402
from spaces.warm_start import magnitude_candidate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
README_MARKERS = ("<!-- benchmark-headline:start -->", "<!-- benchmark-headline:end -->")
AGENTS = "uniform,random,abc,tpe,nsga2,amc,evolution,metapruning"
DETERMINISTIC = {"uniform"}  # agents whose seed changes nothing: searched once
PEERS = {"global": "TP global magnitude", "uniform": "TP uniform L1"}


@dataclass
class Row:
    """One method's subnet at one budget (for our agents: one seed of its search)."""

    model: str
    budget: str
    method: str
    seed: int | None
    flops: float             # ratio to the base model
    params: float
    held_out: float          # BN-recalibrated top-1 on the held-out samples
    test_before: float       # test top-1 of the recalibrated subnet, before fine-tuning
    test_after: float        # after the common fine-tuning recipe
    search_s: float          # wall time of the search (Torch-Pruning: its bisection to the target)
    to_best_s: float         # wall time until the best was found
    evaluations: int         # scored candidates (Torch-Pruning: prunings tried)
    to_best: int             # scored candidates until the best
    curve: list[float] = field(default_factory=list)  # best held-out so far, per scored candidate


class TimedAgent:
    """An agent that notes when each result was told (to time the search until its best)."""

    def __init__(self, agent):
        self._agent, self.told = agent, []

    def __getattr__(self, name):
        return getattr(self._agent, name)

    def tell(self, candidate, result) -> None:
        self.told.append(time.perf_counter())
        self._agent.tell(candidate, result)


def held_out_score(module: nn.Module, evaluator: AccuracyEvaluator) -> float:
    """The exported subnet's BatchNorms recalibrated on the evaluator's batches, then held-out top-1."""
    recalibrate(module, evaluator.calibration)
    return top1(module.eval(), evaluator.held_out)


class Study:
    """One model's comparison: base model, scorer and fine-tuning recipe shared by every method."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.args = name, args
        config = SearchConfig(agent="random", budget=args.budgets[:1], model=name, data=args.data, seed=0, device="cpu",
                              no_warm_start=args.no_warm_start, pruningnet_epochs=args.pruningnet_epochs,
                              baseline_epochs=args.baseline_epochs)
        pipeline = Pipeline(config, progress=False)
        self.base_model = copy.deepcopy(pipeline.load_inputs().model)  # the peers prune copies (derive reorders)
        self.setting = Setting.of(config, inputs=pipeline.inputs)
        self.data, self.base_test = self.setting.inputs.data, self.setting.inputs.base_test
        self.example, self.test_loader = self.setting.inputs.example, self.setting.inputs.test
        self.prunable, self.evaluator, self.price = self.setting.prunable, self.setting.evaluator, self.setting.price
        self.base = self.setting.base
        self.base_held_out = self.evaluator.score(self.prunable.space.full())
        self.evaluator.restore()  # the base model's own BatchNorm state (materialized subnets copy it)

    def finish(self, module: nn.Module) -> tuple[float, float, float]:
        """(held-out, test before, test after fine-tuning) of an exported subnet."""
        held = held_out_score(module, self.evaluator)
        before = evaluate(module, self.test_loader)
        _, history = finetune_module(module, self.data, epochs=self.args.finetune_epochs, seed=0)
        return held, before, history[-1]["test_top1"]

    def peer(self, budget: str, method: str) -> Row:
        target = float(budget.removesuffix("flops"))
        start = time.perf_counter()
        pruned = peer.prune_to_flops(self.base_model, self.example, method, target)
        seconds = time.perf_counter() - start
        held, before, after = self.finish(pruned.module)
        return Row(self.name, budget, PEERS[method], None, pruned.flops_ratio, pruned.params_ratio, held, before,
                   after, seconds, seconds, pruned.tries, pruned.tries)

    def warm_start(self, budget_text: str) -> list:
        """Global magnitude pruning's candidate at the budget (what agents start from), unless turned off."""
        if self.args.no_warm_start:
            return []
        budget = self.setting.budget(budget_text)
        candidate = magnitude_candidate(self.prunable, lambda c: budget.feasible(self.price(c)))
        return [] if candidate is None else [candidate]

    def magnitude_start(self, budget_text: str, candidate) -> Row:
        start = time.perf_counter()
        module = materialize(self.prunable, candidate)
        seconds = time.perf_counter() - start
        held, before, after = self.finish(module)
        costs = self.price(candidate)
        return Row(self.name, budget_text, "magnitude start", None, costs["flops"] / self.base["flops"],
                   costs["params"] / self.base["params"], held, before, after, seconds, seconds, 1, 1)

    def finalists(self, trials, budget_text: str, name: str, seed: int, seconds: float) -> Row:
        """What `search.run` exports by default: its best `--finalists` candidates fine-tuned briefly, the best."""
        start = time.perf_counter()
        defaults = SearchConfig()
        settings = FinalistSettings(count=defaults.finalists, steps=defaults.finalist_steps, lr=defaults.finalist_lr,
                                    seed=0, rank=defaults.finalist_rank)
        batches = ShuffledBatches(torch.utils.data.Subset(self.data.train, self.data.fit.tolist()), 64)

        build = lambda c: materialize(self.prunable, c)  # noqa: E731 - base weights, as search.run exports them
        ranked = run_finalists(trials, settings, build=build, batches=batches, calibration=self.evaluator.calibration,
                               held_out=self.evaluator.held_out, device=torch.device("cpu"))
        best = ranked[0]
        held, before, after = self.finish(best.module)
        costs = self.price(best.trial.candidate)
        spent = time.perf_counter() - start
        return Row(self.name, budget_text, f"{name} + finalists", seed, costs["flops"] / self.base["flops"],
                   costs["params"] / self.base["params"], held, before, after, seconds + spent, seconds + spent,
                   len([t for t in trials if t.result.ok]), 0)

    def agent(self, budget_text: str, name: str, seed: int, pruningnet=None,
              pruningnet_s: float = 0.0) -> tuple[Row, list]:
        """One search's row, and its trials (for the finalists)."""
        pipeline = self.setting.at(budget_text)
        scorer = self.evaluator
        if pruningnet is not None:
            from evaluators.pruningnet import PruningNetEvaluator

            scorer = PruningNetEvaluator.of(self.evaluator, pruningnet)
        agent = TimedAgent(pipeline.agent(self.prunable, self.price, name=name, seed=seed, trials=self.args.trials))
        start = time.perf_counter()
        outcome = Engine(agent, self.price, pipeline.budget, scorer, trials=self.args.trials, progress=False).run()
        seconds = time.perf_counter() - start + pruningnet_s
        if scorer is not self.evaluator:
            scorer.restore()
        self.evaluator.restore()
        best = outcome.best
        told = dict(zip((t.number for t in outcome.trials), agent.told))
        scored = [t for t in outcome.trials if t.result.ok]
        curve, running = [], 0.0
        for t in scored:
            running = max(running, t.result.score)
            curve.append(running)
        if pruningnet is not None:  # as search.run exports it: PruningNet's top 5 scored again with the base weights
            best = run_finalists(outcome.trials, FinalistSettings(count=5, steps=0), build=lambda c: materialize(
                self.prunable, c), batches=None, calibration=self.evaluator.calibration,
                held_out=self.evaluator.held_out, device=torch.device("cpu"))[0].trial
        module = materialize(self.prunable, best.candidate)
        held, before, after = self.finish(module)
        costs = self.price(best.candidate)
        row = Row(self.name, budget_text, name, seed, costs["flops"] / self.base["flops"],
                  costs["params"] / self.base["params"], held, before, after, seconds,
                  told[best.number] - start + pruningnet_s, len(scored),
                  1 + next(i for i, t in enumerate(scored) if t.number == best.number), curve)
        return row, outcome.trials

    def pruningnet(self, budget_text: str):
        """MetaPruning's PruningNet, trained on candidates within the budget; (net, training seconds)."""
        start = time.perf_counter()
        net = self.setting.at(budget_text).train_pruningnet(self.prunable, self.price)
        return net, time.perf_counter() - start

    def run(self) -> list[Row]:
        rows = []
        for budget in self.args.budgets:
            for method in PEERS:
                rows.append(self.peer(budget, method))
                log(rows[-1])
            initial = self.warm_start(budget)
            if initial:
                rows.append(self.magnitude_start(budget, initial[0]))
                log(rows[-1])
            for name in self.args.agents:
                net, net_s = self.pruningnet(budget) if name == "metapruning" else (None, 0.0)
                for seed in self.args.seeds[:1] if name in DETERMINISTIC else self.args.seeds:
                    row, trials = self.agent(budget, name, seed, net, net_s)
                    rows.append(row)
                    log(row)
                    if name in self.args.finalist_agents:
                        try:
                            rows.append(self.finalists(trials, budget, name, seed, row.search_s))
                            log(rows[-1])
                        except Exception as error:  # noqa: BLE001 - the row is missing, and says why
                            print(f"  {name} + finalists seed {seed} failed: {type(error).__name__}: {error}",
                                  flush=True)
        return rows


def log(row: Row) -> None:
    seed = "" if row.seed is None else f" seed {row.seed}"
    print(f"  {row.model} {row.budget} {row.method}{seed}: FLOPs x{row.flops:.3f}, held-out {row.held_out:.4f}, "
          f"test {row.test_before:.4f} -> {row.test_after:.4f} ({row.search_s:.1f} s)", flush=True)


# ------------------------------------------------------------------------------------------ tables
def median_range(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def methods(rows: list[Row]) -> list[str]:
    return list(dict.fromkeys(r.method for r in rows))


def ours_best(rows: list[Row]) -> str:
    """Our agent with the highest median held-out score (chosen without looking at test top-1)."""
    ours = [m for m in methods(rows) if m not in PEERS.values() and m != "magnitude start"]
    return max(ours, key=lambda m: statistics.median(r.held_out for r in rows if r.method == m))


def comparison_table(study: Study, rows: list[Row]) -> list[str]:
    lines = [f"Base {study.name}: {study.base['flops'] / 1e6:.2f} MFLOPs, {study.base['params'] / 1e6:.3f} M params, "
             f"held-out {study.base_held_out:.4f}, test {study.base_test:.4f}. Agents: median [min, max] over "
             f"seeds {', '.join(map(str, study.args.seeds))}; TP (Torch-Pruning) is deterministic.", "",
             "| budget | method | FLOPs | params | held-out | test before FT | test after FT |",
             "|---|---|---|---|---|---|---|"]
    for budget in study.args.budgets:
        here = [r for r in rows if r.budget == budget]
        best = ours_best(here)
        for method in methods(here):
            mine = [r for r in here if r.method == method]
            label = f"**{method}**" if method == best else method
            lines.append(f"| {budget} | {label} | {statistics.median(r.flops for r in mine):.3f} | "
                         f"{statistics.median(r.params for r in mine):.3f} | {median_range([r.held_out for r in mine])} "
                         f"| {median_range([r.test_before for r in mine])} | "
                         f"{median_range([r.test_after for r in mine])} |")
    return lines


def headline(studies: list[tuple[Study, list[Row]]]) -> list[str]:
    lines = ["| model | budget | TP global magnitude | TP uniform L1 | ours: best agent by held-out | "
             "margin over the better peer |", "|---|---|---|---|---|---|"]
    for study, rows in studies:
        for budget in study.args.budgets:
            here = [r for r in rows if r.budget == budget]
            best = ours_best(here)
            tp = {m: next(r for r in here if r.method == m) for m in PEERS.values()}
            mine = [r for r in here if r.method == best]
            held, after = statistics.median(r.held_out for r in mine), statistics.median(r.test_after for r in mine)
            cells = [f"{r.held_out:.4f} / {r.test_after:.4f}" for r in tp.values()]
            lines.append(f"| {study.name} | {budget} | {' | '.join(cells)} | {held:.4f} / {after:.4f} ({best}) | "
                         f"{held - max(r.held_out for r in tp.values()):+.4f} / "
                         f"{after - max(r.test_after for r in tp.values()):+.4f} |")
    return lines


def search_cost_table(rows: list[Row]) -> list[str]:
    lines = ["| model | budget | method | evaluations | evaluations to best | wall s | wall s to best |",
             "|---|---|---|---|---|---|---|"]
    for (model, budget), group in groupby(rows, lambda r: (r.model, r.budget)).items():
        for method in methods(group):
            mine = [r for r in group if r.method == method]
            lines.append(f"| {model} | {budget} | {method} | {statistics.median(r.evaluations for r in mine):.0f} | "
                         f"{statistics.median(r.to_best for r in mine):.0f} | "
                         f"{statistics.median(r.search_s for r in mine):.1f} | "
                         f"{statistics.median(r.to_best_s for r in mine):.1f} |")
    return lines


def groupby(rows, key) -> dict:
    groups: dict = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


# ------------------------------------------------------------------------------------------- plots
def plot_comparison(study: Study, rows: list[Row], path: Path) -> None:
    budgets = study.args.budgets
    fig, axes = plt.subplots(1, len(budgets), figsize=(6 * len(budgets), 4.2), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        here = [r for r in rows if r.budget == budget]
        names = methods(here)
        for i, method in enumerate(names):
            values = [r.test_after for r in here if r.method == method]
            mid = statistics.median(values)
            color = "tab:gray" if method in PEERS.values() else "tab:blue"
            ax.bar(i, mid, color=color, yerr=[[mid - min(values)], [max(values) - mid]], capsize=3)
        ax.axhline(study.base_test, color="black", linestyle="--", linewidth=1, label="base model")
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
        low = min(r.test_after for r in here)
        ax.set_ylim(max(0.0, low - 0.05), 1.0)
        ax.set_title(f"{study.name}, {budget}: test top-1 after fine-tuning")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_convergence(rows: list[Row], path: Path) -> None:
    groups = groupby([r for r in rows if r.curve], lambda r: (r.model, r.budget))
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
    for ax, ((model, budget), group) in zip(axes[0], groups.items()):
        for method in methods(group):
            curves = [r.curve for r in group if r.method == method]
            length = min(len(c) for c in curves)
            ax.plot(range(1, length + 1), [statistics.median(c[i] for c in curves) for i in range(length)],
                    label=method)
        ax.set_title(f"{model}, {budget}")
        ax.set_xlabel("scored candidates")
        ax.set_ylabel("best held-out so far (median)")
        ax.set_ylim(bottom=max(0.0, min(r.curve[-1] for r in group) - 0.2))
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ speed
def speed_section(args: argparse.Namespace) -> list[str]:
    from benchmarks import candidate_cost, eval_overhead, ray_scaling

    lines = ["## Speed", ""]
    print("speed: per-candidate cost against a Torch-Pruning loop", flush=True)
    cost = candidate_cost.measure(**({"ratios": (0.5,)} if args.quick else {}))
    lines += ["Per-candidate cost on torchvision ResNet-50 at 64x64 (`benchmarks/candidate_cost.py`): ours = "
              "elastic apply + BN recalibration + held-out top-1; the Torch-Pruning user's loop = deep copy + "
              "dependency graph + prune + the same recalibration and scoring on the same batches.", "",
              *candidate_cost.markdown(cost), ""]
    print("speed: engine overhead over bare forward passes", flush=True)
    overhead = eval_overhead.measure(candidates=8 if args.quick else 40)
    calib, held = overhead["samples"]
    lines += [f"Engine overhead (`benchmarks/eval_overhead.py`, {overhead['model']} on {overhead['data']}, "
              f"{overhead['candidates']} random candidates, {calib} calibration + {held} held-out samples each): "
              f"engine score {overhead['engine_ms']:.1f} ms against {overhead['bare_ms']:.1f} ms of bare forward "
              f"passes through the materialized subnet; overhead median x{overhead['median_ratio']:.3f}, "
              f"total x{overhead['total_ratio']:.3f}.", ""]
    if not args.quick:
        print("speed: Ray scaling", flush=True)
        ray = ray_scaling.measure()
        lines += [f"Ray scaling (`benchmarks/ray_scaling.py`, default model, {ray['candidates']} random "
                  "candidates):", "", "| executor | candidates/s | ms each |", "|---|---|---|"]
        lines += [f"| {name} | {rate:.1f} | {1e3 / rate:.1f} |" for name, rate in ray["rates"].items()]
        lines += ["", f"Two Ray workers over one: x{ray['speedup_2_over_1']:.2f}; Ray's dispatch overhead "
                  f"{ray['dispatch_ms']:.1f} ms per candidate.", ""]
    return lines


# ------------------------------------------------------------------------------------------ fidelity
def fidelity_section(args: argparse.Namespace) -> list[str]:
    from benchmarks import fidelity

    model, budget = args.models[0], args.budgets[0]
    print(f"fidelity: {args.fidelity_candidates} candidates of {model} at {budget}", flush=True)
    result = fidelity.fidelity(model, budget, args.fidelity_candidates, args.finetune_epochs, 50,
                               args.pruningnet_epochs, 0, data=args.data, baseline_epochs=args.baseline_epochs,
                               progress=False)
    return ["## Proxy fidelity and finalists", "",
            f"`benchmarks/fidelity.py`: {args.fidelity_candidates} candidates drawn uniformly between 0.7 x and 1 x "
            "the budget; truth = test top-1 after the common fine-tune; each proxy's rank correlation with it. "
            "steps_50 is the finalists' score (50 SGD steps, then held-out top-1).", "",
            *fidelity.proxy_table(result), "", *fidelity.selection_table(result), ""]


# ------------------------------------------------------------------------------------------ finalists and fill
def finalists_section(args: argparse.Namespace) -> list[str]:
    """benchmarks/finalists.py on the report's models, seeds, budget, trials and fine-tune."""
    from benchmarks import finalists

    steps, lr = SearchConfig.finalist_steps, SearchConfig.finalist_lr
    study_args = finalists.configure(finalists.parser().parse_args([
        "--models", ",".join(args.models), "--seeds", ",".join(map(str, args.seeds)), "--budget", args.budgets[0],
        "--data", args.data, "--baseline-epochs", str(args.baseline_epochs), "--trials", str(args.trials),
        "--finetune-epochs", str(args.finetune_epochs), "--agent", args.finalists_agent,
        "--fine-ratios", "",  # the finer grid lost in benchmarks/finalists.py: not repeated here
        "--trainings", ",".join(dict.fromkeys(["50:0.01", f"{steps}:{lr:g}"])),
        "--rules", ",".join(dict.fromkeys([finalists.DEFAULT_RULE, finalists.CHOSEN_RULE]))]))
    print(f"finalists and fill: {args.finalists_agent} on {', '.join(args.models)}, seeds {args.seeds}", flush=True)
    result = finalists.study(study_args, progress=lambda line: print(line, flush=True))
    return ["## Finalists vs the proxy's pick, and filling the budget", "",
            "`benchmarks/finalists.py`: for each search, its top 5 distinct candidates are each fine-tuned from the "
            "base weights with the common recipe; every picking rule is judged by the test top-1 of its pick "
            "(w/t/l: wins, ties, losses against the proxy's pick, search by search). `steps=S lr=L / R` is a "
            "finalists' rule: S SGD steps on the fit split (cosine from L), then ranked by R (top1 or ce: held-out "
            "top-1 or cross-entropy after the steps; `+ proxy`: plus the proxy's rank). "
            f"`{finalists.CHOSEN_RULE}` is `search.run`'s default, `{finalists.DEFAULT_RULE}` the former one.", "",
            *finalists.lines_of(result, study_args), ""]


# ------------------------------------------------------------------------------------------ report
CARRIED = ("Digits at 0.4 and 0.25 x FLOPs (secondary)", "Agent cost", "Speed")
HARD_DIGITS = "benchmarks.hard_digits:hard_digits"


def sections(path: Path) -> dict[str, list[str]]:
    """The previous report's sections by title (the old digits headline becomes the secondary table)."""
    if not path.is_file():
        return {}
    found: dict[str, list[str]] = {}
    title = None
    for line in path.read_text().splitlines():
        if line.startswith("Generated "):
            found["#generated"] = line.split(" by ")[0].lower()
        if line.startswith("## "):
            title = line[3:].strip()
            if title.startswith("Headline") and "Digits (scikit-learn" in path.read_text():
                title = CARRIED[0]
            found[title] = []
        elif title is not None:
            found[title].append(line)
    for title in found:
        if title != "#generated":
            while found[title] and not found[title][0].strip():
                found[title].pop(0)
            while found[title] and not found[title][-1].strip():
                found[title].pop()
            found[title] = [line for line in found[title]
                            if not line.startswith(("(Carried over from", "Report generated in"))]
    return found


def environment() -> list[str]:
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    packages = ", ".join(f"{p} {version(p)}" for p in ("torch", "torchvision", "torch-pruning", "optuna", "ray",
                                                          "numpy"))
    return [f"Generated {datetime.datetime.now():%Y-%m-%d %H:%M} by `python benchmarks/report.py` at commit "
            f"{commit}, on {cpu} ({os.cpu_count()} cores, torch using {torch.get_num_threads()} threads, "
            f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}); Python {platform.python_version()}, {packages}."]


def sync_readme(report: Path, readme: Path = ROOT / "README.md") -> bool:
    """Copy the report's headline table into `readme` between its markers; False if it has none."""
    lines = report.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("## Headline"))
    first = next(i for i in range(first, len(lines)) if lines[i].startswith("|"))
    last = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    table = lines[first:last]
    generated = next((line for line in lines if line.startswith("Generated ")), "")
    text = readme.read_text()
    begin, end = README_MARKERS
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    summary = generated.split(" by ")[0].removeprefix("Generated ")
    block = [begin, *table, "", f"(Held-out top-1 before / test top-1 after the same fine-tuning; from the report "
                                f"generated {summary}.)", end]
    readme.write_text(head + "\n".join(block) + tail)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--models", default="resnet20,mobilenetv2")
    parser.add_argument("--data", default=HARD_DIGITS)
    parser.add_argument("--baseline-epochs", type=int, default=10, help="epochs of each zoo model's cached baseline")
    parser.add_argument("--budgets", default="0.15flops")
    parser.add_argument("--agents", default=AGENTS)
    parser.add_argument("--finalist-agents", default="random,tpe,abc",
                        help="agents also reported with finalists (what search.run exports by default)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trials", type=int, default=100, help="per search, the same for every agent")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="the same short fine-tune for every method")
    parser.add_argument("--pruningnet-epochs", type=int, default=5)
    parser.add_argument("--fidelity-candidates", type=int, default=30, help="0: no fidelity section")
    parser.add_argument("--finalists-agent", default="tpe",
                        help="agent of the finalists-vs-proxy and fill study (benchmarks/finalists.py); '': none")
    parser.add_argument("--no-warm-start", action="store_true", help="agents start from scratch")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed section")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny settings, ResNet-20 only")
    parser.add_argument("--sync-readme", action="store_true",
                        help="measure nothing: copy the headline of the existing --out report into README.md")
    args = parser.parse_args()
    if args.sync_readme:
        print("README.md updated" if sync_readme(args.out) else "README.md has no benchmark-headline markers")
        return
    if args.quick:
        args.models, args.seeds, args.trials, args.finetune_epochs, args.pruningnet_epochs = \
            "resnet20", "0", 8, 1, 1
        args.agents, args.finalist_agents = "uniform,tpe,metapruning", "tpe"
        args.budgets, args.fidelity_candidates, args.data = "0.4flops", 5, "digits"
    args.models, args.budgets = args.models.split(","), args.budgets.split(",")
    args.finalist_agents = args.finalist_agents.split(",")
    previous = sections(args.out)
    args.agents, args.seeds = args.agents.split(","), [int(s) for s in args.seeds.split(",")]
    peer.require()
    started = time.perf_counter()
    plots = args.out.parent / "benchmarks"
    plots.mkdir(parents=True, exist_ok=True)
    studies = []
    for name in args.models:
        print(f"{name}: baseline, then {len(PEERS)} peers and {len(args.agents)} agents x {len(args.seeds)} seeds "
              f"at {', '.join(args.budgets)}", flush=True)
        study = Study(name, args)
        studies.append((study, study.run()))
        (plots / "rows.json").write_text(json.dumps([asdict(row) for _, rows in studies for row in rows]))
    every = [row for _, rows in studies for row in rows]
    (plots / "rows.json").write_text(json.dumps([asdict(row) for row in every]))  # the raw figures
    data = "hard digits (`benchmarks/hard_digits.py`)" if args.data == HARD_DIGITS else args.data
    tested = len(studies[0][0].data.test)
    lines = ["# Benchmarks", "", *environment(), "",
             "## Headline: our search against Torch-Pruning, before and after the same fine-tuning", "",
             f"Data: {data}; {args.trials} trials per search, {args.finetune_epochs} fine-tuning epochs (SGD, "
             "cosine from lr 0.05, seed 0) for every method. Each cell: held-out top-1 of the exported subnet "
             "after BN recalibration (before the common fine-tune) / test top-1 after it. The test set has "
             f"{tested} images: one image is {1 / tested:.4f}. Rows \"X + finalists\" are what `search.run` "
             "exports by default (agent X's best 5 candidates fine-tuned 50 steps each and scored again, ranked by "
             "held-out cross-entropy's rank plus the search's rank; their held-out score is after those steps). "
             "Our column is the agent with the best median held-out score, i.e. picked without looking at test "
             "data; margin = ours minus the better peer. MetaPruning ranks candidates with the weights its PruningNet "
             f"generates (trained {args.pruningnet_epochs} epochs on the training split, not on held-out data) and, "
             "as `search.run` does by default, exports the base weights: its top 5 are scored again with them and "
             "the best of those is its row. "
             + ("Agents start from scratch (`--no-warm-start`)." if args.no_warm_start else
                "Agents start, as `search.run` does by default, from our global-magnitude candidate at the budget "
                "(\"magnitude start\" in the tables below)."), "", *headline(studies), ""]
    for study, rows in studies:
        figure = plots / f"{study.name}.png"
        plot_comparison(study, rows, figure)
        lines += [f"## {study.name} on {data}", "", *comparison_table(study, rows), "",
                  f"![{study.name}]({figure.relative_to(args.out.parent)})", ""]
    convergence = plots / "convergence.png"
    plot_convergence(every, convergence)
    lines += ["## Search cost", "", "Scored candidates (over-budget ones are priced and rejected before any "
              "forward pass and not counted) and wall time, in all and until the best was found (median over "
              "seeds). MetaPruning's wall time includes training its PruningNet; Torch-Pruning's row counts the "
              "prunings its bisection to the FLOPs target took.", "", *search_cost_table(every), "",
              f"![convergence]({convergence.relative_to(args.out.parent)})", ""]
    if args.fidelity_candidates:
        try:
            lines += fidelity_section(args)
        except Exception as error:  # noqa: BLE001 - the comparison above is kept; the failure is reported
            print(f"fidelity failed: {type(error).__name__}: {error}", flush=True)
            lines += ["## Proxy fidelity and finalists", "", f"Not measured: {type(error).__name__}: {error}", ""]
    if args.finalists_agent:
        try:
            lines += finalists_section(args)
        except Exception as error:  # noqa: BLE001 - the rest of the report is kept; the failure is reported
            print(f"finalists and fill failed: {type(error).__name__}: {error}", flush=True)
            lines += ["## Finalists vs the proxy's pick, and filling the budget", "",
                      f"Not measured: {type(error).__name__}: {error}", ""]
    for title in CARRIED:
        if title in previous and not (title == "Speed" and not args.no_speed):
            lines += [f"## {title}", "", f"(Carried over from the previous report, {previous['#generated']}.)", "",
                      *previous[title], ""]
    if not args.no_speed:
        lines += speed_section(args)
    lines += [f"Report generated in {(time.perf_counter() - started) / 60:.1f} min."]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} and {plots}/")
    if args.out.resolve() == (ROOT / "docs" / "benchmarks.md").resolve() and sync_readme(args.out):
        print("README.md: headline table updated")


if __name__ == "__main__":
    main()
