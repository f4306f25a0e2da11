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

import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from agents.base import Agent
from evaluators.accuracy import AccuracyEvaluator, EvaluatorPayload
from evaluators.cost import CostModel
from evaluators.executors import Executor, LocalExecutor
from spaces.budget import Budget
from spaces.derive import PrunableModel, derive
from spaces.materialize import materialize
from spaces.space import Candidate

from search.engine.budget import parse_budget, unmet
from search.errors import Interrupted, UserError, first_line
from search.engine.config import SearchConfig
from search.engine.loop import Engine, Outcome, memoized
from search.engine.finish import finish
from search.engine.records import LATENCY_TABLE_FILE, PruneResult, RunDirectory, Trial
from search.selection.fill import fill_trials
from search.selection.one_shot import one_shot_trials
from search.finetune.step import device_of, evaluate
from search.finetune.supernet_stage import supernet_stage
from search.models.inputs import Inputs, zoo_inputs
from search.models.zoo import ZOO_MODELS
from search.engine.versions import moved, versions

log = logging.getLogger(__name__)


def idle_workers(agent: str, batch: int | None, workers: int) -> str | None:
    """A warning where the agent's phase or generation (`Agent.batch`) is smaller than the workers; else None."""
    if workers <= 1 or batch is None or batch >= workers:
        return None
    remedy = (f"--food-sources {workers} keeps them all busy" if agent == "abc" else
              f"--population {workers} keeps them all busy")
    return (f"{agent} proposes at most {batch} candidates at a time (it waits for all of their results before "
            f"planning the next): {workers - batch} of the {workers} workers will wait idle; {remedy}")


class Pipeline:
    """One search run; see the module docstring. `run()` does it all; the stages are public for tests."""

    def __init__(self, config: SearchConfig, *, inputs: Inputs | None = None, run_dir: RunDirectory | None = None,
                 progress: bool = True):
        self.config = config.validate()
        unused = self.config.idle_finalist_options()
        if unused:
            log.warning("--finalists 0: %s %s no effect (no finalists stage)", ", ".join(unused),
                        "has" if len(unused) == 1 else "have")
        self.inputs = inputs
        self.run_dir = run_dir           # set: resuming this run
        self.progress = progress
        self.device = device_of(config.device)
        self.budget: Budget | None = None
        self._resuming = run_dir is not None
        self.one_shot: dict[str, Trial] = {}  # {method: its candidate's trial}, always among the finalists
        self._reconstructor = None
        self.reconstructions: dict = {}  # {candidate: spaces.reconstruct.Reconstruction} of each subnet built

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
        if self.inputs is None:
            self.inputs = zoo_inputs(self.config, self.device, progress=self.progress)
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
        if not prunable.space.widths and self.config.round_to > 1:
            log.warning("--round-to %d leaves no channel width to search in %s (every group is narrower than two "
                        "multiples of it): only blocks are searched; a smaller --round-to searches widths too",
                        self.config.round_to, inputs.name)
        return prunable

    def cost_model(self, prunable: PrunableModel) -> tuple[CostModel, Budget]:
        """The cost model (FLOPs, params; latency when a budget or `--latency` asks for it) and the budget
        resolved against the base model's costs; an unreachable budget is a UserError."""
        table = None
        budget = parse_budget(self.config.budget)
        priced = self.config.latency or any(lim.metric == "latency" for lim in budget.limits)
        unused = [f"--{name.replace('_', '-')}" for name in ("latency_backend", "latency_batch")
                  if getattr(self.config, name) != SearchConfig.__dataclass_fields__[name].default]
        if unused and not priced:
            log.warning("%s has no effect without a latency budget (e.g. --budget 2ms or 0.5latency) or --latency",
                        " and ".join(unused))
        if priced:
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
        resolved = budget.resolve(base)
        smallest = cost.price(prunable.space.smallest()).as_dict()
        if not resolved.feasible(smallest):
            raise UserError(unmet(resolved, smallest, base))
        return cost, resolved

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
        except (ValueError, KeyError, TypeError) as error:  # a readable file of another kind or another model
            raise UserError(f"cannot use PruningNet {path}: {first_line(error)}") from None
        except Exception as error:  # noqa: BLE001 - not a file torch.load reads with tensors only: one line
            from search.models.zoo import unreadable

            raise UserError(f"cannot use PruningNet: {unreadable(path, error, 'PruningNet')}".replace(
                "cannot use PruningNet: cannot load PruningNet", "cannot use PruningNet")) from None
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
            raise UserError(first_line(error)) from None
        log.info("scoring on %d Ray actors (%g CPU, %g GPU each)", c.workers or 1, c.cpus_per_worker,
                 c.gpus_per_worker)
        return executor

    def _payload(self, evaluator: AccuracyEvaluator) -> EvaluatorPayload:
        return EvaluatorPayload.of(evaluator, self.config.derive_options(),
                                   "cuda" if self.config.gpus_per_worker > 0 else "cpu")

    def _run_tune(self, agent: Agent, price, evaluator: AccuracyEvaluator, prunable: PrunableModel) -> Outcome:
        from evaluators.executors import init_ray

        from search.engine.tune import AgentSearcher, run_tune

        c = self.config
        try:
            started_ray = init_ray(c.ray_address, num_cpus=max(1, c.workers or 1) * c.cpus_per_worker)
        except ConnectionError as error:
            raise UserError(first_line(error)) from None
        try:
            searcher = AgentSearcher(agent, price, self.budget, self.racing_top_k, canonical=prunable.canonical)
            trials = run_tune(searcher, self._payload(evaluator),
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

    def base_score(self, evaluator: AccuracyEvaluator, prunable: PrunableModel) -> float:
        """The base model's score, before the run directory exists: one the scorer cannot compute (it raises,
        or gives no finite number) stops the run in one line, since no candidate could be compared to it."""
        what = "score(model)" if self.inputs.score is not None else "top-1 on the held-out batches"
        try:
            score = float(evaluator.score(prunable.space.full()))
        except Exception as error:  # noqa: BLE001 - the user's function or data: one line
            raise UserError(f"the base model's {what} cannot be computed: {first_line(error, typed=True)}"[:400]
                            ) from None
        finally:
            evaluator.restore()
        if not math.isfinite(score):
            raise UserError(f"the base model's {what} is {score}: a search needs a finite score to compare "
                            "candidates with")
        return score

    # ------------------------------------------------------------------ the whole run
    def run(self) -> PruneResult:
        c = self.config
        if self.run_dir is not None:
            self.run_dir.lock()  # one process per run directory, before any work (a new one is locked by `create`)
        if c.ray_address or c.workers:  # a dead address is refused in seconds, before anything is loaded or written
            from evaluators.executors import check_cluster

            if why := check_cluster(c.ray_address):
                raise UserError(why)
        inputs = self.load_inputs()
        self._reconstruct_inputs()  # refused before the search, not after it
        prunable = self.derive()
        cost, self.budget = self.cost_model(prunable)
        base = cost.base.as_dict()
        price = memoized(cost.costs)
        # agents that plan around the trial count (tpe's startup, evolution's population) keep the first run's
        # plan when a resumed run is given more trials, so that replaying the journal proposes the same candidates
        planned = self.run_dir.read().get("planned_trials") if self.run_dir is not None else None
        if c.backend == "tune" and planned and c.trials != planned:
            raise UserError(f"--backend tune cannot change --trials on resume (Ray Tune's Tuner.restore keeps the "
                            f"experiment's {planned} trials); resume with --trials {planned}, or search more in a "
                            f"new run")
        agent = self.agent(prunable, price, trials=planned or c.trials)
        idle = idle_workers(c.agent, agent.batch, c.workers)
        if idle:
            log.warning(idle)
        pruningnet = self._pruningnet_file(prunable) if c.scorer_name == "pruningnet" else None
        inputs.model.to(self.device)
        evaluator = self.evaluator(prunable)
        base_score = self.base_score(evaluator, prunable)
        if self.run_dir is None:  # everything is checked: only now does the run leave a trace
            self.run_dir = RunDirectory.create(c.out, model=inputs.name, agent=c.agent, budget=str(self.budget))
            self.run_dir.update_run(args=c.to_json(), status="running", api=c.model == "<module>",
                                    planned_trials=c.trials)
        run_dir = self.run_dir
        if inputs.base_test is None and inputs.test is not None:
            inputs.base_test = evaluate(inputs.model, inputs.test, self.device)
        if cost.latency is not None:  # what a resumed run prices with (`_own_latency_table`)
            run_dir.write(LATENCY_TABLE_FILE, cost.latency.to_json())
        log.info("%s: %s; base %.2f MFLOPs, %.3f M params; on %s; run directory %s", inputs.name, prunable.space,
                 base["flops"] / 1e6, base["params"] / 1e6, self.device, run_dir.path)
        if inputs.data is not None and c.weights is None and not (c.model in ZOO_MODELS and c.baseline_epochs > 0):
            log.warning("no --weights: searching an untrained %s (scores will be near chance)", c.model)

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
                           export_weights=c.exported_weights, scorer=c.scorer_name)
        try:
            if c.supernet_epochs:  # the base model's own score is above; the search scores the supernet's weights
                supernet_stage(self, prunable, price)
                evaluator = self.evaluator(prunable)  # its BatchNorm snapshot: the supernet's, not the base model's
            scorer = evaluator
            if c.scorer_name == "pruningnet":
                from evaluators.pruningnet import PruningNetEvaluator

                pruningnet = pruningnet or self.train_pruningnet(prunable, price)
                scorer = PruningNetEvaluator.of(evaluator, pruningnet)
                scorer.race = evaluator.race
        except KeyboardInterrupt:  # Ctrl-C in the supernet's or the PruningNet's training: nothing scored yet
            run_dir.update_run(status="interrupted", finished=time.strftime("%Y-%m-%d %H:%M:%S"))
            raise Interrupted(f"before the search began, nothing scored yet (--resume {run_dir.path} starts "
                              f"it again)") from None
        if c.no_racing:
            log.info("racing is off (--no-racing): every candidate is scored on all held-out samples")
        elif self.racing_top_k is None:
            log.info("racing is off: a user score function is called whole, it cannot be scored in chunks")
        started = time.perf_counter()
        if c.backend == "tune":
            outcome = self._run_tune(agent, price, evaluator, prunable)
        else:
            executor = self._executor(scorer)
            engine = Engine(agent, price, self.budget, executor, trials=c.trials, journal=run_dir.journal,
                            progress=self.progress, base_flops=base["flops"], top_k=self.racing_top_k,
                            canonical=prunable.canonical)
            previous = run_dir.journal.read()
            if previous:
                damaged = run_dir.journal.skipped
                why = ", ".join(([f"journal line(s) {', '.join(map(str, damaged[:5]))} unreadable"] if damaged else [])
                                + ([f"since the run started: {', '.join(since)}"] if since else []))
                engine.replay(previous, lambda: self.agent(prunable, price, trials=planned or c.trials), why=why)
                run_dir.journal.truncate(previous)
                log.info("resumed: %d trials replayed from the journal, none scored again", len(previous))
            elif run_dir.journal.skipped:  # nothing readable (a crash in the first write): set it aside, start clean
                run_dir.journal.truncate([])
            recorded = run_dir.read().get("trials") if not previous else None
            if recorded:  # a resume whose journal is gone or emptied
                log.warning("the journal %s holds no trial, yet run.json records %d: they are searched and scored "
                            "again", run_dir.journal.path, recorded)
            try:
                outcome = engine.run()
            finally:
                executor.close()
        try:
            if c.fill and outcome.best is not None and not outcome.interrupted:
                outcome.trials.extend(fill_trials(self, prunable, outcome.trials, scorer, price))
            if c.finalists and not c.no_one_shot and outcome.best is not None and not outcome.interrupted:
                extra, self.one_shot = one_shot_trials(self, prunable, outcome.trials, scorer, price)
                outcome.trials.extend(extra)
        except KeyboardInterrupt:  # Ctrl-C after the search: what it scored is exported, --resume does the rest
            outcome.interrupted = True
            log.warning("interrupted after the search: exporting its best (--resume fills and picks again)")
        if scorer is not evaluator:
            scorer.restore()
        evaluator.restore()
        return finish(self, prunable, outcome, evaluator, base, base_score, time.perf_counter() - started,
                            cost.latency, pruningnet)

    # ------------------------------------------------------------------ picking what is exported
    def build(self, prunable: PrunableModel, pruningnet=None, *, refit: bool | None = None
              ) -> Callable[[Any], nn.Module]:
        """Materializes a candidate with the weights that will be exported (BatchNorms not yet recalibrated): copied
        from the base model (or generated by the PruningNet); with `refit` (default: `--export-weights refit`) then
        refit layer by layer to the full model's outputs (`--reconstruct`, `spaces.reconstruct`)."""
        if self.config.exported_weights == "pruningnet":
            from evaluators.pruningnet import materialize_generated

            make = lambda candidate: materialize_generated(pruningnet, candidate)  # noqa: E731
        else:
            make = lambda candidate: materialize(prunable, candidate)  # noqa: E731
        refit = self.config.exported_weights == "refit" if refit is None else refit
        reconstructor = self.reconstructor(prunable) if refit else None
        if reconstructor is None:
            return make

        def built(candidate):
            module = make(candidate)
            self.reconstructions[Candidate(candidate)] = report = reconstructor(module, candidate)
            log.debug("reconstructed %d layers (%d left): output error %.4g -> %.4g%s", len(report.layers),
                      len(report.skipped), report.error_before, report.error_after,
                      "" if report.kept else ", worse: the copied weights kept")
            return module
        return built

    def ranks_refit(self, prunable: PrunableModel) -> bool:
        """Whether the finalists are scored on refit copies: untrained finalists (`--finalist-steps 0`) with
        `--reconstruct` on (trained finalists are ranked by their own training, from the export's weights)."""
        c = self.config
        return bool(c.finalists) and c.finalist_rungs[-1] == 0 and self.reconstructor(prunable) is not None

    def exported(self, prunable: PrunableModel, finalist, evaluator: AccuracyEvaluator, pruningnet=None
                 ) -> tuple[nn.Module, float]:
        """What is exported for a ranked finalist, and its held-out score: the finalist itself when it was built with
        the export's weights; else (ranked on a refit copy, exported with the copied ones) the candidate built with
        them, BN-recalibrated and scored."""
        from search.selection.finalists import score_module

        refit_export = self.config.exported_weights == "refit"
        if finalist.steps or not self.ranks_refit(prunable) or refit_export:
            return finalist.module, finalist.score
        module = evaluator.recalibrated(self.build(prunable, pruningnet, refit=False)(finalist.trial.candidate))
        return module, score_module(module, evaluator.held_out, evaluator.metric)

    def reconstructor(self, prunable: PrunableModel):
        """The run's `spaces.reconstruct.Reconstructor` (one, so the full model's outputs are computed once), on
        `--reconstruct` training inputs (the finalists' training batches, else the calibration batches); None when
        off or when the space is a submodule's."""
        from spaces.reconstruct import Reconstructor

        n = self._reconstruct_inputs()
        if not n:
            return None
        if prunable.outside is not None:
            if self._reconstructor is None:
                log.info("reconstruction: skipped (the space is a submodule's: the exported weights are the copied ones)")
                self._reconstructor = False
            return None
        if not self._reconstructor or self._reconstructor.prunable is not prunable:
            import itertools

            from search.selection.finalists import finalist_batches, samples_per_pass

            batches = finalist_batches(self)[0] if self.inputs.data is not None or self.inputs.train is not None \
                else None
            if batches is not None:  # at most one pass: a repeated input adds cost and no information
                n = min(n, samples_per_pass(batches if self.inputs.data is not None else self.inputs.train) or n)
                inputs, seen = [], 0
                for x, _ in itertools.islice(batches(self.config.seed), 10 ** 6):
                    inputs.append(x[:n - seen].to(self.device))
                    seen += len(inputs[-1])
                    if seen >= n:
                        break
            else:
                inputs = [x.to(self.device) for x in self.inputs.calibration]
            self._reconstructor = Reconstructor(prunable, inputs)
            log.info("reconstruction: finalists are refit to the full model's outputs on %d training inputs",
                     sum(len(x) for x in inputs))
        return self._reconstructor

    def _reconstruct_inputs(self) -> int:
        """How many training inputs `--reconstruct` refits on (0: off); more than `spaces.reconstruct.MAX_POSITIONS`
        input positions in all (they run as one batch) is a UserError."""
        from spaces.reconstruct import MAX_POSITIONS, default_inputs, positions

        n = self.config.reconstruct
        if n is None:
            return default_inputs(self.inputs.example)
        each = positions(self.inputs.example)
        if n * each > MAX_POSITIONS:
            raise UserError(f"--reconstruct {n}: reconstruction runs its inputs as one batch, and {n} inputs of "
                            f"{each} positions each are over its {MAX_POSITIONS} positions; use at most "
                            f"{max(1, MAX_POSITIONS // each)}, or 0 to turn it off")
        return n

    @property
    def reconstructor_inputs(self) -> list:
        return self._reconstructor.inputs if self._reconstructor else []

__all__ = ["Inputs", "Pipeline", "PruneResult"]
