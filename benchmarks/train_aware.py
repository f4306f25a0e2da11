"""The train-aware stages side by side at the fair report's headline setting, every peer at equal training.

    OMP_NUM_THREADS=1 PRUNESEARCH_CACHE=/tmp/prunesearch-cache python benchmarks/train_aware.py --seeds 0,1,2
    python benchmarks/train_aware.py --render-only          # docs/benchmarks/train_aware.md from its rows

Setting (the headline of `benchmarks/report.py`): hard digits (`benchmarks/hard_digits.py`), 0.1 x FLOPs, tpe with
the report's 100 trials, zoo baselines trained 10 epochs (cached), then one common 1-epoch fine-tune
(`search.finetune.finetune_module`, seeded by the seed) for every subnet, tested on the 10080 test images.

Ours: the variants, each run end to end by the library (`Pipeline(SearchConfig(...)).run()`, seed = the seed,
so the data split, the cached baseline, the agent, the finalists' batches and the supernet follow it):
- A, the old default: `--finalists 5 --finalist-steps 50 --no-one-shot`;
- B, the new default: the same with the one-shot candidates (global magnitude, uniform) among the finalists;
- C, B with rungs: `--finalists 16 --finalist-steps 20,80,320` (synchronous successive halving);
- D, C with `--supernet-epochs 2` (sandwich rule, in-place distillation, before the search);
- E, the proxy's pick: `--finalists 0` (no training before the fine-tune; its peers get none either);
- F, the proxy's top 10 and the one-shot candidates, re-ranked by their held-out cross-entropy after BN
  recalibration, untrained: `--finalists 10 --finalist-steps 0 --finalist-rank ce` (the signal that ranked the
  fine-tuned truth best in `benchmarks/fidelity.py`; no training, so its peers get none either);
- G, F with `--no-block-removal` (widths only: the fidelity pool's truth rose with the blocks kept);
- H, F with `--block-encoding depth` (a depth per stage, as MetaPruning/AutoSlim/OFA, instead of a flag per block).
The exported subnet (`PruneResult.subnet`) is fine-tuned as it is; its steps before the fine-tune are
`best.json`'s `finetuned_steps` plus `run.json`'s `supernet.steps` (the supernet's sandwich steps, each 4
forward/backward passes on one batch).

Peers at equal training: Torch-Pruning global magnitude and uniform L1 (`benchmarks/torch_pruning_peer.py`) and
ModelOpt FastNAS (`benchmarks/fastnas_peer.py`), pruned to the same target from the same seed's base model, get
the exported subnet's own training schedule with the finalists' recipe (`search.selection.finalists.train_finalist`:
SGD, cosine from lr 0.05, the fit split's shuffled batches, BN recalibrated after), step for step:
- A, B: 50 steps (seed s);
- C: the rungs as the export had them: 20 steps (seed s), then 60 (seed s+1), then 240 (seed s+2): 320;
- D: first as many steps as the supernet had (seed s, one cosine), then C's rungs.
- E, F, G, H: none (the peers are fine-tuned as pruned).
A peer is computed once per seed and schedule. Margin = the variant minus the best peer at its schedule (the peer
with the best median test top-1), median of per-seed differences with a 95 % paired bootstrap interval
(`benchmarks/paired_bootstrap.py`). Rows are kept in `docs/benchmarks/train_aware_rows.json`; a run measures only
what they lack.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.data import DataLoader, Subset

from benchmarks import fastnas_peer
from benchmarks import torch_pruning_peer as tp_peer
from benchmarks.paired_bootstrap import median_margin
from search.engine.config import SearchConfig
from search.engine.pipeline import Pipeline
from search.finetune import finetune_module
from search.finetune.step import evaluate
from search.selection.finalists import FinalistSettings, ShuffledBatches, train_finalist

ROOT = Path(__file__).resolve().parents[1]
HARD_DIGITS = "benchmarks.hard_digits:hard_digits"
ROWS = ROOT / "docs" / "benchmarks" / "train_aware_rows.json"
OUT = ROOT / "docs" / "benchmarks" / "train_aware.md"
#: the variants: name -> SearchConfig fields beyond the common ones
VARIANTS = {
    "A": ("old default (5 x 50, no one-shot)", {"finalists": 5, "finalist_steps": 50, "no_one_shot": True}),
    "B": ("new default (one-shot + 5 x 50)", {"finalists": 5, "finalist_steps": 50, "no_one_shot": False}),
    "C": ("one-shot + rungs 16 x 20,80,320", {"finalists": 16, "finalist_steps": [20, 80, 320], "no_one_shot": False}),
    "D": ("C + supernet 2 epochs", {"finalists": 16, "finalist_steps": [20, 80, 320], "no_one_shot": False,
                                        "supernet_epochs": 2}),
    "E": ("the proxy's pick (--finalists 0)", {"finalists": 0}),
    "F": ("one-shot + the proxy's top 10 by BN cross-entropy (10 x 0)",
          {"finalists": 10, "finalist_steps": 0, "finalist_rank": "ce", "no_one_shot": False}),
    "G": ("F without block removal (widths only)",
          {"finalists": 10, "finalist_steps": 0, "finalist_rank": "ce", "no_one_shot": False,
           "no_block_removal": True}),
    "H": ("F with a depth per stage (--block-encoding depth)",
          {"finalists": 10, "finalist_steps": 0, "finalist_rank": "ce", "no_one_shot": False,
           "block_encoding": "depth"}),
}
PEERS = ("TP global magnitude", "TP uniform L1", "FastNAS")
TP_METHOD = {"TP global magnitude": "global", "TP uniform L1": "uniform"}


def log(text: str) -> None:
    print(f"[{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] {text}", flush=True)


def settings_text(args: argparse.Namespace) -> str:
    return f"{args.data}|trials={args.trials}|baseline={args.baseline_epochs}|{args.budget}|ft={args.epochs}"


def row_key(args: argparse.Namespace, model: str, method: str, seed: int) -> str:
    return f"{settings_text(args)}|{model}|{method}|seed={seed}"


def load_rows(path: Path) -> dict[str, dict]:
    return {r["key"]: r for r in json.loads(path.read_text())} if path.is_file() else {}


def save_rows(path: Path, rows: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(list(rows.values()), indent=1))
    tmp.replace(path)


def config(args: argparse.Namespace, model: str, seed: int, **extra) -> SearchConfig:
    return SearchConfig(agent=args.agent, budget=[args.budget], model=model, data=args.data, seed=seed,
                        trials=args.trials, baseline_epochs=args.baseline_epochs, device="cpu", **extra)


class Seed:
    """One model and seed: the pipeline's own inputs (base model, split, batches), shared by every peer."""

    def __init__(self, args: argparse.Namespace, model: str, seed: int):
        self.args, self.model, self.seed = args, model, seed
        inputs = Pipeline(config(args, model, seed), progress=False).load_inputs()
        self.base = copy.deepcopy(inputs.model).cpu().eval()
        self.inputs = inputs
        self.data = inputs.data
        self.batches = ShuffledBatches(Subset(self.data.train, self.data.fit.tolist()), SearchConfig().batch_size)
        self.test_loader = DataLoader(self.data.test, batch_size=256)
        self.pruned: dict[str, tuple[torch.nn.Module, dict]] = {}

    def finetuned(self, module: torch.nn.Module) -> tuple[float, float, float]:
        """(test before, test after the common fine-tune, its seconds), on a copy."""
        before = evaluate(module, self.test_loader)
        start = time.perf_counter()
        _, history = finetune_module(copy.deepcopy(module), self.data, epochs=self.args.epochs, seed=self.seed)
        return before, history[-1]["test_top1"], time.perf_counter() - start

    def prune(self, peer: str) -> tuple[torch.nn.Module, dict]:
        """The peer's pruned subnet (once per seed) and how it got there; a copy each call."""
        if peer not in self.pruned:
            target = float(self.args.budget.removesuffix("flops"))
            start = time.perf_counter()
            if peer == "FastNAS":
                p = fastnas_peer.prune_to_flops(self.base, self.inputs.example, target, self.inputs.calibration,
                                                self.inputs.held_out, seed=self.seed)
                note = f"channel divisor {p.divisor}"
            else:
                p = tp_peer.prune_to_flops(self.base, self.inputs.example, TP_METHOD[peer], target)
                note = f"channel ratio {p.pruning_ratio:.3f}"
            self.pruned[peer] = p.module.cpu().eval(), {"flops": p.flops_ratio, "params": p.params_ratio,
                                                        "prune_s": time.perf_counter() - start, "note": note}
        module, info = self.pruned[peer]
        return copy.deepcopy(module), dict(info)

    def equal_training(self, module: torch.nn.Module, schedule: list[tuple[int, int]]) -> tuple[torch.nn.Module,
                                                                                                    float, int, float]:
        """`schedule`: (steps, seed offset) phases, each one cosine from the finalists' lr; (module, held-out,
        steps, seconds)."""
        defaults, held, total, seconds = SearchConfig(), float("nan"), 0, 0.0
        for steps, offset in schedule:
            settings = FinalistSettings(count=1, steps=steps, lr=defaults.finalist_lr, seed=self.seed + offset,
                                        rank=defaults.finalist_rank)
            module, held, done, s, _ = train_finalist(module, 0, settings, self.batches, self.inputs.calibration,
                                                      self.inputs.held_out, None, None, "cpu")
            total, seconds = total + done, seconds + s
        return module, held, total, seconds


def peer_schedule(rungs: list[int], supernet_steps: int) -> list[tuple[int, int]]:
    """The exported subnet's training as (steps, seed offset) phases: the supernet's steps, then each rung's."""
    phases = [(supernet_steps, 0)] if supernet_steps else []
    done = 0
    for r, total in enumerate(rungs):
        phases.append((total - done, r))
        done = total
    return phases


def schedule_text(schedule: list[tuple[int, int]]) -> str:
    return "+".join(str(s) for s, _ in schedule) or "0"


def run_variant(args: argparse.Namespace, model: str, seed: int, variant: str) -> dict:
    _, extra = VARIANTS[variant]
    with tempfile.TemporaryDirectory(prefix=f"train-aware-{variant}-") as folder:
        pipeline = Pipeline(config(args, model, seed, out=str(Path(folder) / "run"), **extra), progress=False)
        start = time.perf_counter()
        result = pipeline.run()
        run_s = time.perf_counter() - start
        info = json.loads((result.run_dir / "run.json").read_text())
        record = result.record
        subnet = copy.deepcopy(result.subnet).cpu().eval()
        finalists = result.finalists
    supernet = info.get("supernet") or {}
    supernet_steps = int(supernet.get("steps", 0))
    finalist_steps = int(finalists["steps"].sum()) if finalists is not None else 0
    rungs = list(pipeline.config.finalist_rungs) if finalist_steps else []  # --finalists 0: no training at all
    return {"subnet": subnet, "row": {
        "run_s": run_s, "search_s": info.get("search_seconds"), "supernet_steps": supernet_steps,
        "supernet_s": supernet.get("seconds", 0.0), "finetuned_steps": int(record["finetuned_steps"]),
        "steps": int(record["finetuned_steps"]) + supernet_steps, "steps_spent": finalist_steps + supernet_steps,
        "finalists": 0 if finalists is None else len(finalists), "origin": record["origin"],
        "selected_by": record["selected_by"], "trial": record["trial"], "held_out": record["held_out_top1"],
        "flops": record["ratios"]["flops"], "params": record["ratios"]["params"],
        "schedule": schedule_text(peer_schedule(rungs, supernet_steps)),
        "phases": peer_schedule(rungs, supernet_steps)}}


def measure(args: argparse.Namespace, rows: dict[str, dict]) -> None:
    states: dict[tuple[str, int], Seed] = {}

    def seed_state(model: str, seed: int) -> Seed:
        if (model, seed) not in states:
            states.clear()  # one seed's base model and data at a time
            log(f"{model} seed {seed}: base model and data")
            states[model, seed] = Seed(args, model, seed)
        return states[model, seed]

    for model in args.models:
        for seed in args.seeds:
            for variant in args.variants:
                key = row_key(args, model, f"{variant}", seed)
                if key not in rows:
                    s = seed_state(model, seed)
                    log(f"{model} seed {seed}: variant {variant} ({VARIANTS[variant][0]})")
                    out = run_variant(args, model, seed, variant)
                    before, after, ft_s = s.finetuned(out["subnet"])
                    row = {"key": key, "kind": "ours", "model": model, "method": variant, "seed": seed,
                           "label": VARIANTS[variant][0], **out["row"], "test_before": before, "test_after": after,
                           "finetune_s": ft_s}
                    rows[key] = row
                    save_rows(args.rows, rows)
                    log(f"  {variant}: FLOPs x{row['flops']:.3f}, held-out {row['held_out']:.4f}, test {before:.4f} -> "
                        f"{after:.4f}; {row['steps']} steps on the export, {row['steps_spent']} in all, "
                        f"{row['run_s']:.0f} s; {row['origin']} / {row['selected_by']}")
                row = rows[key]
                phases = [tuple(p) for p in row["phases"]]
                for peer in args.peers:
                    pkey = row_key(args, model, f"{peer} @ {row['schedule']}", seed)
                    if pkey in rows:
                        continue
                    s = seed_state(model, seed)
                    module, info = s.prune(peer)
                    module, held, steps, train_s = s.equal_training(module, phases)
                    before, after, ft_s = s.finetuned(module)
                    rows[pkey] = {"key": pkey, "kind": "peer", "model": model, "method": peer, "seed": seed,
                                  "schedule": row["schedule"], "flops": info["flops"], "params": info["params"],
                                  "held_out": held, "test_before": before, "test_after": after, "steps": steps,
                                  "steps_spent": steps, "run_s": info["prune_s"] + train_s, "prune_s": info["prune_s"],
                                  "train_s": train_s, "finetune_s": ft_s, "note": info["note"]}
                    save_rows(args.rows, rows)
                    log(f"  {peer} @ {row['schedule']}: FLOPs x{info['flops']:.3f}, test {before:.4f} -> {after:.4f}"
                        f" ({steps} steps, {info['prune_s'] + train_s:.0f} s)")


# ------------------------------------------------------------------------------------------ tables
def med(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def notes_text(notes: list[str]) -> str:
    """The peers' notes over seeds: one, two, or the first and last (e.g. TP's channel ratio per seed)."""
    return ", ".join(notes) if len(notes) <= 2 else f"{notes[0]} ... {notes[-1].split()[-1]} (per seed)"


def table(args: argparse.Namespace, rows: dict[str, dict]) -> list[str]:
    prefix = settings_text(args) + "|"
    mine = [r for r in rows.values() if r["key"].startswith(prefix)]
    lines = []
    for model in dict.fromkeys(r["model"] for r in mine):
        here = [r for r in mine if r["model"] == model]
        lines += [f"### {model}", "",
                  ("| variant | seeds | test top-1 after FT, median [min, max] | best equal-training peer (median) | "
                   "margin, median [95% paired bootstrap] | steps on export / spent in all (supernet) | run s "
                   "(median) | FLOPs x (median) | export: origin / selected by (seeds) |"),
                  "|---|---|---|---|---|---|---|---|---|"]
        peer_lines = []
        for variant in VARIANTS:
            ours = {r["seed"]: r for r in here if r["kind"] == "ours" and r["method"] == variant}
            if not ours:
                continue
            schedules = {r["schedule"] for r in ours.values()}
            peers: dict[str, dict[int, dict]] = {}
            for r in here:
                if r["kind"] == "peer" and r["schedule"] in schedules and r["seed"] in ours and \
                        r["schedule"] == ours[r["seed"]]["schedule"]:
                    peers.setdefault(r["method"], {})[r["seed"]] = r
            complete = {p: v for p, v in peers.items() if set(v) == set(ours)}
            best = max(complete, key=lambda p: statistics.median(r["test_after"] for r in complete[p].values()),
                       default=None)
            if best is not None:
                margin, (low, high) = median_margin({s: r["test_after"] for s, r in ours.items()},
                                                    {s: r["test_after"] for s, r in complete[best].items()})
                margin_text = f"{margin:+.4f} [{low:+.4f}, {high:+.4f}]"
                best_text = f"{best} ({statistics.median(r['test_after'] for r in complete[best].values()):.4f})"
            else:
                margin_text, best_text = "-", "-"
            origins: dict[str, int] = {}
            for r in ours.values():
                where = f"{r['origin']} / {r['selected_by'].split(' (')[0]}"
                origins[where] = origins.get(where, 0) + 1
            steps = statistics.median(r["steps"] for r in ours.values())
            spent = statistics.median(r["steps_spent"] for r in ours.values())
            supernet = statistics.median(r["supernet_steps"] for r in ours.values())
            lines.append(f"| {variant}: {VARIANTS[variant][0]} | {','.join(map(str, sorted(ours)))} | "
                         f"{med([r['test_after'] for r in ours.values()])} | {best_text} | {margin_text} | "
                         f"{steps:.0f} / {spent:.0f} ({supernet:.0f}) | "
                         f"{statistics.median(r['run_s'] for r in ours.values()):.0f} | "
                         f"{statistics.median(r['flops'] for r in ours.values()):.3f} | "
                         + "; ".join(f"{k} ({v})" for k, v in origins.items()) + " |")
            for peer in PEERS:
                if peer in peers:
                    v = peers[peer]
                    peer_lines.append(f"| {peer} | {variant}: {'+'.join(sorted(schedules))} | "
                                      f"{','.join(map(str, sorted(v)))} | {med([r['test_after'] for r in v.values()])} "
                                      f"| {statistics.median(r['steps'] for r in v.values()):.0f} | "
                                      f"{statistics.median(r['run_s'] for r in v.values()):.1f} | "
                                      f"{statistics.median(r['flops'] for r in v.values()):.3f} | "
                                      f"{notes_text(sorted({r['note'] for r in v.values()}))} |")
        pairs = []
        for a, b in (("B", "A"), ("C", "B"), ("D", "C"), ("E", "B"), ("F", "E"), ("F", "B"), ("G", "F"), ("H", "F")):
            mine_a = {r["seed"]: r["test_after"] for r in here if r["kind"] == "ours" and r["method"] == a}
            mine_b = {r["seed"]: r["test_after"] for r in here if r["kind"] == "ours" and r["method"] == b}
            if set(mine_a) & set(mine_b):
                m, (lo, hi) = median_margin(mine_a, mine_b)
                pairs.append(f"{a} - {b}: {m:+.4f} [{lo:+.4f}, {hi:+.4f}] ({len(set(mine_a) & set(mine_b))} seeds)")
        if pairs:
            lines += ["", "Variant against variant (test top-1 after the fine-tune, median of per-seed differences "
                      "[95% paired bootstrap]): " + "; ".join(pairs) + "."]
        lines += ["", "Peers at equal training (the variant's schedule, step for step):", "",
                  ("| peer | schedule (steps per phase) | seeds | test top-1 after FT, median [min, max] | steps | "
                   "prune + train s (median) | FLOPs x (median) | note |"), "|---|---|---|---|---|---|---|---|",
                  *peer_lines, ""]
    return lines


def environment() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    cpu = platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `{args_text()}` at "
            f"commit {commit} (rows measured by `OMP_NUM_THREADS=1 PRUNESEARCH_CACHE=/tmp/prunesearch-cache python "
            f"benchmarks/train_aware.py --models MODEL --seeds 0,1,2,3,4`, resumable, one model per run), on {cpu} ({os.cpu_count()} cores, torch {torch.__version__} using "
            f"{torch.get_num_threads()} thread(s), {'CUDA' if torch.cuda.is_available() else 'no GPU'}; the cores "
            f"were shared with other benchmarks, so seconds are indicative).")


def args_text() -> str:
    return "python " + " ".join(["benchmarks/train_aware.py", *sys.argv[1:]])


def render(args: argparse.Namespace, rows: dict[str, dict]) -> None:
    lines = ["# Train-aware stages at the fair report's headline setting", "", environment(), "",
             (f"Setting: hard digits (`benchmarks/hard_digits.py`, 10080 test images), {args.budget}, agent "
             f"{args.agent} with {args.trials} trials, baselines trained {args.baseline_epochs} epochs (cached, one "
             f"per seed: the seed is the run's `--seed`, so it also draws the held-out split), then one common "
             f"{args.epochs}-epoch fine-tune (`search.finetune.finetune_module`, seeded) for every subnet. Each "
             "variant is one `Pipeline(SearchConfig(...)).run()`; its exported subnet is fine-tuned as exported. "
             "Peers (Torch-Pruning global magnitude and uniform L1, ModelOpt FastNAS) prune the same seed's base "
             "model to the target and get the export's own training schedule step for step (`train_finalist`: the "
             "finalists' recipe and batches; for D first as many plain SGD steps as the supernet had sandwich steps, "
             "then the rungs 20+60+240). Margin: the variant minus the best peer at its schedule (best median test "
             "top-1), median of per-seed differences [95% paired bootstrap over seeds]. Steps: SGD steps on the "
             "exported subnet before the fine-tune (finalist steps + supernet steps) / spent in all (every "
             "finalist's steps + supernet steps; one supernet step = 4 forward/backward passes). Run s: wall time "
             "of `Pipeline.run()` (search, one-shot, supernet, finalists, export), baseline training excluded."), "",
             *table(args, rows),
             "Script: `benchmarks/train_aware.py`; rows: `docs/benchmarks/train_aware_rows.json`.", ""]
    args.out.write_text("\n".join(lines))
    log(f"wrote {args.out}")
    print("\n".join(table(args, rows)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--variants", default="A,B,C,D")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--data", default=HARD_DIGITS)
    parser.add_argument("--budget", default="0.1flops")
    parser.add_argument("--epochs", type=int, default=1, help="common fine-tune epochs")
    parser.add_argument("--agent", default="tpe")
    parser.add_argument("--trials", type=int, default=100, help="the report's trials per search")
    parser.add_argument("--baseline-epochs", type=int, default=10, help="the report's baseline epochs")
    parser.add_argument("--rows", type=Path, default=ROWS)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    logging.basicConfig(level=logging.WARNING)
    args.models, args.variants = args.models.split(","), args.variants.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.peers = [p for p in args.peers.split(",") if p]
    rows = load_rows(args.rows)
    if not args.render_only:
        tp_peer.require()
        if "FastNAS" in args.peers:
            fastnas_peer.require()
        started = time.perf_counter()
        try:
            measure(args, rows)
        finally:
            log(f"measured in {(time.perf_counter() - started) / 60:.1f} min")
            render(args, rows)
    else:
        render(args, rows)


if __name__ == "__main__":
    main()
