"""`transformers` vision models: decorated forwards traced, heads of separate q/k/v projections searched, exact."""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import assert_close
from evaluators.cost import CostModel
from spaces.derive import derive
from spaces.elastic import ElasticModel
from spaces.materialize import materialize
from spaces.tracing import trace

HEADS, HEAD_DIM, DEPTH = 3, 4, 2


@functools.cache
def derived(kind: str, attention: str):
    """A tiny ViT or DeiT (random weights, nothing downloaded), derived on one 16x16 image."""
    hf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    settings = {"image_size": 16, "patch_size": 8, "hidden_size": HEADS * HEAD_DIM, "num_hidden_layers": DEPTH,
                "num_attention_heads": HEADS, "intermediate_size": 24, "num_labels": 5,
                "attn_implementation": attention}
    model = (hf.DeiTForImageClassification(hf.DeiTConfig(**settings)) if kind == "deit"
             else hf.ViTForImageClassification(hf.ViTConfig(**settings))).eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x).logits
    return derive(model, x[:1]), x, before


def heads(prunable) -> list[str]:
    return [d.name for d in prunable.space.widths if d.name.endswith(".heads")]


@pytest.mark.parametrize("kind, attention", [("vit", "eager"), ("vit", "sdpa"), ("deit", "eager")])
def test_heads_mlp_widths_and_blocks_searched_and_exact(kind, attention, rng):
    prunable, x, before = derived(kind, attention)
    assert heads(prunable) == [f"{kind}.layers.{i}.attention.q_proj.heads" for i in range(DEPTH)]
    assert all(prunable.space[n].choices == (1, 2, 3) for n in heads(prunable))
    widths = {d.name for d in prunable.space.widths}
    assert {f"{kind}.layers.{i}.mlp.fc1" for i in range(DEPTH)} <= widths
    assert f"{kind}.embeddings.patch_embeddings.projection" in widths  # the residual stream, searched
    assert len(prunable.space.keeps) == 2 * DEPTH and prunable.frozen_groups == {"classifier": "model output"}
    with torch.no_grad():
        assert_close(prunable.model(x).logits, before)  # reordered by importance: the same function
    elastic, cost = ElasticModel(prunable).eval(), CostModel(prunable)
    for candidate in [prunable.space.smallest(), *(prunable.space.sample(rng) for _ in range(3))]:
        subnet = materialize(prunable, candidate).eval()
        with torch.no_grad():
            elastic.apply(candidate)
            out = subnet(x)
            assert type(out).__name__ == "ImageClassifierOutput"  # the model's own output structure
            assert_close(elastic(x).logits, out.logits)
            with FlopCounterMode(display=False) as counter:
                subnet(x[:1])
        price = cost.price(candidate)
        assert price.flops == counter.get_total_flops()
        assert price.params == sum(p.numel() for p in subnet.parameters())
    if attention == "eager":  # q @ k^T and attn @ v counted on CPU, priced per kept head
        assert len(prunable.graph.scaled_flops) == 2 * DEPTH


def test_subnet_cuts_q_k_v_rows_and_output_columns_per_head_and_exports():
    prunable, x, _ = derived("vit", "eager")
    candidate = {**prunable.space.full(), heads(prunable)[1]: 1}
    subnet = materialize(prunable, candidate).eval()
    attention = subnet.get_submodule("vit.layers.1.attention")
    for name in ("q_proj", "k_proj", "v_proj"):
        assert getattr(attention, name).weight.shape == (HEAD_DIM, HEADS * HEAD_DIM)
    assert attention.o_proj.weight.shape == (HEADS * HEAD_DIM, HEAD_DIM)
    assert subnet.get_submodule("vit.layers.0.attention.q_proj").weight.shape[0] == HEADS * HEAD_DIM
    with torch.no_grad():
        expected = subnet(x).logits  # another batch size than the one derived at: the heads axis is -1
        assert expected.shape == (3, 5)
        program = torch.export.export(subnet, (x[:1],))
        assert_close(program.module()(x[:1]).logits, expected[:1])


def test_keywords_in_the_example_reach_the_decorator():
    """`return_dict=False` in a dict example: the decorator (`can_return_tuple`) pops it and returns a tuple."""
    prunable, x, _ = derived("vit", "eager")
    gm = trace(prunable.model, {"pixel_values": x[:1], "return_dict": False})
    with torch.no_grad():
        out = gm(x[:1])  # a structured example is traced at its own batch size
    assert isinstance(out, tuple) and out[0].shape == (1, 5)


def _pops(function):
    """A decorator in transformers' manner: `functools.wraps`, `(self, *args, **kwargs)`, a keyword popped."""
    @functools.wraps(function)
    def wrapper(self, *args, **kwargs):
        scale = kwargs.pop("scale", 2.0)
        return function(self, *args, **kwargs) * scale
    return wrapper


class Decorated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3), nn.Linear(8, 4)

    @_pops
    def forward(self, x, mask=None, **kwargs):
        return self.head(self.conv(x).mean((2, 3)))


def test_a_decorated_forward_traces_and_its_decorator_runs():
    torch.manual_seed(0)
    model = Decorated().eval()
    x = torch.randn(2, 3, 8, 8)
    prunable = derive(model, x[:1])
    assert [d.name for d in prunable.space.widths] == ["conv"]
    with torch.no_grad():
        assert_close(materialize(prunable, prunable.space.full())(x), model(x))  # scaled by 2, as the model
        assert_close(trace(model, {"x": x, "scale": 3.0})(x), model(x, scale=3.0))


def test_swin_heads_with_their_bias_table_columns_streams_and_mlps_searched(rng):
    """transformers' Swin: windows of `batch x windows` rows (`B_, N, C = x.shape`) traced symbolically, the
    channel count written beside a -1 (`view(-1, ws, ws, C)`) follows the widths, the relative position bias
    table (one column per head, gathered by an index) is cut with the heads; drop path kept in train mode. The
    shift mask, made in forward and expanded to the batch of windows, is traced as graph ops (`torch.arange`
    recorded) and holds no channels: the shifted block's heads are searched too."""
    hf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = hf.SwinConfig(image_size=16, patch_size=4, embed_dim=8, depths=[2, 1], num_heads=[2, 2], window_size=2,
                           num_labels=5, drop_path_rate=0.5, attn_implementation="eager")  # block 1: shifted
    model = hf.SwinForImageClassification(config).eval()
    x = torch.randn(3, 3, 16, 16)
    prunable = derive(model, x[:1])
    names = [f"swin.encoder.layers.{i}.blocks.{b}.attention.q_proj.heads" for i, b in ((0, 0), (0, 1), (1, 0))]
    assert heads(prunable) == names and all(prunable.space[n].choices == (1, 2) for n in names)
    assert {"swin.embeddings.patch_embeddings.projection", "swin.encoder.layers.0.downsample.reduction",
            "swin.encoder.layers.0.blocks.0.mlp.fc1", "swin.encoder.layers.1.blocks.0.mlp.fc1"} <= {
                d.name for d in prunable.space.widths}
    assert len(prunable.space.keeps) == 6 and not prunable.graph.fixed_reasons()
    elastic, cost = ElasticModel(prunable).eval(), CostModel(prunable)
    for candidate in [prunable.space.smallest(), prunable.space.sample(rng)]:
        subnet = materialize(prunable, candidate).eval()
        with torch.no_grad():
            elastic.apply(candidate)
            assert_close(elastic(x).logits, subnet(x).logits)  # another batch size than the one derived at
            with FlopCounterMode(display=False) as counter:
                subnet(x[:1])
        assert cost.price(candidate).flops == counter.get_total_flops()
        assert cost.price(candidate).params == sum(p.numel() for p in subnet.parameters())
    one = {**prunable.space.full(), names[0]: 1}
    table = materialize(prunable, one).get_submodule("swin.encoder.layers.0.blocks.0.attention.relative_position_bias")
    assert table.relative_position_bias_table.shape == (9, 1)  # (2 x 2 - 1)^2 offsets, the kept head's column
    model.train()
    subnet = materialize(prunable, prunable.space.full()).train()
    with torch.no_grad():
        torch.manual_seed(1)
        expected = model(x).logits
        torch.manual_seed(1)
        assert_close(subnet(x).logits, expected)  # the same paths dropped
        assert not torch.allclose(subnet(x).logits, expected)  # ... and drop path does drop
