"""Groups refined into sub-groups: splits and chunks along channels, channel slices, a concatenation joined to one group."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from conftest import assert_close, assert_exact
from spaces.derive import derive
from spaces.materialize import materialize

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def check(model: nn.Module, samples: int = 4):
    """Function kept by the reorder; elastic == materialized; FLOPs/params exact; the subnet scripts."""
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():
        before = model(X)
        prunable = derive(model, X[:1])
        assert_close(model(X), before)
    rng = np.random.default_rng(0)
    space = prunable.space
    assert_exact(prunable, [space.full(), space.smallest(), *(space.sample(rng) for _ in range(samples))], X)
    with torch.no_grad():
        subnet = materialize(prunable, space.sample(rng)).eval()
        assert_close(torch.jit.script(subnet)(X), subnet(X))
    return prunable


class Mixed(nn.Module):
    """timm's MixedConv2d: a conv's output split in unequal parts, each with its own depthwise kernel."""

    def __init__(self, splits=(6, 4, 2), form="split"):
        super().__init__()
        c = sum(splits)
        self.splits, self.form = list(splits), form
        self.stem = nn.Conv2d(3, c, 1)
        self.dw = nn.ModuleList(nn.Conv2d(s, s, 2 * i + 1, padding=i, groups=s) for i, s in enumerate(splits))
        self.bn = nn.BatchNorm2d(c)
        self.head = nn.Conv2d(c, 5, 1)

    def forward(self, x):
        y = self.stem(x)
        if self.form == "split":
            parts = torch.split(y, self.splits, 1)
        elif self.form == "method":
            parts = y.split(self.splits, dim=1)
        else:
            parts = y.chunk(len(self.splits), dim=1)
        return self.head(torch.relu(self.bn(torch.cat([conv(p) for conv, p in zip(self.dw, parts)], 1))))


def test_a_split_conv_output_becomes_one_group_per_part():
    prunable = check(Mixed())
    assert sorted(d.full for d in prunable.space.widths) == [2, 4, 6]
    assert prunable.graph.fixed_reasons() == {}
    subnet = materialize(prunable, {d.name: 1 if d.full == 2 else d.full // 2 for d in prunable.space.widths})
    assert subnet.stem.out_channels == 6 and [getattr(subnet.dw, str(i)).out_channels for i in range(3)] == [3, 2, 1]
    assert subnet.bn.num_features == 6


def test_split_method_and_chunk_are_splits_too():
    assert sorted(d.full for d in check(Mixed(form="method")).space.widths) == [2, 4, 6]
    assert sorted(d.full for d in check(Mixed((4, 4, 4), form="chunk")).space.widths) == [4, 4, 4]


class Ghost(nn.Module):
    """GhostNet's module: a conv, a cheap depthwise conv of it, both concatenated and sliced to `out`."""

    def __init__(self, out=11):
        super().__init__()
        self.out = out
        self.primary = nn.Conv2d(3, 6, 1)
        self.cheap = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.head = nn.Conv2d(out, 4, 1)

    def forward(self, x):
        x1 = self.primary(x)
        return self.head(torch.cat([x1, self.cheap(x1)], dim=1)[:, :self.out, :, :])


class Partial(nn.Module):
    """ReXNet's partial residual: the first channels of the branch get the shortcut added."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.expand = nn.Conv2d(4, 10, 1)
        self.head = nn.Conv2d(10, 3, 1)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        y = self.expand(s)
        return self.head(torch.cat([y[:, 0:4] + s, y[:, 4:]], dim=1))


def test_a_channel_slice_keeps_its_part_of_the_layout():
    prunable = check(Ghost())
    assert prunable.graph.fixed_reasons() == {}
    # the slice ends inside the second copy of the primary conv's 6 channels: they become 5 + 1 (the 1 not searched)
    assert [d.full for d in prunable.space.widths] == [5]
    subnet = materialize(prunable, {d.name: 2 for d in prunable.space.widths})
    assert subnet.primary.out_channels == 3 and subnet.head.in_channels == 2 + 1 + 2


def test_a_partial_residual_splits_the_branch_output():
    prunable = check(Partial())
    assert prunable.graph.fixed_reasons() == {}
    assert sorted(d.full for d in prunable.space.widths) == [4, 6]  # shortcut-joined 4, and the other 6
    subnet = materialize(prunable, {d.name: 2 for d in prunable.space.widths})
    assert subnet.stem.out_channels == 2 and subnet.expand.out_channels == 4 and subnet.head.in_channels == 4


class CatPlusConv(nn.Module):
    """A concatenation added to one conv's output: that conv's channels follow the two segments."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 5, 1), nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], 1) + self.c(x))


def test_an_elementwise_op_joining_a_concatenation_refines_the_other_group():
    prunable = check(CatPlusConv())
    assert prunable.graph.fixed_reasons() == {}
    assert sorted(d.full for d in prunable.space.widths) == [3, 5]
    subnet = materialize(prunable, {d.name: 2 for d in prunable.space.widths})
    assert subnet.c.out_channels == 4 and subnet.head.in_channels == 4


class GroupedSplit(nn.Module):
    """A split that cuts inside a conv-group of a grouped conv: frozen, with its reason."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 1, groups=2)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.grouped(self.stem(x))
        a, b = torch.split(y, [3, 5], 1)
        return self.head(torch.cat([b, a], 1))


class WholeTuple(nn.Module):
    """A split's pieces used as a tuple: concatenated back, and handed whole to an op nobody knows."""

    def __init__(self):
        super().__init__()
        self.stem, self.other = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        a = torch.cat(torch.split(self.stem(x), [3, 5], 1), 1)
        b = torch.block_diag(*torch.split(self.other(x)[0, :, 0, 0], [3, 5])).sum(0)
        return self.head(torch.cat([a, a], 1)) * b.sum()


def test_a_split_used_whole():
    prunable = check(WholeTuple())
    assert sorted(d.full for d in prunable.space.widths) == [3, 5]  # stem's parts; `other` frozen by block_diag


def test_a_split_that_cannot_be_followed_freezes_with_a_reason():
    prunable = check(GroupedSplit())
    reasons = prunable.graph.fixed_reasons()
    assert any("conv-group" in r for r in reasons), reasons
    assert not any(d.name.startswith("grouped") for d in prunable.space.widths)


class TinyViT(nn.Module):
    """ViT's token path: patches, a class token broadcast and concatenated, a position embedding, token 0 read."""

    def __init__(self, dim=6):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 5, dim))
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 8), nn.Linear(8, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        t = t + self.fc2(torch.relu(self.fc1(self.norm(t))))
        return self.head(t[:, 0])


def test_a_class_token_concatenated_across_tokens_is_cut_with_the_channels():
    prunable = check(TinyViT())
    assert prunable.graph.fixed_reasons() == {}
    assert sorted(d.full for d in prunable.space.widths) == [6, 8]
    subnet = materialize(prunable, prunable.space.full().replace(**{d.name: 3 for d in prunable.space.widths}))
    assert tuple(subnet.cls.shape) == (1, 1, 3) and tuple(subnet.pos.shape) == (1, 5, 3)


class Counts(nn.Module):
    """Channel counts read from shapes: one rebuilds its own tensor (fine), one sizes another tensor's view."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 1)
        self.head = nn.Linear(18, 2)

    def forward(self, x):
        ya, yb, yc = self.a(x), self.b(x), self.c(x)
        n, c, h, w = ya.shape
        own = ya.reshape(n, c, h * w).mean(-1)               # a's count rebuilds a: a stays searchable
        other = yb.reshape(n, yc.size(1), h * w).mean(-1)    # c's count sizes b's view: b and c frozen
        return self.head(torch.cat([own, other, yc.mean((2, 3))], 1))


class LiteralScale(nn.Module):
    """A layer scale viewed with its size written out (timm's metaformer `Scale`), and a tensor made in forward."""

    def __init__(self, made: bool = False):
        super().__init__()
        self.made = made
        self.conv, self.head = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)
        self.scale = nn.Parameter(torch.rand(6) + 0.5)

    def forward(self, x):
        y = self.conv(x) * self.scale.view(6, 1, 1)
        if self.made:
            y = y * torch.linspace(0.5, 1.5, 6).view(6, 1, 1)
        return self.head(y)


def test_a_channel_count_read_from_a_shape_only_rebuilds_its_own_tensor():
    prunable = check(Counts())
    assert [d.name for d in prunable.space.widths] == ["a"]
    assert any("channel count is read" in r or "computed value" in r for r in prunable.graph.fixed_reasons())


def test_a_vector_parameter_viewed_with_its_size_written_out_is_cut_with_the_channels():
    prunable = check(LiteralScale())
    assert [d.name for d in prunable.space.widths] == ["conv"]
    subnet = materialize(prunable, {"conv": 3})
    assert subnet.scale.shape == (3,) and subnet.head.in_channels == 3


def test_a_tensor_of_unknown_channels_in_an_elementwise_op_freezes_them():
    prunable = check(LiteralScale(made=True))
    assert not prunable.space.widths
    assert any("a tensor the forward makes" in r for r in prunable.graph.fixed_reasons())


class Upsample(nn.Module):
    """Spatial sizes read from a shape (`b.shape[2:]`, FPN/segmentation heads) are not channel counts; a whole
    shape handed to a reshape of another tensor is."""

    def __init__(self, whole: bool = False):
        super().__init__()
        self.whole = whole
        self.a, self.b, self.c = nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(14 if whole else 10, 2, 1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        parts = [nn.functional.interpolate(a, size=b.shape[2:], mode="nearest"), b]
        if self.whole:
            parts.append(self.c(x).reshape(b.shape))
        return self.head(torch.cat(parts, 1))


def test_spatial_sizes_read_from_a_shape_leave_channels_searchable():
    assert [d.name for d in check(Upsample()).space.widths] == ["a", "b"]


def test_a_whole_shape_sizing_another_tensor_freezes_its_channels():
    prunable = check(Upsample(whole=True))
    assert [d.name for d in prunable.space.widths] == ["a"]
    assert "its shape, channel count included, is read whole" in prunable.graph.fixed_reasons()
