"""BN-recalibrated scoring: equal to recalibrating a materialized subnet; the base model is given back."""
from __future__ import annotations

import math

import torch
from torch.utils.data import TensorDataset

from conftest import derived
from evaluators.accuracy import AccuracyEvaluator, recalibrate, top1
from spaces.materialize import materialize


def data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))


def test_score_equals_the_recalibrated_materialized_subnet(rng):
    prunable, x, _ = derived("resnet20")
    dataset = data()
    before = [t.clone() for t in prunable.model.state_dict().values()]
    with AccuracyEvaluator.from_dataset(prunable, dataset, range(0, 64), range(64, 96), calib_batches=4,
                                        batch_size=16, eval_samples=32) as evaluator:
        assert evaluator.samples == (64, 32)
        for candidate in [prunable.space.full(), prunable.space.sample(rng), prunable.space.smallest()]:
            score = evaluator.score(candidate)
            subnet = materialize(prunable, candidate)
            recalibrate(subnet, evaluator.calibration)
            assert score == top1(subnet.eval(), evaluator.held_out)
    after = list(prunable.model.state_dict().values())
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "restore() must give back the base model"


def test_scores_are_repeatable_and_the_candidate_order_does_not_matter(rng):
    prunable, _, _ = derived("mobilenet_v3_small")
    dataset = TensorDataset(torch.randn(48, 3, 64, 64), torch.randint(0, 1000, (48,)))
    candidates = [prunable.space.sample(rng) for _ in range(3)]
    with AccuracyEvaluator.from_dataset(prunable, dataset, range(32), range(32, 48), calib_batches=2,
                                        batch_size=16, eval_samples=16) as evaluator:
        forward = [evaluator.score(c) for c in candidates]
        backward = [evaluator.score(c) for c in reversed(candidates)][::-1]
    assert forward == backward


def test_non_finite_outputs_score_nan():
    prunable, _, _ = derived("resnet20")
    dataset = data(32)
    with AccuracyEvaluator.from_dataset(prunable, dataset, range(16), range(16, 32), calib_batches=1,
                                        batch_size=16, eval_samples=16) as evaluator:
        evaluator.held_out = [(torch.full_like(x, math.inf), y) for x, y in evaluator.held_out]
        assert math.isnan(evaluator.score(prunable.space.full()))
