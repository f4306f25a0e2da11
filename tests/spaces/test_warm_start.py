"""The global-magnitude warm start: within budget, using it, monotone in the budget."""
from __future__ import annotations

import torch

from conftest import derived
from evaluators.cost import CostModel
from search.models.cifar_resnet import resnet20
from spaces.derive import derive
from spaces.warm_start import magnitude_candidate


def test_the_candidate_meets_and_uses_its_budget():
    prunable = derived("resnet20")[0]
    cost = CostModel(prunable)
    base = cost.base.flops
    picks = {}
    for target in (0.25, 0.4, 0.6):
        candidate = magnitude_candidate(prunable, lambda c, t=target: cost.price(c).flops <= t * base)
        prunable.space.validate(candidate)
        assert 0.85 * target <= cost.price(candidate).flops / base <= target
        assert all(candidate[d.name] == 1 for d in prunable.space.keeps)
        picks[target] = candidate
    for d in prunable.space.widths:  # a looser budget lowers the one threshold: no group gets narrower
        assert picks[0.25][d.name] <= picks[0.4][d.name] <= picks[0.6][d.name]


def test_no_candidate_without_scores_or_when_nothing_fits():
    prunable = derived("resnet20")[0]
    assert magnitude_candidate(prunable, lambda c: False) is None
    assert magnitude_candidate(prunable, lambda c: True) == prunable.space.full()
    torch.manual_seed(0)
    unranked = derive(resnet20(), torch.zeros(1, 3, 32, 32), importance=None)
    assert unranked.channel_scores == {} and magnitude_candidate(unranked, lambda c: True) is None


def test_scores_are_in_kept_order_and_mean_normalized():
    prunable = derived("resnet20")[0]
    for d in prunable.space.widths:
        scores = prunable.channel_scores[d.name]
        assert len(scores) == d.full and list(scores) == sorted(scores, reverse=True)
        assert abs(sum(scores) / len(scores) - 1.0) < 1e-4
