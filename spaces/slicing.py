"""Which elements of a tensor axis survive when each channel group is cut to a width.

The convention everywhere: a group of width `k` keeps its first `k` channels (after reordering by
importance); a group split into `b` conv-groups keeps the first `k / b` channels of each.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .channels import ChannelGroup, Layout, TensorUse


def kept_channels(group: ChannelGroup, width: int) -> torch.Tensor:
    """Indices (within the group) of the channels a width keeps."""
    if group.blocks == 1:
        return torch.arange(width)
    block = group.size // group.blocks
    per_block = width // group.blocks
    return (torch.arange(group.blocks)[:, None] * block + torch.arange(per_block)[None, :]).flatten()


def kept_length(use: TensorUse, widths: Sequence[int], groups: Sequence[ChannelGroup]) -> int:
    """How many elements of the use's axis survive."""
    if use.local:
        seg = use.layout[0]
        return widths[seg.group] // groups[seg.group].blocks
    return sum(widths[s.group] * s.inner for s in use.layout)


def is_prefix(use: TensorUse, groups: Sequence[ChannelGroup]) -> bool:
    """True when the kept elements are always a prefix of the axis (a view, no gather)."""
    return use.local or (len(use.layout) == 1 and groups[use.layout[0].group].blocks == 1)


def axis_index(layout: Layout, widths: Sequence[int], groups: Sequence[ChannelGroup]) -> torch.Tensor:
    """The kept element indices along an axis laid out as `layout`."""
    parts, offset = [], 0
    for seg in layout:
        channels = kept_channels(groups[seg.group], widths[seg.group])
        parts.append(offset + (channels[:, None] * seg.inner + torch.arange(seg.inner)[None, :]).flatten())
        offset += seg.length
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def slice_tensor(tensor: torch.Tensor, uses: Sequence[TensorUse], widths: Sequence[int],
                 groups: Sequence[ChannelGroup]) -> torch.Tensor:
    """`tensor` cut to the widths: a view where every cut is a prefix, else a gathered copy."""
    out = tensor
    for use in uses:
        if is_prefix(use, groups):
            out = out.narrow(use.axis, 0, kept_length(use, widths, groups))
        else:
            index = axis_index(use.layout, widths, groups).to(tensor.device)
            out = out.index_select(use.axis, index)
    return out


def piece_sizes(pieces: Sequence[Layout], widths: Sequence[int]) -> list[int]:
    """The kept length of each piece of a split along channels (see `ChannelGraph.splits`)."""
    return [sum(widths[s.group] * s.inner for s in piece) for piece in pieces]


def kept_slice(index: tuple[slice, ...], axis: int, pieces: Sequence[Layout], widths: Sequence[int]) -> tuple:
    """A channel slice's index (`full_index` form) at the widths: `pieces` = the layouts before, in, after it."""
    before, inside, _ = piece_sizes(pieces, widths)
    return index[:axis] + (slice(before, before + inside),) + index[axis + 1:]


def kept_shape(shape: Sequence[int], uses: Sequence[TensorUse], widths: Sequence[int],
               groups: Sequence[ChannelGroup]) -> tuple[int, ...]:
    """The shape of a tensor of full `shape` after cutting it to the widths."""
    out = list(shape)
    for use in uses:
        out[use.axis] = kept_length(use, widths, groups)
    return tuple(out)
