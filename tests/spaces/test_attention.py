"""Attention heads as dimensions: a tiny timm ViT's heads, MLP widths and blocks searched, exactly priced."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
import torchvision
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import assert_close, assert_exact
from evaluators.cost import CostModel
from spaces.derive import derive
from spaces.elastic import ElasticModel
from spaces.materialize import materialize

HEADS, HEAD_DIM, DEPTH = 3, 16, 2


def tiny_vit(fused: bool = True) -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=HEADS * HEAD_DIM, depth=DEPTH, num_heads=HEADS,
                              num_classes=10, qkv_bias=True).eval()
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused  # False: q @ k^T and attn @ v, which FlopCounterMode counts on CPU
    return model


@functools.cache
def derived(fused: bool):
    model = tiny_vit(fused)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
    return derive(model, x[:1]), x, before


def heads(prunable) -> list[str]:
    return [d.name for d in prunable.space.widths if d.name.endswith(".heads")]


def candidates(prunable, rng, n=4):
    return [prunable.space.smallest(), *(prunable.space.sample(rng) for _ in range(n))]


@pytest.mark.parametrize("fused", [True, False])
def test_heads_mlp_widths_and_blocks_are_dimensions(fused):
    prunable, x, before = derived(fused)
    names = heads(prunable)
    assert names == [f"blocks.{i}.attn.qkv.heads" for i in range(DEPTH)]
    for name in names:
        dim = prunable.space[name]
        assert dim.full == HEADS and dim.choices[0] >= 1 and dim.choices[-1] == HEADS
    widths = {d.name for d in prunable.space.widths}
    assert {f"blocks.{i}.mlp.fc1" for i in range(DEPTH)} <= widths
    assert "patch_embed.proj" in widths  # the residual stream stays one searchable group
    # both residual branches of every block are removable: the attention's and the MLP's
    assert [d.name for d in prunable.space.keeps] == [n for i in range(DEPTH) for n in (f"keep:blocks.{i}",
                                                                                         f"keep:blocks.{i}#2")]
    assert not prunable.block_reasons
    assert not any("reshape" in reason for reason in prunable.frozen_groups.values())
    with torch.no_grad():
        assert_close(prunable.model(x), before)  # heads reordered by importance: same function


def test_round_to_rounds_channels_never_head_counts():
    model = tiny_vit()
    prunable = derive(model, torch.randn(1, 3, 32, 32), round_to=8)
    assert heads(prunable) == [f"blocks.{i}.attn.qkv.heads" for i in range(DEPTH)]
    assert all(prunable.space[n].choices == (1, 2, 3) for n in heads(prunable))  # 3 heads: not frozen at 8
    mlp = prunable.space["blocks.0.mlp.fc1"]
    assert all(w % 8 == 0 for w in mlp.choices)  # channels are rounded


@pytest.mark.parametrize("fused", [True, False])
def test_elastic_equals_materialized_and_prices_are_exact(fused, rng):
    prunable, x, before = derived(fused)
    elastic = ElasticModel(prunable).eval()
    cost = CostModel(prunable)
    for candidate in [prunable.space.full(), *candidates(prunable, rng)]:
        subnet = materialize(prunable, candidate).eval()
        with torch.no_grad():
            elastic.apply(candidate)
            assert_close(elastic(x), subnet(x))
            with FlopCounterMode(display=False) as counter:
                subnet(x[:1])
        price = cost.price(candidate)
        assert price.flops == counter.get_total_flops()
        assert price.params == sum(p.numel() for p in subnet.parameters())
    elastic.reset()
    with torch.no_grad():
        assert_close(elastic(x), before)


def test_attention_matmuls_are_priced_per_kept_head():
    prunable, _, _ = derived(False)
    graph, cost = prunable.graph, CostModel(prunable)
    assert len(graph.scaled_flops) == 2 * DEPTH and not graph.constant_flops
    one = {**prunable.space.full(), heads(prunable)[0]: 1}
    per_head = sum(f for node, f, _ in graph.scaled_flops[:2])
    tokens, width = 17, HEADS * HEAD_DIM  # 16 patches and the class token; the residual stream
    linear = 2 * tokens * 4 * HEAD_DIM * width  # per head: 3 x head_dim rows of qkv, head_dim columns of proj
    assert cost.base.flops - cost.price(one).flops == (HEADS - 1) * (per_head + linear)


def test_exported_subnet_has_fewer_heads_and_keeps_train_mode():
    prunable, x, _ = derived(True)
    name = heads(prunable)[1]
    candidate = {**prunable.space.full(), name: 1}
    subnet = materialize(prunable, candidate)
    qkv, proj = subnet.get_submodule("blocks.1.attn.qkv"), subnet.get_submodule("blocks.1.attn.proj")
    assert qkv.weight.shape == (3 * HEAD_DIM, HEADS * HEAD_DIM) and qkv.bias.shape == (3 * HEAD_DIM,)
    assert proj.weight.shape == (HEADS * HEAD_DIM, HEAD_DIM)
    with torch.no_grad():
        assert subnet.eval()(x).shape == (3, 10)  # another batch size than the one derived at
    prunable.model.train()
    try:
        assert materialize(prunable, candidate).training
    finally:
        prunable.model.eval()


def test_heads_are_ranked_by_their_weights_norm():
    model = tiny_vit()
    with torch.no_grad():  # head 2 of block 0 made by far the largest: it must come first
        qkv, proj = model.blocks[0].attn.qkv, model.blocks[0].attn.proj
        rows = torch.arange(3 * HEADS * HEAD_DIM).view(3, HEADS, HEAD_DIM)[:, 2].flatten()
        qkv.weight[rows] *= 10
        proj.weight[:, 2 * HEAD_DIM:] *= 10
        strong = qkv.weight[rows].norm(dim=1)  # row norms: the residual stream's columns are reordered too
    prunable = derive(model, torch.randn(1, 3, 32, 32))
    first = torch.arange(3 * HEADS * HEAD_DIM).view(3, HEADS, HEAD_DIM)[:, 0].flatten()
    assert torch.allclose(model.blocks[0].attn.qkv.weight[first].norm(dim=1), strong)
    scores = prunable.channel_scores["blocks.0.attn.qkv.heads"]
    assert len(scores) == HEADS and scores[0] > 5 * scores[1]


def test_subnet_with_fewer_heads_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    prunable, x, _ = derived(True)
    candidate = {**prunable.space.full(), **{n: 1 for n in heads(prunable)}}
    subnet = materialize(prunable, candidate).eval()
    path = tmp_path / "vit.onnx"
    torch.onnx.export(subnet, (x[:1],), str(path), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path))
    (out,) = session.run(None, {session.get_inputs()[0].name: x[:1].numpy()})
    with torch.no_grad():
        assert_close(torch.from_numpy(out), subnet(x[:1]))


class InferredHeadDim(nn.Module):
    """timm Swin's forms: head_dim inferred (`reshape(B, N, 3, heads, -1)`), a roll and a channels-last pad of
    the tokens; the heads are searched, and the subnet writes head_dim out so that its heads axis is -1."""

    def __init__(self, dim: int = 24, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.embed, self.norm = nn.Linear(8, dim), nn.LayerNorm(dim)
        self.qkv, self.proj, self.head = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, 5)

    def forward(self, x):
        x = self.embed(x)
        B, N, C = x.shape
        y = F.pad(torch.roll(self.norm(x), shifts=1, dims=1), (0, 0, 0, 1))[:, :N]
        q, k, v = self.qkv(y).reshape(B, N, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, -1))
        return self.head(x.mean(1))


def test_inferred_head_dim_roll_and_channels_last_pad(rng):
    torch.manual_seed(0)
    model = InferredHeadDim().eval()
    x = torch.randn(3, 6, 8)
    prunable = derive(model, x[:1])
    assert heads(prunable) == ["qkv.heads"] and prunable.space["qkv.heads"].full == 4
    assert "embed" in {d.name for d in prunable.space.widths}  # the residual stream, through roll and pad
    elastic, cost = ElasticModel(prunable).eval(), CostModel(prunable)
    for candidate in candidates(prunable, rng):
        subnet = materialize(prunable, candidate).eval()
        with torch.no_grad():
            elastic.apply(candidate)
            assert_close(elastic(x), subnet(x))
            with FlopCounterMode(display=False) as counter:
                subnet(x[:1])
        price = cost.price(candidate)
        assert price.flops == counter.get_total_flops()
        assert price.params == sum(p.numel() for p in subnet.parameters())
        qkv = dict(subnet.named_modules()).get("qkv")  # absent when the block is removed
        assert qkv is None or qkv.weight.shape[0] == 3 * 6 * candidate["qkv.heads"]


@functools.cache
def torchvision_vit():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=3,
                                                 hidden_dim=48, mlp_dim=96, num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
    return derive(model, x[:1]), x, before


@pytest.fixture
def no_mha_fastpath():
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # its fused kernel hides work from FlopCounterMode
    yield
    torch.backends.mha.set_fastpath_enabled(fastpath)


def test_multihead_attention_heads_and_residual_stream_are_searched_and_exact(no_mha_fastpath, rng):
    """torchvision's ViT: `nn.MultiheadAttention` traced as the ops it computes (`spaces.mha`)."""
    prunable, x, before = torchvision_vit()
    names = heads(prunable)
    assert names == [f"encoder.layers.encoder_layer_{i}.self_attention.heads" for i in range(2)]
    assert all(prunable.space[n].choices == (1, 2, 3) for n in names)
    widths = {d.name for d in prunable.space.widths}
    assert "conv_proj" in widths  # the residual stream: patches, class token, in_proj columns, out_proj rows
    assert {f"encoder.layers.encoder_layer_{i}.mlp.0" for i in range(2)} <= widths
    assert len(prunable.space.keeps) == 4 and not prunable.graph.fixed_reasons()
    with torch.no_grad():
        assert_close(prunable.model(x), before)
    torch.manual_seed(0)
    fresh = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=3,
                                                 hidden_dim=48, mlp_dim=96, num_classes=10).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fresh(x[:1])  # the module itself, untraced: the same FLOPs as the ops it is traced as
    assert CostModel(prunable).base.flops == counter.get_total_flops()
    elastic, cost = ElasticModel(prunable).eval(), CostModel(prunable)
    for candidate in candidates(prunable, rng, n=2):
        subnet = materialize(prunable, candidate).eval()
        with torch.no_grad():
            elastic.apply(candidate)
            assert_close(elastic(x), subnet(x))
            with FlopCounterMode(display=False) as counter:
                subnet(x[:1])
        assert cost.price(candidate).flops == counter.get_total_flops()
        assert cost.price(candidate).params == sum(p.numel() for p in subnet.parameters())
    one = {**prunable.space.full(), names[0]: 1}
    attention = materialize(prunable, one).get_submodule("encoder.layers.encoder_layer_0.self_attention")
    assert attention.in_proj_weight.shape == (3 * 16, 48) and attention.out_proj.weight.shape == (48, 16)


def test_multihead_attention_asked_for_its_weights_stays_frozen_with_its_reason(no_mha_fastpath):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.attn, self.head = nn.Linear(8, 12), nn.MultiheadAttention(12, 3, batch_first=True), \
                nn.Linear(12, 5)

        def forward(self, x):
            x = self.embed(x)
            y, weights = self.attn(x, x, x)  # need_weights=True: the weights are an output of its own
            return self.head(x + y) + weights.sum()

    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(1, 6, 8)
    prunable = derive(model, x)
    assert any(r.startswith("nn.MultiheadAttention other than a self-attention") for r in prunable.graph.fixed_reasons())
    candidate = prunable.space.smallest()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        materialize(prunable, candidate).eval()(x)
    assert CostModel(prunable).price(candidate).flops == counter.get_total_flops()


@pytest.mark.parametrize("fused", [True, False])
def test_swin_heads_cut_with_their_relative_position_bias_columns(fused, rng):
    """timm's Swin: the bias table (one column per head, gathered by an index) is cut with the heads. With the
    fused attention the shifted block's heads freeze (its window mask is expanded to the written head count
    and added to the bias); unfused, the scores are viewed per window and both blocks' heads are searched."""
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(img_size=16, patch_size=4, window_size=2, embed_dim=8, depths=(2, 1), num_heads=(2, 2),
                            num_classes=5).eval()
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    x = torch.randn(3, 3, 16, 16)
    prunable = derive(model, x[:1])
    expected = ["layers.0.blocks.0.attn.qkv.heads", *([] if fused else ["layers.0.blocks.1.attn.qkv.heads"]),
                "layers.1.blocks.0.attn.qkv.heads"]
    assert heads(prunable) == expected
    # patch merging (`reshape(..., 2, 2, C).flatten(3)`: the channels four times) keeps both streams searched
    assert {"patch_embed.proj", "layers.1.downsample.reduction"} <= {d.name for d in prunable.space.widths}
    elastic, cost = ElasticModel(prunable).eval(), CostModel(prunable)
    for candidate in [*candidates(prunable, rng, n=1), {**prunable.space.full(), **{n: 1 for n in expected}}]:
        subnet = materialize(prunable, candidate).eval()
        with torch.no_grad():
            elastic.apply(candidate)
            assert_close(elastic(x), subnet(x))
            with FlopCounterMode(display=False) as counter:
                subnet(x[:1])
        assert cost.price(candidate).flops == counter.get_total_flops()
        assert cost.price(candidate).params == sum(p.numel() for p in subnet.parameters())
    table = subnet.get_submodule("layers.0.blocks.0.attn").relative_position_bias_table
    assert table.shape == (9, 1)


def test_torchvision_swin_shifted_window_attention_traced_through(no_mha_fastpath, rng):
    """torchvision's Swin: `shifted_window_attention` (weights as arguments), its relative position bias and
    patch merging are traced as the ops they compute; the shift mask, made in forward (`new_zeros`, filled by
    slices), holds no channels: every block's heads are searched, and the stream through patch merging."""
    torch.manual_seed(0)
    model = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 1], num_heads=[2, 2],
                                               window_size=[2, 2], num_classes=5).eval()
    x = torch.randn(3, 3, 16, 16)
    prunable = derive(model, x[:1])
    names = heads(prunable)
    assert names == [f"features.{s}.{b}.attn.qkv.heads" for s, b in ((1, 0), (1, 1), (3, 0))]
    assert not prunable.graph.fixed_reasons() and len(prunable.space.keeps) == 6
    assert {"features.0.0", "features.2.reduction"} <= {d.name for d in prunable.space.widths}
    elastic, cost = ElasticModel(prunable).eval(), CostModel(prunable)
    for candidate in [*candidates(prunable, rng, n=1), {**prunable.space.full(), **{n: 1 for n in names}}]:
        subnet = materialize(prunable, candidate).eval()
        with torch.no_grad():
            elastic.apply(candidate)
            assert_close(elastic(x), subnet(x))
            with FlopCounterMode(display=False) as counter:
                subnet(x[:1])
        assert cost.price(candidate).flops == counter.get_total_flops()
        assert cost.price(candidate).params == sum(p.numel() for p in subnet.parameters())
    attention = subnet.get_submodule("features.1.1.attn")
    assert attention.qkv.weight.shape[0] == 3 * 4 and attention.relative_position_bias_table.shape == (9, 1)
    with torch.no_grad():
        program = torch.export.export(subnet, (x[:1],))  # no op of the traced-through functions left marked
        assert_close(program.module()(x[:1]), subnet(x[:1]))


class ChunkedQkvWrittenWidth(nn.Module):
    """torchvision MaxViT's and timm LeViT's forms: the fused qkv chunked into q, k and v before each is split
    into heads (the heads regrained inside the chunked group), and heads merged back by `reshape(B, -1, C)`
    with the width written beside an inferred token axis (the subnet cannot write a second -1)."""

    def __init__(self, dim: int = 24, heads: int = 4):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.embed, self.qkv = nn.Linear(8, dim), nn.Linear(dim, 3 * dim)
        self.proj, self.head = nn.Linear(dim, dim), nn.Linear(dim, 5)

    def forward(self, x):
        x = self.embed(x)
        B, N, _ = x.shape
        q, k, v = (t.reshape(B, N, self.heads, self.dim // self.heads).transpose(1, 2)
                   for t in torch.chunk(self.qkv(x), 3, dim=-1))
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(B, -1, self.dim))
        return self.head(x.mean(1))


def test_chunked_qkv_heads_and_width_written_beside_inferred_tokens(rng):
    torch.manual_seed(0)
    model = ChunkedQkvWrittenWidth().eval()
    x = torch.randn(3, 6, 8)
    with torch.no_grad():
        before = model(x)
    prunable = derive(model, x[:1])
    with torch.no_grad():
        assert_close(prunable.model(x), before)
    assert heads(prunable) == ["qkv.heads"]  # the heads are searched inside the chunked group
    assert_exact(prunable, [prunable.space.full(), *candidates(prunable, rng)], x)
