"""Channel analysis on tiny hand-made models: each rule, and what is frozen when a rule does not apply."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_close, derived
from evaluators.cost import CostModel
from spaces.derive import derive
from spaces.elastic import ElasticModel
from spaces.materialize import materialize


def check_equivalence(model: nn.Module, shape=(3, 8, 8), seed=0):
    """Derive, then check elastic == materialized on a few candidates; returns the prunable model."""
    torch.manual_seed(seed)
    model.eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        before = model(x)
        prunable = derive(model, x[:1])
        assert_close(model(x), before)
        elastic = ElasticModel(prunable).eval()
        rng = __import__("numpy").random.default_rng(seed)
        for candidate in [prunable.space.smallest(), prunable.space.sample(rng), prunable.space.sample(rng)]:
            elastic.apply(candidate)
            assert_close(elastic(x), materialize(prunable, candidate).eval()(x))
    return prunable


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(F.relu(self.b(y)))


def test_channel_shuffle_freezes_its_group_and_says_why():
    prunable = check_equivalence(Shuffle())
    groups = {g.producers[0]: g for g in prunable.graph.groups if g.producers}
    assert not groups["a"].prunable and "splits or merges the channel axis" in groups["a"].fixed
    assert groups["b"].prunable  # the next group is independent of the shuffle
    assert [d.name for d in prunable.space.widths] == ["b"]


class Roll(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.b(torch.roll(self.a(x), 1, dims=1))


def test_unknown_op_freezes_groups_flowing_into_it():
    prunable = check_equivalence(Roll())
    group = next(g for g in prunable.graph.groups if g.producers == ["a"])
    assert group.fixed == "'roll' along the channel axis"  # a roll of the channels: frozen, with why
    assert len(prunable.space) == 0


class Shared(nn.Module):
    """One conv applied twice: its input and output channels become one group."""

    def __init__(self):
        super().__init__()
        self.stem, self.mid, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.mid(F.relu(self.mid(self.stem(x)))))


def test_a_module_called_twice_couples_its_uses():
    prunable = check_equivalence(Shared())
    assert len(prunable.space.widths) == 1  # stem, mid's input and mid's output: all one group


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 12, 1)
        self.g = nn.Conv2d(12, 12, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(12)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        return self.head(self.bn(self.g(F.relu(self.a(x)))))


def test_grouped_conv_keeps_its_groups_and_widths_are_multiples():
    prunable = check_equivalence(Grouped())
    (dim,) = prunable.space.widths
    assert all(c % 4 == 0 for c in dim.choices)
    subnet = materialize(prunable, {dim.name: 8})
    assert subnet.g.groups == 4 and subnet.g.weight.shape == (8, 2, 3, 3)


class Dense(nn.Module):
    """DenseNet-style: BN and conv over a concatenation of two groups; flatten into a Linear."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(10)
        self.c = nn.Conv2d(10, 5, 1)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x):
        y = self.c(F.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 4), 1))


def test_concatenation_and_flatten_are_pruned_per_segment():
    prunable = check_equivalence(Dense())
    assert sorted(d.name for d in prunable.space.widths) == ["a", "b", "c"]
    subnet = materialize(prunable, {"a": 3, "b": 2, "c": 2})
    assert subnet.bn.num_features == 5 and subnet.c.in_channels == 5 and subnet.fc.in_features == 2 * 16


class Branchy(nn.Module):
    """Two residual adds: one is x + f(x); the other mixes in a tensor from before x."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.f1, self.f2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        s = self.stem(x)
        y = s + self.f1(s)                  # removable
        z = y + self.f2(y) * torch.sigmoid(s)  # reads s from before y: not removable
        return self.head(z)


def test_only_private_residual_branches_are_removable():
    prunable = check_equivalence(Branchy())
    assert [(b.input, b.output) for b in prunable.graph.blocks] == [("stem", "f1")]
    (keep,) = prunable.space.keeps
    cost = CostModel(prunable)
    full = prunable.space.full()
    branch_flops = 2 * 8 * 8 * 8 * 9 * 8  # f1: 8x8 positions, 8x8x3x3 weights (plus its bias: no FLOPs)
    assert cost.flops(full) - cost.flops(full.replace(**{keep.name: 0})) == branch_flops


def test_resnet20_blocks_and_stage_groups():
    prunable, _, _ = derived("resnet20")
    assert len(prunable.graph.blocks) == 7  # 9 blocks, the 2 downsampling ones are not x + f(x)
    assert len(prunable.space.widths) == 12  # 3 stage streams + one inside each of 9 blocks


def test_bn_recalibration_through_the_elastic_model_matches_the_subnet(rng):
    prunable, x, _ = derived("resnet20")
    elastic = ElasticModel(prunable)
    snapshot = elastic.bn_snapshot()
    candidate = prunable.space.sample(rng)
    subnet = materialize(prunable, candidate)
    batches = [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for module in (elastic, subnet):
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.reset_running_stats()
                bn.momentum = None
        module.train()
        with torch.no_grad():
            if module is elastic:
                elastic.apply(candidate)
            for b in batches:
                module(b)
        module.eval()
    with torch.no_grad():
        assert_close(elastic(x), subnet(x))
    for bn in elastic.batchnorms():
        bn.momentum = 0.1
    elastic.restore_bn(snapshot)
    elastic.reset()
    with torch.no_grad():
        assert_close(elastic(x), prunable.model(x), rel=1e-6)


def test_densenet_recalibration_writes_gathered_statistics_back(rng):
    prunable, x, _ = derived("densenet121")
    elastic = ElasticModel(prunable)
    snapshot = elastic.bn_snapshot()
    candidate = prunable.space.sample(rng)
    elastic.apply(candidate)
    elastic.train()
    with torch.no_grad():
        elastic(torch.randn(4, 3, 64, 64))
    elastic.eval()
    subnet = materialize(prunable, candidate).eval()  # built from the statistics the elastic run wrote
    with torch.no_grad():
        assert_close(elastic(x), subnet(x))
    elastic.restore_bn(snapshot)


def test_round_to_and_ratios_shape_the_choices():
    prunable, x, _ = derived("resnet20")
    coarse = derive(prunable.model, x[:1], ratios=(0.25, 0.5, 1.0), round_to=8, importance=None)
    for dim in coarse.space.widths:
        assert all(c % 8 == 0 or c == dim.full for c in dim.choices)
        assert len(dim.choices) <= 3
    with pytest.raises(ValueError):
        derive(prunable.model, x[:1], round_to=0)
