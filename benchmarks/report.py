"""The fair benchmark report: our search against one-shot pruning peers at equal training, regenerated from its rows.

    pip install -e ".[bench]"          # Torch-Pruning and ModelOpt (FastNAS), the peers
    OMP_NUM_THREADS=1 python benchmarks/report.py            # the full plan, resumable; --quick: a smoke run
    python benchmarks/report.py --render-only                # docs/benchmarks.md from docs/benchmarks/rows.json

Every figure in the report is measured by this script and kept in `docs/benchmarks/rows.json`; no figure is
typed by hand. A run measures only the rows that file lacks (same data, test size, model, budget, method,
seed, fine-tune epochs, trials, finalists, PruningNet and baseline epochs; not the commit), so the report is
built across several runs and `--render-only` regenerates the markdown from the rows alone. The trained
baselines the rows were measured on are kept beside them (`benchmarks/baselines/`, `kept_baselines`) and put back
into the cache before a run measures, so the report can be resumed on another machine (trained again there, the
same seeded recipe gives another baseline, and rows on two baselines cannot be paired).

What is compared, per model (ResNet-20 and a CIFAR-style MobileNetV2, trained baselines cached) on hard digits
(`benchmarks/hard_digits.py`: 8622 training images, the search's held-out split drawn from them; 10080 test
images), per FLOPs budget and seed:
- **Peers**, each driven to the FLOPs target: Torch-Pruning's global magnitude and uniform L1 pruning
  (`benchmarks/torch_pruning_peer.py`) and ModelOpt FastNAS (`benchmarks/fastnas_peer.py`, with the
  channel divisor a user would set to reach the target). FLOPs counted by our counter on every subnet.
- **Ours**: what `search.run` exports by default for each agent: the search (`--trials`, warm-started from
  our global-magnitude candidate), then its best `finalists` candidates each trained `finalist_steps` SGD
  steps (`search.selection.finalists.run_finalists`), the first by the finalists' ranking exported with its weights.
  MetaPruning scores with its PruningNet and exports base weights through the same finalists.
- **Equal training**: every peer's subnet, and our global-magnitude start alone ("magnitude start", one
  trial), get the same SGD steps as our exported subnet had, with the same recipe and batches
  (`search.selection.finalists.train_finalist`: cosine from the finalists' lr, the fit split, seeded by the seed).
- Then every subnet gets the same **common fine-tune** (`search.finetune.finetune_module`, N epochs, seeded
  by the seed) and is tested. Each row says the SGD steps and wall time its method spent before it.
- Seed s drives our agent's search, the finalists' and the peers' steps (same batches) and the fine-tune;
  margins are paired by seed. "Ours" is `search.run`'s default agent (`DEFAULT_AGENT`, what a run without
  `--agent` does); a report without its rows counts the agent with the best median held-out score (picked
  without test data). The best peer is the peer with the best median test top-1 after the fine-tune.
Writes `--out` and its plots beside it; `--sync-readme` copies the headline into README.md.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from benchmarks import fastnas_peer  # noqa: E402
from benchmarks import kept_baselines  # noqa: E402
from benchmarks import torch_pruning_peer as tp_peer  # noqa: E402
from benchmarks.paired_bootstrap import median_margin  # noqa: E402
from benchmarks.report_rows import Row, Settings, add, key, load  # noqa: E402
from benchmarks.setting import Setting  # noqa: E402
from benchmarks.subnet_cache import SubnetCache  # noqa: E402
from search.engine.config import DEFAULT_AGENT, DEFAULT_TRIALS, SearchConfig  # noqa: E402
from search.engine.loop import Engine  # noqa: E402
from search.selection.finalists import FinalistSettings, ShuffledBatches, run_finalists, train_finalist  # noqa: E402
from search.selection.one_shot import one_shot_finalists, one_shot_trials  # noqa: E402
from search.finetune import finetune_module  # noqa: E402
from search.finetune.loop import COPIED_FROM_STEPS, auto_start, steps_per_epoch, training_set  # noqa: E402
from search.engine.pipeline import Pipeline  # noqa: E402
from search.finetune.step import evaluate  # noqa: E402
from spaces.files import atomic_write  # noqa: E402
from spaces.reconstruct import default_inputs  # noqa: E402
from spaces.warm_start import magnitude_candidate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
README_MARKERS = ("<!-- benchmark-headline:start -->", "<!-- benchmark-headline:end -->")
AGENTS = "random,abc,tpe,evolution,amc,metapruning"
TP_METHODS = {"global": "TP global magnitude", "uniform": "TP uniform L1"}
FASTNAS = "FastNAS"
PEERS = (*TP_METHODS.values(), FASTNAS)
MAGNITUDE = "magnitude start"
#: not a peer (Torch-Pruning exports its subnets as pruned): TP global magnitude's subnet given our refit
#: (`--reconstruct`), to tell what the refit adds from what the search does
TP_REFIT = "TP global magnitude + our refit"
SUFFIX = " + finalists"
FINETUNE_BATCH = 64  # the common fine-tune's batch
PLAN = ("0.1flops/1/0,1,2,3,4,5,6,7,8,9", "0.1flops/5/0,1,2,3,4", "0.25flops/1/0,1,2,3,4", "0.25flops/5/0,1,2,3,4")
HARD_DIGITS = "benchmarks.hard_digits:hard_digits"


@dataclass(frozen=True)
class Step:
    """One item of the plan: a budget, its common fine-tune epochs and the seeds to measure."""

    budget: str
    epochs: tuple[int, ...]
    seeds: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> Step:
        budget, epochs, seeds = text.split("/")
        return cls(budget, tuple(int(e) for e in epochs.split(",")), tuple(int(s) for s in seeds.split(",")))


@dataclass
class Subnet:
    """A method's subnet before the common fine-tune, and what it cost to get there."""

    module: nn.Module
    record: dict  # flops, params, held_out, test_before, search_s, train_s, steps, steps_spent, evaluations, note


def grid_ratios(grid: int) -> str:
    """`--width-ratios` for the grid k / `grid`, k = 1 .. `grid` (10: search.run's default)."""
    return ",".join(f"{k / grid:g}" for k in range(1, grid + 1))


def log(text: str, file=None) -> None:
    print(text, flush=True, file=file)


def base_fingerprint(record: dict) -> str:
    """A baseline model's identity (its costs and scores), as part of a subnet cache key (the rows' keys leave it
    out)."""
    return "|base=" + ",".join(f"{record[k]:.6f}" for k in ("flops", "params", "held_out", "test"))


def same_base(a: dict, b: dict) -> bool:
    """Whether two base records are the same baseline model."""
    return base_fingerprint(a) == base_fingerprint(b)


class Study:
    """One model: base model, scorer, data, and the training recipe shared by every method."""

    def __init__(self, name: str, args: argparse.Namespace, settings: Settings):
        self.name, self.args, self.settings = name, args, settings
        config = SearchConfig(agent="random", budget=[args.plan[0].budget], model=name, data=args.data, seed=0,
                              device="cpu", pruningnet_epochs=args.pruningnet_epochs,
                              baseline_epochs=args.baseline_epochs, reconstruct=args.reconstruct,
                              export_weights=args.export_weights, width_ratios=grid_ratios(args.width_grid))
        own = baselines_folder(args.out)
        restored = kept_baselines.restore(config, [own] if args.new_baseline else [own, REFERENCE_BASELINES])
        if restored is not None:
            log(f"{name}: the baseline kept in {restored} restored into the cache")
        pipeline = Pipeline(config, progress=False)
        self.base_model = copy.deepcopy(pipeline.load_inputs().model)  # the peers prune copies (derive reorders)
        if kept_baselines.keep(config, own):
            log(f"{name}: its baseline kept in {own} (commit it with the rows: a cache is one machine's)")
        self.setting = Setting.of(config, inputs=pipeline.inputs)
        self.data, self.example = self.setting.inputs.data, self.setting.inputs.example
        self.test_loader = DataLoader(self.data.test, batch_size=256)
        self.prunable, self.evaluator, self.price = self.setting.prunable, self.setting.evaluator, self.setting.price
        self.base = self.setting.base
        self.base_record = {"flops": self.base["flops"], "params": self.base["params"],
                            "held_out": self.evaluator.score(self.prunable.space.full()),
                            "test": self.setting.inputs.base_test}
        self.evaluator.restore()  # the base model's own BatchNorm state (materialized subnets copy it)
        self.batches = ShuffledBatches(Subset(self.data.train, self.data.fit.tolist()), config.batch_size)
        self.pruningnets: dict[str, tuple[object, float]] = {}

    def finalist_settings(self, seed: int, steps: int | None = None, count: int | None = None) -> FinalistSettings:
        """search.run's default finalists (the defaults of SearchConfig), seeded by `seed`."""
        defaults = SearchConfig()
        return FinalistSettings(count=defaults.finalists if count is None else count,
                                steps=defaults.finalist_steps if steps is None else steps, lr=defaults.finalist_lr,
                                seed=seed, rank=self.settings.finalist_rank)

    def equal_training(self, module: nn.Module, seed: int) -> tuple[nn.Module, float, int, float]:
        """The exported subnet's training, given to another subnet: (module, held-out, steps, seconds)."""
        trained, score, steps, seconds, _ = train_finalist(
            module, 0, self.finalist_settings(seed), self.batches, self.evaluator.calibration,
            self.evaluator.held_out, None, None, "cpu")
        return trained, score, steps, seconds

    def _record(self, module: nn.Module, flops: float, params: float, held: float, search_s: float,
                train_s: float, steps: int, steps_spent: int, evaluations: int, note: str = "") -> dict:
        return {"flops": flops, "params": params, "held_out": held, "test_before": evaluate(module, self.test_loader),
                "search_s": search_s, "train_s": train_s, "steps": steps, "steps_spent": steps_spent,
                "evaluations": evaluations, "note": note}

    def peer(self, budget: str, method: str, seed: int) -> Subnet:
        target = float(budget.removesuffix("flops"))
        start = time.perf_counter()
        if method == TP_REFIT:
            pruned = tp_peer.prune_to_flops(self.base_model, self.example, "global", target)
            inputs = self.setting.at(budget).reconstructor(self.prunable).inputs
            done = tp_peer.refit(pruned.module, self.base_model, inputs)
            note = (f"channel ratio {pruned.pruning_ratio:.3f}, {len(done.layers)} layers refit on "
                    f"{sum(len(x) for x in inputs)} inputs")
        elif method == FASTNAS:
            pruned = fastnas_peer.prune_to_flops(self.base_model, self.example, target, self.evaluator.calibration,
                                                 self.evaluator.held_out, seed=seed)
            note = f"channel divisor {pruned.divisor}"
        else:
            tp_method = next(k for k, v in TP_METHODS.items() if v == method)
            pruned = tp_peer.prune_to_flops(self.base_model, self.example, tp_method, target)
            note = f"channel ratio {pruned.pruning_ratio:.3f}"
        search_s = time.perf_counter() - start
        module, held, steps, train_s = self.equal_training(pruned.module, seed)
        return Subnet(module, self._record(module, pruned.flops_ratio, pruned.params_ratio, held, search_s, train_s,
                                           steps, steps, pruned.tries, note))

    def magnitude_start(self, budget: str, seed: int) -> Subnet:
        limits = self.setting.budget(budget)
        start = time.perf_counter()
        candidate = magnitude_candidate(self.prunable, lambda c: limits.feasible(self.price(c)))
        module = self.setting.at(budget).build(self.prunable)(candidate)  # as search.run builds it (reconstructed)
        search_s = time.perf_counter() - start
        module, held, steps, train_s = self.equal_training(module, seed)
        costs = self.price(candidate)
        return Subnet(module, self._record(module, costs["flops"] / self.base["flops"],
                                           costs["params"] / self.base["params"], held, search_s, train_s, steps,
                                           steps, 1))

    def pruningnet(self, budget: str) -> tuple[object, float]:
        """MetaPruning's PruningNet for `budget`, trained once per model and budget; (net, seconds)."""
        if budget not in self.pruningnets:
            start = time.perf_counter()
            net = self.setting.at(budget).train_pruningnet(self.prunable, self.price)
            self.pruningnets[budget] = net, time.perf_counter() - start
        return self.pruningnets[budget]

    def ours(self, budget: str, agent: str, seed: int) -> Subnet:
        """What `search.run` exports by default for `agent`: the search, then its finalists' winner."""
        pipeline = self.setting.at(budget)
        scorer, note, extra_s = self.evaluator, "", 0.0
        if agent == "metapruning":
            from evaluators.pruningnet import PruningNetEvaluator

            net, extra_s = self.pruningnet(budget)
            scorer = PruningNetEvaluator.of(self.evaluator, net)
            note = f"PruningNet {self.args.pruningnet_epochs} epochs ({extra_s:.0f} s) in search s"
        searcher = pipeline.agent(self.prunable, self.price, name=agent, seed=seed, trials=self.settings.trials)
        canonical = self.prunable.canonical if self.settings.distinct == "subnet" else None
        start = time.perf_counter()
        outcome = Engine(searcher, self.price, pipeline.budget, scorer, trials=self.settings.trials,
                         progress=False, canonical=canonical).run()
        forced = []
        if self.settings.one_shot:  # as search.run does: the one-shot candidates scored and among the finalists
            _, methods = one_shot_trials(pipeline, self.prunable, outcome.trials, scorer, self.price)
            forced = one_shot_finalists(methods)
        search_s = time.perf_counter() - start + extra_s
        if scorer is not self.evaluator:
            scorer.restore()
        self.evaluator.restore()
        ranked = run_finalists(outcome.trials, self.finalist_settings(seed, self.settings.finalist_steps,
                                                                      self.settings.finalists),
                               build=pipeline.build(self.prunable, refit=pipeline.ranks_refit(self.prunable) or None),
                               batches=self.batches,
                               calibration=self.evaluator.calibration, held_out=self.evaluator.held_out,
                               device=torch.device("cpu"), forced=forced, canonical=canonical)
        best = ranked[0]
        module, held = pipeline.exported(self.prunable, best, self.evaluator)  # as search.run exports it
        costs = self.price(best.trial.candidate)
        return Subnet(module, self._record(
            module, costs["flops"] / self.base["flops"], costs["params"] / self.base["params"], held,
            search_s, sum(f.seconds for f in ranked), best.steps, sum(f.steps for f in ranked),
            len([t for t in outcome.trials if t.result.ok]), note))

    def subnet(self, budget: str, method: str, seed: int) -> Subnet:
        if method in (*PEERS, TP_REFIT):
            return self.peer(budget, method, seed)
        if method == MAGNITUDE:
            return self.magnitude_start(budget, seed)
        return self.ours(budget, method.removesuffix(SUFFIX), seed)

    def finetuned(self, subnet: Subnet, epochs: int, seed: int) -> tuple[float, float]:
        """(test top-1 after the common fine-tune, its seconds), on a copy of the subnet."""
        start = time.perf_counter()
        _, history = finetune_module(copy.deepcopy(subnet.module), self.data, epochs=epochs, seed=seed,
                                     batch_size=FINETUNE_BATCH)
        return history[-1]["test_top1"], time.perf_counter() - start


def method_names(agents: list[str]) -> list[str]:
    return [*PEERS, TP_REFIT, MAGNITUDE, *(f"{a}{SUFFIX}" for a in agents)]


def fine_tune_start(settings: Settings, method: str, trained_steps: int, steps: int) -> str:
    """Where `search.finetune` (`--start auto`) would start our subnet (`trained_steps` SGD steps before export) for
    a common fine-tune of `steps`: "base" (the copied weights: the subnet of the `--export-weights base` variant,
    the same pick) or "export"; the peers and the diagnostic "TP global magnitude + our refit" always start from
    their own weights."""
    if method in (*PEERS, TP_REFIT) or not settings.reconstruct:
        return "export"
    return auto_start({"export_weights": settings.export_weights, "finetuned_steps": trained_steps}, steps)


def start_text(settings: Settings) -> str:
    """How our subnets start the common fine-tune (`fine_tune_start`), in words."""
    if not settings.reconstruct or settings.export_weights != "refit":
        return "Every subnet starts it from its own weights."
    return (f"Ours start it where `python -m search.finetune` starts them (`--start auto`): a fine-tune of "
            f"{COPIED_FROM_STEPS} SGD steps or more from the same pick's copied weights (BN recalibrated: the "
            f"subnet `--export-weights base` exports), a shorter one from the refit export; the peers from their "
            f"own weights.")


#: the baselines the committed report's rows were measured on: a run into another --out (a fill merged later)
#: of the same settings must use them too (unless --new-baseline); their weights, where they were kept
REFERENCE_BASES: dict = {}
REFERENCE_BASELINES = ROOT / "docs" / "benchmarks" / "baselines"


def baselines_folder(out: Path) -> Path:
    """Where the report written to `out` keeps its trained baselines: beside its rows (`kept_baselines`)."""
    return out.parent / "benchmarks" / "baselines"


def measure(args: argparse.Namespace, settings: Settings, rows: dict[str, Row], rows_path: Path,
            bases: dict, bases_path: Path, cache: SubnetCache) -> None:
    """Every row of the plan that `rows` lacks, saved as it is measured. Our subnets start the common fine-tune
    where `search.finetune` would (`fine_tune_start`): from the copied weights after a refit export, when long."""
    studies: dict[str | tuple[str, str], Study] = {}
    copied = replace(settings, export_weights="base")
    copied_args = argparse.Namespace(**{**vars(args), "export_weights": "base"})
    for step in args.plan:
        for model in args.models:
            for seed in step.seeds:
                for method in method_names(args.agents):
                    missing = [e for e in step.epochs
                               if key(settings, model, step.budget, method, seed, e) not in rows]
                    if not missing:
                        continue
                    if model not in studies:
                        log(f"{model}: baseline and scorer")
                        studies[model] = Study(model, args, settings)
                        base_key, record = f"{settings.text()}|{model}", studies[model].base_record
                        recorded = bases.get(base_key, None if args.new_baseline else REFERENCE_BASES.get(base_key))
                        if recorded is not None and not same_base(recorded, record):
                            log(f"report.py: {model}'s cached baseline (held-out {record['held_out']:.4f}, test "
                                f"{record['test']:.4f}) is not the one its rows of these settings were measured on "
                                f"(held-out {recorded['held_out']:.4f}, test {recorded['test']:.4f}; "
                                f"{'this --out' if base_key in bases else 'docs/benchmarks'}); restore that "
                                "baseline (PRUNESEARCH_CACHE or the report's benchmarks/baselines/), or start a "
                                "report of its own in another --out with --new-baseline",
                                file=sys.stderr)
                            sys.exit(2)
                        bases[base_key] = record
                        bases_path.parent.mkdir(parents=True, exist_ok=True)
                        atomic_write(bases_path, json.dumps(bases, indent=1))
                    study = studies[model]
                    on_base = base_fingerprint(study.base_record)  # a subnet of another baseline is a miss
                    subnet_key = key(settings, model, step.budget, method, seed, None) + on_base
                    cached = cache.get(subnet_key)
                    if cached is None:
                        subnet = study.subnet(step.budget, method, seed)
                        cache.put(subnet_key, subnet.module, subnet.record)
                    else:
                        subnet = Subnet(*cached)
                    for epochs in missing:
                        start = subnet
                        steps = epochs * steps_per_epoch(len(training_set(study.data)), FINETUNE_BATCH)
                        if fine_tune_start(settings, method, subnet.record["steps"], steps) == "base":
                            copied_key = key(copied, model, step.budget, method, seed, None) + on_base
                            cached = cache.get(copied_key)
                            if cached is None:
                                if (model, "base") not in studies:
                                    studies[model, "base"] = Study(model, copied_args, copied)
                                start = studies[model, "base"].subnet(step.budget, method, seed)
                                cache.put(copied_key, start.module, start.record)
                            else:
                                start = Subnet(*cached)
                        after, finetune_s = study.finetuned(start, epochs, seed)
                        r = start.record
                        row = Row(key(settings, model, step.budget, method, seed, epochs), model, step.budget, method,
                                  seed, epochs, r["flops"], r["params"], r["held_out"], r["test_before"], after,
                                  r["search_s"], r["train_s"], r["steps"], r["steps_spent"], r["evaluations"],
                                  finetune_s, r["note"])
                        add(rows_path, rows, row)
                        log(f"  {model} {step.budget} ft {epochs} seed {seed} {method}: FLOPs x{row.flops:.3f}, "
                            f"held-out {row.held_out:.4f}, test {row.test_before:.4f} -> {row.test_after:.4f} "
                            f"({row.steps} steps, {row.search_s + row.train_s:.1f} s before the fine-tune)")


# ------------------------------------------------------------------------------------------ tables
def median_range(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def by_method(rows: list[Row]) -> dict[str, dict[int, Row]]:
    """Rows of one setting by method, then seed (methods in the report's order)."""
    grouped: dict[str, dict[int, Row]] = {}
    for row in rows:
        grouped.setdefault(row.method, {})[row.seed] = row
    order = {m: i for i, m in enumerate(PEERS + (TP_REFIT, MAGNITUDE))}
    return dict(sorted(grouped.items(), key=lambda item: order.get(item[0], len(order))))


def ours_of(grouped: dict[str, dict[int, Row]]) -> str | None:
    """Our method: `search.run`'s default agent; without its rows, the agent with the highest median held-out
    score (chosen without looking at test data)."""
    if DEFAULT_AGENT + SUFFIX in grouped:
        return DEFAULT_AGENT + SUFFIX
    ours = [m for m in grouped if m.endswith(SUFFIX)]
    return max(ours, key=lambda m: statistics.median(r.held_out for r in grouped[m].values())) if ours else None


def best_peer(grouped: dict[str, dict[int, Row]]) -> str | None:
    peers = [m for m in grouped if m in PEERS]
    return max(peers, key=lambda m: statistics.median(r.test_after for r in grouped[m].values())) if peers else None


@dataclass
class Margin:
    ours: str
    peer: str
    seeds: list[int]
    median: float
    low: float
    high: float


def margin_of(grouped: dict[str, dict[int, Row]]) -> Margin | None:
    ours, peer = ours_of(grouped), best_peer(grouped)
    if ours is None or peer is None:
        return None
    mine = {s: r.test_after for s, r in grouped[ours].items()}
    theirs = {s: r.test_after for s, r in grouped[peer].items()}
    median, (low, high) = median_margin(mine, theirs)
    return Margin(ours, peer, sorted(set(mine) & set(theirs)), median, low, high)


def settings_of(rows: list[Row]) -> list[tuple[str, str, int]]:
    """(model, budget, fine-tune epochs) present, the headline's budget and epochs first."""
    found = {(r.model, r.budget, r.finetune_epochs) for r in rows}
    budgets = sorted({b for _, b, _ in found}, key=lambda b: float(b.removesuffix("flops")))
    models = list(dict.fromkeys(r.model for r in rows))
    return [(m, b, e) for b in budgets for e in sorted({e for _, bb, e in found if bb == b})
            for m in models if (m, b, e) in found]


def seeds_text(seeds: list[int]) -> str:
    return ",".join(map(str, seeds))


def headline(rows: list[Row]) -> list[str]:
    lines = ["| model | budget | FT epochs | seeds | TP global magnitude | TP uniform L1 | FastNAS | magnitude start | "
             f"ours: search.run's default ({DEFAULT_AGENT}) | "
             "margin over the best peer, median [95% paired bootstrap] | "
             "not a peer: TP global magnitude + our refit | ours minus it |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, budget, epochs in settings_of(rows):
        grouped = by_method([r for r in rows if (r.model, r.budget, r.finetune_epochs) == (model, budget, epochs)])
        cells = [median_range([r.test_after for r in grouped[m].values()]) if m in grouped else "-"
                 for m in (*PEERS, MAGNITUDE)]
        margin = margin_of(grouped)
        if margin is None:
            ours_cell = margin_cell = "-"
        else:
            ours_cell = f"{statistics.median(r.test_after for r in grouped[margin.ours].values()):.4f} ({margin.ours})"
            margin_cell = (f"{margin.median:+.4f} [{margin.low:+.4f}, {margin.high:+.4f}] over {margin.peer} "
                           f"(seeds {seeds_text(margin.seeds)})")
        refit_cell = refit_margin_cell = "-"
        if TP_REFIT in grouped:
            refit_cell = median_range([r.test_after for r in grouped[TP_REFIT].values()])
            if margin is not None:
                median, (low, high) = median_margin({s: r.test_after for s, r in grouped[margin.ours].items()},
                                                    {s: r.test_after for s, r in grouped[TP_REFIT].items()})
                refit_margin_cell = f"{median:+.4f} [{low:+.4f}, {high:+.4f}]"
        seeds = sorted({s for g in grouped.values() for s in g})
        lines.append(f"| {model} | {budget} | {epochs} | {seeds_text(seeds)} | {' | '.join(cells)} | {ours_cell} | "
                     f"{margin_cell} | {refit_cell} | {refit_margin_cell} |")
    return lines


def agents_table(rows: list[Row]) -> list[str]:
    """Each learned agent against random after the common fine-tune, per setting: the median of the paired
    differences (agent - random, same seed) and its bootstrap interval; the issue's goal is >= 0."""
    agents = [m for m in dict.fromkeys(r.method for r in rows) if m.endswith(SUFFIX) and not m.startswith("random")]
    random_method = f"random{SUFFIX}"
    if not agents or not any(r.method == random_method for r in rows):
        return []
    lines = ["| model | budget | FT epochs | " + " | ".join(a.removesuffix(SUFFIX) for a in agents) + " |",
             "|---|---|---|" + "---|" * len(agents)]
    for model, budget, epochs in settings_of(rows):
        grouped = by_method([r for r in rows if (r.model, r.budget, r.finetune_epochs) == (model, budget, epochs)])
        if random_method not in grouped:
            continue
        theirs = {s: r.test_after for s, r in grouped[random_method].items()}
        cells = []
        for agent in agents:
            if agent not in grouped:
                cells.append("-")
                continue
            median, (low, high) = median_margin({s: r.test_after for s, r in grouped[agent].items()}, theirs)
            cells.append(f"{median:+.4f} [{low:+.4f}, {high:+.4f}]")
        lines.append(f"| {model} | {budget} | {epochs} | {' | '.join(cells)} |")
    return lines


def default_agent_table(rows: list[Row]) -> list[str]:
    """Which agent search.run should default to: every agent's margin over the best peer (per setting, the median
    of the paired differences over the seeds every agent of the setting has) and the mean of those medians over the
    settings where every agent was measured."""
    agents = sorted({r.method for r in rows if r.method.endswith(SUFFIX)})
    if len(agents) < 2:
        return []
    lines = ["| model | budget | FT epochs | best peer | " + " | ".join(a.removesuffix(SUFFIX) for a in agents) + " |",
             "|---|---|---|---|" + "---|" * len(agents)]
    complete: list[list[float]] = []
    for model, budget, epochs in settings_of(rows):
        grouped = by_method([r for r in rows if (r.model, r.budget, r.finetune_epochs) == (model, budget, epochs)])
        peer = best_peer(grouped)
        if peer is None:
            continue
        measured = [a for a in agents if a in grouped]
        seeds = set(grouped[peer]).intersection(*(grouped[a] for a in measured))  # the same seeds for every agent
        theirs = {s: grouped[peer][s].test_after for s in seeds}
        medians = [median_margin({s: grouped[a][s].test_after for s in seeds}, theirs)[0] if a in grouped else None
                   for a in agents]
        if all(m is not None for m in medians):
            complete.append(medians)
        lines.append(f"| {model} | {budget} | {epochs} | {peer} | "
                     + " | ".join("-" if m is None else f"{m:+.4f}" for m in medians) + " |")
    if complete:
        means = [statistics.mean(column) for column in zip(*complete)]
        best = max(range(len(agents)), key=lambda i: means[i])
        lines.append(f"| mean over the {len(complete)} settings every agent was measured in | | | | "
                     + " | ".join(f"**{m:+.4f}**" if i == best else f"{m:+.4f}" for i, m in enumerate(means)) + " |")
    return lines


def setting_table(rows: list[Row]) -> list[str]:
    grouped = by_method(rows)
    ours = ours_of(grouped)
    lines = ["| method | seeds | FLOPs | params | SGD steps before FT (exported / spent) | search s | training s | "
             "FT s | held-out | test before FT | test after FT |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, seeds in grouped.items():
        mine = list(seeds.values())
        label = f"**{method}**" if method == ours else method
        note = sorted({r.note for r in mine if r.note})
        label += f" ({'; '.join(note)})" if note and method in (*PEERS, TP_REFIT) else ""
        lines.append(
            f"| {label} | {len(mine)} | {statistics.median(r.flops for r in mine):.3f} | "
            f"{statistics.median(r.params for r in mine):.3f} | {statistics.median(r.steps for r in mine):.0f} / "
            f"{statistics.median(r.steps_spent for r in mine):.0f} | {statistics.median(r.search_s for r in mine):.1f} | "
            f"{statistics.median(r.train_s for r in mine):.1f} | {statistics.median(r.finetune_s for r in mine):.1f} | "
            f"{median_range([r.held_out for r in mine])} | {median_range([r.test_before for r in mine])} | "
            f"{median_range([r.test_after for r in mine])} |")
    return lines


# ------------------------------------------------------------------------------------------- plots
def plot_model(model: str, rows: list[Row], base_test: float | None, path: Path) -> None:
    settings = [s for s in settings_of(rows) if s[0] == model]
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4.2), squeeze=False)
    for ax, (_, budget, epochs) in zip(axes[0], settings):
        grouped = by_method([r for r in rows if (r.model, r.budget, r.finetune_epochs) == (model, budget, epochs)])
        for i, (method, seeds) in enumerate(grouped.items()):
            values = [r.test_after for r in seeds.values()]
            mid = statistics.median(values)
            color = ("tab:gray" if method in PEERS else "tab:purple" if method == TP_REFIT
                     else "tab:olive" if method == MAGNITUDE else "tab:blue")
            ax.bar(i, mid, color=color, yerr=[[mid - min(values)], [max(values) - mid]], capsize=3)
        if base_test is not None:
            ax.axhline(base_test, color="black", linestyle="--", linewidth=1, label="base model")
            ax.legend(loc="lower right")
        ax.set_xticks(range(len(grouped)), list(grouped), rotation=40, ha="right", fontsize=8)
        low = min(r.test_after for g in grouped.values() for r in g.values())
        ax.set_ylim(max(0.0, low - 0.03), min(1.0, max(base_test or 0, max(
            r.test_after for g in grouped.values() for r in g.values())) + 0.02))
        ax.set_title(f"{model}, {budget}, {epochs}-epoch FT: test top-1", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
            f"`benchmarks/fidelity.py`: {args.fidelity_candidates} candidates of a tpe search's pool between 0.7 x "
            "and 1 x the budget; truth = test top-1 after the common fine-tune; each signal's rank correlation with "
            "it (steps_50: the finalists' score after 50 SGD steps; rung_T: after each rung; supernet_top1: on a "
            "supernet's weights). The headline study is `docs/benchmarks/fidelity.md`.", "",
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
CARRIED = ("Proxy fidelity and finalists", "Finalists vs the proxy's pick, and filling the budget",
           "Digits at 0.4 and 0.25 x FLOPs (secondary)", "Agent cost", "Speed")


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
                title = "Digits at 0.4 and 0.25 x FLOPs (secondary)"
            found[title] = []
        elif title is not None and line.startswith("(Carried over from"):
            found[f"#from {title}"] = [line]
        elif title is not None:
            found[title].append(line)
    for title in found:
        if not title.startswith("#"):
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
    packages = ", ".join(f"{p} {version(p)}" for p in ("torch", "torchvision", "torch-pruning", "nvidia-modelopt",
                                                          "torchprofile", "optuna", "ray",
                                                          "numpy"))
    return [f"Generated {datetime.datetime.now():%Y-%m-%d %H:%M} by `python benchmarks/report.py` at commit "
            f"{commit}, on {cpu} ({os.cpu_count()} cores, torch using {torch.get_num_threads()} threads, "
            f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}); Python {platform.python_version()}, {packages}."]


def sync_readme(report: Path, readme: Path = ROOT / "README.md") -> bool:
    """Copy the report's headline (its sentence on the margin and its table) into `readme` between its markers;
    False if it has none."""
    lines = report.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("## Headline"))
    verdict = next((line for line in lines[first:] if line.startswith("**Fair margin")), "")
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
    block = [begin, verdict, "", *table, "",
             f"(Test top-1 after the same common fine-tune, median [min, max] over seeds; every peer had the same SGD "
             f"steps as our exported subnet before it. From `docs/benchmarks.md`, generated {summary}.)", end]
    readme.write_text(head + "\n".join(block) + tail)
    return True


def verdict(rows: list[Row], headline_step: Step) -> str:
    """The headline's sentence: our margin over the best peer at the headline setting, win or loss, per model."""
    parts = []
    for model, budget, epochs in settings_of(rows):
        if (budget, epochs) != (headline_step.budget, headline_step.epochs[0]):
            continue
        margin = margin_of(by_method([r for r in rows if (r.model, r.budget, r.finetune_epochs) ==
                                      (model, budget, epochs)]))
        if margin is not None:
            word = "ahead of" if margin.low > 0 else "behind" if margin.high < 0 else "level with"
            parts.append(f"{model} {margin.median:+.4f} [{margin.low:+.4f}, {margin.high:+.4f}] ({margin.ours} vs "
                         f"{margin.peer}, {len(margin.seeds)} seeds: {word} it)")
    if not parts:
        return ""
    return (f"**Fair margin at {headline_step.budget} with a {headline_step.epochs[0]}-epoch common fine-tune** (test "
            f"top-1, ours minus the best equal-training peer, median over seeds [95% paired bootstrap]): "
            + "; ".join(parts) + ".")


RANK_WORDS = {"tce": "their held-out cross-entropy at its best temperature (tce)",
              "ce": "their held-out cross-entropy (ce)"}


def finalists_text(settings: Settings, lr: float) -> str:
    """How the report's searches picked their export, and what the peers got for it, in words."""
    extra = (" and the one-shot candidates (global magnitude, uniform) among them" if settings.one_shot else "") + \
        (f", ranked by {RANK_WORDS.get(settings.finalist_rank, settings.finalist_rank)}"
         if settings.finalist_rank != "ce+proxy" else "") + \
        ("; blocks searched as a depth per stage" if settings.block_encoding == "depth" else "")
    refit = ("" if not settings.reconstruct else
             f" Every finalist is refit by least squares to the full model's outputs on {settings.reconstruct} training "
             "inputs (`--reconstruct`, `spaces.reconstruct`: no labels, no SGD step) before it is scored and ranked; "
             + ("the exported subnet is that refit copy (and so is the magnitude start); the peers export their "
                "pruned weights as they are, as their tools do." if settings.export_weights == "refit" else
                "the exported subnet keeps the copied weights (BN recalibrated), as every peer's does."))
    if settings.finalist_steps == 0:
        return (f"search.run's default finalists: its best {settings.finalists} candidates{extra}, untrained, re-ranked "
                "on held-out; the exported subnet had no SGD step before the common fine-tune, and neither had any "
                "peer (Torch-Pruning global magnitude, Torch-Pruning uniform L1, ModelOpt FastNAS) nor our magnitude "
                "start (1 trial)." + refit)
    return (f"search.run's default finalists ({settings.finalists} x {settings.finalist_steps} SGD steps, cosine from "
            f"lr {lr}{extra}); the exported subnet had {settings.finalist_steps} steps. Every peer "
            f"(Torch-Pruning global magnitude, Torch-Pruning uniform L1, ModelOpt FastNAS) and our magnitude start "
            f"(1 trial) got the same {settings.finalist_steps} steps with the same recipe and batches on its own "
            "subnet." + refit)


Variant = tuple[int, str, int, str, int]  # (--reconstruct, --export-weights, --width-grid, --distinct, --trials)


def variant_of(settings: Settings) -> Variant:
    return settings.reconstruct, settings.export_weights, settings.width_grid, settings.distinct, settings.trials


def with_variant(settings: Settings, variant: Variant) -> Settings:
    return replace(settings, reconstruct=variant[0], export_weights=variant[1], width_grid=variant[2],
                   distinct=variant[3], trials=variant[4])


def other_variants(rows: dict[str, Row], settings: Settings, models: list[str]) -> dict[Variant, list[Row]]:
    """Rows measured with another `--reconstruct`, `--export-weights`, `--width-grid`, `--distinct` or `--trials`
    than `settings` and otherwise the same settings, by variant (reconstruct 0: no refit), for the comparison
    section; rows of other settings are not among them."""
    found: dict[Variant, list[Row]] = {}
    for row in rows.values():
        value, export, grid, distinct, trials = (
            re.search(pattern, row.key) for pattern in
            (r"\|recon=(\d+)", r"\|export=(\w+)", r"\|grid=(\d+)", r"\|distinct=(\w+)", r"\|trials=(\d+)"))
        variant = (int(value.group(1)) if value else 0, export.group(1) if export else "refit",
                   int(grid.group(1)) if grid else 10, distinct.group(1) if distinct else "candidate",
                   int(trials.group(1)))  # every key names its trials
        if variant == variant_of(settings) or row.model not in models:
            continue
        if row.key == key(with_variant(settings, variant), row.model, row.budget, row.method, row.seed,
                          row.finetune_epochs):
            found.setdefault(variant, []).append(row)
    return dict(sorted(found.items()))


def variant_name(variant: Variant, trials: int) -> str:
    """How the options read that give this variant (its trials named where they are not `trials`)."""
    reconstruct, export_weights, grid, distinct, variant_trials = variant
    name = f"`--reconstruct {reconstruct}`" if reconstruct else "`--reconstruct 0` (no refit)"
    if reconstruct and export_weights != "refit":
        name += f" `--export-weights {export_weights}`"
    name += f", width ratios k/{grid} (`--width-grid {grid}`)" if grid != 10 else ""
    name += ", each subnet scored once and one finalist (`--distinct subnet`)" if distinct == "subnet" else ""
    return name + (f", {variant_trials} trials per search (`--trials {variant_trials}`)"
                   if variant_trials != trials else "")


def variants_section(others: dict[Variant, list[Row]], settings: Settings, bases: dict) -> list[str]:
    """The headline and agents tables again for each other variant measured: what the refit's inputs, the exported
    weights and the width grid change, at the settings measured with them (and whether on the same baseline)."""
    if not others:
        return []
    lines = ["## Other refit settings, width grids and search lengths (`--reconstruct`, `--export-weights`, "
             "`--width-grid`, `--distinct`, `--trials`)", "",
             f"The tables above are measured with {variant_name(variant_of(settings), settings.trials)}"
             + (", width ratios k/10 (search.run's defaults)" if settings.width_grid == 10 else "")
             + f", {settings.trials} trials per search (search.run's default: {DEFAULT_TRIALS})"
             + (", each candidate scored once and one finalist (as search.run did before 2026-12-07: candidates "
                "that differ only inside removed blocks were told apart)" if settings.distinct == "candidate" else "")
             + ". The same report's rows measured with other values (every other setting the same; the "
             "peers are the same methods, measured again), where there are any. Rows on another cached baseline "
             "than the tables above compare only among themselves. Rows of 5 and more epochs measured before "
             "`search.finetune --start auto` (2026-12-07) start from the refit export as the variant exports it.", ""]
    for variant, rows in others.items():
        lines += [f"### {variant_name(variant, settings.trials)}", ""]
        for model in dict.fromkeys(r.model for r in rows):
            base = bases.get(f"{with_variant(settings, variant).text()}|{model}")
            ours = bases.get(f"{settings.text()}|{model}")
            if base is not None:
                same = ours is not None and same_base(base, ours)
                lines.append(f"- {model}: base test {base['test']:.4f}, "
                             + ("the same baseline as above" if same else "**another cached baseline** than above"))
        lines += ["", *headline(rows), ""]
        against_random = agents_table(rows)
        if against_random:
            lines += ["Learned agents minus random:", "", *against_random, ""]
    return lines


def kept_text(model: str, settings: Settings, out: Path) -> str:
    """Whether the report keeps `model`'s trained baseline (`kept_baselines`), in words."""
    config = SearchConfig(model=model, data=settings.data, seed=0, baseline_epochs=settings.baseline_epochs)
    weights = baselines_folder(out) / kept_baselines.cached_files(config)[0].name
    if weights.is_file():
        return (f"Its weights are kept in `{weights.relative_to(out.parent)}`: a run on another machine puts them "
                "back into its cache and goes on with these rows.")
    return ("Its weights were not kept: these rows can be regenerated, but not extended on another machine (a "
            "baseline trained again there is another model).")


def render(args: argparse.Namespace, rows: list[Row], bases: dict, settings: Settings, out: Path,
           others: dict[Variant, list[Row]] | None = None) -> None:
    previous = sections(out)
    plots = out.parent / "benchmarks"
    plots.mkdir(parents=True, exist_ok=True)
    data = "hard digits (`benchmarks/hard_digits.py`)" if settings.data == HARD_DIGITS else settings.data
    defaults = SearchConfig()
    divisors = sorted({r.note for r in rows if r.method == FASTNAS})
    lines = ["# Benchmarks", "", *environment(), "",
             "## Headline: our search against one-shot pruning at equal training", "",
             f"Data: {data}, {settings.test_images} test images (one image is {1 / settings.test_images:.5f}). "
             f"Each search: {settings.trials} trials, warm-started from our global-magnitude candidate, then "
             + finalists_text(settings, defaults.finalist_lr) + " Then one common fine-tune (SGD, cosine from lr 0.05, batch "
             f"{FINETUNE_BATCH}, seeded by the seed) for all. " + start_text(settings) + " Cells: test "
             "top-1 after it, median [min, max] over seeds. Ours = what `search.run` exports with its default agent, "
             f"{DEFAULT_AGENT} (without its rows: the agent whose exported subnets have the best median held-out "
             "score, no test data); the best peer = the peer with the best median test top-1; the "
             "margin is paired by seed (same seed: same batches for the steps and the fine-tune). FastNAS's default "
             "channel divisor of 32 cannot reach these budgets on these nets: `benchmarks/fastnas_peer.py` halves it "
             "from 32 until ModelOpt says the budget is reachable, as a user would "
             f"({', '.join(divisors) if divisors else 'none measured'}). MetaPruning's PruningNet was trained "
             f"{settings.pruningnet_epochs} epochs once per model and budget (seed 0); its wall time is in every "
             "metapruning row's search time.", "",
             verdict(rows, args.plan[0]), "", *headline(rows), ""]
    against_random = agents_table(rows)
    if against_random:
        lines += ["### Learned agents against random", "",
                  "Test top-1 after the common fine-tune, each agent minus random with the same seed (same "
                  "finalists' rule, same fine-tune), median over seeds [95% paired bootstrap]; the goal is >= 0.", "",
                  *against_random, ""]
    by_agent = default_agent_table(rows)
    if by_agent:
        lines += ["### Each agent against the best peer: search.run's default agent", "",
                  "Test top-1 after the common fine-tune, each agent (with the finalists) minus the best peer with the "
                  "same seed, median over the seeds every agent of the setting was measured on; the last row is the "
                  "mean of those medians over the settings where every agent was measured (bold: the largest). "
                  f"`search.run` without `--agent` searches with {DEFAULT_AGENT}, the agent with the largest mean "
                  "on both pairs of baselines (2026-12-08).", "",
                  *by_agent, ""]
    missing = [f"{s.budget} {e}-epoch seeds {seeds_text(list(s.seeds))}" for s in args.plan for e in s.epochs
               if any(key(settings, m, s.budget, meth, seed, e) not in {r.key for r in rows}
                      for m in args.models for seed in s.seeds for meth in method_names(args.agents))]
    if missing:
        lines += [f"Not (fully) measured yet: {'; '.join(missing)} (the plan; a run of `benchmarks/report.py` "
                  "measures what is missing).", ""]
    for model in dict.fromkeys(r.model for r in rows):
        base = bases.get(f"{settings.text()}|{model}")
        mine = [r for r in rows if r.model == model]
        figure = plots / f"{model}.png"
        plot_model(model, mine, None if base is None else base["test"], figure)
        lines += [f"## {model} on {data}", ""]
        if base is not None:
            lines += [f"Base {model}: {base['flops'] / 1e6:.2f} MFLOPs, {base['params'] / 1e6:.3f} M params, held-out "
                      f"{base['held_out']:.4f}, test {base['test']:.4f}. " + kept_text(model, settings, out), ""]
        lines += ["Per method: median over seeds (held-out and test top-1: median [min, max]). SGD steps before "
                  "the common fine-tune: on the exported subnet / spent in all (ours: every finalist's). Search s: "
                  "finding the subnet (search, Torch-Pruning's bisection over its channel ratio, FastNAS's "
                  "sensitivity map and bisection, PruningNet training); training s: those SGD steps; FT s: the "
                  f"common fine-tune. Bold: ours (search.run's default agent, {DEFAULT_AGENT}; in a setting "
                  "without its rows, the agent with the best median held-out score). Our rows' held-out score is the one the "
                  "finalists picked by, so it is optimistic next to the peers'; test top-1 is not. FastNAS's "
                  "bisection over its sensitivity threshold stops where the score steps, below the target (its FLOPs "
                  "column).", ""]
        for _, budget, epochs in [s for s in settings_of(rows) if s[0] == model]:
            here = [r for r in mine if (r.budget, r.finetune_epochs) == (budget, epochs)]
            lines += [f"### {budget}, {epochs}-epoch common fine-tune", "", *setting_table(here), ""]
        lines += [f"![{model}]({figure.relative_to(out.parent)})", ""]
    lines += variants_section(others or {}, settings, bases)
    fresh = {title for title, _ in args.new_sections}
    for title in CARRIED:
        if title in previous and title not in fresh:
            origin = previous.get(f"#from {title}", [f"(Carried over from the previous report, {previous['#generated']}; "
                                                     "measured under its own settings, not the fair report's.)"])
            lines += [f"## {title}", "", *origin, "", *previous[title], ""]
    for title, section in args.new_sections:
        lines += section
    out.write_text("\n".join(lines) + "\n")
    log(f"wrote {out} and {plots}/")


def load_bases(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--models", default="resnet20,mobilenetv2")
    parser.add_argument("--data", default=HARD_DIGITS)
    parser.add_argument("--baseline-epochs", type=int, default=10, help="epochs of each zoo model's cached baseline")
    parser.add_argument("--plan", nargs="+", default=list(PLAN),
                        help="BUDGET/EPOCHS/SEEDS items, measured in order (the first is the headline), e.g. "
                             "0.1flops/1/0,1,2,3,4 0.25flops/1,5/0,1,2")
    parser.add_argument("--agents", default=AGENTS)
    parser.add_argument("--trials", type=int, default=100, help="per search, the same for every agent")
    parser.add_argument("--pruningnet-epochs", type=int, default=5)
    parser.add_argument("--reconstruct", type=int, default=None,
                        help="our searches' --reconstruct (default: search.run's); rows of another value are kept "
                             "apart by their key and rendered in the section of other variants")
    parser.add_argument("--export-weights", choices=("base", "refit"), default=None,
                        help="what our searches export with reconstruction on (default: search.run's); rows of "
                             "another value are kept apart by their key")
    parser.add_argument("--width-grid", type=int, default=10,
                        help="our searches' width ratios k / N, k = 1 .. N (10: search.run's default "
                             "--width-ratios); rows of another N are kept apart by their key")
    parser.add_argument("--distinct", choices=("candidate", "subnet"), default="candidate",
                        help="subnet: the search scores each subnet once and the finalists hold each once (candidates "
                             "that differ only inside removed blocks are one subnet), as search.run does since "
                             "2026-12-07; the report's tables were measured before, one per candidate (the default "
                             "here, so that they go on), and `subnet` rows are a variant of their own")
    parser.add_argument("--new-baseline", action="store_true",
                        help="--out is a report of its own, on the baselines it finds or trains (kept beside its "
                             "rows), not a fill of docs/benchmarks.md to merge into it: skip the check against the "
                             "committed report's baselines")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/prunesearch-report-subnets"),
                        help="subnets before the common fine-tune, kept between runs")
    parser.add_argument("--fidelity-candidates", type=int, default=0, help="> 0: measure the fidelity section")
    parser.add_argument("--finalists-agent", default="", help="an agent: measure the finalists-vs-proxy section")
    parser.add_argument("--speed", action="store_true", help="measure the speed section (else carried over)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny settings, ResNet-20, digits, /tmp")
    parser.add_argument("--render-only", action="store_true", help="measure nothing: the report from its rows")
    parser.add_argument("--sync-readme", action="store_true",
                        help="measure nothing: copy the headline of the existing --out report into README.md")
    args = parser.parse_args()
    if args.width_grid < 1:
        parser.error(f"--width-grid must be a positive number of ratios, got {args.width_grid}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.sync_readme:
        log("README.md updated" if sync_readme(args.out) else "README.md has no benchmark-headline markers")
        return
    if args.quick:
        args.models, args.trials, args.pruningnet_epochs, args.baseline_epochs = "resnet20", 8, 1, 1
        args.agents, args.data, args.plan = "tpe,metapruning", "digits", ["0.25flops/1/0,1"]
        if args.out == parser.get_default("out"):
            args.out = Path("/tmp/prunesearch-report-quick/benchmarks.md")
    args.models, args.agents = args.models.split(","), args.agents.split(",")
    args.plan = [Step.parse(text) for text in args.plan]
    defaults = SearchConfig(export_weights=args.export_weights)
    test = load_test(args.data)
    test_images = len(test)
    reconstruct = args.reconstruct if args.reconstruct is not None else \
        default_inputs(test[0][0].unsqueeze(0)) if defaults.reconstruct is None else defaults.reconstruct
    settings = Settings(args.data, test_images, args.trials, defaults.finalists, defaults.finalist_steps,
                        args.pruningnet_epochs, args.baseline_epochs, defaults.finalist_rank, not defaults.no_one_shot,
                        defaults.block_encoding, reconstruct, defaults.exported_weights, args.width_grid,
                        args.distinct)
    rows_path, bases_path = args.out.parent / "benchmarks" / "rows.json", args.out.parent / "benchmarks" / "bases.json"
    rows, bases = load(rows_path), load_bases(bases_path)
    REFERENCE_BASES.update(load_bases(ROOT / "docs" / "benchmarks" / "bases.json"))
    args.new_sections = []
    if not args.render_only:
        tp_peer.require()
        fastnas_peer.require()
        started = time.perf_counter()
        measure(args, settings, rows, rows_path, bases, bases_path, SubnetCache(args.cache))
        log(f"measured in {(time.perf_counter() - started) / 60:.1f} min")
        args.budgets, args.finetune_epochs, args.seeds = [args.plan[0].budget], args.plan[0].epochs[0], \
            list(args.plan[0].seeds)
        args.no_warm_start = False
        if args.fidelity_candidates:
            args.new_sections.append((CARRIED[0], fidelity_section(args)))
        if args.finalists_agent:
            args.new_sections.append((CARRIED[1], finalists_section(args)))
        if args.speed:
            args.new_sections.append(("Speed", speed_section(args)))
    mine = [r for r in rows.values() if r.model in args.models  # this key exactly: not a longer key that extends it
            and r.key == key(settings, r.model, r.budget, r.method, r.seed, r.finetune_epochs)]
    render(args, mine, bases, settings, args.out, other_variants(rows, settings, args.models))
    if args.out.resolve() == (ROOT / "docs" / "benchmarks.md").resolve() and sync_readme(args.out):
        log("README.md: headline updated")


def load_test(data: str):
    """The test set of `data` (for its size, which is part of every row's key)."""
    from search.models.zoo import load_data

    return load_data(data).test


if __name__ == "__main__":
    main()
