"""The layer table: norms, functional forms, subclasses, a user's own layer; costs exact on every op."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import assert_close
from evaluators import latency
from evaluators.cost import CostModel
from evaluators.latency_backends import missing
from spaces.derive import derive
from spaces.elastic import ElasticModel
from spaces.graph import UntraceableModel
from spaces.layers import register_layer
from spaces.materialize import materialize


def counted(module: nn.Module, x: torch.Tensor) -> int:
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            module(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops()


def check_all(model: nn.Module, shape=(3, 8, 8), seed=0, candidates=3):
    """Derive; then reorder keeps outputs, elastic == materialized, costs == FlopCounterMode, train mode kept."""
    torch.manual_seed(seed)
    model.eval()
    x = torch.randn(2, *shape)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        before = model(x)
        prunable = derive(model, x[:1])
        assert_close(model(x), before)
    cost, elastic = CostModel(prunable), ElasticModel(prunable).eval()
    space = prunable.space
    for candidate in [space.full(), space.smallest(), *(space.sample(rng) for _ in range(candidates))]:
        subnet = materialize(prunable, candidate).eval()
        elastic.apply(candidate)
        with torch.no_grad():
            assert_close(elastic(x), subnet(x))
        price = cost.price(candidate)
        assert price.flops == counted(subnet, x[:1])
        assert price.params == sum(p.numel() for p in subnet.parameters())
    full = materialize(prunable, space.full()).train()
    reference = __import__("copy").deepcopy(prunable.model).train()
    with torch.no_grad():
        torch.manual_seed(3)
        expected = reference(x)
        torch.manual_seed(3)
        assert_close(full(x), expected)
    return prunable


def groups_by_producer(prunable):
    return {p: g for g in prunable.graph.groups for p in g.producers}


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.gn = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.b, self.inorm = nn.Conv2d(16, 8, 1), nn.InstanceNorm2d(8, affine=True, track_running_stats=True)
        self.c, self.head = nn.Conv2d(8, 8, 1), nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.gn(self.a(x)))
        x = F.relu(self.inorm(self.b(x)))
        x = self.c(x).permute(0, 2, 3, 1)
        x = F.layer_norm(x, (8,))  # LayerNorm over channels, channels last
        return self.head(x.mean((1, 2)))


def test_group_instance_and_layer_norm_are_channel_uses():
    prunable = check_all(Norms())
    groups = groups_by_producer(prunable)
    assert groups["a"].prunable and groups["a"].blocks == 4  # GroupNorm's groups stay whole
    assert all(w % 4 == 0 for w in next(d for d in prunable.space.widths if d.name == "a").choices)
    assert groups["b"].prunable and groups["c"].prunable


class Functional(nn.Module):
    """Parameters used through F.conv2d / F.linear / F.batch_norm, as custom layers do."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(12, 3, 3, 3) * 0.3)
        self.mean, self.var = nn.Buffer(torch.rand(12)), nn.Buffer(torch.rand(12) + 0.5)
        self.w2 = nn.Parameter(torch.randn(6, 12) * 0.3)
        self.b2 = nn.Parameter(torch.randn(6))

    def forward(self, x):
        x = F.conv2d(x, self.w1, padding=1)
        x = F.relu(F.batch_norm(x, self.mean, self.var, training=False))
        return F.linear(x.mean((2, 3)), self.w2, self.b2)


def test_functional_conv_linear_and_batch_norm_on_parameters_are_layers():
    prunable = check_all(Functional())
    assert [d.name for d in prunable.space.widths] == ["w1"]


class Blur(nn.Module):
    """TResNet's anti-aliasing: a fixed per-channel filter applied with a depthwise F.conv2d on a buffer."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.filt = nn.Buffer(torch.tensor([1.0, 2.0, 1.0]).outer(torch.tensor([1.0, 2.0, 1.0])).div(16)
                              .expand(8, 1, 3, 3).contiguous())

    def forward(self, x):
        y = F.relu(self.conv(x))
        return self.head(F.conv2d(F.pad(y, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=8))


def test_a_functional_depthwise_conv_passes_its_channels_and_is_priced():
    prunable = check_all(Blur())
    assert [d.name for d in prunable.space.widths] == ["conv"]  # the blur no longer freezes them
    subnet = materialize(prunable, {"conv": 4})
    assert subnet.filt.shape[0] == 4 and subnet.head.in_channels == 4


class Upsampler(nn.Module):
    """A transposed conv: an entry that freezes its channels instead of pruning them; still priced."""

    def __init__(self):
        super().__init__()
        self.down, self.up, self.head = nn.Conv2d(3, 8, 2, stride=2), nn.ConvTranspose2d(8, 6, 2, stride=2), nn.Conv2d(6, 2, 1)
        self.mid = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.head(F.relu(self.up(F.relu(self.mid(F.relu(self.down(x)))))))


def test_a_layer_its_entry_freezes_is_still_priced():
    prunable = check_all(Upsampler())
    assert "up" in dict(prunable.graph.constant_flops)
    assert any("transposed" in reason for reason in prunable.graph.fixed_reasons())


class Attention(nn.Module):
    """Matmuls over channels outside any layer: frozen, and still priced exactly (the self-attention
    MultiheadAttention is traced as its ops: its heads are searched, `spaces.mha`)."""

    def __init__(self):
        super().__init__()
        self.embed, self.mha = nn.Conv2d(3, 16, 2, stride=2), nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 4)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = t + self.mha(t, t, t, need_weights=False)[0]
        t = t + self.fc2(F.gelu(self.fc1(t)))
        gram = torch.softmax(t @ t.transpose(1, 2), -1) @ t
        return self.head(gram.mean(1))


def test_attention_and_matmuls_are_priced_and_their_channels_frozen():
    prunable = check_all(Attention())
    graph = prunable.graph
    assert graph.constant_flops  # the matmuls over channels
    assert any("mha" in name for name in graph.tensors if name.endswith("out_proj.weight"))
    assert [d.name for d in prunable.space.widths] == ["mha.heads", "fc1"]  # the heads and the MLP's hidden width
    assert all(reason for g in graph.groups if not g.prunable for reason in [g.fixed] if g.size > 1)


class Scale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1)


class WithScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.s, self.b = nn.Conv2d(3, 8, 1), Scale(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(F.relu(self.s(self.a(x))))


def test_register_layer_teaches_a_users_own_layer():
    def scale_channels(graph, node, module):
        x = node.args[0]
        spec = graph.spec_at(x, 1, module.weight.shape[0], f"input of {node.target} not understood")
        graph.use(f"{node.target}.weight", 0, spec.layout)
        graph.set_spec(node, spec.axis, spec.layout)

    register_layer(Scale, scale_channels)
    prunable = check_all(WithScale())
    assert prunable.graph.modules["s"] is prunable.model.s  # a leaf of the trace
    assert [d.name for d in prunable.space.widths] == ["a"]


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        if x.sum() > 0:
            return self.a(x)
        return x


def test_an_untraceable_model_is_one_line_naming_where():
    with pytest.raises(UntraceableModel, match=r"test_layers.py:\d+ `if x.sum\(\) > 0:`") as info:
        derive(Untraceable(), torch.randn(1, 3, 8, 8))
    assert "\n" not in str(info.value)


class Regularized(nn.Module):
    """Functional dropout and a residual block with a layer-scale parameter read directly."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.full((1, 8, 1, 1), 0.5))
        self.bias = nn.Parameter(torch.zeros(1, 8, 1, 1))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.stem(x)) + self.bias
        x = x + self.gamma * F.relu(self.conv(x))
        x = F.dropout(x.mean((2, 3)), 0.5, training=self.training)
        return self.head(x)


def test_train_mode_is_kept_and_blocks_coexist_with_parameters_read_directly():
    prunable = check_all(Regularized())
    assert len(prunable.space.keeps) == 1
    subnet = materialize(prunable, prunable.space.full()).train()
    x = torch.randn(2, 3, 8, 8)
    assert not torch.equal(subnet(x), subnet(x))  # dropout draws in train mode




@pytest.mark.parametrize("name", ["mobilenetv2_050", "tf_efficientnet_lite0", "nf_resnet26", "ghostnet_050",
                                  "vit_tiny_patch16_224"])
def test_timm_models_derive_with_exact_costs_and_train_mode_kept(name):
    timm_lib = pytest.importorskip("timm")
    kwargs = {"img_size": 32} if name.startswith("vit") else {}
    torch.manual_seed(0)
    try:
        model = timm_lib.create_model(name, pretrained=False, num_classes=10, drop_rate=0.2, drop_path_rate=0.1,
                                      **kwargs)
    except TypeError:  # a model without drop-path
        model = timm_lib.create_model(name, pretrained=False, num_classes=10, drop_rate=0.2, **kwargs)
    prunable = check_all(model, shape=(3, 32, 32), candidates=1)
    if not name.startswith("vit"):
        cost = CostModel(prunable)
        assert cost.price(prunable.space.smallest()).flops <= 0.5 * cost.base.flops


class ShapeBranch(nn.Module):
    """Python code that branches on shapes (like timm's pad_same) and reshapes with the batch size."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.shortcut = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, padding=1), nn.Identity()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        if x.shape[-1] % 2 == 0:
            x = F.pad(x, (1, 1, 1, 1))
        x = F.relu(self.a(x))
        x = self.shortcut(x) + self.b(x)
        b, c, h, w = x.shape
        return self.head(x.reshape(b, c, h * w).mean(-1))


def test_shape_dependent_code_is_traced_with_concrete_shapes_and_any_batch():
    prunable = check_all(ShapeBranch())
    assert len(prunable.space.keeps) == 1  # the Identity shortcut is its input
    subnet = materialize(prunable, prunable.space.smallest())
    assert subnet(torch.randn(3, 3, 8, 8)).shape == (3, 3)


class ChannelMix(nn.Module):
    """A user's own compute layer: a 1x1 mixing of channels written with its own weight layout."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in) / c_in ** 0.5)

    def forward(self, x):
        return F.conv2d(x, self.weight[:, :, None, None])


class WithMix(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.mix, self.b = nn.Conv2d(3, 8, 1), ChannelMix(8, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(F.relu(self.mix(F.relu(self.a(x)))))


def test_a_users_compute_layer_is_timed_on_every_runtime_through_its_entry():
    """No latency code knows the layer: its entry's `export` is what each runtime times."""
    def mix_channels(graph, node, module):
        name = str(node.target)
        spec = graph.spec_at(node.args[0], 1, module.weight.shape[1], f"input of {name} not understood")
        graph.use(f"{name}.weight", 1, spec.layout)
        out = graph.new_group(module.weight.shape[0], producer=name)
        graph.use(f"{name}.weight", 0, out)
        graph.set_spec(node, 1, out)
        graph.site(node, name, f"{name}.weight", "channel_mix", {})

    def mix_export(site, in_shape, out_len, in_len, batch):
        return ChannelMix(in_len, out_len).eval(), torch.randn(batch, in_len, *in_shape[2:])

    register_layer(ChannelMix, mix_channels, name="channel_mix", flops=True, export=mix_export)
    prunable = check_all(WithMix())
    assert [d.name for d in prunable.space.widths] == ["a", "mix"]
    site = next(s for s in prunable.graph.sites if s.kind == "channel_mix")
    backends = ["torch"] + (["onnxruntime"] if missing("onnxruntime") is None else [])
    for backend in backends:
        call, device = latency._layer_call(prunable, site, 5, 6, 2, torch.device("cpu"), backend)
        out = call()
        assert tuple((out if backend == "torch" else out[0]).shape) == (2, 5, 8, 8) and device.type == "cpu"
