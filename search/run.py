"""`python -m search.run`: search a pruned architecture of a model under a budget, and export the best.

    python -m search.run --agent random --budget 0.4flops
    python -m search.run --model torchvision:resnet18 --weights r18.pt --data imagefolder:/data/imgs \\
        --agent random --budget 0.5flops --budget 0.6params --trials 300

With no model and data it runs on the embedded default: a CIFAR-style ResNet-20 on scikit-learn's
bundled handwritten digits (trained once, then cached).
"""
from __future__ import annotations

import argparse
import logging
import platform
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from agents.registry import agent_options, list_agents, make_agent
from evaluators.accuracy import AccuracyEvaluator
from evaluators.cost import CostModel
from evaluators.executors import LocalExecutor
from spaces.derive import derive
from spaces.materialize import materialize
from spaces.space import DEFAULT_RATIOS

from .budget import GRAMMAR, parse_budget
from .engine import Engine, Outcome
from .errors import UserError
from .records import BEST_FILE, BEST_MODEL_FILE, RunDirectory
from .training import evaluate, resolve_device

log = logging.getLogger("search")
ZOO_MODELS = ("resnet20", "resnet56")
DEFAULT_TRIALS = 200
RESUMABLE = ("trials",)
AGENT_OPTIONS = ("food_sources", "limit", "genes", "startup_trials", "population", "parents", "storage", "study_name")  # options a resumed run may change; the rest come from run.json


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth showing (not None, not an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS):
            return action.help or ""
        return super()._get_help_string(action)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m search.run", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    what = p.add_argument_group("what to search")
    what.add_argument("--agent", required=False, help=f"search agent: {', '.join(list_agents())}")
    what.add_argument("--budget", action="append", default=None, metavar="LIMIT",
                      help=f"repeatable; every limit must hold. {GRAMMAR}")
    what.add_argument("--model", default="resnet20",
                      help="resnet20 | resnet56 | torchvision:NAME | package.module:factory | PATH.pt (whole model)")
    what.add_argument("--weights", default=None, help="state dict or checkpoint ({'state_dict': ...}, {'model': ...})")
    what.add_argument("--data", default="digits",
                      help="digits | cifar10:DIR | imagefolder:DIR[@SIZE] | package.module:factory")
    search = p.add_argument_group("search")
    search.add_argument("--trials", type=int, default=None, help=f"candidates to try (default: {DEFAULT_TRIALS})")
    search.add_argument("--seed", type=int, default=0, help="seeds the data split, the baseline and the agent")
    search.add_argument("--width-ratios", default=",".join(f"{r:g}" for r in DEFAULT_RATIOS),
                        help="allowed width ratios of every channel group, comma-separated")
    search.add_argument("--round-to", type=int, default=1, help="round every width to a multiple of this")
    search.add_argument("--no-block-removal", action="store_true", help="never remove residual blocks")
    search.add_argument("--no-warm-start", action="store_true",
                        help="do not propose global magnitude pruning's candidate at the budget among the first "
                             "(abc, evolution, metapruning, random, tpe, nsga2 use it; uniform and amc never do)")
    scoring = p.add_argument_group("scoring (BN-recalibrated held-out top-1)")
    scoring.add_argument("--calib-batches", type=int, default=8, help="batches to recalibrate BatchNorm on")
    scoring.add_argument("--batch-size", type=int, default=64, help="calibration (and training) batch size")
    scoring.add_argument("--eval-samples", type=int, default=1024, help="held-out samples scored per candidate")
    scoring.add_argument("--held-out", type=float, default=0.2,
                         help="share (or count, if >= 1) of the training set held out for scoring")
    scoring.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    scoring.add_argument("--latency", action="store_true",
                         help="measure a latency table and report latency even without a latency budget")
    scoring.add_argument("--latency-batch", type=int, default=1, help="batch size latency is measured at")
    scoring.add_argument("--baseline-epochs", type=int, default=30,
                         help="epochs to train a zoo model given without --weights (cached)")
    ray = p.add_argument_group("distribution (Ray)")
    ray.add_argument("--workers", type=int, default=0,
                     help="score on N Ray actors (a local Ray is started unless --ray-address); 0: in this process")
    ray.add_argument("--ray-address", help="join an existing Ray cluster: auto, or HOST:PORT")
    ray.add_argument("--cpus-per-worker", type=float, default=1, help="CPUs per actor (its torch threads)")
    ray.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per actor (fractions allowed)")
    ray.add_argument("--backend", choices=("actors", "tune"), default="actors",
                     help="actors: this engine's own pool (lowest overhead); tune: Ray Tune's Tuner (its experiment "
                          "management, FailureConfig retries, Tuner.restore on --resume)")
    agent = p.add_argument_group("agent options (each applies to the agents named)")
    agent.add_argument("--food-sources", type=int, help="abc: food sources (candidates kept), default 10")
    agent.add_argument("--limit", type=int, help="abc: failed moves before a source is abandoned, default 5")
    agent.add_argument("--genes", type=int, help="abc: genes moved per bee, default 2")
    agent.add_argument("--startup-trials", type=int, help="tpe: random trials before TPE models, default trials/5")
    agent.add_argument("--population", type=int, help="nsga2: population size, default 20; evolution, metapruning: "
                                                      "default 50")
    agent.add_argument("--parents", type=int, help="evolution, metapruning: top-k parents, default 10")
    agent.add_argument("--storage", help="tpe, nsga2: Optuna storage (sqlite:///study.db, or FILE.log for a "
                                         "journal file) to resume or share a study")
    agent.add_argument("--study-name", help="tpe, nsga2: study name within --storage")
    meta = p.add_argument_group("MetaPruning (--agent metapruning)")
    meta.add_argument("--pruningnet", metavar="PATH", help="a trained PruningNet (pruningnet.pt of an earlier run) "
                                                          "instead of training one")
    meta.add_argument("--pruningnet-epochs", type=int, default=30, help="epochs to train the PruningNet")
    meta.add_argument("--export-weights", choices=("base", "pruningnet"), default="base",
                      help="weights of the exported subnet: the base model's, or the PruningNet's")
    out = p.add_argument_group("output")
    out.add_argument("--out", default=None, help="run directory (default runs/<time>-<model>-<agent>-<budget>)")
    out.add_argument("--resume", default=None, metavar="DIR", help="continue an interrupted run")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    out.add_argument("--quiet", action="store_true", help="warnings and the summary only")
    return p


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def _configure_logging(quiet: bool) -> None:
    root = logging.getLogger("search")
    root.handlers[:] = [_TqdmHandler()]
    root.handlers[0].setFormatter(logging.Formatter("%(message)s"))
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


def _ratios(text: str) -> tuple[float, ...]:
    try:
        ratios = tuple(sorted({float(r) for r in text.split(",") if r.strip()}))
    except ValueError:
        raise UserError(f"--width-ratios must be numbers separated by commas, got {text!r}") from None
    if not ratios or not all(0 < r <= 1 for r in ratios):
        raise UserError(f"--width-ratios must lie in (0, 1], got {text!r}")
    return ratios


def _check(args: argparse.Namespace) -> None:
    if not args.agent:
        raise UserError(f"give --agent ({', '.join(list_agents())})")
    if args.agent not in list_agents():
        raise UserError(f"unknown agent {args.agent!r}; choose from {', '.join(list_agents())}")
    for name in ("trials", "calib_batches", "batch_size", "eval_samples", "round_to", "baseline_epochs", "workers",
                 "latency_batch", "pruningnet_epochs",
                 "cpus_per_worker", "gpus_per_worker"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name in ("baseline_epochs", "workers", "gpus_per_worker") else 1e-9):
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")


def _check_metapruning(args: argparse.Namespace) -> None:
    if args.agent == "metapruning":
        if args.workers or args.ray_address or args.backend == "tune":
            raise UserError("--agent metapruning scores with its PruningNet in this process: "
                            "drop --workers, --ray-address and --backend tune")
    elif args.pruningnet or args.export_weights == "pruningnet":
        raise UserError("--pruningnet and --export-weights pruningnet apply to --agent metapruning only")


def _pruningnet(args, prunable, data, run_dir, budget, cost, device, progress):
    """Load the PruningNet (--pruningnet, or this run's own when resuming) or train one, saved in the run."""
    from evaluators.pruningnet import PruningNet, feasible_sampler, train_pruningnet

    own = run_dir.path / "pruningnet.pt"
    path = args.pruningnet or (own if own.exists() else None)
    if path is not None:
        try:
            net = PruningNet.load(path, prunable)
        except (OSError, ValueError, RuntimeError) as error:
            raise UserError(f"cannot use PruningNet {path}: {str(error).splitlines()[0]}") from None
        log.info("PruningNet loaded from %s", path)
        return net.to(device)
    net = PruningNet(prunable, seed=args.seed).to(device)
    loader = DataLoader(Subset(data.train, data.fit.tolist()), batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed), drop_last=len(data.fit) > args.batch_size)
    feasible = lambda c: budget.feasible(cost.price(c).as_dict())  # noqa: E731
    started = time.perf_counter()
    train_pruningnet(net, loader, epochs=args.pruningnet_epochs, sample=feasible_sampler(prunable.space, feasible),
                     seed=args.seed, progress=progress)
    net.save(own)
    log.info("PruningNet trained in %.1f s (%d epochs), saved to %s", time.perf_counter() - started,
             args.pruningnet_epochs, own)
    run_dir.update_run(pruningnet={"path": str(own), "epochs": args.pruningnet_epochs,
                                   "seconds": round(time.perf_counter() - started, 1)})
    return net


def _agent_options(args: argparse.Namespace) -> dict[str, object]:
    """The agent options the user set; one that the chosen agent does not take is a UserError."""
    options = {k: getattr(args, k) for k in AGENT_OPTIONS if getattr(args, k, None) is not None}
    accepted = agent_options(args.agent)
    for name, value in options.items():
        if name not in accepted:
            raise UserError(f"--{name.replace('_', '-')} does not apply to agent {args.agent}")
        if isinstance(value, int) and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    return options


def _resume_args(args: argparse.Namespace, run_dir: RunDirectory) -> argparse.Namespace:
    saved = run_dir.read().get("args")
    if not isinstance(saved, dict):
        raise UserError(f"{run_dir.path} has no saved arguments to resume from")
    merged = argparse.Namespace(**saved)
    for name in RESUMABLE:
        if getattr(args, name) is not None:
            setattr(merged, name, getattr(args, name))
    merged.resume, merged.no_progress, merged.quiet = args.resume, args.no_progress, args.quiet
    return merged


def _versions() -> dict[str, str]:
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__}


def _derive_options(args: argparse.Namespace) -> dict[str, object]:
    return {"ratios": _ratios(args.width_ratios), "round_to": args.round_to,
            "removable_blocks": not args.no_block_removal}


def _run_tune(args, agent, price, budget, evaluator, run_dir, device) -> Outcome:
    """The search through Ray Tune's Tuner; `--resume` continues the experiment with Tuner.restore."""
    import ray

    from evaluators.accuracy import EvaluatorPayload

    from .tune import AgentSearcher, run_tune

    started_ray = not ray.is_initialized()
    if started_ray:
        if args.ray_address:
            ray.init(address=args.ray_address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, int((args.workers or 1) * args.cpus_per_worker)), include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False)
    try:
        payload = EvaluatorPayload.of(evaluator, _derive_options(args), "cuda" if args.gpus_per_worker > 0 else "cpu")
        trials = run_tune(AgentSearcher(agent, price, budget), payload, trials=args.trials,
                          workers=max(1, args.workers), storage=run_dir.path.resolve() / "tune",
                          cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                          resume=args.resume is not None)
    finally:
        if started_ray:
            ray.shutdown()
    run_dir.journal.truncate(trials)  # the record of what Tune ran; Tune's own state is what resumes it
    return Outcome(trials=trials)


def _executor(args: argparse.Namespace, evaluator: AccuracyEvaluator, prunable, device: torch.device):
    """In this process, or a pool of Ray actors each holding its own copy of the model and batches."""
    if not args.workers and not args.ray_address:
        return LocalExecutor(evaluator)
    from evaluators.accuracy import EvaluatorPayload, build_evaluator
    from evaluators.executors import RayExecutor

    payload = EvaluatorPayload.of(evaluator, _derive_options(args), "cuda" if args.gpus_per_worker > 0 else "cpu")
    workers = args.workers or 1
    try:
        executor = RayExecutor(build_evaluator, payload, workers=workers, cpus_per_worker=args.cpus_per_worker,
                               gpus_per_worker=args.gpus_per_worker, address=args.ray_address)
    except ConnectionError as error:
        raise UserError(f"cannot join the Ray cluster at {args.ray_address}: {error}") from None
    log.info("scoring on %d Ray actors (%g CPU, %g GPU each)", workers, args.cpus_per_worker, args.gpus_per_worker)
    return executor


def run(args: argparse.Namespace) -> Outcome:
    from .baseline import trained_baseline
    from .zoo import load_data, load_model

    run_dir = RunDirectory.open(args.resume) if args.resume else None
    if run_dir is not None:
        args = _resume_args(args, run_dir)
    if args.trials is None:
        args.trials = DEFAULT_TRIALS
    _check(args)
    _check_metapruning(args)
    options = _agent_options(args)
    budget = parse_budget(args.budget or [])
    ratios = _ratios(args.width_ratios)
    try:
        device = resolve_device(args.device)
        torch.empty(0, device=device)
    except (RuntimeError, ValueError) as error:
        raise UserError(f"cannot use --device {args.device}: {str(error).splitlines()[0]}") from None
    progress = not args.no_progress

    data = load_data(args.data, held_out=args.held_out if args.held_out < 1 else int(args.held_out), seed=args.seed)
    torch.manual_seed(args.seed)  # the model's initialization (what --weights does not overwrite) is seeded too
    model = load_model(args.model, num_classes=data.num_classes, input_shape=data.input_shape, weights=args.weights)
    base_test = None
    if args.weights is None and args.model in ZOO_MODELS and args.baseline_epochs > 0:
        model, base_test = trained_baseline(model, args.model, args.data, data, epochs=args.baseline_epochs,
                                            seed=args.seed, batch_size=args.batch_size, device=device,
                                            progress=progress)
    elif args.weights is None:
        log.warning("no --weights: searching an untrained %s (scores will be near chance)", args.model)
    model = model.cpu().eval()
    example = data.train_eval[int(data.fit[0])][0].unsqueeze(0)
    prunable = derive(model, example, ratios=ratios, round_to=args.round_to,
                      removable_blocks=not args.no_block_removal)
    space = prunable.space
    if len(space) == 0:
        raise UserError(f"no prunable channel group or removable block was found in {args.model}")
    table = None
    if args.latency or any(lim.metric == "latency" for lim in budget.limits):
        from evaluators.latency import measure_table

        from .zoo import cache_dir

        table = measure_table(prunable, data.input_shape, batch=args.latency_batch, device=device,
                              cache_dir=cache_dir() / "latency", progress=progress)
        log.info("latency table: base model predicted %.3f ms (batch %d, %s)", table.base_ms, args.latency_batch,
                 device)
    cost = CostModel(prunable, latency=table)
    base = cost.base.as_dict()
    budget = budget.resolve(base)
    smallest = cost.price(space.smallest()).as_dict()
    if not budget.feasible(smallest):
        reachable = " and ".join(f"{smallest[k] / base[k]:.3f} x its {k}" for k in base)
        raise UserError(f"budget {budget} cannot be met: the smallest subnet of this space has {reachable}")
    if run_dir is None:
        run_dir = RunDirectory.create(args.out, model=args.model, agent=args.agent, budget=str(budget))
    log.info("%s: %s; base %.2f MFLOPs, %.3f M params; run directory %s", args.model, space,
             base["flops"] / 1e6, base["params"] / 1e6, run_dir.path)

    model.to(device)
    test_loader = DataLoader(data.test, batch_size=256)
    if base_test is None:
        base_test = evaluate(model, test_loader, device)
    evaluator = AccuracyEvaluator.from_dataset(
        prunable, data.train_eval, data.fit, data.held_out, calib_batches=args.calib_batches,
        batch_size=args.batch_size, eval_samples=args.eval_samples, device=device)
    base_score = evaluator.score(space.full())
    run_dir.update_run(args=vars(args), status="running", started=time.strftime("%Y-%m-%d %H:%M:%S"),
                       versions=_versions(), device=str(device), space=space.to_json(),
                       base={**base, "held_out_top1": base_score, "test_top1": base_test},
                       budget={"limits": [str(lim) for lim in budget.limits], "caps": budget.caps},
                       scoring={"calibration_samples": evaluator.samples[0], "held_out_samples": evaluator.samples[1]})

    def price(candidate):
        return cost.price(candidate).as_dict()

    try:
        agent = make_agent(args.agent, space, budget, price=price, seed=args.seed, trials=args.trials,
                           initial=_warm_start(args, prunable, budget, price), **options)
    except ValueError as error:
        raise UserError(f"agent {args.agent}: {error}") from None
    scorer, pruningnet = evaluator, None
    if args.agent == "metapruning":
        from evaluators.pruningnet import PruningNetEvaluator

        pruningnet = _pruningnet(args, prunable, data, run_dir, budget, cost, device, progress)
        scorer = PruningNetEvaluator.of(evaluator, pruningnet)
    run_dir.update_run(export_weights=args.export_weights)
    started = time.perf_counter()
    if args.backend == "tune":
        outcome = _run_tune(args, agent, price, budget, evaluator, run_dir, device)
    else:
        executor = _executor(args, scorer, prunable, device)
        engine = Engine(agent, price, budget, executor, trials=args.trials, journal=run_dir.journal,
                        progress=progress, base_flops=base["flops"])
        previous = run_dir.journal.read()
        if previous:
            run_dir.journal.truncate(previous)
            engine.replay(previous)
            log.info("resumed: %d trials replayed from the journal, none scored again", len(previous))
        try:
            outcome = engine.run()
        finally:
            executor.close()
    base_weight_score = None
    if scorer is not evaluator:
        scorer.restore()
        if outcome.best is not None:  # honesty: what the base model's own weights score on the chosen subnet
            base_weight_score = evaluator.score(outcome.best.candidate)
    evaluator.restore()
    _finish(args, run_dir, prunable, outcome, evaluator, test_loader, device, base, base_score, base_test, budget,
            time.perf_counter() - started, table, pruningnet, base_weight_score)
    return outcome


def _warm_start(args, prunable, budget, price) -> list:
    """Global magnitude pruning's candidate at the budget, unless --no-warm-start (see spaces.warm_start)."""
    if args.no_warm_start:
        return []
    from spaces.warm_start import magnitude_candidate

    candidate = magnitude_candidate(prunable, lambda c: budget.feasible(price(c)))
    return [] if candidate is None else [candidate]


def _measure_latencies(args, prunable, outcome, table, device) -> dict[int, float]:
    """Honesty: the best candidate and a seeded sample of 20 scored trials, measured directly (ms)."""
    from evaluators.latency import measure_latencies

    scored = [t for t in outcome.trials if t.result.ok]
    best = outcome.best
    rng = np.random.default_rng(args.seed)
    sample = [scored[i] for i in rng.choice(len(scored), size=min(20, len(scored)), replace=False)] if scored else []
    chosen = ([best] if best else []) + [t for t in sample if t is not best]
    measured = measure_latencies([materialize(prunable, t.candidate) for t in chosen], table.meta["input_shape"],
                                 batch=args.latency_batch, device=device)
    return {t.number: ms for t, ms in zip(chosen, measured)}


def _finish(args, run_dir, prunable, outcome, evaluator, test_loader, device, base, base_score, base_test,
            budget, seconds, table=None, pruningnet=None, base_weight_score=None) -> None:
    measured = _measure_latencies(args, prunable, outcome, table, device) if table is not None else {}
    frame = run_dir.write_trials(outcome.trials, base, measured)
    best = outcome.best
    best_record = None
    if best is not None:
        if args.export_weights == "pruningnet":
            from evaluators.pruningnet import materialize_generated

            subnet = materialize_generated(pruningnet, best.candidate)
        else:
            subnet = materialize(prunable, best.candidate)
        subnet = evaluator.recalibrated(subnet).eval()
        test_top1 = evaluate(subnet, test_loader, device)
        torch.save(subnet.cpu(), run_dir.path / BEST_MODEL_FILE)
        torch.save(subnet.state_dict(), run_dir.path / "best.state_dict.pt")  # search.finetune.SUBNET_STATE_FILE
        best_record = {
            "model": args.model, "weights": args.weights, "data": args.data, "seed": args.seed,
            "derive": {**_derive_options(args), "importance": "l2"},
            "input_shape": list(evaluator.calibration[0].shape[1:]),
            "trial": best.number, "candidate": best.candidate.to_dict(), "held_out_top1": best.result.score,
            "export_weights": args.export_weights, "held_out_top1_base_weights": base_weight_score,
            "test_top1": test_top1, "costs": dict(best.result.costs),
            "ratios": {k: best.result.costs[k] / base[k] for k in base},
            "summary": prunable.describe(best.candidate),
        }
        if table is not None:
            best_record["latency_ms"] = {"predicted": best.result.costs["latency"], "measured": measured[best.number],
                                         "base_predicted": base["latency"], "batch": args.latency_batch}
        run_dir.write(BEST_FILE, best_record)
    run_dir.write_pareto(frame)
    run_dir.plot(frame, caps=budget.caps, base=base, best=best,
                 title=f"{args.model} / {args.data}: {args.agent}, budget {budget}")
    counts = frame.state.value_counts().to_dict()
    status = "interrupted" if outcome.interrupted else "complete"
    run_dir.update_run(status=status, finished=time.strftime("%Y-%m-%d %H:%M:%S"), search_seconds=round(seconds, 2),
                       trials=len(outcome.trials), states=counts, best=best_record and {
                           k: best_record[k] for k in ("trial", "held_out_top1", "test_top1", "ratios")})
    lines = [f"base : {base['flops'] / 1e6:9.3f} MFLOPs  {base['params'] / 1e6:7.4f} M params  "
             f"held-out {base_score:.4f}  test {base_test:.4f}"]
    if best_record:
        r = best_record["ratios"]
        lines.append(f"best : {best.result.costs['flops'] / 1e6:9.3f} MFLOPs  {best.result.costs['params'] / 1e6:7.4f} M "
                     f"params  held-out {best.result.score:.4f}  test {best_record['test_top1']:.4f}  "
                     f"(FLOPs x{r['flops']:.3f}, params x{r['params']:.3f}, trial {best.number}, before fine-tuning)")
    else:
        lines.append("best : none scored")
    lines.append(f"trials: {len(outcome.trials)} ({', '.join(f'{v} {k}' for k, v in counts.items())}) in "
                 f"{seconds:.1f} s{' - interrupted' if outcome.interrupted else ''}"
                 f"{' - the agent had nothing more to propose' if outcome.finished_early else ''}")
    if measured:
        errors = [abs(frame.set_index("trial").latency_ms[n] - ms) / ms for n, ms in measured.items()]
        lines.append(f"latency: best predicted {best.result.costs['latency']:.3f} ms, measured {measured[best.number]:.3f}"
                     f" ms (base {base['latency']:.3f} ms); predictor error over {len(errors)} measured: median "
                     f"{100 * float(np.median(errors)):.1f}%, worst {100 * max(errors):.1f}%")
    lines.append(f"run  : {run_dir.path}")
    if best_record:
        lines.append(f"next : python -m search.finetune {run_dir.path}")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    _configure_logging(args.quiet)
    try:
        outcome = run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 130 if outcome.interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
