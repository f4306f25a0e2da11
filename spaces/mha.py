"""`nn.MultiheadAttention` traced as the functional ops it computes, so that its heads and embedding are searched.

`nn.MultiheadAttention` ties `num_heads x head_dim` to `embed_dim`, so a module of its kind cannot hold fewer
heads than its input has channels. Traced as a leaf, it froze its heads and the residual stream around it
(torchvision's ViT). The tracer instead records what `F.multi_head_attention_forward` computes for a
self-attention whose attention weights are not asked for (`need_weights=False`, torchvision's
`EncoderBlock`): the packed q/k/v projection (`F.linear` on `in_proj_weight`), a reshape into
`(3, num_heads, head_dim)`, `F.scaled_dot_product_attention`, the heads merged back and `out_proj`. The op
and layer tables understand each of these: whole heads of q, k and v rows are cut together with the output
projection's columns, the embedding follows the residual stream, and the subnet (a GraphModule) holds the
head count in its shapes (the heads axis is -1) and never a `num_heads` attribute that could go stale.
FlopCounterMode counts the same `linear` and attention calls on both, so prices stay exact.

Any other call (cross-attention, masks, attention weights asked for, dropout on the attention, separate
q/k/v weights, `bias_k`/`bias_v`, `add_zero_attn`) keeps the module a leaf: frozen, priced as measured.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def traced_through(target: object, args: tuple, kwargs: dict[str, Any]) -> bool:
    """Whether a call of a function a library wrapped as a leaf for torch.fx (`torch.fx.wrap`) is traced through:
    torchvision Swin's `shifted_window_attention` (weights passed as arguments; not V2's cosine attention, whose
    `logit_scale` zeroes a slice of a bias clone in place), its `_get_relative_position_bias` (the bias table
    gathered per head) and `_patch_merging_pad` (four slices concatenated along the channels). Traced as the ops
    they compute, their heads and channels are searched like any other."""
    name = getattr(target, "__name__", None)
    if getattr(target, "__module__", None) != "torchvision.models.swin_transformer":
        return False
    if name == "shifted_window_attention":
        names = ("input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads",
                 "shift_size", "attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale", "training")
        return {**dict(zip(names, args)), **kwargs}.get("logit_scale") is None
    return name in ("_get_relative_position_bias", "_patch_merging_pad")


def traceable(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> bool:
    """Whether a call of `module` is a self-attention that `forward` computes exactly (see the docstring)."""
    if type(module) is not nn.MultiheadAttention or not module._qkv_same_embed_dim:
        return False
    if module.bias_k is not None or module.add_zero_attn or module.dropout > 0:
        return False
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
             "is_causal")
    bound = {**dict(zip(names, args)), **kwargs}
    q, k, v = (bound.get(n) for n in names[:3])
    return (q is not None and q is k and k is v and bound.get("key_padding_mask") is None
            and bound.get("attn_mask") is None and bound.get("need_weights", True) is False
            and not bound.get("is_causal", False))


def forward(module: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor | None = None,
            value: torch.Tensor | None = None, key_padding_mask: None = None, need_weights: bool = False,
            attn_mask: None = None, average_attn_weights: bool = True, is_causal: bool = False
            ) -> tuple[torch.Tensor, None]:
    """What `module(query, query, query, need_weights=False)` computes, as functional calls on its parameters."""
    x = query if module.batch_first else query.transpose(0, 1)  # (batch, tokens, embed)
    batch, tokens = x.shape[0], x.shape[1]
    qkv = F.linear(x, module.in_proj_weight, module.in_proj_bias)
    q, k, v = qkv.reshape(batch, tokens, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v)
    out = F.linear(out.transpose(1, 2).reshape(batch, tokens, -1), module.out_proj.weight, module.out_proj.bias)
    return (out if module.batch_first else out.transpose(0, 1)), None


__all__ = ["forward", "traceable", "traced_through"]
