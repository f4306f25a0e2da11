"""Each agent's own time per trial as a search grows, and its best synthetic score with 1 and 8 outstanding.

    python benchmarks/agent_scaling.py [--trials 2000] [--quick] [--agent NAME[:key=value,...]]...
                                       [--seeds 0,1,2] [--spaces resnet50,resnet152] [--no-quality] [--jobs 1]

An agent's own time is the CPU time its `ask()` and `tell()` calls take (one thread), its own pricing
of candidates included; the synthetic score and the engine's pricing of the told result are not
counted. CPU time, not wall time: on a shared machine it does not count the waits for a core. No forward
pass is run: the score is `synthetic_score`, a smooth stand-in for accuracy.
Spaces: torchvision ResNet-50 derived at 64x64 (37 widths, 12 keep flags) and ResNet-152 (>= 100
dimensions), both priced exactly by `evaluators.cost.CostModel` under 0.4 x FLOPs.
Printed per space and agent: milliseconds per trial over trials 1-100, 401-500 and the last 100, the
last window over the 401-500 one (flatness after warm-up), the whole loop's seconds; on the first
space also the best synthetic score at 200 and at `--trials` trials with 1 and with 8 candidates
outstanding (8 asked before the oldest is told, as with 8 workers), median over the seeds; `!` marks
a score whose runs once proposed a candidate equal to one still outstanding. `repeats`: proposals
equal to an earlier one in the timed run.
`--agent tpe:history=0` measures an agent with options (repeat the flag for several).
`--quick`: 300 trials, one seed, ResNet-50 only. `--jobs N`: the quality runs in N processes while
the timed runs go on in this one (CPU time is per process, so the timings stay valid).
The engine's own per-trial work (journal, progress, executor round trip) is `benchmarks/engine_overhead.py`.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import functools
import multiprocessing
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from agents import agent_class, list_agents, make_agent  # noqa: E402
from evaluators.cost import CostModel  # noqa: E402
from spaces.budget import Budget, Limit  # noqa: E402
from spaces.records import Result, TrialState  # noqa: E402
from spaces.space import Candidate, SearchSpace  # noqa: E402

WINDOWS = ("1-100", "401-500", "last 100")


@dataclass(frozen=True)
class Setting:
    """A space, its resolved budget and its exact price function."""
    name: str
    space: SearchSpace
    budget: Budget
    price: Callable[[Candidate], Mapping[str, float]]


@dataclass(frozen=True)
class Measured:
    """One ask/tell loop: the agent's own seconds per told trial and the running best score."""
    seconds: list[float]
    best: list[float]
    distinct: bool  # no candidate was proposed while an equal one was outstanding
    repeats: int    # proposals equal to an earlier one (an evaluation the engine may spend again)

    def window_ms(self) -> dict[str, float | None]:
        """Mean milliseconds per trial over trials 1-100, 401-500 and the last 100 (None: not reached)."""
        n = len(self.seconds)

        def mean(a: int, b: int) -> float | None:
            return 1e3 * statistics.fmean(self.seconds[a:b]) if n >= b > a >= 0 else None

        return {"1-100": mean(0, 100), "401-500": mean(400, 500), "last 100": mean(n - 100, n)}


def synthetic_score(space: SearchSpace, candidate: Mapping[str, int]) -> float:
    """A smooth stand-in for accuracy: wider is better, with diminishing returns and unequal dimensions.

    The mean over dimensions of `w_i * (1 - (1 - r_i)^2)`, `r_i` the width ratio (keep flags 0 or 1),
    weights cycling 1, 2, 3 along the network, normalised so the full model scores 1.
    """
    ratios = space.to_ratios(candidate)
    weights = [1 + i % 3 for i in range(len(ratios))]
    return float(sum(w * (1 - (1 - r) ** 2) for w, r in zip(weights, ratios)) / sum(weights))


def setting_of(name: str, model: torch.nn.Module, example: torch.Tensor, budget: float = 0.4) -> Setting:
    """Derive `model`'s space on `example` and price it; the budget is `budget` x its FLOPs."""
    from spaces.derive import derive

    prunable = derive(model.eval(), example)
    cost = CostModel(prunable)
    resolved = Budget([Limit("flops", budget, True)]).resolve(cost.base.as_dict())
    return Setting(name, prunable.space, resolved, lambda c: cost.price(c).as_dict())


@functools.lru_cache(maxsize=None)
def standard_setting(name: str) -> Setting:
    """`resnet20`/`resnet56` (CIFAR, 32x32 input) or a torchvision model (64x64, no weights), at 0.4 x FLOPs."""
    torch.manual_seed(0)
    if name in ("resnet20", "resnet56"):
        from search.models import cifar_resnet

        return setting_of(name, getattr(cifar_resnet, name)(), torch.randn(1, 3, 32, 32))
    import torchvision

    return setting_of(name, torchvision.models.get_model(name, weights=None), torch.randn(1, 3, 64, 64))


def parse_agent(spec: str) -> tuple[str, dict]:
    """`tpe` or `tpe:history=0,n_ei_candidates=24` -> (name, options); values are ints, floats or text."""
    name, _, rest = spec.partition(":")
    options: dict = {}
    for item in filter(None, rest.split(",")):
        key, _, text = item.partition("=")
        for kind in (int, float):
            try:
                options[key] = kind(text)
                break
            except ValueError:
                continue
        else:
            options[key] = {"None": None, "True": True, "False": False}.get(text, text)
    return name, options


def measure(name: str, setting: Setting, *, trials: int, seed: int = 0, outstanding: int = 1,
            score: Callable[[SearchSpace, Mapping[str, int]], float] = synthetic_score, **options) -> Measured:
    """Drive agent `name` for `trials` told trials, keeping up to `outstanding` candidates asked and untold.

    The oldest outstanding candidate is told first (as the engine does with as many workers). An
    `ask()` that returns None waits for the outstanding ones; with none outstanding the agent is done.
    Only the agent's own calls are timed; a trial's time is everything the agent spent since the
    previous tell (its asks, including those that returned None, and its tell).
    """
    space, price = setting.space, setting.price
    agent = make_agent(name, space, setting.budget, price=price, seed=seed, trials=trials, **options)
    clock = time.process_time  # one torch thread: the process's CPU time is the agent's
    seconds: list[float] = []
    best: list[float] = []
    pending: deque[tuple[int, Candidate]] = deque()  # (ticket, candidate) in flight
    seen: set[Candidate] = set()
    distinct, repeats = True, 0
    asked, spent, top = 0, 0.0, float("-inf")
    while len(seconds) < trials:
        while len(pending) < outstanding and asked < trials:
            start = clock()
            candidate = agent.ask(asked)
            spent += clock() - start
            if candidate is None:
                break
            distinct &= all(candidate != c for _, c in pending)
            repeats += candidate in seen
            seen.add(candidate)
            pending.append((asked, candidate))
            asked += 1
        if not pending:
            break  # the agent has nothing more to propose
        ticket, candidate = pending.popleft()
        value = score(space, candidate)
        result = Result(TrialState.COMPLETE, value, price(candidate))
        start = clock()
        agent.tell(ticket, result)
        spent += clock() - start
        seconds.append(spent)
        spent = 0.0
        top = max(top, value)
        best.append(top)
    return Measured(seconds, best, distinct, repeats)


def _best(job: tuple) -> tuple[float, bool]:
    """One quality run in a worker process: (best score, outstanding candidates kept distinct)."""
    name, setting_name, trials, seed, outstanding, options = job
    run = measure(name, standard_setting(setting_name), trials=trials, seed=seed, outstanding=outstanding, **options)
    return run.best[-1], run.distinct


class _Inline:
    """An executor that runs each job when its result is asked for (`--jobs 1`: nothing runs alongside)."""

    def submit(self, fn, *args):
        return _Deferred(fn, args)


class _Deferred:
    def __init__(self, fn, args):
        self._fn, self._args = fn, args

    def result(self):
        return self._fn(*self._args)


def _cell(value: float | None, fmt: str) -> str:
    return format(value, fmt) if value is not None else "-".rjust(int(fmt.split(".")[0]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="300 trials, one seed, ResNet-50's space only")
    parser.add_argument("--agent", action="append", help="NAME or NAME:key=value,... (repeatable; default: all)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--spaces", default="resnet50,resnet152")
    parser.add_argument("--short", type=int, default=200, help="the shorter search whose best score is shown")
    parser.add_argument("--no-quality", action="store_true", help="timings only")
    parser.add_argument("--jobs", type=int, default=1, help="processes for the quality runs (timings stay in this one)")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.seeds, args.spaces, args.short = 300, "0", "resnet50", 100
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    specs = args.agent or list_agents()
    settings = [standard_setting(s) for s in args.spaces.split(",")]
    print(f"agent's own CPU ms per trial (ask + tell + its pricing), synthetic score, 0.4 x FLOPs, {args.trials} trials, "
          f"torch {torch.__version__}, 1 thread; best: median of seeds {seeds}, k candidates outstanding")
    for s in settings:
        print(f"  {s.name}: {s.space}")
    header = (f"{'space':9s} {'agent':30s} {'1-100':>7s} {'401-500':>7s} {'last100':>7s} {'last/401':>8s} "
              f"{'total s':>8s} {'repeats':>7s}")
    quality = [(args.short, 1), (args.short, 8), (args.trials, 1), (args.trials, 8)]
    if not args.no_quality:
        header += "".join(f" {f'best@{n} k={k}':>14s}" for n, k in quality)
    print(header)
    print("-" * len(header))
    pool = (concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork"))
            if args.jobs > 1 else _Inline())  # settings are inherited by fork
    futures: dict[tuple, list[concurrent.futures.Future]] = {}  # (spec, trials, k) -> one per seed
    queued: set[tuple[type, str]] = set()
    for spec in [] if args.no_quality else specs:  # every quality run is queued first, the timings run meanwhile
        name, options = parse_agent(spec)
        if (agent_class(name), repr(sorted(options.items()))) in queued:
            continue
        queued.add((agent_class(name), repr(sorted(options.items()))))
        for n, k in quality:
            timed = n == args.trials and k == 1
            futures[(spec, n, k)] = [pool.submit(_best, (name, settings[0].name, n, s, k, options))
                                     for s in (seeds[1:] if timed else seeds)]
    measured: dict[tuple[str, type, str], str] = {}  # agents registered twice (metapruning = evolution)
    for i, setting in enumerate(settings):
        for spec in specs:
            name, options = parse_agent(spec)
            key = (setting.name, agent_class(name), repr(sorted(options.items())))
            if key in measured:
                print(f"{setting.name:9s} {spec:30s} the same agent as {measured[key]}")
                continue
            measured[key] = spec
            run = measure(name, setting, trials=args.trials, seed=seeds[0], **options)
            ms = run.window_ms()
            flat = ms["last 100"] / ms["401-500"] if ms["401-500"] and ms["last 100"] else None
            line = (f"{setting.name:9s} {spec:30s} {_cell(ms['1-100'], '7.1f')} {_cell(ms['401-500'], '7.1f')} "
                    f"{_cell(ms['last 100'], '7.1f')} {_cell(flat, '8.2f')} {sum(run.seconds):8.1f} {run.repeats:7d}")
            if not args.no_quality and i == 0:
                for n, k in quality:
                    runs = [f.result() for f in futures[(spec, n, k)]]
                    if n == args.trials and k == 1:  # the timed run is the first seed's
                        runs.insert(0, (run.best[-1], run.distinct))
                    value, distinct = statistics.median(b for b, _ in runs), all(d for _, d in runs)
                    line += f" {value:13.4f}{' ' if distinct else '!'}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
