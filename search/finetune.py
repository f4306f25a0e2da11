"""`python -m search.finetune RUN_DIR`: fine-tune a run's exported subnet, report test top-1 beside the base's.

    python -m search.finetune runs/20261122-140000-resnet20-random-0.4flops --epochs 30 --lr 0.05

From Python (e.g. a notebook): `finetune("runs/...", epochs=30)` returns a `FinetuneResult`;
`finetune_module(module, data, ...)` applies the same recipe to any module (the benchmark report
fine-tunes every method's subnet, ours and the peers', with it).
The data, split and seed come from the run's run.json; training uses the whole training set (the
held-out part was only needed to score candidates), with SGD + cosine. Writes `finetuned.pt` (the
whole module) and `finetune.csv` (one row per epoch) into the run directory.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from .errors import UserError
from .records import BEST_MODEL_FILE, RunDirectory
from .run import HelpFormatter
from .training import TrainConfig, evaluate, resolve_device, train
from .zoo import DataBundle, load_data

FINETUNED_FILE, FINETUNE_CSV = "finetuned.pt", "finetune.csv"


@dataclass
class FinetuneResult:
    test_top1: float
    before_top1: float              # the exported subnet (BN recalibrated) before fine-tuning
    base_test_top1: float | None    # the unpruned base model, from run.json
    epochs: int
    path: Path
    history: list[dict] = field(default_factory=list)


def finetune(run_dir: str | Path, *, epochs: int = 30, lr: float = 0.05, weight_decay: float = 5e-4,
             batch_size: int | None = None, device: str = "auto", seed: int | None = None,
             progress: bool = True) -> FinetuneResult:
    """Fine-tune `best.pt` of a run; see the module docstring."""
    if epochs < 1 or lr <= 0:
        raise UserError("--epochs must be at least 1 and --lr positive")
    run = RunDirectory.open(str(run_dir))
    info = run.read()
    args = info.get("args", {})
    best_path = run.path / BEST_MODEL_FILE
    if not best_path.is_file():
        raise UserError(f"{run.path} has no {BEST_MODEL_FILE}: the search exported no subnet (none was scored)")
    held_out = args.get("held_out", 0.2)
    seed = args.get("seed", 0) if seed is None else seed
    data = load_data(args.get("data", "digits"), held_out=held_out if held_out < 1 else int(held_out),
                     seed=args.get("seed", 0))
    dev = resolve_device(device)
    model = torch.load(best_path, map_location="cpu", weights_only=False)
    batch_size = batch_size or args.get("batch_size", 64)
    before, history = finetune_module(model, data, epochs=epochs, lr=lr, weight_decay=weight_decay,
                                      batch_size=batch_size, seed=seed, device=dev, progress=progress)
    pd.DataFrame(history).to_csv(run.path / FINETUNE_CSV, index=False)
    torch.save(model.cpu(), run.path / FINETUNED_FILE)
    base = info.get("base", {}).get("test_top1")
    run.update_run(finetune={"epochs": epochs, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
                             "seed": seed, "before_test_top1": before, "test_top1": history[-1]["test_top1"]})
    return FinetuneResult(history[-1]["test_top1"], before, base, epochs, run.path / FINETUNED_FILE, history)


def finetune_module(model: nn.Module, data: DataBundle, *, epochs: int = 30, lr: float = 0.05,
                    weight_decay: float = 5e-4, batch_size: int = 64, seed: int = 0,
                    device: torch.device | str = "cpu", progress: bool = False) -> tuple[float, list[dict]]:
    """Fine-tune `model` in place on the whole training set (SGD + cosine, seeded); the test top-1 before,
    and one record per epoch (loss, lr, `test_top1`)."""
    model.to(device)
    test_loader = DataLoader(data.test, batch_size=256)
    before = evaluate(model, test_loader, device)
    every = sorted(set(data.fit.tolist()) | set(data.held_out.tolist()))
    torch.manual_seed(seed)
    loader = DataLoader(Subset(data.train, every), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed), drop_last=len(every) > batch_size)
    tests: list[float] = []
    history = train(model, loader, TrainConfig(epochs=epochs, lr=lr, weight_decay=weight_decay), device=device,
                    desc="fine-tuning", progress=progress,
                    on_epoch=lambda *_: tests.append(evaluate(model, test_loader, device)))
    for record, top1 in zip(history, tests):
        record["test_top1"] = top1
    return before, history


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m search.finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("run_dir", help="a run directory written by python -m search.run")
    p.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (cosine decay to 0)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="on weights, not on biases and norms")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's batch size")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ...")
    p.add_argument("--seed", type=int, default=None, help="default: the run's seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        result = finetune(args.run_dir, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                          batch_size=args.batch_size, device=args.device, seed=args.seed,
                          progress=not args.no_progress)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    base = "n/a" if result.base_test_top1 is None else f"{result.base_test_top1:.4f}"
    print(f"test top-1: base {base} | pruned before fine-tuning {result.before_top1:.4f} | "
          f"after {result.epochs} epochs {result.test_top1:.4f}\nsaved {result.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
