"""`python -m search.finetune RUN_DIR`: fine-tune a run's exported subnet, report test top-1 beside the base's.

    python -m search.finetune runs/20261122-140000-resnet20-random-0.4flops --epochs 30 --lr 0.05
    python -m search.finetune runs/... --epochs 30 --workers 4              # data-parallel on Ray Train
    python -m search.finetune runs/... --resume                             # continue after an interruption

From Python (e.g. a notebook): `finetune("runs/...", epochs=30)` returns a `FinetuneResult`;
`finetune_module(module, data, ...)` applies the same recipe to any module (the benchmark report
fine-tunes every method's subnet, ours and the peers', with it).
The data, split and seed come from the run's run.json; training uses the whole training set (the
held-out part was only needed to score candidates), with SGD + cosine, on cross-entropy, or with `--distill`
distilled from the run's base model (not the default: it did not win consistently in benchmarks/finetune.py). The subnet is rebuilt from `best.json` and the state dict
`best.state_dict.pt` (loaded with `weights_only=True`: nothing in the run directory can run code), or, with
`--start base` (and by default, `--start auto`, for a fine-tune of 600 SGD steps or more of an untrained refit
export), cut from the run's base model with its weights as copied; a run
that has only the pickled `best.pt` is loaded only with `--trust-pickle`. As each epoch ends the
checkpoint (`finetune_checkpoint.pt`, or Ray Train's checkpoints under `finetune_ray/`) and
`finetune.csv` are replaced atomically; at the end `finetuned.state_dict.pt`, `finetuned.pt` (the
whole module, for `python -m search.export --finetuned`) and `finetune.png` (loss and test top-1 per epoch)
are written.
"""
from __future__ import annotations

import argparse
import math
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from search.errors import UserError
from search.engine.records import BEST_FILE, FINETUNED_STATE_FILE, RunDirectory
from search.cli import ArgumentParser, configure_logging, guarded
from search.engine.config import SearchConfig
from search.export.subnet import base_model, checked_record, load_subnet, rebuild
from search.finetune.loop import (CHECKPOINT_FILE, FINETUNED_FILE, FINETUNE_PLOT, FinetuneResult, RAY_DIR, Recipe, COPIED_FROM_STEPS, STARTS,
                                  STATE_FILE, _atomic, auto_start, fit, steps_per_epoch, training_set, write_outputs)
from search.finetune.step import device_of, evaluate
from search.models.zoo import ZOO_MODELS, DataBundle, check_fit, load_data, safe_load

log = logging.getLogger("search.finetune")

# ---------------------------------------------------------------- loading, safely

def run_config(args: dict) -> SearchConfig:
    """The run's configuration (run.json's args): its data, split, seed and model."""
    try:
        return SearchConfig.from_json(args)
    except TypeError as error:
        raise UserError(f"the run's run.json is not readable: {error}") from None


def _run_data(args: dict) -> DataBundle:
    config = run_config(args)
    return load_data(config.data, held_out=config.held_out_size, seed=config.seed)


def load_teacher(args: dict, data: DataBundle, device: torch.device, trust_pickle: bool,
                 progress: bool = False) -> nn.Module | None:
    """The run's trained base model, as the search used it (zoo model + --weights, or the cached baseline),
    in eval mode without grads; None when the run searched an untrained model."""

    config = run_config(args)
    config.trust_pickle = config.trust_pickle or trust_pickle
    if config.weights is None and (config.model not in ZOO_MODELS or config.baseline_epochs <= 0):
        return None
    model = base_model(config, progress=progress).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def copied_subnet(run: RunDirectory, args: dict, trust_pickle: bool, progress: bool = False) -> nn.Module:
    """best.json's subnet cut from the run's base model with its weights as copied (not refit, not trained by the
    finalists, not a supernet's or PruningNet's), BatchNorm recalibrated on the search's own calibration batches:
    what `search.run --export-weights base` exports."""
    from evaluators.accuracy import recalibrate
    from search.models.inputs import zoo_inputs

    config = run_config(args)
    config.trust_pickle = config.trust_pickle or trust_pickle
    best = checked_record(run.read(BEST_FILE), str(run.path / BEST_FILE))
    inputs = zoo_inputs(config, torch.device("cpu"), progress=progress)
    subnet = rebuild(best, inputs.model)
    recalibrate(subnet, inputs.calibration)
    return subnet.eval()


def plot_history(path: Path, history: list[dict], *, before: float, base: float | None) -> None:
    """`finetune.png`: training loss and test top-1 per epoch, the subnet before and the base as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    left.plot(epochs, [r["loss"] for r in history], marker="o", markersize=3)
    left.set_xlabel("epoch")
    left.set_ylabel("training loss")
    right.plot(epochs, [r["test_top1"] for r in history], marker="o", markersize=3, label="fine-tuned subnet")
    right.axhline(before, color="tab:gray", ls=":", label="subnet before fine-tuning")
    if base is not None:
        right.axhline(base, color="tab:red", ls="--", label="base model")
    right.set_xlabel("epoch")
    right.set_ylabel("test top-1")
    right.legend(fontsize=8, loc="lower right")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _atomic(path / FINETUNE_PLOT, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def _check_writable(path: Path) -> None:
    probe = path / ".finetune-write-test"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to the run directory {path}: {error.strerror or error}; the fine-tune "
                        f"writes its checkpoint and results there") from None


def latest_checkpoint(run_path: Path) -> dict | None:
    """The newest fine-tune state in the run (the plain path's file or Ray Train's last checkpoint), safely loaded."""
    found = []
    if (run_path / CHECKPOINT_FILE).is_file():
        found.append(run_path / CHECKPOINT_FILE)
    ray_states = sorted((run_path / RAY_DIR).glob(f"checkpoint_*/{STATE_FILE}"))
    found += ray_states[-1:]
    states = [safe_load(p, "fine-tune checkpoint") for p in found]
    for path, state in zip(found, states):
        if not isinstance(state, dict) or not {"epoch", "model", "optimizer", "scheduler", "history"} <= set(state):
            raise UserError(f"{path} is not a fine-tune checkpoint")
    return max(states, key=lambda s: s["epoch"], default=None)


def _check_fits(state: dict, model: torch.nn.Module) -> None:
    """A checkpoint of another subnet (an export an earlier pass of the run made) cannot be continued."""
    check_fit(model.state_dict(), state["model"], "the fine-tune checkpoint is of another subnet than best.json's "
              "(the run exported another since; fine-tune without --resume)")


def _check_resume(state: dict, recipe: Recipe) -> None:
    saved = {k: v for k, v in state.get("recipe", {}).items() if k != "epochs"}
    changed = [k for k, v in saved.items() if getattr(recipe, k, v) != v]
    if changed:
        raise UserError("--resume continues the saved recipe; these differ from it: " +
                        ", ".join(f"--{k.replace('_', '-')} (saved {saved[k]}, given {getattr(recipe, k)})"
                                  for k in changed))
    if state["epoch"] > recipe.epochs:
        raise UserError(f"the checkpoint is at epoch {state['epoch']}, past --epochs {recipe.epochs}")


# ---------------------------------------------------------------- the API

def finetune(run_dir: str | Path, *, epochs: int = 30, lr: float = 0.05, weight_decay: float = 5e-4,
             batch_size: int | None = None, device: str = "auto", seed: int | None = None,
             progress: bool = True, distill: bool = False, kd_temperature: float = 4.0, kd_alpha: float = 0.5,
             workers: int = 0, ray_address: str | None = None, resume: bool = False,
             trust_pickle: bool = False, stop_after: int | None = None, amp: bool | None = None,
             start: str = "auto") -> FinetuneResult:
    """Fine-tune a run's subnet; see the module docstring. `workers` > 0 (or `ray_address`) runs on Ray Train;
    `stop_after` trains at most that many epochs in this call (continue with `resume=True`); `amp` None: bfloat16
    autocast and channels-last on a CUDA device that supports bfloat16, off elsewhere. `start`: "export" (the
    exported weights), "base" (the same subnet with the base model's weights as copied, `copied_subnet`) or
    "auto" (`auto_start`: base for a long fine-tune of an untrained refit export, else export)."""
    if start not in STARTS:
        raise UserError(f"--start must be one of {', '.join(STARTS)}, got {start!r}")
    _check_numbers(epochs=epochs, lr=lr, batch_size=batch_size, workers=workers, kd_temperature=kd_temperature,
                   kd_alpha=kd_alpha, stop_after=stop_after, weight_decay=weight_decay, seed=seed)
    if ray_address or workers:  # a dead address is refused in seconds, before the checkpoint is touched
        from evaluators.executors import check_cluster

        if why := check_cluster(ray_address):
            raise UserError(why)
    run = RunDirectory.open(str(run_dir))
    _check_writable(run.path)

    dev = device_of(device)
    info = run.read()
    args = info.get("args", {})
    if args.get("model") == "<module>" or args.get("data") == "<iterables>":
        raise UserError(f"{run.path} was searched from Python (search.prune) on your own model and data, which it "
                        f"does not hold: fine-tune result.subnet (or search.export.load_subnet(RUN, model=...)) "
                        f"with your own training loop")
    data = _run_data(args)
    model = load_subnet(run.path, trust_pickle=trust_pickle, num_classes=data.num_classes)
    global_batch = batch_size or args.get("batch_size", 64)
    if workers and global_batch % workers:
        raise UserError(f"--batch-size {global_batch} must be a multiple of --workers {workers} (it is the "
                        f"global batch, split evenly over the workers)")
    checkpoint = latest_checkpoint(run.path)
    if checkpoint is not None and not resume and checkpoint["epoch"] < checkpoint.get("recipe", {}).get("epochs", 0):
        raise UserError(f"{run.path} holds an unfinished fine-tune (epoch {checkpoint['epoch']} of "
                        f"{checkpoint['recipe']['epochs']}): --resume continues it; delete {CHECKPOINT_FILE} and "
                        f"{RAY_DIR}/ to start afresh")
    if resume and checkpoint is None:
        log.warning("--resume: no fine-tune checkpoint in %s; starting from epoch 0", run.path)
    if not resume:
        checkpoint = None
    if start == "auto" and checkpoint is not None:  # a resumed fine-tune keeps the weights it started from
        start = checkpoint.get("recipe", {}).get("start", "export")
    elif start == "auto":
        steps = epochs * steps_per_epoch(len(training_set(data)), global_batch)
        start = auto_start(run.read(BEST_FILE), steps)  # (the printed result and run.json say which it took)
    if start == "base" and checkpoint is None:  # (a checkpoint holds the weights to continue from)
        exported = model.state_dict()
        model = copied_subnet(run, args, trust_pickle, progress)
        check_fit(exported, model.state_dict(), "best.json's subnet cut from the run's base model does not match "
                  "the exported one (a base model or weights file that changed since the search)")
    recipe = Recipe(epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=global_batch,
                    seed=args.get("seed", 0) if seed is None else seed, distill=distill,
                    kd_temperature=kd_temperature, kd_alpha=kd_alpha,
                    amp=(dev.type == "cuda" and torch.cuda.is_bf16_supported()) if amp is None else amp, start=start)
    if checkpoint is not None:
        _check_resume(checkpoint, recipe)
        _check_fits(checkpoint, model)
    else:
        _clear_checkpoints(run.path)
    teacher = load_teacher(args, data, dev, trust_pickle, progress) if recipe.distill else None
    if recipe.distill and teacher is None:
        raise UserError(f"--distill needs a trained base model as the teacher, but the run searched an untrained "
                        f"{args.get('model')} (no --weights)")
    if recipe.amp:
        model = model.to(memory_format=torch.channels_last)
    model.to(dev)
    before = checkpoint["before_test_top1"] if checkpoint and "before_test_top1" in checkpoint else \
        evaluate(model, DataLoader(data.test, batch_size=256), dev)
    if checkpoint is not None and checkpoint["epoch"] >= recipe.epochs:
        state = checkpoint  # nothing left to train
    elif workers or ray_address:
        from search.finetune.on_ray import fit_on_ray

        state = fit_on_ray(model, data, recipe, teacher=teacher, start=checkpoint, workers=max(1, workers),
                           address=ray_address, use_gpu=dev.type == "cuda", run_path=run.path, stop_after=stop_after,
                           extra={"before_test_top1": before})
    else:
        state = fit(model, data, recipe, device=dev, teacher=teacher, start=checkpoint, stop_after=stop_after,
                    progress=progress, save=lambda s, _: write_outputs(run.path, {**s, "before_test_top1": before}))
    model.cpu().load_state_dict(state["model"])
    history = state["history"]
    write_outputs(run.path, {**state, "before_test_top1": before}, checkpoint=not (workers or ray_address))
    _atomic(run.path / FINETUNED_STATE_FILE, lambda f: torch.save(model.state_dict(), f))
    _atomic(run.path / FINETUNED_FILE, lambda f: torch.save(model, f))
    base = info.get("base", {}).get("test_top1")
    if history:
        plot_history(run.path, history, before=before, base=base)
    run.update_run(finetune={**asdict(recipe), "epochs_done": state["epoch"], "workers": workers,
                             "before_test_top1": before, "test_top1": history[-1]["test_top1"] if history else before})
    return FinetuneResult(history[-1]["test_top1"] if history else before, before, base, state["epoch"],
                          run.path / FINETUNED_FILE, history, resumed_from=checkpoint["epoch"] if checkpoint else 0,
                          start=recipe.start)


def _clear_checkpoints(run_path: Path) -> None:
    """A fresh fine-tune: earlier checkpoints would be resumed by Ray Train (same run name), so they go."""
    (run_path / CHECKPOINT_FILE).unlink(missing_ok=True)
    shutil.rmtree(run_path / RAY_DIR, ignore_errors=True)


def _check_numbers(**values: float | None) -> None:
    """Every number of the recipe, before anything is read or cleared: finite, in range, whole where it counts."""
    positive = ("epochs", "lr", "batch_size", "kd_temperature", "stop_after")
    whole = ("epochs", "batch_size", "stop_after", "workers", "seed")
    for name, value in values.items():
        if value is None:
            continue
        bad = (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
               or (value <= 0 if name in positive else not 0 <= value <= 1 if name == "kd_alpha" else value < 0)
               or (name in whole and value != int(value)))
        if bad:
            need = {"kd_alpha": "in [0, 1]"}.get(name, "positive" if name in positive else "0 or more")
            raise UserError(f"--{name.replace('_', '-')} must be {need}, got {value}")


# ---------------------------------------------------------------- the CLI

def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m search.finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run directory written by python -m search.run")
    p.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs (on --resume, may grow)")
    p.add_argument("--lr", type=float, default=0.05,
                   help="peak learning rate for the global batch (cosine decay to 0); the same whatever --workers, "
                        "since DDP averages the workers' gradients")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="on weights, not on biases and norms")
    p.add_argument("--batch-size", type=int, default=None,
                   help="the global batch (default: the run's batch size): with --workers N each worker takes "
                        "batch-size / N samples per step (a multiple of N), so N workers run the same steps as one")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ...")
    p.add_argument("--seed", type=int, default=None, help="default: the run's seed")
    p.add_argument("--start", choices=STARTS, default="auto",
                   help="auto: base when the export is the untrained refit copy (--reconstruct, no finalist steps, "
                        "no supernet) and the fine-tune runs at least %d SGD steps, else export; "
                        "export: from the exported weights (best.state_dict.pt: refit by --reconstruct, trained by "
                        "the finalists, generated by a PruningNet, as the run exported them); base: the same subnet "
                        "cut from the run's base model with its weights as copied, BatchNorm recalibrated (what "
                        "search.run --export-weights base exports; not a supernet's weights). Measured: the refit "
                        "export is better after 1 epoch (134 steps on hard digits), the copied weights after 5 (670) and "
                        "30 (4020) at 0.1 x and 0.25 x FLOPs (README, 'Variants measured beside the "
                        "default')" % COPIED_FROM_STEPS),
    kd = p.add_argument_group("distillation from the run's base model")
    kd.add_argument("--distill", dest="distill", action="store_true",
                    help="loss = (1 - a) * CE + a * T^2 * KL(teacher || student, both softened at temperature T), the "
                         "teacher being the run's trained base model (eval mode, no grad); off by default: no "
                         "consistent gain in benchmarks/finetune.py")
    kd.add_argument("--no-distill", dest="distill", action="store_false", default=False,
                    help="plain cross-entropy (the default)")
    kd.add_argument("--kd-temperature", type=float, default=4.0, help="T: the temperature softening both outputs")
    kd.add_argument("--kd-alpha", type=float, default=0.5, help="a: the weight of the distillation term, in [0, 1]")
    ray = p.add_argument_group("distributed (Ray Train)")
    ray.add_argument("--workers", type=int, default=0,
                     help="data-parallel on N Ray Train workers (DDP; gloo on CPU, nccl on GPU; one GPU each with a "
                          "CUDA --device); a local Ray is started unless --ray-address; 0: in this process")
    ray.add_argument("--ray-address", default=None,
                     help="join an existing Ray cluster (auto, or HOST:PORT); the run directory must then be on "
                          "storage every node sees")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast and channels-last (default: on with a CUDA device that supports bfloat16)")
    out = p.add_argument_group("checkpoints and safety")
    out.add_argument("--resume", action="store_true",
                     help="continue from the last checkpoint (finetune_checkpoint.pt or finetune_ray/) with the "
                          "same recipe")
    out.add_argument("--stop-after", type=int, default=None, metavar="N",
                     help="train at most N epochs now, then stop (continue with --resume), e.g. to fit a job's "
                          "time limit")
    out.add_argument("--trust-pickle", action="store_true",
                     help="allow loading pickled modules (best.pt of a run without best.state_dict.pt, a base "
                          "model given as PATH.pt): unpickling a file can run code")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging(False)
    return guarded(lambda: _report(args, finetune(
        args.run_dir, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
        device=args.device, seed=args.seed, progress=not args.no_progress, distill=args.distill,
        kd_temperature=args.kd_temperature, kd_alpha=args.kd_alpha, workers=args.workers,
        ray_address=args.ray_address, resume=args.resume, trust_pickle=args.trust_pickle,
        stop_after=args.stop_after, amp=args.amp, start=args.start)))


def _report(args: argparse.Namespace, result: FinetuneResult) -> int:
    base = "n/a" if result.base_test_top1 is None else f"{result.base_test_top1:.4f}"
    resumed = f" (resumed from epoch {result.resumed_from})" if result.resumed_from else ""
    weights = "copied weights" if result.start == "base" else "exported weights"
    print(f"test top-1: base {base} | pruned before fine-tuning ({weights}) {result.before_top1:.4f} | "
          f"after {result.epochs} epochs {result.test_top1:.4f}{resumed}\nsaved {result.path}")
    return 0

