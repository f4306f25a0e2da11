"""The supernet on Ray Train: two data-parallel workers train the same weights one process does (no BatchNorm, so
the only difference is float rounding), and the driver's model gets them."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from search.finetune.supernet import SupernetSettings, train_supernet
from search.selection.finalists import ShuffledBatches
from spaces.derive import derive

ray = pytest.importorskip("ray")


def batches() -> ShuffledBatches:
    """Seeded shuffled batches of a fixed toy set (a library class: it travels to the workers)."""
    g = torch.Generator().manual_seed(0)
    return ShuffledBatches(TensorDataset(torch.randn(64, 3, 6, 6, generator=g), torch.randint(0, 4, (64,), generator=g)),
                           16)


def test_two_ray_train_workers_train_the_weights_one_process_does(tmp_path):
    from search.finetune.supernet_on_ray import train_supernet_on_ray

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4))
    prunable = derive(model, torch.randn(1, 3, 6, 6))
    assert prunable.space.dimensions, "the toy model must have something to search"
    alone = copy.deepcopy(prunable)
    before = {k: v.clone() for k, v in prunable.model.state_dict().items()}
    settings = SupernetSettings(steps=6, lr=0.1, random=2, seed=3)
    local = train_supernet(alone, batches(), sample=prunable.space.sample, settings=settings, calibration=[])
    stats = train_supernet_on_ray(prunable, batches(), sample=prunable.space.sample, settings=settings,
                                  calibration=[], workers=2, run_path=tmp_path)
    assert stats.steps == local.steps == 6 and stats.samples == local.samples
    assert np.isfinite(stats.full_loss)  # rank 0's share of the batch: not the single process's loss
    trained = prunable.model.state_dict()
    assert any(not torch.equal(before[k], trained[k]) for k in before)  # the driver's model has the trained weights
    for name, value in alone.model.state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=1e-4, atol=1e-5)
    assert not ray.is_initialized()  # the Ray it started is shut down
