"""The pipeline: from a `SearchConfig` (and optionally the user's own objects) to a searched, exported subnet.

    data, model -> derive (space) -> cost model, budget -> scorer -> agent -> run directory
                -> search (engine or Ray Tune) -> best -> export (subnet, best.json, tables, plot)

`search.run` (the CLI), `search.prune` (the Python API), the tests and the benchmarks all build runs
here. Everything that can be checked is checked before the run directory is created, so a mistake
leaves nothing behind; once it exists, `run.json` holds the configuration and `--resume` continues.

Two ways in:
- from names (`Pipeline(config)`): the data and the model come from the zoo (`search.models.zoo`), a zoo
  model without weights is trained once and cached (`search.models.baseline`), the test set reports the result;
- from objects (`Pipeline(config, inputs=Inputs(...))`): the user's model, calibration batches,
  held-out batches and score function (`prune`), with no data set or zoo involved.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from agents.base import Agent
from evaluators.accuracy import AccuracyEvaluator, EvaluatorPayload, stack_batches
from evaluators.cost import CostModel
from evaluators.executors import Executor, LocalExecutor, score_safely
from spaces.budget import Budget
from spaces.derive import PrunableModel, derive
from spaces.materialize import materialize

from search.engine.budget import parse_budget
from search.cli import first_line
from search.engine.config import SearchConfig
from search.engine.loop import Engine, Outcome, memoized
from search.errors import UserError
from search.engine.records import BEST_FILE, BEST_MODEL_FILE, BEST_STATE_FILE, LATENCY_TABLE_FILE, RunDirectory, Trial, best_trial
from search.finetune.step import evaluate, resolve_device
from search.engine.versions import moved, versions

log = logging.getLogger(__name__)
ZOO_MODELS = ("resnet20", "resnet56", "mobilenetv2")


@dataclass
class Inputs:
    """What the search scores with: the base model, one example input, cached batches, the metric."""

    model: nn.Module
    example: torch.Tensor                              # one sample, batch axis included: (1, C, H, W)
    calibration: list[torch.Tensor]                    # BN recalibration batches (inputs only)
    held_out: list[tuple[torch.Tensor, torch.Tensor]]  # (x, y) batches scored by top-1 (unless `score`)
    score: Callable[[nn.Module], float] | None = None  # f(model) -> float, higher is better
    test: Iterable | None = None                       # (x, y) batches to report the final model on
    name: str = "model"
    base_test: float | None = None
    data: Any = None                                   # the zoo's DataBundle, when the data came from a name
    train: Iterable | None = None                      # labelled (x, y) batches the finalists train on


@dataclass
class PruneResult:
    """What a search gives back (`prune`, `Pipeline.run`)."""

    subnet: nn.Module | None        # a real nn.Module, BN recalibrated (None if nothing was scored)
    best: Trial | None              # the best trial: candidate, score, costs
    trials: pd.DataFrame            # the same columns as trials.csv
    run_dir: Path
    base: dict[str, float]          # the base model's costs and scores
    interrupted: bool = False
    summary: str = ""
    record: dict[str, Any] = field(default_factory=dict)   # best.json
    finalists: pd.DataFrame | None = None                  # finalists.csv (None when picked by the proxy alone)


def batches_of(items: Iterable, limit: int, *, labelled: bool, what: str) -> list:
    """The first batches of `items` (tensors, or (x, y, ...) tuples) holding up to `limit` samples."""
    out, seen = [], 0
    for item in items:
        if isinstance(item, torch.Tensor):
            if labelled:
                raise UserError(f"{what} must yield (inputs, labels) batches, got bare tensors")
            x, y = item, None
        elif isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
            x, y = item[0], (item[1] if len(item) > 1 else None)
        elif isinstance(item, Mapping) and isinstance(item.get("image", item.get("x")), torch.Tensor):
            x, y = item.get("image", item.get("x")), item.get("label", item.get("y"))
        else:
            raise UserError(f"{what} must yield tensors or (inputs, labels) batches, got {type(item).__name__}")
        if x.dim() < 2:
            raise UserError(f"{what}: a batch needs a batch axis, got shape {tuple(x.shape)}")
        x = x[:limit - seen]
        if labelled:
            if not isinstance(y, torch.Tensor):
                raise UserError(f"{what} must yield (inputs, labels) batches with tensor labels")
            out.append((x, y[:len(x)]))
        else:
            out.append(x)
        seen += len(x)
        if seen >= limit:
            break
    if not out:
        raise UserError(f"{what} gave no batches")
    return out


def device_of(name: str) -> torch.device:
    """The device `name` (auto, cpu, cuda, cuda:1, ...), checked usable; else a UserError."""
    try:
        device = resolve_device(name)
        torch.empty(0, device=device)
    except (RuntimeError, ValueError, AssertionError) as error:
        raise UserError(f"cannot use --device {name}: {first_line(error)}") from None
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise UserError(f"cannot use --device {name}: the search runs on cpu or cuda")
    return device


class Pipeline:
    """One search run; see the module docstring. `run()` does it all; the stages are public for tests."""

    def __init__(self, config: SearchConfig, *, inputs: Inputs | None = None, run_dir: RunDirectory | None = None,
                 progress: bool = True):
        self.config = config.validate()
        self.inputs = inputs
        self.run_dir = run_dir           # set: resuming this run
        self.progress = progress
        self.device = device_of(config.device)
        self.budget: Budget | None = None
        self._resuming = run_dir is not None

    @classmethod
    def resume(cls, path: str | Path, changes: Mapping[str, Any] | None = None, *, progress: bool = True) -> Pipeline:
        """The run in `path`, continued: its saved configuration with the `changes` allowed on resume."""
        run_dir = RunDirectory.open(str(path))
        info = run_dir.read()
        saved = info.get("args")
        if not isinstance(saved, dict):
            raise UserError(f"{run_dir.path} has no saved arguments to resume from")
        try:
            config = SearchConfig.from_json(saved)
        except TypeError as error:
            raise UserError(f"cannot resume {run_dir.path}: its run.json is not readable ({error})") from None
        if info.get("api"):
            raise UserError(f"{run_dir.path} was searched from Python (search.prune): resume it with "
                            f"prune(..., resume=True) and the same model and data")
        return cls(config.resumed(dict(changes or {})), run_dir=run_dir, progress=progress)

    # ------------------------------------------------------------------ stages
    def load_inputs(self) -> Inputs:
        """The model, an example input, cached calibration and held-out batches (from the zoo's names)."""
        if self.inputs is not None:
            return self.inputs
        from search.models.baseline import trained_baseline
        from search.models.zoo import load_data, load_model

        c = self.config
        data = load_data(c.data, held_out=c.held_out_size, seed=c.seed)
        if data.num_classes < 2:
            raise UserError(f"data {c.data} has {data.num_classes} class: a classifier needs at least 2")
        torch.manual_seed(c.seed)  # the model's initialization (what --weights does not overwrite) is seeded too
        model = load_model(c.model, num_classes=data.num_classes, input_shape=data.input_shape, weights=c.weights,
                           trust_pickle=c.trust_pickle)
        base_test = None
        if c.weights is None and c.model in ZOO_MODELS and c.baseline_epochs > 0:
            model, base_test = trained_baseline(model, c.model, c.data, data, epochs=c.baseline_epochs, seed=c.seed,
                                                batch_size=c.batch_size, held_out=c.held_out, device=self.device,
                                                progress=self.progress)
        model = model.cpu().eval()
        calib = data.fit.tolist()[:c.calib_batches * c.batch_size]
        held = data.held_out.tolist()[:c.eval_samples]
        self.inputs = Inputs(
            model=model, example=data.train_eval[int(data.fit[0])][0].unsqueeze(0),
            calibration=[x for x, _ in stack_batches(data.train_eval, calib, c.batch_size, self.device)],
            held_out=stack_batches(data.train_eval, held, max(c.batch_size, 256), self.device),
            test=DataLoader(data.test, batch_size=256), name=c.model, base_test=base_test, data=data)
        return self.inputs

    def derive(self) -> PrunableModel:
        inputs = self.load_inputs()
        for p in inputs.model.parameters():
            if not torch.isfinite(p).all():
                raise UserError(f"model {inputs.name} has non-finite (NaN or inf) weights; every score would be "
                                "meaningless")
        try:
            prunable = derive(inputs.model.cpu().eval(), inputs.example.cpu(), **self.config.derive_options())
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - a model fx cannot trace is the user's to know, in one line
            raise UserError(f"cannot analyse model {inputs.name}: {type(error).__name__}: "
                            f"{first_line(error)}") from None
        if len(prunable.space) == 0:
            raise UserError(f"no prunable channel group or removable block was found in {inputs.name}")
        return prunable

    def cost_model(self, prunable: PrunableModel) -> CostModel:
        table = None
        budget = parse_budget(self.config.budget)
        if self.config.latency or any(lim.metric == "latency" for lim in budget.limits):
            from evaluators.latency import measure_table
            from evaluators.latency_backends import BackendError

            from search.models.zoo import cache_dir

            shape = tuple(self.inputs.example.shape[1:])
            table = self._own_latency_table(prunable, shape)
            try:
                table = table or measure_table(prunable, shape, batch=self.config.latency_batch, device=self.device,
                                               cache_dir=cache_dir() / "latency", progress=self.progress,
                                               backend=self.config.latency_backend)
            except BackendError as error:
                raise UserError(str(error)) from None
            log.info("latency table: base model predicted %.3f ms (batch %d, %s, %s)", table.base_ms,
                     self.config.latency_batch, self.device, table.backend)
            multiple = table.aligned_multiple()
            if multiple is not None and self.config.round_to % multiple:
                slow = table.slow_paths()
                log.warning("latency table: on %s, %d layer configurations this space can pick run a slower "
                            "kernel than wider ones (e.g. %s with %d outputs and %d inputs); the table prices that, "
                            "and --round-to %d keeps every width off them", table.backend, len(slow), *slow[0],
                            multiple)
        cost = CostModel(prunable, latency=table)
        base = cost.base.as_dict()
        self.budget = budget.resolve(base)
        smallest = cost.price(prunable.space.smallest()).as_dict()
        if not self.budget.feasible(smallest):
            reachable = " and ".join(f"{smallest[k] / base[k]:.3f} x its {k}" for k in base)
            raise UserError(f"budget {self.budget} cannot be met: the smallest subnet of this space has {reachable}")
        return cost

    def _own_latency_table(self, prunable: PrunableModel, input_shape: tuple[int, ...]):
        """On resume, the latency table the run priced its trials with (`LATENCY_TABLE_FILE`, re-anchoring
        included), so that the agents replay exactly, also on another machine or thread count (the final check
        times the subnet here). None for a new run, or when the table is for another structure or runtime."""
        from evaluators.latency import LatencyTable, structure_key, table_key

        path = self.run_dir.path / LATENCY_TABLE_FILE if self._resuming else None
        if path is None or not path.is_file():
            return None
        try:
            table = LatencyTable.from_json(prunable, self.run_dir.read(LATENCY_TABLE_FILE))
        except (KeyError, TypeError, ValueError) as error:  # edited or from another version: not the run's pricing
            log.warning("the run's latency table (%s) cannot be used (%s: %s); measuring one here: the resumed "
                        "search may propose other candidates than it did", path, type(error).__name__, error)
            return None
        c = self.config
        if (table.meta.get("structure") != structure_key(prunable, input_shape, c.latency_batch)
                or table.backend != c.latency_backend):
            log.warning("the run's latency table (%s) is for another model structure or runtime; measuring one "
                        "here: the resumed search may propose other candidates than it did", path)
            return None
        if table.meta.get("key") != table_key(prunable, input_shape, c.latency_batch, self.device, c.latency_backend):
            log.warning("the run's latency table was measured on another machine, thread count or version "
                        "(%s, %s thread(s), torch %s; here %s, %d); the resumed search prices with it, as it did, "
                        "and the final check times the subnet here", table.meta.get("device"),
                        table.meta.get("threads", "?"), table.meta.get("torch"), self.device, torch.get_num_threads())
        log.info("latency table: the run's own, as it priced the saved trials (x%.3f re-anchoring)", table.scale)
        return table

    def evaluator(self, prunable: PrunableModel) -> AccuracyEvaluator:
        """The base scorer: BN recalibration on the cached calibration batches, then top-1 (or the user's score).

        With racing, the held-out samples are shuffled once (seeded) into batches of `racing_chunk`, its steps."""
        from evaluators.racing import RaceRule, race_batches

        inputs, c = self.load_inputs(), self.config
        held_out = inputs.held_out if self.racing_top_k is None else race_batches(inputs.held_out, c.racing_chunk,
                                                                                   seed=c.seed)
        return AccuracyEvaluator(prunable, inputs.calibration, held_out, self.device, inputs.score,
                                 RaceRule(c.racing_confidence))

    @property
    def racing_top_k(self) -> int | None:
        """Racing's k, or None when it is off (`--no-racing`, or a user's score function, which cannot be chunked)."""
        return None if self.config.no_racing or self.load_inputs().score is not None else self.config.racing_top_k

    def agent(self, prunable: PrunableModel, price, *, name: str | None = None, seed: int | None = None,
              trials: int | None = None, **options: Any) -> Agent:
        """The configured agent (or `name`, `seed`, `trials`, `options` instead: the benchmarks vary them)."""
        from agents.registry import make_agent

        c = self.config
        name = name or c.agent
        seed = c.seed if seed is None else seed
        initial = []
        if not c.no_warm_start:
            from spaces.warm_start import magnitude_candidate

            candidate = magnitude_candidate(prunable, lambda x: self.budget.feasible(price(x)))
            initial = [] if candidate is None else [candidate]
        if name == c.agent and not options:
            options = c.agent_options()
        try:
            return make_agent(name, prunable.space, self.budget, price=price, seed=seed,
                              trials=c.trials if trials is None else trials, initial=initial, **options)
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - bad options, an unusable --storage: one line
            raise UserError(f"agent {name}: {first_line(error)}") from None

    def _pruningnet_file(self, prunable: PrunableModel):
        """A PruningNet given with --pruningnet (or this run's own when resuming), loaded and checked; else None."""
        from evaluators.pruningnet import PruningNet

        own = self.run_dir.path / "pruningnet.pt" if self.run_dir is not None else None
        path = self.config.pruningnet or (own if own is not None and own.exists() else None)
        if path is None:
            return None
        try:
            net = PruningNet.load(path, prunable)
        except Exception as error:  # noqa: BLE001 - garbage or another model's file: one line
            raise UserError(f"cannot use PruningNet {path}: {first_line(error)}") from None
        log.info("PruningNet loaded from %s", path)
        return net.to(self.device)

    def train_pruningnet(self, prunable: PrunableModel, price):
        """MetaPruning's PruningNet trained on candidates within the budget (saved in the run directory, if any)."""
        from evaluators.pruningnet import PruningNet, train_pruningnet
        from spaces.sampling import feasible_sampler

        c = self.config
        data = self.inputs.data
        net = PruningNet(prunable, seed=c.seed).to(self.device)
        if data is not None:
            loader = DataLoader(Subset(data.train, data.fit.tolist()), batch_size=c.batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(c.seed),
                                drop_last=len(data.fit) > c.batch_size)
        else:  # the API: the user's held-out batches are all the labelled data there is
            loader = self.inputs.held_out
        started = time.perf_counter()
        train_pruningnet(net, loader, epochs=c.pruningnet_epochs,
                         sample=feasible_sampler(prunable.space, lambda x: self.budget.feasible(price(x))),
                         seed=c.seed, progress=self.progress)
        if self.run_dir is None:
            return net
        own = self.run_dir.path / "pruningnet.pt"
        net.save(own)
        seconds = time.perf_counter() - started
        log.info("PruningNet trained in %.1f s (%d epochs), saved to %s", seconds, c.pruningnet_epochs, own)
        self.run_dir.update_run(pruningnet={"path": str(own), "epochs": c.pruningnet_epochs,
                                            "seconds": round(seconds, 1)})
        return net

    def _executor(self, scorer: AccuracyEvaluator) -> Executor:
        c = self.config
        if not c.workers and not c.ray_address:
            return LocalExecutor(scorer)
        from evaluators.accuracy import build_evaluator
        from evaluators.executors import RayExecutor

        try:
            executor = RayExecutor(build_evaluator, self._payload(scorer), workers=c.workers or 1,
                                   cpus_per_worker=c.cpus_per_worker, gpus_per_worker=c.gpus_per_worker,
                                   address=c.ray_address)
        except ConnectionError as error:
            raise UserError(f"cannot join the Ray cluster at {c.ray_address}: {first_line(error)}") from None
        log.info("scoring on %d Ray actors (%g CPU, %g GPU each)", c.workers or 1, c.cpus_per_worker,
                 c.gpus_per_worker)
        return executor

    def _payload(self, evaluator: AccuracyEvaluator) -> EvaluatorPayload:
        return EvaluatorPayload.of(evaluator, self.config.derive_options(),
                                   "cuda" if self.config.gpus_per_worker > 0 else "cpu")

    def _run_tune(self, agent: Agent, price, evaluator: AccuracyEvaluator) -> Outcome:
        from evaluators.executors import init_ray

        from search.engine.tune import AgentSearcher, run_tune

        c = self.config
        try:
            started_ray = init_ray(c.ray_address, num_cpus=max(1, c.workers or 1) * c.cpus_per_worker)
        except ConnectionError as error:
            raise UserError(f"cannot join the Ray cluster at {c.ray_address}: {first_line(error)}") from None
        try:
            trials = run_tune(AgentSearcher(agent, price, self.budget, self.racing_top_k), self._payload(evaluator),
                              trials=c.trials,
                              workers=max(1, c.workers), storage=self.run_dir.path.resolve() / "tune",
                              cpus_per_worker=c.cpus_per_worker, gpus_per_worker=c.gpus_per_worker,
                              resume=self.resuming)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
        self.run_dir.journal.truncate(trials)  # the record of what Tune ran; Tune's own state is what resumes it
        return Outcome(trials=trials)

    @property
    def resuming(self) -> bool:
        return self._resuming

    def explain(self) -> str:
        """The search space this configuration derives: what it searches, what it leaves alone and why."""
        return f"{self.load_inputs().name}: {self.derive().explain()}"

    # ------------------------------------------------------------------ the whole run
    def run(self) -> PruneResult:
        c = self.config
        inputs = self.load_inputs()
        prunable = self.derive()
        cost = self.cost_model(prunable)
        base = cost.base.as_dict()
        price = memoized(cost.costs)
        # agents that plan around the trial count (tpe's startup, evolution's population) keep the first run's
        # plan when a resumed run is given more trials, so that replaying the journal proposes the same candidates
        planned = self.run_dir.read().get("planned_trials") if self.run_dir is not None else None
        agent = self.agent(prunable, price, trials=planned or c.trials)
        pruningnet = self._pruningnet_file(prunable) if c.scorer_name == "pruningnet" else None
        if self.run_dir is None:  # everything is checked: only now does the run leave a trace
            self.run_dir = RunDirectory.create(c.out, model=inputs.name, agent=c.agent, budget=str(self.budget))
            self.run_dir.update_run(args=c.to_json(), status="running", api=c.model == "<module>",
                                    planned_trials=c.trials)
        run_dir = self.run_dir
        if cost.latency is not None:  # what a resumed run prices with (`_own_latency_table`)
            run_dir.write(LATENCY_TABLE_FILE, cost.latency.to_json())
        log.info("%s: %s; base %.2f MFLOPs, %.3f M params; run directory %s", inputs.name, prunable.space,
                 base["flops"] / 1e6, base["params"] / 1e6, run_dir.path)
        if inputs.data is not None and c.weights is None and not (c.model in ZOO_MODELS and c.baseline_epochs > 0):
            log.warning("no --weights: searching an untrained %s (scores will be near chance)", c.model)

        inputs.model.to(self.device)
        if inputs.base_test is None and inputs.test is not None:
            inputs.base_test = evaluate(inputs.model, inputs.test, self.device)
        evaluator = self.evaluator(prunable)
        base_score = evaluator.score(prunable.space.full())
        evaluator.restore()
        now, started_with = versions(), run_dir.read().get("versions")
        since = moved(started_with, now)  # run.json keeps the versions the run started with; a resume adds its own
        if since:
            log.warning("resuming with other versions than the run started with: %s", ", ".join(since))
        run_dir.update_run(args=c.to_json(), status="running", started=time.strftime("%Y-%m-%d %H:%M:%S"),
                           **({"resumed_versions": now} if started_with else {"versions": now}),
                           device=str(self.device), space=prunable.space.to_json(),
                           base={**base, "held_out_top1": base_score, "test_top1": inputs.base_test},
                           budget={"limits": [str(lim) for lim in self.budget.limits], "caps": self.budget.caps},
                           scoring={"calibration_samples": evaluator.samples[0],
                                    "held_out_samples": evaluator.samples[1],
                                    "metric": "user score" if inputs.score else "top-1",
                                    "racing": None if self.racing_top_k is None else {
                                        "top_k": c.racing_top_k, "confidence": c.racing_confidence,
                                        "chunk": c.racing_chunk}},
                           export_weights=c.export_weights, scorer=c.scorer_name)
        scorer = evaluator
        if c.scorer_name == "pruningnet":
            from evaluators.pruningnet import PruningNetEvaluator

            pruningnet = pruningnet or self.train_pruningnet(prunable, price)
            scorer = PruningNetEvaluator.of(evaluator, pruningnet)
            scorer.race = evaluator.race
        if c.no_racing:
            log.info("racing is off (--no-racing): every candidate is scored on all held-out samples")
        elif self.racing_top_k is None:
            log.info("racing is off: a user score function is called whole, it cannot be scored in chunks")
        started = time.perf_counter()
        if c.backend == "tune":
            outcome = self._run_tune(agent, price, evaluator)
        else:
            executor = self._executor(scorer)
            engine = Engine(agent, price, self.budget, executor, trials=c.trials, journal=run_dir.journal,
                            progress=self.progress, base_flops=base["flops"], top_k=self.racing_top_k)
            previous = run_dir.journal.read()
            if previous:
                try:
                    engine.replay(previous)
                except UserError as error:
                    if not since:
                        raise
                    raise UserError(f"{first_line(error)}; since the run started: {', '.join(since)}") from None
                run_dir.journal.truncate(previous)
                log.info("resumed: %d trials replayed from the journal, none scored again", len(previous))
            try:
                outcome = engine.run()
            finally:
                executor.close()
        if c.fill and outcome.best is not None and not outcome.interrupted:
            outcome.trials.extend(self.fill(prunable, outcome.trials, scorer, price))
        if scorer is not evaluator:
            scorer.restore()
        evaluator.restore()
        return self._finish(prunable, outcome, evaluator, base, base_score, time.perf_counter() - started,
                            cost.latency, pruningnet)

    # ------------------------------------------------------------------ picking what is exported
    def fill(self, prunable: PrunableModel, trials: list[Trial], scorer, price) -> list[Trial]:
        """The best `max(1, --finalists)` distinct candidates, each widened until the budget binds
        (`spaces.fill`), scored by the search's scorer: extra trials, numbered after the search's and
        not journaled (a resumed run fills again at its end)."""
        from spaces.fill import fill

        from search.engine.loop import Referee
        from search.selection.finalists import top_distinct

        referee = Referee(price, self.budget)
        for trial in trials:
            referee.remember(trial.candidate, trial.result)
        number = max(t.number for t in trials) + 1
        extra = []
        for trial in top_distinct(trials, max(1, self.config.finalists)):
            wider = fill(prunable.space, trial.candidate, lambda c: self.budget.feasible(price(c)))
            costs, settled = referee.settle(wider)
            if settled is not None:
                continue  # nothing to widen, or already scored
            scored = score_safely(scorer, wider)
            result = referee.result(costs, scored)
            result = dataclasses.replace(result, message=f"fill of trial {trial.number}" +
                                         (f": {scored.error}" if scored.error else ""))
            referee.remember(wider, result)
            extra.append(Trial(number, wider, result, number + 1))
            number += 1
        if extra:
            log.info("fill: %d widened candidates scored (%s)", len(extra), ", ".join(
                f"{t.result.message} -> {t.result.score:.4f}" for t in extra if t.result.ok))
        return extra

    def _build(self, prunable: PrunableModel, pruningnet=None) -> Callable[[Any], nn.Module]:
        """Materializes a candidate with the weights that will be exported (BatchNorms not yet recalibrated)."""
        if self.config.export_weights == "pruningnet":
            from evaluators.pruningnet import materialize_generated

            return lambda candidate: materialize_generated(pruningnet, candidate)
        return lambda candidate: materialize(prunable, candidate)

    def _finalist_batches(self):
        """What finalists train on: labelled batches (the zoo's fit split, or `prune(train=...)`), else the
        calibration inputs distilled from the base model when its output is a logits matrix, else None."""
        from search.selection.finalists import ShuffledBatches, distilled_batches, loader_batches

        inputs, c = self.inputs, self.config
        if inputs.data is not None:
            return ShuffledBatches(Subset(inputs.data.train, inputs.data.fit.tolist()), c.batch_size), None
        if inputs.train is not None:
            return loader_batches(inputs.train), None
        teacher = inputs.model.to(self.device).eval()
        with torch.no_grad():
            out = teacher(inputs.calibration[0][:2])
        if isinstance(out, torch.Tensor) and out.dim() == 2:
            return distilled_batches(inputs.calibration, teacher), teacher
        return None, None

    def finalists(self, prunable: PrunableModel, trials: list[Trial], evaluator: AccuracyEvaluator,
                  pruningnet=None) -> list:
        """The top `--finalists` candidates, fine-tuned briefly and scored again, best first (see
        `search.selection.finalists`); [] when the proxy's pick stands (no finalists, or nothing they could change)."""
        from search.selection.finalists import FinalistSettings, run_finalists

        c = self.config
        rescore = c.scorer_name == "pruningnet" and c.export_weights == "base"  # the proxy scored other weights
        batches, teacher = self._finalist_batches() if c.finalists and c.finalist_steps else (None, None)
        steps = c.finalist_steps if batches is not None else 0
        if not c.finalists or (steps == 0 and not rescore):
            if c.finalists and c.finalist_steps:
                log.info("finalists skipped: no labelled training batches, and the model's output is not a "
                         "logits matrix to distil (pass prune(train=...) to fine-tune finalists)")
            return []
        settings = FinalistSettings(count=c.finalists, steps=steps, lr=c.finalist_lr, seed=c.seed,
                                    rank=c.finalist_rank)
        log.info("finalists: the best %d candidates, %d fine-tuning steps each, scored again on held-out",
                 c.finalists, steps)
        parallel, started = None, False
        if steps and (c.workers or c.ray_address):  # the finalists train at once, one per Ray worker
            from evaluators.executors import init_ray

            from search.selection.finalists import ray_parallel

            started = init_ray(c.ray_address, num_cpus=max(c.workers, 1) * c.cpus_per_worker)
            parallel = ray_parallel(c.cpus_per_worker, c.gpus_per_worker)
            log.info("finalists: trained as Ray tasks (%g CPU, %g GPU each)", c.cpus_per_worker, c.gpus_per_worker)
        try:
            ranked = run_finalists(trials, settings, build=self._build(prunable, pruningnet), batches=batches,
                                   calibration=evaluator.calibration, held_out=evaluator.held_out,
                                   metric=evaluator.metric, teacher=teacher, device=self.device,
                                   progress=log.info, parallel=parallel)
        finally:
            if started:
                import ray

                ray.shutdown()
        for finalist in ranked:
            finalist.module.to(self.device)
        if not ranked or not np.isfinite(ranked[0].score):
            log.warning("no finalist scored a finite value after fine-tuning: exporting the proxy's best as it is")
            return []
        return ranked

    # ------------------------------------------------------------------ export and records
    def _measure_latencies(self, prunable, outcome: Outcome, table) -> dict[int, float]:
        """Honesty: a seeded sample of 20 scored trials, measured directly (ms; the best is the final check's)."""
        from evaluators.latency import measure_latencies

        scored = [t for t in outcome.trials if t.result.ok]
        rng = np.random.default_rng(self.config.seed)
        chosen = [scored[i] for i in rng.choice(len(scored), size=min(20, len(scored)), replace=False)] if scored else []
        measured = measure_latencies([materialize(prunable, t.candidate) for t in chosen], table.meta["input_shape"],
                                     batch=self.config.latency_batch, device=self.device,
                                     backend=table.backend) if chosen else []
        return {t.number: ms for t, ms in zip(chosen, measured)}

    def _check_latency(self, prunable, ranked: list[Trial], table):
        """The final check (search.selection.latency_check): `ranked` (best first) timed against the base until one fits."""
        from search.selection.latency_check import check_latency

        return check_latency(ranked, lambda t: materialize(prunable, t.candidate),
                             materialize(prunable, prunable.space.full()), self.budget.limits,
                             input_shape=table.meta["input_shape"], base_predicted_ms=table.base_ms,
                             batch=self.config.latency_batch, device=self.device, backend=table.backend,
                             predict=lambda t: table.predict(t.candidate))

    def _finish(self, prunable, outcome: Outcome, evaluator: AccuracyEvaluator, base, base_score, seconds,
                table=None, pruningnet=None) -> PruneResult:
        """Pick what is exported (finalists, then the latency check), export it and write the records."""
        from search.selection.finalists import FINALISTS_FILE, finalists_frame, score_module

        c, run_dir, inputs = self.config, self.run_dir, self.inputs
        measured = self._measure_latencies(prunable, outcome, table) if table is not None else {}
        finalists = self.finalists(prunable, outcome.trials, evaluator, pruningnet) if outcome.best else []
        best, check = (finalists[0].trial if finalists else outcome.best), None
        if table is not None and best is not None:
            from search.selection.latency_check import ranked_trials

            # the finalists in their order, then every other scored trial by score: the first that fits is exported
            first = [f.trial for f in finalists]
            ranked = first + [t for t in ranked_trials(outcome.trials) if all(t is not f for f in first)]
            check = self._check_latency(prunable, ranked, table)
            measured.update({m.trial: m.ms.median for m in check.measurements})
            best = check.chosen
        frame = run_dir.write_trials(outcome.trials, base, measured)
        chosen_frame = finalists_frame(finalists, base, best) if finalists else None
        if chosen_frame is not None:
            run_dir.write_table(FINALISTS_FILE, chosen_frame)
        if check is not None:
            run_dir.update_run(latency_check=check.to_json())
            if check.chosen is None:
                run_dir.update_run(status="over the latency budget", finished=time.strftime("%Y-%m-%d %H:%M:%S"))
                raise UserError(check.failure(run_dir.path))
        exported = next((f for f in finalists if f.trial is best), None)
        record: dict[str, Any] = {}
        subnet = None
        if best is not None:
            if exported is not None:  # trained, recalibrated and scored already
                subnet, exported_score = exported.module, exported.score
            else:
                subnet = evaluator.recalibrated(self._build(prunable, pruningnet)(best.candidate))
                exported_score = score_module(subnet, evaluator.held_out, evaluator.metric)
            for f in finalists:
                if f is not exported:
                    f.module = None
            subnet.eval()
            test_top1 = evaluate(subnet, inputs.test, self.device) if inputs.test is not None else None
            run_dir.save_model(BEST_STATE_FILE, {k: v.detach().cpu() for k, v in subnet.state_dict().items()})
            try:
                run_dir.save_model(BEST_MODEL_FILE, subnet.cpu())
            except Exception as error:  # noqa: BLE001 - the pickle is a convenience; best.json + state dict suffice
                log.warning("best.pt not written (the subnet does not pickle: %s); rebuild it from best.json and "
                            "%s", first_line(error), BEST_STATE_FILE)
            subnet.to(self.device)
            steps = exported.steps if exported is not None else 0
            record = {
                "model": c.model, "weights": c.weights, "data": c.data, "seed": c.seed,
                "derive": {**c.derive_options(), "importance": "l2"},
                "input_shape": list(inputs.example.shape[1:]),
                "trial": best.number, "candidate": best.candidate.to_dict(),
                "held_out_top1": exported_score, "search_score": best.result.score,
                "selected_by": (f"finalists ({len(finalists)}, {steps} steps each)" if exported is not None
                                else "search score") + (", then the latency check" if check is not None else ""),
                "export_weights": c.export_weights, "finetuned_steps": steps,
                "test_top1": test_top1, "costs": dict(best.result.costs),
                "ratios": {k: best.result.costs[k] / base[k] for k in base},
                "summary": prunable.describe(best.candidate), "state_dict": BEST_STATE_FILE,
            }
            if check is not None:
                m = check.measurement
                record["latency"] = {**m.to_json(), "backend": check.backend, "batch": c.latency_batch,
                                     "budget": check.budget, "skipped": [s.to_json() for s in check.skipped]}
            run_dir.write(BEST_FILE, record)
        run_dir.write_pareto(frame)
        run_dir.plot(frame, caps=self.budget.caps, base=base, best=best,
                     title=f"{inputs.name} / {c.data if inputs.data is not None else 'user data'}: {c.agent}, "
                           f"budget {self.budget}")
        counts = frame.state.value_counts().to_dict()
        run_dir.update_run(status="interrupted" if outcome.interrupted else "complete",
                           finished=time.strftime("%Y-%m-%d %H:%M:%S"), search_seconds=round(seconds, 2),
                           trials=len(outcome.trials), states=counts, best=record and {
                               k: record[k] for k in ("trial", "held_out_top1", "search_score", "test_top1",
                                                      "ratios")})
        summary = self._summary(outcome, frame, base, base_score, record, measured, counts, seconds, best, check)
        return PruneResult(subnet, best, frame, run_dir.path, {**base, "held_out": base_score,
                                                              "test": inputs.base_test},
                           outcome.interrupted, summary, record, chosen_frame)

    def _summary(self, outcome, frame, base, base_score, record, measured, counts, seconds, best=None,
                 check=None) -> str:
        from search.selection.latency_check import summary_lines

        metric = "score" if self.inputs.score else "held-out"
        test = self.inputs.base_test
        lines = [f"base : {base['flops'] / 1e6:9.3f} MFLOPs  {base['params'] / 1e6:7.4f} M params  "
                 f"{metric} {base_score:.4f}" + (f"  test {test:.4f}" if test is not None else "")]
        if record:
            r = record["ratios"]
            tested = f"  test {record['test_top1']:.4f}" if record["test_top1"] is not None else ""
            steps = record["finetuned_steps"]
            how = (f"after {steps} fine-tuning steps; search score {best.result.score:.4f}, picked by "
                   f"{record['selected_by']}" if steps else "before fine-tuning" +
                   (f"; search score {best.result.score:.4f}" if record["selected_by"] != "search score" or
                    abs(record["held_out_top1"] - best.result.score) > 1e-9 else ""))
            lines.append(f"best : {best.result.costs['flops'] / 1e6:9.3f} MFLOPs  {best.result.costs['params'] / 1e6:7.4f}"
                         f" M params  {metric} {record['held_out_top1']:.4f}{tested}  (FLOPs x{r['flops']:.3f}, params "
                         f"x{r['params']:.3f}, trial {best.number}, {how})")
        else:
            lines.append("best : none scored")
        lines.append(f"trials: {len(outcome.trials)} ({', '.join(f'{v} {k}' for k, v in counts.items())}) in "
                     f"{seconds:.1f} s{' - interrupted' if outcome.interrupted else ''}"
                     f"{' - the agent had nothing more to propose' if outcome.finished_early else ''}")
        if check is not None:
            lines += summary_lines(check, self.config.latency_batch)
        if measured:
            errors = [abs(frame.set_index("trial").latency_ms[n] - ms) / ms for n, ms in measured.items()]
            lines.append(f"         predictor error over {len(errors)} trials measured directly: median "
                         f"{100 * float(np.median(errors)):.1f}%, worst {100 * max(errors):.1f}%")
        lines.append(f"run  : {self.run_dir.path}")
        if record and self.inputs.data is not None:
            lines.append(f"next : python -m search.finetune {self.run_dir.path}")
        return "\n".join(lines)


def base_model(config: SearchConfig, *, progress: bool = False) -> nn.Module:
    """A run's base model, rebuilt from its configuration: the zoo name and weights, or the cached baseline."""
    if config.model == "<module>":
        raise UserError("this run was searched from Python (search.prune) with the user's own model object: "
                        "rebuild its subnet with search.export.rebuild(best.json, model)")
    return Pipeline(config, progress=progress).load_inputs().model


def load_subnet(run_dir: str | Path, *, finetuned: bool = False, trust_pickle: bool = False,
                num_classes: int | None = None, model: nn.Module | None = None) -> nn.Module:
    """A run's exported subnet (or fine-tuned one), without unpickling code.

    Rebuilt from `best.json` (the architecture) and the state dict beside it (`weights_only=True`; it holds
    every weight and BatchNorm statistic of the subnet), so the base model only lends its structure: an
    untrained one of the run's model name is enough (`model` overrides it; `num_classes`, the data's, saves
    reading the data). A run with only the pickled `best.pt` / `finetuned.pt` needs `trust_pickle=True`.
    """
    from search.export.command import rebuild
    from search.engine.records import FINETUNED_MODEL_FILE, FINETUNED_STATE_FILE
    from search.models.zoo import load_data, load_model, safe_load

    run = RunDirectory.open(str(run_dir))
    state_name, pickle_name = ((FINETUNED_STATE_FILE, FINETUNED_MODEL_FILE) if finetuned
                               else (BEST_STATE_FILE, BEST_MODEL_FILE))
    if (run.path / state_name).is_file() and (run.path / BEST_FILE).is_file():
        state = safe_load(run.path / state_name, "subnet weights")
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"{run.path / state_name} is not a state dict (name -> tensor)")
        best = run.read(BEST_FILE)
        if model is None:
            config = SearchConfig.from_json(run.read().get("args", {}))
            if config.model == "<module>":
                raise UserError("this run was searched from Python (search.prune) with the user's own model "
                                "object: pass it as load_subnet(..., model=...)")
            if num_classes is None:
                num_classes = load_data(config.data, held_out=config.held_out_size, seed=config.seed).num_classes
            torch.manual_seed(config.seed)
            model = load_model(config.model, num_classes=num_classes, input_shape=tuple(best["input_shape"]),
                               trust_pickle=trust_pickle)
        subnet = rebuild(best, copy.deepcopy(model))
        try:
            subnet.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise UserError(f"{run.path / state_name} does not fit the subnet of best.json: "
                            f"{first_line(error)}") from None
        return subnet.eval()
    if not (run.path / pickle_name).is_file():
        if finetuned:
            raise UserError(f"{run.path} has no {FINETUNED_MODEL_FILE} yet: run `python -m search.finetune "
                            f"{run.path}` first, or leave out --finetuned")
        raise UserError(f"{run.path} has no {BEST_MODEL_FILE} or {BEST_STATE_FILE}: the search exported no subnet "
                        f"(none was scored)")
    if not trust_pickle:
        raise UserError(f"{run.path} has only {pickle_name}, a pickled module (unpickling can run code from the "
                        f"file): pass --trust-pickle if you trust this run directory")
    subnet = safe_load(run.path / pickle_name, "subnet", weights_only=False)
    if not isinstance(subnet, nn.Module):
        what = "a state dict" if isinstance(subnet, Mapping) else f"a {type(subnet).__name__}"
        raise UserError(f"{run.path / pickle_name} holds {what}, not a module (the subnet's state dict belongs in "
                        f"{state_name} beside best.json)")
    return subnet.eval()


def prune(model: nn.Module, budget: str | list[str] = "0.5flops", agent: str = "random", trials: int = 200, *,
          calibration: Iterable, held_out: Iterable | None = None, score: Callable[[nn.Module], float] | None = None,
          train: Iterable | None = None, example_input: torch.Tensor | None = None, workers: int = 0, out: str | Path | None = None,
          seed: int = 0, device: str = "auto", progress: bool = True, resume: bool = False,
          **options: Any) -> PruneResult:
    """Search a pruned architecture of `model` under `budget` with the user's own data; see the README.

    `calibration`: any iterable of input batches (or (x, y) batches): BatchNorm is recalibrated on its first
    `calib_batches` (2) batches for every candidate. `score`: f(model) -> float, higher is better, called on
    the model already set to the candidate and recalibrated, in eval mode (errors are failed trials);
    default: top-1 on `held_out`, an iterable of (x, y) batches (its first `eval_samples`, 1024, samples).
    `train`: labelled (x, y) batches (e.g. the training loader) the finalists fine-tune on; without it
    they are distilled from the model's outputs on the calibration batches (`finalists=0` turns them off).
    `options`: any other `SearchConfig` field (e.g. `width_ratios="0.25,0.5,0.75,1"`, `food_sources=8`).
    Returns a `PruneResult`: `.subnet` (a real module), `.best`, `.trials` (a DataFrame), `.run_dir`.
    The user's model is not modified (the search works on a copy). `resume=True` continues the run in
    `out` (same model, data and options; nothing scored is scored again).
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"prune() needs a torch.nn.Module, got {type(model).__name__}")
    if score is None and held_out is None:
        raise UserError("prune() needs held_out batches (scored by top-1) or a score function")
    config = SearchConfig(agent=agent, budget=[budget] if isinstance(budget, str) else list(budget), trials=trials,
                          workers=workers, out=None if out is None else str(out), seed=seed, device=device,
                          model="<module>", data="<iterables>", **options).validate()
    dev = device_of(config.device)
    calib = [x.to(dev) for x in batches_of(calibration, config.calib_batches * config.batch_size, labelled=False,
                                           what="calibration")]
    held = ([(x.to(dev), y.to(dev)) for x, y in batches_of(held_out, config.eval_samples, labelled=True,
                                                           what="held_out")] if held_out is not None else [])
    example = (example_input if example_input is not None else calib[0][:1]).detach().cpu()
    if example.dim() < 2 or example.shape[0] != 1:
        example = example[:1]
    torch.manual_seed(seed)
    inputs = Inputs(model=copy.deepcopy(model).cpu().eval(), example=example, calibration=calib, held_out=held,
                    score=score, name=type(model).__name__, train=train)
    run_dir = None
    if resume:
        if out is None:
            raise UserError("prune(resume=True) needs the run's out= folder")
        run_dir = RunDirectory.open(str(out))
        saved = run_dir.read().get("args") or {}
        config = SearchConfig.from_json(saved).resumed(config.to_json())  # refuses what would change the run
    pipeline = Pipeline(config, inputs=inputs, run_dir=run_dir, progress=progress)
    result = pipeline.run()
    log.info("%s", result.summary)
    return result


__all__ = ["Inputs", "Pipeline", "PruneResult", "base_model", "best_trial", "load_subnet", "prune"]
