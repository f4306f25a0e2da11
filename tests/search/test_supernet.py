"""Supernet training: it trains the shared weights in place, leaves a plain recalibrated model, is seeded, and makes
the smallest subnet better than plain training of the full width does."""
from __future__ import annotations

import copy
import itertools

import numpy as np
import torch
from conftest import build_model

from evaluators.accuracy import recalibrate, top1
from evaluators.cost import CostModel
from search.finetune.step import TrainConfig, make_optimizer, train_epoch
from search.finetune.supernet import SupernetSettings, train_supernet
from spaces.budget import Budget, Limit
from spaces.derive import derive
from spaces.materialize import materialize
from spaces.sampling import feasible_sampler

SIZE = 4  # 4x4 images: ResNet-20 runs at any size, and steps are cheap


def fresh():
    """A fresh derived ResNet-20 (training changes it: the session-cached `derived` one must stay as it is)."""
    model, _ = build_model("resnet20")
    return derive(model, torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)))


def data(n, seed):
    """Separable classes: a fixed colour per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    colours = torch.randn(10, 3, 1, 1, generator=torch.Generator().manual_seed(123))
    return colours[y] + torch.randn(n, 3, SIZE, SIZE, generator=g), y


TRAIN, HELD_OUT = data(512, 0), data(256, 1)


def batches(seed, size=32):
    rng = np.random.default_rng(seed)
    x, y = TRAIN
    while True:
        for i in rng.permutation(len(y) // size):
            yield x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]


def within(prunable, ratio=0.4):
    cost = CostModel(prunable)
    budget = Budget([Limit("flops", ratio, True)]).resolve(cost.base.as_dict())
    return lambda candidate: budget.feasible(cost.costs(candidate))


def accuracy(prunable, candidate):
    """BN-recalibrated held-out top-1 of `candidate` on the weights it inherits."""
    subnet = materialize(prunable, candidate)
    recalibrate(subnet, [TRAIN[0][i:i + 64] for i in range(0, 256, 64)])
    return top1(subnet.eval(), [HELD_OUT])


def trained(seed=0, steps=4, **others):
    prunable = fresh()
    stats = train_supernet(prunable, batches, sample=prunable.space.sample,
                           settings=SupernetSettings(steps=steps, seed=seed, calibration_batches=2, **others))
    return prunable, stats


def test_training_changes_the_shared_weights_and_leaves_a_plain_recalibrated_model():
    prunable, x = fresh(), HELD_OUT[0][:8]
    model = prunable.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        output = model(x)
    flags = [(p.requires_grad, m.training) for m in model.modules() for p in m.parameters(recurse=False)]
    rng_state = torch.random.get_rng_state()
    calibration = [TRAIN[0][:64]]
    stats = train_supernet(prunable, batches, sample=prunable.space.sample, calibration=calibration,
                           settings=SupernetSettings(steps=3))
    assert stats.steps == 3 and stats.samples == 96 and stats.seconds > 0
    assert all(np.isfinite([stats.full_loss, stats.smallest_loss, stats.random_loss]))
    weights = [k for k, v in model.named_parameters() if v.dim() > 1]
    assert all(not torch.equal(before[k], model.state_dict()[k]) for k in weights)
    assert flags == [(p.requires_grad, m.training) for m in model.modules() for p in m.parameters(recurse=False)]
    assert torch.equal(rng_state, torch.random.get_rng_state()), "the global RNG was consumed"
    assert all(p.grad is None for p in model.parameters())
    reference = copy.deepcopy(model)  # the full width's statistics, recalibrated on the calibration inputs
    recalibrate(reference, calibration)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), reference.buffers()))
    with torch.no_grad():  # a plain model at full width: the output changed, and equals its materialized full width
        after = model.eval()(x)
        assert not torch.allclose(after, output)
        torch.testing.assert_close(after, materialize(prunable, prunable.space.full()).eval()(x))


def test_no_steps_change_nothing():
    prunable = fresh()
    before = {k: v.clone() for k, v in prunable.model.state_dict().items()}
    stats = train_supernet(prunable, batches, sample=prunable.space.sample, settings=SupernetSettings(steps=0))
    assert stats.steps == 0 and all(torch.equal(before[k], v) for k, v in prunable.model.state_dict().items())
    assert SupernetSettings.for_epochs(0.5, 16).steps == 8 and SupernetSettings.for_epochs(0, 16).steps == 0


def test_the_same_seed_gives_the_same_weights_another_seed_others():
    first, second, other = (trained(seed)[0].model.state_dict() for seed in (0, 0, 1))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def test_the_smallest_subnet_learns_more_than_from_training_the_full_width_and_candidates_keep_to_the_budget():
    steps = 40
    plain = fresh()  # the same steps of plain training at full width
    optimizer, scheduler = make_optimizer(plain.model, TrainConfig(lr=0.05), steps)
    torch.manual_seed(0)
    train_epoch(plain.model, itertools.islice(batches(0), steps), optimizer, scheduler)

    prunable = fresh()
    feasible, drawn = within(prunable), []
    pick = feasible_sampler(prunable.space, feasible)
    smallest = prunable.space.smallest()
    untrained = accuracy(prunable, smallest)
    stats = train_supernet(prunable, batches, sample=lambda rng: drawn.append(pick(rng)) or drawn[-1],
                           settings=SupernetSettings(steps=steps, calibration_batches=2))
    assert len(drawn) == 2 * steps and all(feasible(c) for c in drawn) and feasible(smallest)
    assert len(set(drawn)) > steps  # random candidates, not one
    assert stats.smallest_loss < 1.5
    supernet, full_width_only = accuracy(prunable, smallest), accuracy(plain, smallest)
    assert supernet > untrained + 0.08 and supernet > full_width_only + 0.08, (supernet, full_width_only, untrained)
