"""The fine-tune's one loop (`fit`), its recipe and its outputs: what the plain fine-tune and Ray Train share.

`search.finetune.command` runs it in this process (`python -m search.finetune`); `search.finetune.on_ray`
runs the same loop in every worker of a `TorchTrainer` (DDP). `finetune_module` applies the recipe to any
module (the benchmark report fine-tunes every method's subnet, ours and the peers', with it).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from spaces.files import atomic_write

from search.engine.records import BEST_STATE_FILE, FINETUNE_CHECKPOINT_FILE, FINETUNE_CSV, FINETUNED_MODEL_FILE
from search.errors import UserError
from search.finetune.step import Distillation, TrainConfig, evaluate, make_optimizer, train_epoch
from search.models.zoo import DataBundle

SUBNET_STATE_FILE = BEST_STATE_FILE            # the exported subnet's state dict, beside best.json
FINETUNED_FILE = FINETUNED_MODEL_FILE
FINETUNE_PLOT = "finetune.png"
CHECKPOINT_FILE, RAY_DIR = FINETUNE_CHECKPOINT_FILE, "finetune_ray"
STATE_FILE = "finetune_state.pt"  # the file inside each Ray Train checkpoint directory


#: where a fine-tune starts: the run's exported weights (best.state_dict.pt), or the same subnet cut from the run's
#: base model with its weights as copied, BatchNorm recalibrated (what `search.run --export-weights base` exports);
#: auto: `auto_start`
STARTS = ("auto", "export", "base")
#: from this many SGD steps on, a refit export is fine-tuned from the copied weights instead (`auto_start`). The fair
#: report on hard digits (134 steps an epoch): after 1 epoch the refit copy is ahead (ResNet-20 and MobileNetV2,
#: 0.1 x and 0.25 x FLOPs); after 5 epochs (670 steps) the copied weights are ahead on average at 0.1 x and 0.25 x
#: on both models; after 30 (4020) ahead at 0.1 x and 0.25 x on ResNet-20
COPIED_FROM_STEPS = 600


def auto_start(best: Mapping, steps: int) -> str:
    """"base" when the export is the untrained refit copy (`--reconstruct`: not trained by finalists, not a
    supernet's or a PruningNet's weights) and the fine-tune runs at least COPIED_FROM_STEPS SGD steps: the refit's
    larger weights slow SGD behind BatchNorm, so a long fine-tune does better from the copied ones; else "export"."""
    # (a supernet's refit export reads "supernet, refit", a PruningNet's "pruningnet")
    untrained_refit = best.get("export_weights") == "refit" and not best.get("finetuned_steps")
    return "base" if untrained_refit and steps >= COPIED_FROM_STEPS else "export"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a fine-tune's result; saved in every checkpoint, checked on --resume."""
    epochs: int = 30
    lr: float = 0.05             # peak learning rate for the global batch, cosine to 0 over all steps
    weight_decay: float = 5e-4
    batch_size: int = 64         # global: all workers together; each of N workers takes batch_size / N
    seed: int = 0
    distill: bool = False        # off: no consistent gain measured (benchmarks/finetune.py)
    kd_temperature: float = 4.0
    kd_alpha: float = 0.5
    amp: bool = False            # bfloat16 autocast + channels-last; finetune() turns it on on CUDA
    start: str = "export"        # "export" or "base" (STARTS, auto resolved): the exported weights or the copied ones

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay)

    @property
    def kd(self) -> Distillation | None:
        return Distillation(self.kd_temperature, self.kd_alpha) if self.distill else None


@dataclass
class FinetuneResult:
    test_top1: float
    before_top1: float              # the subnet it started from (BN recalibrated) before fine-tuning
    base_test_top1: float | None    # the unpruned base model, from run.json
    epochs: int
    path: Path
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0           # the epoch the fine-tune continued from (0: started afresh)
    start: str = "export"           # the weights it started from: "export" or "base" (the copied ones; `auto_start`)


# ---------------------------------------------------------------- the loop, shared by the plain and the Ray path

def epoch_order(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """The positions (into the training set) this process trains on in `epoch`, in order.

    A permutation seeded by (seed, epoch), so a resumed fine-tune replays the same order; cut to whole
    global batches when more than one fits (else to a multiple of `world`); each global batch of
    `batch_size` is split over the ranks by stride, so that N workers see the same global batches as one.
    """
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    usable = n - n % batch_size if n > batch_size else n - n % world
    return perm[:usable][rank::world].tolist()


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size if n > batch_size else 1


def training_set(data: DataBundle):
    """The whole training set: the fit and held-out parts (held out only to score candidates)."""
    return Subset(data.train, sorted(set(data.fit.tolist()) | set(data.held_out.tolist())))


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seeds torch's global RNG (dropout, random augmentations) per epoch and rank, so resume replays it."""
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]))


def fit(model: nn.Module, data: DataBundle, recipe: Recipe, *, device: torch.device | str,
        teacher: nn.Module | None = None, start: dict | None = None, rank: int = 0, world: int = 1,
        save: Callable[[dict, dict], None] | None = None, stop_after: int | None = None,
        prepare_loader: Callable[[DataLoader], Iterable] = lambda loader: loader,
        progress: bool = False) -> dict:
    """Fine-tune `model` (possibly DDP-wrapped) from `start` (a checkpoint state, or None) for the recipe's
    remaining epochs, or `stop_after` of them; returns the last state. The one loop of both paths.

    After every epoch rank 0 tests the model and calls `save(state, record)`; every rank calls it (Ray Train's
    report is collective). A state: epoch, model / optimizer / scheduler state dicts, history, recipe.
    """
    train_set = training_set(data)
    n, per_worker = len(train_set), recipe.batch_size // world
    optimizer, scheduler = make_optimizer(model, recipe.train_config, recipe.epochs * steps_per_epoch(n, recipe.batch_size))
    state = start or {"epoch": 0, "history": []}
    if start is not None:
        _unwrap(model).load_state_dict(start["model"])
        optimizer.load_state_dict(start["optimizer"])
        scheduler.load_state_dict(start["scheduler"])
    if teacher is not None:
        teacher.to(device).eval()
    test_loader = DataLoader(data.test, batch_size=256)
    history = list(state["history"])
    last = recipe.epochs if stop_after is None else min(recipe.epochs, state["epoch"] + stop_after)
    bar = tqdm(range(state["epoch"] + 1, last + 1), desc="fine-tuning", disable=not progress or rank, leave=False)
    for epoch in bar:
        started = time.perf_counter()
        _seed_epoch(recipe.seed, epoch, rank)
        order = epoch_order(n, recipe.batch_size, recipe.seed, epoch, rank, world)
        loader = prepare_loader(DataLoader(Subset(train_set, order), batch_size=per_worker, shuffle=False,
                                           pin_memory=torch.device(device).type == "cuda"))
        stats = train_epoch(model, loader, optimizer, scheduler, device=device, teacher=teacher, kd=recipe.kd,
                            amp=recipe.amp)
        if world > 1:  # the epoch's loss and top-1 over all workers
            sums = torch.tensor([stats["loss"] * stats["samples"], stats["train_top1"] * stats["samples"],
                                 stats["samples"]], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(sums)
            stats = {"loss": (sums[0] / sums[2]).item(), "train_top1": (sums[1] / sums[2]).item()}
        if not math.isfinite(stats["loss"]):  # diverged: stop before a state of NaN weights is saved anywhere
            raise UserError(f"the training loss became {stats['loss']} in epoch {epoch} (--lr {recipe.lr} too high?); "
                            f"stopped before saving anything of this fine-tune")
        record = {"epoch": epoch, "loss": stats["loss"], "train_top1": stats["train_top1"],
                  "lr": optimizer.param_groups[0]["lr"],
                  "test_top1": evaluate(_unwrap(model), test_loader, device) if rank == 0 else float("nan"),
                  "seconds": round(time.perf_counter() - started, 3)}
        history.append(record)
        state = {"epoch": epoch, "history": history, "recipe": asdict(recipe),
                 "model": {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()},
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        bar.set_postfix(loss=f"{record['loss']:.3f}", test=f"{record['test_top1']:.3f}")
        if save is not None:
            save(state, record)
    return state


def finetune_module(model: nn.Module, data: DataBundle, *, epochs: int = 30, lr: float = 0.05,
                    weight_decay: float = 5e-4, batch_size: int = 64, seed: int = 0,
                    device: torch.device | str = "cpu", progress: bool = False,
                    teacher: nn.Module | None = None, kd_temperature: float = 4.0,
                    kd_alpha: float = 0.5) -> tuple[float, list[dict]]:
    """Fine-tune `model` in place on the whole training set (SGD + cosine, seeded; distilled from `teacher`
    when given); the test top-1 before, and one record per epoch (loss, lr, `test_top1`)."""
    recipe = Recipe(epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=seed,
                    distill=teacher is not None, kd_temperature=kd_temperature, kd_alpha=kd_alpha)
    model.to(device)
    before = evaluate(model, DataLoader(data.test, batch_size=256), device)
    state = fit(model, data, recipe, device=device, teacher=teacher, progress=progress)
    return before, state["history"]


# ---------------------------------------------------------------- checkpoints and outputs, atomically

def _atomic(path: Path, data) -> None:
    """`spaces.files.atomic_write`: a reader never sees half a file, and a failed write leaves the previous file
    whole (a UserError says so)."""
    try:
        atomic_write(path, data)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}; the previous {path.name} is kept "
                        f"(after a failed epoch: free the space and continue with --resume)") from None


def write_outputs(run_path: Path, state: dict, *, checkpoint: bool = True) -> None:
    """`finetune.csv` (and the plain path's checkpoint), each replaced atomically."""
    if checkpoint:
        _atomic(run_path / CHECKPOINT_FILE, lambda f: torch.save(state, f))
    _atomic(run_path / FINETUNE_CSV, pd.DataFrame(state["history"]).to_csv(index=False))
