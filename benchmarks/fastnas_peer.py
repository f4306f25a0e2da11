"""ModelOpt FastNAS, the third peer: `mtp.prune(mode="fastnas")` under one FLOPs constraint, on CPU.

A benchmark-only dependency (`pip install -e ".[bench]"`: nvidia-modelopt and torchprofile==0.0.4; the
newest torchprofile breaks ModelOpt's profiler). FastNAS measures each layer's sensitivity (the score
drop of every width choice, BatchNorms recalibrated on the data loader's batches before each score),
then bisects a threshold on that sensitivity until the subnet meets the constraint. Here it gets the
same calibration batches (`data_loader`) and the same held-out top-1 (`score_func`) as our evaluator.

Its default `channel_divisor` (and `feature_divisor`) of 32 leaves too few width choices on CIFAR-size
nets: the smallest subnet it can build is above 0.1 x FLOPs. `prune_to_flops` does what a user would:
it starts from the default and halves the divisor (32, 16, 8, 4, ...) until ModelOpt's profiler says the
constraint can be met, and reports the divisor it used. The constraint is given as a share of the base
FLOPs; the subnet's FLOPs are then counted by our own counter (`torch.utils.flop_counter.FlopCounterMode`,
as for Torch-Pruning); if that count were over the target the constraint is tightened and FastNAS run
again (its sensitivity map is kept in a checkpoint file, so a retry costs only the bisection).
"""
from __future__ import annotations

import contextlib
import copy
import io
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks.torch_pruning_peer import flops, params
from evaluators.accuracy import top1

DIVISORS = (32, 16, 8, 4, 2, 1)
UNREACHABLE = "NOT all constraints can be satisfied"


def require() -> object:
    """The `modelopt.torch.prune` module, or a clear error naming the extra to install."""
    try:
        import modelopt.torch.prune as mtp
    except ImportError:
        print('ModelOpt is not installed (a benchmark-only dependency): pip install -e ".[bench]"', file=sys.stderr)
        raise SystemExit(2) from None
    return mtp


@dataclass
class Pruned:
    module: nn.Module
    divisor: int           # the channel and feature divisor FastNAS was given
    constraint: float      # the FLOPs share it was given
    flops_ratio: float     # counted by FlopCounterMode
    params_ratio: float
    tries: int             # FastNAS runs (divisors tried + constraint retries)


def rules(divisor: int) -> dict:
    """FastNAS's default per-layer rules with every channel/feature divisor set to `divisor`."""
    mtp = require()
    config = mtp.fastnas.FastNASConfig().model_dump()
    for layer in config.values():
        for rule in layer.values():
            if not isinstance(rule, dict):
                continue
            for key in ("channel_divisor", "feature_divisor"):
                if key in rule:
                    rule[key] = divisor
    return config


def fastnas(model: nn.Module, example: torch.Tensor, share: float, divisor: int, calibration: Sequence[torch.Tensor],
            held_out: Sequence[tuple[torch.Tensor, torch.Tensor]], checkpoint: Path, seed: int) -> nn.Module:
    """A FastNAS-pruned deep copy of `model` under `share` x its FLOPs (raises ValueError if unreachable)."""
    mtp = require()

    def score(module: nn.Module) -> float:
        return top1(module.eval(), held_out)

    config = {"data_loader": list(calibration), "collect_func": lambda batch: batch, "score_func": score,
              "checkpoint": str(checkpoint), "verbose": False}
    with torch.random.fork_rng(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        pruned, _ = mtp.prune(copy.deepcopy(model).eval(), mode=[("fastnas", rules(divisor))],
                              constraints={"flops": f"{100 * share:.4f}%"}, dummy_input=example, config=config)
    return pruned.eval()


def prune_to_flops(model: nn.Module, example: torch.Tensor, target: float, calibration: Sequence[torch.Tensor],
                   held_out: Sequence[tuple[torch.Tensor, torch.Tensor]], *, seed: int = 0,
                   divisors: Sequence[int] = DIVISORS, retries: int = 4) -> Pruned:
    """FastNAS's subnet within `target` x the base FLOPs, with the largest divisor that reaches it."""
    base_flops, base_params = flops(model, example), params(model)
    tries = 0
    with tempfile.TemporaryDirectory(prefix="fastnas-") as folder:
        for divisor in divisors:
            share = target
            for _ in range(retries):
                tries += 1
                try:
                    module = fastnas(model, example, share, divisor, calibration, held_out,
                                     Path(folder) / f"divisor{divisor}.pth", seed)
                except ValueError as error:
                    if UNREACHABLE not in str(error):
                        raise
                    break  # this divisor cannot reach the target: a finer one
                ratio = flops(module, example) / base_flops
                if ratio <= target:
                    return Pruned(module, divisor, share, ratio, params(module) / base_params, tries)
                share *= target / ratio * 0.995  # our counter says over: tighten and search again
    raise ValueError(f"FastNAS could not reach {target} x FLOPs with divisors {tuple(divisors)}")
