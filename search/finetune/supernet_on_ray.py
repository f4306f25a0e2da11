"""Supernet training on Ray Train: `search.finetune.supernet.train_supernet`, data parallel over `--workers`.

Every worker of a `TorchTrainer` runs the same sandwich steps on its stride of every batch: the driver draws
the random candidates once (the same seeded draws a single process makes, in the same order) and ships them,
so all workers apply the same subnets, and the gradients are averaged over the workers (an all-reduce, gloo on
CPU, nccl on GPU) before each optimizer step, which keeps the workers' weights identical. Without BatchNorm the
result equals the single process's up to float rounding (each worker's loss is the mean over its equal share of
the batch); with it, each worker normalizes by its own share's statistics, as data-parallel training does.
Rank 0 returns the trained weights and the statistics (its losses are those of its share of each batch) as a Ray
Train checkpoint under `RUN_DIR/supernet_ray/`.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from spaces.derive import PrunableModel
from spaces.space import Candidate

from search.finetune.on_ray import ray_session
from search.finetune.supernet import SupernetSettings, SupernetStats, train_supernet

RAY_DIR = "supernet_ray"
STATE_FILE = "supernet.pt"


def average_gradients(model: torch.nn.Module) -> None:
    """All-reduce every gradient of `model` to its mean over the process group (in place)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    for parameter in model.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world


def _worker(config: dict) -> None:
    """`train_loop_per_worker`: this worker's share of the sandwich steps; rank 0 checkpoints the result."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    prunable: PrunableModel = config["prunable"]
    drawn = iter(config["drawn"])
    stats = train_supernet(prunable, config["batches"], sample=lambda rng: next(drawn), settings=config["settings"],
                           smallest=config["smallest"], calibration=config["calibration"],
                           device=ray.train.torch.get_device(), shard=(rank, world), reduce=average_gradients)
    metrics = {"steps": stats.steps, "full_loss": stats.full_loss}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    state = {"model": {k: v.detach().cpu() for k, v in prunable.model.state_dict().items()},
             "stats": {**asdict(stats), "samples": stats.samples * world}}
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, Path(folder) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def train_supernet_on_ray(prunable: PrunableModel, batches: Callable, *,
                          sample: Callable[[np.random.Generator], Candidate],
                          settings: SupernetSettings = SupernetSettings(), smallest: Candidate | None = None,
                          calibration: Sequence[torch.Tensor] | None = None, workers: int = 2,
                          address: str | None = None, use_gpu: bool = False, run_path: Path) -> SupernetStats:
    """`train_supernet` on `workers` Ray Train workers (a local Ray unless one is running or `address` is given);
    `prunable`'s base weights are replaced by the trained ones. Same arguments as `train_supernet`; `batches`
    must travel to the workers (e.g. `search.selection.finalists.ShuffledBatches`)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    rng = np.random.default_rng(settings.seed)
    drawn = [sample(rng) for _ in range(settings.steps * settings.random)]  # what one process would draw, in order
    model = prunable.model
    device = next(model.parameters()).device
    model.cpu()  # shipped to the workers as it is
    with ray_session(workers, address, use_gpu):
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"prunable": prunable,
                               "batches": batches, "drawn": drawn, "settings": settings, "smallest": smallest,
                               "calibration": None if calibration is None else [x.cpu() for x in calibration]},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            run_config=RunConfig(name=RAY_DIR, storage_path=str(run_path.resolve())))
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError("Ray Train finished the supernet without a checkpoint")
        with result.checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    model.to(device)
    return SupernetStats(**state["stats"])

