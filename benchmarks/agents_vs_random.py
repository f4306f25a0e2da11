"""Every learned agent against random search: best held-out score and test top-1 after the same fine-tune.

    python benchmarks/agents_vs_random.py [--models resnet20,mobilenetv2] [--budgets 0.15flops,0.3flops]
        [--agent random --agent abc --agent tpe:startup_trials=10 ...] [--seeds 0,1,2] [--trials 60]
        [--finetune-epochs 1] [--finalists 0] [--no-warm-start] [--quick]

Each model is set up as `search.run` sets it up (`benchmarks.setting.Setting`: the cached baseline on
hard digits, the prunable model, the cost model, the scorer, the warm start unless `--no-warm-start`);
each agent searches `--trials` trials per seed with its default options (or those given as
`name:key=value,...`). The best candidate (by held-out score, or with `--finalists K` the best of the
top K after `search.selection.finalists`' short fine-tune) is exported with the base weights and fine-tuned by
`search.finetune.finetune_module` (the report's recipe: `--finetune-epochs`, lr 0.05, seed 0), then tested.
Printed per (model, budget, agent): median [min, max] over seeds of the best held-out score and of test
top-1 after the fine-tune, each with "above random?" (the agent's median against random's median), the
median number of scored candidates until the best, and how many seeds' best is a warm-start candidate.

Searches and fine-tunes are cached in `--cache` (JSON): a search by model, data, budget, agent, its
options, seed, trials, warm start and a hash of the agents' source (`agents/*.py`), so after a change to
one agent only that agent searches again; a fine-tune by model, data, candidate and epochs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.agent_scaling import parse_agent  # noqa: E402
from benchmarks.setting import Setting  # noqa: E402
from evaluators.accuracy import recalibrate, top1  # noqa: E402
from search.engine.config import SearchConfig  # noqa: E402
from search.engine.loop import Engine  # noqa: E402
from search.selection.finalists import FinalistSettings, ShuffledBatches, run_finalists  # noqa: E402
from search.finetune import finetune_module  # noqa: E402
from search.finetune.step import evaluate  # noqa: E402
from spaces.materialize import materialize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HARD_DIGITS = "benchmarks.hard_digits:hard_digits"
AGENTS = ("random", "abc", "tpe", "nsga2", "evolution", "amc")


_HASHES: dict[str, str] = {}


def agents_hash(name: str) -> str:
    """A hash of the agent's implementation: its module (the registry's) and the shared base, as they were
    when the run first looked (an edit during a run must not label old results with the new code)."""
    from agents.registry import _AGENTS

    if name not in _HASHES:
        module = _AGENTS[name].split(":")[0].replace(".", "/") + ".py"
        text = b"".join((ROOT / f).read_bytes() for f in (module, "agents/base.py"))
        _HASHES[name] = hashlib.sha256(text).hexdigest()[:12]
    return _HASHES[name]


class Cache:
    """A JSON file of finished searches and fine-tunes (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str):
        return self.entries.get(key)

    def put(self, key: str, value) -> None:
        self.entries[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries))
        tmp.replace(self.path)


class Bench:
    """One model's setting; searches and fine-tunes of its exported bests, cached."""

    def __init__(self, model: str, args: argparse.Namespace, cache: Cache):
        self.model, self.args, self.cache = model, args, cache
        config = SearchConfig(agent="random", budget=args.budgets[:1], model=model, data=args.data, seed=0,
                              device="cpu", no_warm_start=args.no_warm_start, baseline_epochs=args.baseline_epochs)
        self.setting = Setting.of(config)
        self.prunable, self.evaluator, self.price = self.setting.prunable, self.setting.evaluator, self.setting.price
        self.data = self.setting.inputs.data

    def search(self, budget: str, spec: str, seed: int) -> dict:
        name, options = parse_agent(spec)
        key = json.dumps([self.model, self.args.data, budget, spec, seed, self.args.trials, self.args.no_warm_start,
                          self.args.finalists, agents_hash(name)])
        found = self.cache.get(key)
        if found is not None:
            return found
        pipeline = self.setting.at(budget)
        agent = pipeline.agent(self.prunable, self.price, name=name, seed=seed, trials=self.args.trials, **options)
        initial = {json.dumps(c.to_dict(), sort_keys=True) for c in agent.initial}
        start = time.perf_counter()
        outcome = Engine(agent, self.price, pipeline.budget, self.evaluator, trials=self.args.trials,
                         progress=False, canonical=self.prunable.canonical).run()
        seconds = time.perf_counter() - start
        self.evaluator.restore()
        scored = [t for t in outcome.trials if t.result.ok]
        best = outcome.best
        if self.args.finalists:
            batches = ShuffledBatches(torch.utils.data.Subset(self.data.train, self.data.fit.tolist()), 64)
            best = run_finalists(outcome.trials, FinalistSettings(count=self.args.finalists, steps=50, lr=0.01),
                                 build=lambda c: materialize(self.prunable, c), batches=batches,
                                 calibration=self.evaluator.calibration, held_out=self.evaluator.held_out,
                                 device=torch.device("cpu"))[0].trial
        distinct = len({json.dumps(t.candidate.to_dict(), sort_keys=True) for t in scored})
        entry = {"held_out": best.result.score, "candidate": best.candidate.to_dict(),
                 "flops": best.result.costs["flops"] / self.setting.base["flops"],
                 "to_best": 1 + next(i for i, t in enumerate(scored) if t.number == best.number),
                 "warm_best": json.dumps(best.candidate.to_dict(), sort_keys=True) in initial,
                 "scored": len(scored), "distinct": distinct, "seconds": seconds}
        self.cache.put(key, entry)
        return entry

    def finetuned(self, candidate: dict) -> dict:
        """Test top-1 of the candidate's subnet (base weights) before and after the common fine-tune."""
        key = json.dumps(["finetune", self.model, self.args.data, self.args.finetune_epochs,
                          sorted(candidate.items())])
        found = self.cache.get(key)
        if found is not None:
            return found
        from spaces.space import Candidate

        module = materialize(self.prunable, Candidate(candidate))
        recalibrate(module, self.evaluator.calibration)
        held = top1(module.eval(), self.evaluator.held_out)
        before = evaluate(module, self.setting.inputs.test)
        _, history = finetune_module(module, self.data, epochs=self.args.finetune_epochs, seed=0)
        entry = {"held_out": held, "test_before": before, "test_after": history[-1]["test_top1"]}
        self.cache.put(key, entry)
        return entry


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def verdict(mine: list[float], random: list[float] | None) -> str:
    if random is None:
        return "-"
    m, r = statistics.median(mine), statistics.median(random)
    return f"{'yes' if m > r else 'NO '} {m - r:+.4f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,mobilenetv2")
    parser.add_argument("--data", default=HARD_DIGITS)
    parser.add_argument("--baseline-epochs", type=int, default=10, help="epochs of each zoo model's cached baseline")
    parser.add_argument("--budgets", default="0.15flops,0.3flops")
    parser.add_argument("--agent", action="append", dest="agents", metavar="NAME[:key=value,...]",
                        help=f"repeatable; default: {', '.join(AGENTS)} (random is the reference)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trials", type=int, default=60, help="per search, the same for every agent")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="the same fine-tune for every exported best")
    parser.add_argument("--finalists", type=int, default=0, help="0: the search alone picks the exported best")
    parser.add_argument("--no-warm-start", action="store_true", help="agents start from scratch")
    parser.add_argument("--no-finetune", action="store_true", help="held-out only (fast)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "prunesearch" / "agents_vs_random.json")
    parser.add_argument("--quick", action="store_true", help="a smoke run: digits, ResNet-20, 8 trials, seed 0")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.data, args.budgets, args.seeds, args.trials = "resnet20", "digits", "0.3flops", "0", 8
        args.agents = args.agents or ["random", "abc", "tpe"]
    args.agents = args.agents or list(AGENTS)
    args.models, args.budgets = args.models.split(","), args.budgets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(1)
    cache = Cache(args.cache)
    for spec in args.agents:  # the code as it is now, before anything is imported
        agents_hash(parse_agent(spec)[0])
    print(f"agents against random: {args.data}, {args.trials} trials, seeds {seeds}, warm start "
          f"{'off' if args.no_warm_start else 'on'}, finalists {args.finalists}, {args.finetune_epochs}-epoch "
          f"fine-tune; torch {torch.__version__}, 1 thread", flush=True)
    for model in args.models:
        bench = Bench(model, args, cache)
        for budget in args.budgets:
            results: dict[str, tuple[list[dict], list[dict]]] = {}
            for spec in args.agents:
                searches = [bench.search(budget, spec, seed) for seed in seeds]
                tuned = [] if args.no_finetune else [bench.finetuned(s["candidate"]) for s in searches]
                results[spec] = (searches, tuned)
                print(f"  {model} {budget} {spec}: held-out {[round(s['held_out'], 4) for s in searches]}"
                      + ("" if args.no_finetune else f", after FT {[round(t['test_after'], 4) for t in tuned]}"),
                      flush=True)
            reference = next((spec for spec in results if spec == "random"), None)
            print(f"\n{model} at {budget} ({len(seeds)} seeds; median [min, max]):")
            header = (f"{'agent':28s} {'best held-out':26s} {'above random?':14s} {'test after FT':26s} "
                      f"{'above random?':14s} {'FLOPs':>5s} {'to best':>7s} {'warm best':>9s} {'distinct':>8s}")
            print(header)
            print("-" * len(header))
            for spec, (searches, tuned) in results.items():
                held = [s["held_out"] for s in searches]
                after = [t["test_after"] for t in tuned]
                ref = results[reference] if reference and spec != reference else None
                print(f"{spec:28s} {spread(held):26s} {verdict(held, ref and [s['held_out'] for s in ref[0]]):14s} "
                      f"{spread(after) if after else '-':26s} "
                      f"{verdict(after, ref and [t['test_after'] for t in ref[1]]) if after else '-':14s} "
                      f"{statistics.median(s['flops'] for s in searches):5.3f} "
                      f"{statistics.median(s['to_best'] for s in searches):7.0f} "
                      f"{sum(s['warm_best'] for s in searches):>4d}/{len(searches):<4d} "
                      f"{statistics.median(s['distinct'] for s in searches):8.0f}")
            print(flush=True)


if __name__ == "__main__":
    main()
