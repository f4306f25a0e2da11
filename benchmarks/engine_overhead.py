"""The engine's own per-trial work: a whole search's wall time against the sum of its scoring time.

    python benchmarks/engine_overhead.py [--trials 2000] [--agent random] [--workers 0,2] [--budget 0.4flops]

The default model (resnet20 on digits, untrained: only time matters), built through the pipeline's
own stages (`benchmarks/setting.py`), searched by `search.engine.loop.Engine` exactly as `search.run`
does: journal on disk, progress bar on (written to stderr), the pipeline's agent with its warm start.
`--workers 0` scores in this process (`LocalExecutor`); `--workers N` on N Ray actors of a local Ray
started for the run and stopped after it (1 CPU and 1 torch thread each). The executor is built
before the clock starts; the actors' first candidates are timed like any other.

Printed per executor: the search's wall seconds, the sum of its scoring seconds (what the scorers
themselves timed, on the workers for Ray) and the ratio wall / (scoring / workers): 1.0 means the
scorers never waited on the driver; goal at most 1.15. Then the driver's wall milliseconds per trial
by part: the agent's ask and tell, the journal's append, the executor's calls less the scoring they
contain (the local executor scores inside `submit`; Ray's `wait` also waits for the workers, so its
row is not overhead), and the rest (the engine's loop, the referee's pricing and de-duplication, the
progress bar), each over trials 1-100 and the last 100 too, to show what grows with the search.
`--instant` adds a local search whose scorer costs nothing (the mean width ratio): the engine's and
the agent's own work alone, without the load of the scoring around it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.setting import Setting  # noqa: E402
from search.engine.config import SearchConfig  # noqa: E402
from search.engine.loop import Engine, Journal  # noqa: E402

PARTS = ("agent", "journal", "executor", "rest")


@dataclass
class Clock:
    """Wall seconds spent inside wrapped calls, per trial (a trial is closed by `lap`)."""
    spent: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS[:-1], 0.0))
    laps: list[dict[str, float]] = field(default_factory=list)
    _last: float = field(default_factory=time.perf_counter)

    def timed(self, part: str, fn: Callable) -> Callable:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[part] += time.perf_counter() - start
        return call

    def lap(self, scoring: float) -> None:
        """Close one trial: its parts, the executor's less `scoring` seconds, the rest of its wall time."""
        now = time.perf_counter()
        parts = dict(self.spent, executor=self.spent["executor"] - scoring)
        parts["rest"] = now - self._last - sum(self.spent.values())
        self.laps.append(parts)
        self.spent, self._last = dict.fromkeys(PARTS[:-1], 0.0), now


class _Timed:
    """`target` with the named methods timed into `clock` under `part`; everything else passed through."""

    def __init__(self, target: Any, clock: Clock, part: str, methods: tuple[str, ...]):
        self._target = target
        for name in methods:
            setattr(self, name, clock.timed(part, getattr(target, name)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


@dataclass(frozen=True)
class Overhead:
    """One timed search."""
    executor: str
    workers: int
    trials: int
    wall: float      # seconds, the whole `Engine.run`
    scoring: float   # seconds the scorers timed, summed over trials
    laps: list[dict[str, float]]  # per finished trial: the driver's seconds by part

    @property
    def ratio(self) -> float:
        return self.wall / (self.scoring / max(1, self.workers))

    def part_ms(self, part: str, a: int = 0, b: int | None = None) -> float:
        laps = self.laps[a:b]
        return 1e3 * statistics.fmean(lap[part] for lap in laps) if laps else float("nan")


class Instant:
    """A scorer that costs nothing: the candidate's mean width ratio."""

    def __init__(self, setting: Setting):
        self.space = setting.prunable.space

    def score(self, candidate) -> float:
        ratios = self.space.to_ratios(candidate)
        return sum(ratios) / len(ratios)


def default_setting(budget: str = "0.4flops") -> Setting:
    return Setting.of(SearchConfig(agent="random", budget=[budget], model="resnet20", data="digits", seed=0,
                                   device="cpu", baseline_epochs=0))  # untrained: only time matters


def measure(setting: Setting, *, trials: int, agent: str = "random", workers: int = 0, progress: bool = True,
            seed: int = 0, instant: bool = False) -> Overhead:
    """One search of `trials` trials on `setting`, timed whole and by part (see the module docstring)."""
    pipeline = setting.pipeline
    clock = Clock()
    searcher = _Timed(pipeline.agent(setting.prunable, setting.price, name=agent, seed=seed, trials=trials), clock,
                      "agent", ("ask", "tell"))
    if workers:
        from evaluators.accuracy import EvaluatorPayload, build_evaluator
        from evaluators.executors import RayExecutor

        payload = EvaluatorPayload.of(setting.evaluator, pipeline.config.derive_options(), "cpu")
        executor: Any = RayExecutor(build_evaluator, payload, workers=workers)
        name = f"ray, {workers} workers"
    else:
        from evaluators.executors import LocalExecutor

        executor = LocalExecutor(Instant(setting) if instant else setting.evaluator)
        name = "local, instant" if instant else "local"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            journal = Journal(Path(tmp) / "journal.jsonl")
            timed_journal = _Timed(journal, clock, "journal", ("append",))
            # a trial ends with its journal line: close its lap there, less the scoring it waited on
            append = timed_journal.append

            def append_and_lap(trial) -> None:
                append(trial)
                clock.lap(trial.result.seconds if not workers else 0.0)

            timed_journal.append = append_and_lap
            timed_executor = _Timed(executor, clock, "executor", ("submit", "wait"))
            timed_executor.slots = executor.slots
            engine = Engine(searcher, setting.price, pipeline.budget, timed_executor, trials=trials,
                            journal=timed_journal, progress=progress, base_flops=setting.base["flops"])
            clock._last = start = time.perf_counter()
            outcome = engine.run()
            wall = time.perf_counter() - start
    finally:
        executor.close()
        setting.evaluator.restore()
    scoring = sum(t.result.seconds for t in outcome.trials)
    return Overhead(name, workers, len(outcome.trials), wall, scoring, clock.laps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--agent", default="random")
    parser.add_argument("--workers", default="0,2", help="comma-separated; 0: the local executor; empty: none")
    parser.add_argument("--budget", default="0.4flops")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--instant", action="store_true", help="also a local search with a scorer that costs nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    setting = default_setting(args.budget)
    calib, held = setting.evaluator.samples
    print(f"resnet20 on digits (untrained), {args.budget}, agent {args.agent}, {args.trials} trials, journal on "
          f"disk, progress bar {'off' if args.no_progress else 'on'}; {calib} calibration + {held} held-out samples "
          f"per candidate; torch {torch.__version__}, 1 thread per scorer; wall time on a shared machine")
    rows = [measure(setting, trials=args.trials, agent=args.agent, workers=int(w), progress=not args.no_progress)
            for w in args.workers.split(",") if w]
    if args.instant:
        rows.append(measure(setting, trials=args.trials, agent=args.agent, progress=not args.no_progress, instant=True))
    print(f"{'executor':16s} {'trials':>6s} {'wall s':>8s} {'scoring s':>9s} {'ratio':>6s}   "
          + "  ".join(f"{p + ' ms':>15s}" for p in PARTS))
    for r in rows:
        cells = "  ".join(f"{r.part_ms(p, 0, 100):6.2f} / {r.part_ms(p, -100):6.2f}" for p in PARTS)
        ratio = "     -" if r.executor.endswith("instant") else f"{r.ratio:6.3f}"  # nothing to compare with
        print(f"{r.executor:16s} {r.trials:6d} {r.wall:8.1f} {r.scoring:9.1f} {ratio}   {cells}")
    print("ratio = wall / (scoring / workers); parts: the driver's wall ms per trial, trials 1-100 / the last 100")


if __name__ == "__main__":
    main()
