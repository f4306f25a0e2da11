"""The fine-tune on Ray Train: `search.finetune.fit`, the same loop, in every worker of a `TorchTrainer` (DDP).

Each worker rebuilds nothing: the driver ships the subnet, the teacher and the data; `prepare_model` moves
the subnet to the worker's device and wraps it in DistributedDataParallel (gloo on CPU, nccl on GPU), and
`epoch_order` gives each worker its stride of every global batch. After each epoch rank 0 reports its state
as a Ray Train checkpoint under `RUN_DIR/finetune_ray/` and rewrites `finetune.csv`; a worker that dies
restarts the group from the last checkpoint (`FailureConfig`), and `--resume` after a killed driver passes
the newest checkpoint in.
"""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from search.errors import UserError
from search.finetune.loop import RAY_DIR, STATE_FILE, Recipe, fit, write_outputs
from search.models.zoo import DataBundle

log = logging.getLogger("search.finetune")
RETRIES = 2  # times a failed worker group is restarted from the last checkpoint


def _worker(config: dict) -> None:
    """`train_loop_per_worker`: the shared loop with Ray Train's model, loader and checkpoint hooks."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    start = config["start"]
    checkpoint = ray.train.get_checkpoint()  # set when Ray Train restarts the group after a failure
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
        if start is None or state["epoch"] >= start["epoch"]:
            start = state
    model = ray.train.torch.prepare_model(config["model"])  # to this worker's device; DDP when world > 1
    run_path: Path = config["run_path"]

    def save(state: dict, record: dict) -> None:
        metrics = {k: v for k, v in record.items() if v == v}  # rank 0 alone has the test top-1
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        state = {**state, **config["extra"]}
        write_outputs(run_path, state, checkpoint=False)
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    fit(model, config["data"], config["recipe"], device=ray.train.torch.get_device(), teacher=config["teacher"],
        start=start, rank=rank, world=world, save=save, stop_after=config["stop_after"],
        prepare_loader=lambda loader: ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False))


@contextmanager
def ray_session(workers: int, address: str | None, use_gpu: bool) -> Iterator[None]:
    """Ray for a Ray Train run: the running one, the cluster at `address` (or `RAY_ADDRESS`), or a new local one of
    `workers` CPUs (and GPUs) started here and shut down afterwards (`evaluators.executors.init_ray`)."""
    import ray

    from evaluators.executors import init_ray

    try:
        started = init_ray(address, num_cpus=workers, num_gpus=workers if use_gpu else None)
    except ConnectionError as error:
        raise UserError(str(error)) from None
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def fit_on_ray(model: nn.Module, data: DataBundle, recipe: Recipe, *, teacher: nn.Module | None, start: dict | None,
               workers: int, address: str | None, use_gpu: bool, run_path: Path, stop_after: int | None = None,
               extra: dict | None = None) -> dict:
    """Run `fit` on `workers` Ray Train workers (starting a local Ray unless one is running or `address` is
    given); the last checkpoint's state."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    with ray_session(workers, address, use_gpu):
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"model": model.cpu(), "teacher": None if teacher is None else teacher.cpu(),
                               "data": data, "recipe": recipe, "start": start, "stop_after": stop_after,
                               "run_path": run_path.resolve(), "extra": extra or {}},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            run_config=RunConfig(name=RAY_DIR, storage_path=str(run_path.resolve()),
                                 failure_config=FailureConfig(max_failures=RETRIES),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)))
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError("Ray Train finished without a checkpoint")
        with result.checkpoint.as_directory() as folder:
            return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
