"""`search.finetune` on Ray Train: one worker gives the plain loop's weights bit for bit; two checkpoint every epoch
and resume. (Apart from test_finetune.py, so that the suite's two processes can run the two files side by side.)"""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from conftest import one_run
from search.engine import records
from search.finetune import loop
from test_finetune import FAST, saved_state, states_equal, tune


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One real run directory for the module (see conftest.one_run)."""
    yield from one_run(tmp_path_factory, "finetune-ray", FAST)


@pytest.fixture
def run_dir(made, tmp_path):
    return shutil.copytree(made / "run", tmp_path / "run")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_one_ray_worker_gives_the_plain_loop_s_result(made, tmp_path, local_ray):
    """One worker: no DDP wrapper, the same batches in the same order, one torch thread like this process: the
    same weights, bit for bit."""
    plain, ray_run = (shutil.copytree(made / "run", tmp_path / name) for name in ("plain", "ray"))
    expected = tune(plain, distill=True)
    got = tune(ray_run, distill=True, workers=1)
    assert got.history[0]["loss"] == expected.history[0]["loss"]
    assert got.test_top1 == expected.test_top1 and states_equal(saved_state(ray_run), saved_state(plain))


def ray_checkpoints(run):
    return sorted(p for p in (run / loop.RAY_DIR).glob("checkpoint_*") if p.is_dir())


def test_two_ray_workers_checkpoint_every_epoch_and_resume(run_dir, local_ray):
    first = tune(run_dir, epochs=2, stop_after=1, workers=2)
    checkpoints = ray_checkpoints(run_dir)
    assert first.epochs == 1 and len(checkpoints) == 1 and len(pd.read_csv(run_dir / records.FINETUNE_CSV)) == 1
    assert torch.load(checkpoints[0] / loop.STATE_FILE, weights_only=True)["epoch"] == 1
    rest = tune(run_dir, epochs=2, resume=True, workers=2)
    assert rest.resumed_from == 1 and [r["epoch"] for r in rest.history] == [1, 2]
    assert rest.history[0] == first.history[0]  # continued from epoch 1, not restarted
    assert len(ray_checkpoints(run_dir)) == 2
    assert len(pd.read_csv(run_dir / records.FINETUNE_CSV)) == 2 and 0 <= rest.test_top1 <= 1
