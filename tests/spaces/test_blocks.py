"""Removable blocks found from what the graph computes, their reasons, stage depths, exact costs."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

from agents import list_agents, make_agent
from conftest import assert_close, assert_exact, fake_score
from evaluators.cost import CostModel
from search.engine.loop import Engine, Journal
from spaces import DEPTH, KEEP, SearchSpace
from spaces.budget import Budget, Limit
from spaces.derive import derive
from spaces.elastic import ElasticModel
from spaces.materialize import materialize


class Bottleneck(nn.Module):
    """A bottleneck whose identity shortcut is a module, with an activation after the add."""

    def __init__(self, c: int, shortcut: nn.Module | None = None, inplace: bool = False):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c // 2, 1, bias=False), nn.BatchNorm2d(c // 2)
        self.conv2, self.bn2 = nn.Conv2d(c // 2, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.act, self.inplace = nn.SiLU(), inplace

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if self.inplace:
            out += self.shortcut(x)
            return self.act(out)
        return self.act(out + self.shortcut(x))


class LayerScaleBlock(nn.Module):
    """timm style: `x + drop_path(gamma * mlp(x))`, an SE gate inside, drop path on the branch."""

    def __init__(self, c: int, drop: nn.Module):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.BatchNorm2d(c)
        self.fc1, self.fc2 = nn.Conv2d(c, 2 * c, 1), nn.Conv2d(2 * c, c, 1)
        self.se = nn.Conv2d(c, c, 1)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))
        self.drop_path = drop

    def forward(self, x):
        shortcut = x
        y = self.fc2(nn.functional.gelu(self.fc1(self.norm(self.dw(x)))))
        y = y * torch.sigmoid(self.se(y.mean((2, 3), keepdim=True)))
        y = y.mul(self.gamma.reshape(1, -1, 1, 1))
        return self.drop_path(y) + shortcut


class UndoneReshape(nn.Module):
    """A shortcut that flattens and restores its input: the identity, written the long way."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        b, c, h, w = x.shape
        s = x.flatten(2).transpose(1, 2).transpose(1, 2).reshape(b, c, h, w)
        return torch.add(self.conv(x), s)


class Down(nn.Module):
    """A block whose branch changes the shape: its shortcut must project."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.proj = nn.Conv2d(c, 2 * c, 1, stride=2)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x))) + self.proj(x)


def net(*blocks: nn.Module, c: int = 8, out: int | None = None) -> nn.Module:
    out = out or c
    return nn.Sequential(nn.Conv2d(3, c, 3, padding=1), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(out, 5)).eval()


def seeded(model_fn):
    torch.manual_seed(0)
    return model_fn()


X = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def check_exact(prunable, candidates) -> None:
    assert_exact(prunable, candidates, X)


def every_other_removed(prunable):
    space = prunable.space
    return space.full().replace(**{d.name: 0 for d in space.keeps[::2]})


def test_an_identity_module_shortcut_with_a_post_add_activation_is_removable(rng):
    model = seeded(lambda: net(*(Bottleneck(8) for _ in range(3))))
    prunable = derive(model, X[:1])
    assert [d.name for d in prunable.space.keeps] == ["keep:1", "keep:2", "keep:3"]
    assert prunable.block_reasons == {}
    full = prunable.space.full()
    cost = CostModel(prunable)
    one_off = full.replace(**{"keep:2": 0})
    branch_flops = 2 * 144 * (8 * 4 + 4 * 8 * 9)  # conv1 1x1 8->4 and conv2 3x3 4->8 over 12x12 positions
    assert cost.flops(full) - cost.flops(one_off) == branch_flops
    check_exact(prunable, [one_off, every_other_removed(prunable), prunable.space.smallest(),
                           prunable.space.sample(rng)])


def test_in_place_add_is_a_removable_block(rng):
    model = seeded(lambda: net(Bottleneck(8, inplace=True), Bottleneck(8, inplace=True)))
    prunable = derive(model, X[:1])
    assert len(prunable.space.keeps) == 2
    check_exact(prunable, [every_other_removed(prunable), prunable.space.smallest(), prunable.space.sample(rng)])


@pytest.mark.parametrize("drop", ["identity", "timm", "torchvision"])
def test_layer_scale_se_and_drop_path_on_the_branch_still_make_a_block(drop, rng):
    import timm.layers

    make = {"identity": lambda: nn.Identity(), "timm": lambda: timm.layers.DropPath(0.2),
            "torchvision": lambda: StochasticDepth(0.2, "row")}[drop]
    model = seeded(lambda: net(*(LayerScaleBlock(8, make()) for _ in range(3))))
    prunable = derive(model, X[:1])
    assert len(prunable.space.keeps) == 3, prunable.explain()
    check_exact(prunable, [every_other_removed(prunable), prunable.space.smallest(), prunable.space.sample(rng)])


def test_a_reshape_that_is_undone_is_an_identity_shortcut():
    prunable = derive(seeded(lambda: net(UndoneReshape(8), UndoneReshape(8))), X[:1])
    assert len(prunable.space.keeps) == 2, prunable.explain()
    check_exact(prunable, [every_other_removed(prunable), prunable.space.smallest()])


def test_a_shortcut_that_is_not_the_identity_is_no_block():
    class Scaled(Bottleneck):
        def forward(self, x):
            return self.act(self.bn2(self.conv2(self.bn1(self.conv1(x)))) + torch.relu(x))

    prunable = derive(seeded(lambda: net(Scaled(8))), X[:1])
    assert prunable.space.keeps == []
    assert prunable.block_reasons == {"1": "shortcut is not the identity (relu)"}


def test_a_branch_that_changes_shape_is_not_offered_and_says_why():
    model = seeded(lambda: net(Bottleneck(8), Down(8), Bottleneck(16), out=16))
    prunable = derive(model, X[:1])
    assert [d.name for d in prunable.space.keeps] == ["keep:1", "keep:3"]
    assert prunable.block_reasons == {"2": "branch changes shape (8x12x12 -> 16x6x6), projection shortcut (2.proj)"}
    text = prunable.explain()
    assert "2: branch changes shape" in text and "residual adds not offered as removable blocks (1)" in text
    off = derive(seeded(lambda: net(Bottleneck(8))), X[:1], removable_blocks=False)
    assert off.block_reasons == {"1": "block removal is turned off"} and off.space.keeps == []


def test_stage_depth_keeps_a_prefix_of_each_run_and_round_trips(rng):
    model = seeded(lambda: net(Bottleneck(8), Bottleneck(8), Bottleneck(8), Down(8), Bottleneck(16),
                               Bottleneck(16), out=16))
    prunable = derive(model, X[:1], block_encoding="depth")
    space = prunable.space
    assert [(d.name, d.kind, d.choices) for d in space.keeps] == [("depth:1..3", DEPTH, (0, 1, 2, 3)),
                                                                 ("depth:5..6", DEPTH, (0, 1, 2))]
    assert prunable.keeps(space.full().replace(**{"depth:1..3": 1, "depth:5..6": 2})) == \
        [True, False, False, True, True]
    assert prunable.keeps(space.uniform(0.5, keep_blocks=False)) == [False] * 5
    again = SearchSpace.from_json(json.loads(json.dumps(space.to_json())))
    assert [(d.name, d.kind, d.full, d.choices) for d in again] == [(d.name, d.kind, d.full, d.choices) for d in space]
    for _ in range(20):
        c = space.sample(rng)
        assert space.decode(space.encode(c)) == c and space.from_ratios(space.to_ratios(c)) == c
    assert "stage depths (2)" in prunable.explain() and "2 stage depths (5 blocks)" in repr(space)
    check_exact(prunable, [space.full().replace(**{"depth:1..3": 1, "depth:5..6": 0}), space.smallest(),
                           space.sample(rng)])
    flags = derive(seeded(lambda: net(Bottleneck(8), Bottleneck(8), Down(8), out=16)), X[:1])
    assert all(d.kind == KEEP for d in flags.space.keeps)
    with pytest.raises(ValueError, match="block_encoding"):
        derive(model, X[:1], block_encoding="stages")


def test_a_subnet_without_some_blocks_keeps_the_stochastic_depth_of_the_others():
    import timm.layers

    def blocks(last_rate: float):
        torch.manual_seed(0)
        return net(*(LayerScaleBlock(8, timm.layers.DropPath(rate)) for rate in (0.5, 0.5, last_rate)))

    prunable = derive(blocks(0.5), X[:1])
    removed_last = prunable.space.full().replace(**{prunable.space.keeps[-1].name: 0})
    subnet = materialize(prunable, removed_last).train()
    elastic = ElasticModel(prunable).train()
    elastic.apply(removed_last)
    reference = blocks(1.0).train()  # the last branch dropped every time, after the same random draws
    reference.load_state_dict(prunable.model.state_dict())
    for seed in range(3):
        outs = []
        for module in (subnet, elastic, reference):
            torch.manual_seed(seed)
            with torch.no_grad():
                outs.append(module(X))
        assert_close(outs[0], outs[2])
        assert_close(outs[1], outs[2])
    with torch.no_grad():
        assert not torch.allclose(subnet(X), subnet.eval()(X))  # drop path is live in train mode


@pytest.mark.parametrize("agent", sorted(list_agents()))
def test_agents_search_a_depth_space_and_resume_it(agent, tmp_path):
    from search.models.cifar_resnet import resnet20

    torch.manual_seed(0)
    prunable = derive(resnet20().eval(), torch.randn(1, 3, 32, 32), block_encoding="depth")
    cost = CostModel(prunable)
    budget = Budget([Limit("flops", 0.4, True)]).resolve(cost.base.as_dict())
    price = lambda c: cost.price(c).as_dict()  # noqa: E731

    class Scorer:
        def __init__(self):
            self.calls = 0

        def score(self, candidate):
            self.calls += 1
            return fake_score(prunable.space, candidate)

    def engine(trials, journal):
        a = make_agent(agent, prunable.space, budget, price=price, seed=0, trials=12)
        scorer = Scorer()
        return Engine(a, price, budget, scorer, trials=trials, journal=journal, progress=False), scorer

    uninterrupted = engine(12, None)[0].run()
    for t in uninterrupted.trials:
        prunable.space.validate(t.candidate)
    assert any(t.result.ok for t in uninterrupted.trials)
    journal = Journal(tmp_path / "j.jsonl")
    engine(5, journal)[0].run()
    resumed, scorer = engine(12, journal)
    resumed.replay(journal.read())
    outcome = resumed.run()
    assert [t.candidate for t in outcome.trials] == [t.candidate for t in uninterrupted.trials]
    assert scorer.calls <= 12 - 5 + 1


def test_only_the_outermost_block_of_a_nest_is_offered():
    class Inner(nn.Module):  # ConvNeXt-V2's GRN shape: `gamma * f(x) + beta + x`
        def __init__(self, c):
            super().__init__()
            self.gamma = nn.Parameter(torch.ones(1, c, 1, 1))

        def forward(self, x):
            return self.gamma * torch.tanh(x) + x

    class Outer(Bottleneck):
        def __init__(self, c):
            super().__init__(c)
            self.inner = Inner(c)

        def forward(self, x):
            return self.act(self.bn2(self.conv2(self.inner(self.bn1(self.conv1(x)).repeat(1, 2, 1, 1))
                                                  .narrow(1, 0, 4))) + x)

    prunable = derive(seeded(lambda: net(Outer(8), Outer(8))), X[:1])
    assert [d.name for d in prunable.space.keeps] == ["keep:1", "keep:2"]
    assert prunable.block_reasons == {"1.inner": "nested inside block 1", "2.inner": "nested inside block 2"}
    check_exact(prunable, [every_other_removed(prunable), prunable.space.smallest()])
