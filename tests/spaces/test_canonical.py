"""One name per subnet: a width that only removed blocks read does not change the subnet (`PrunableModel.canonical`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_close, build_model, derived
from evaluators.cost import CostModel
from spaces.derive import derive
from spaces.materialize import materialize


def _with_removed_blocks(prunable, rng: np.random.Generator, count: int):
    """Random candidates, about half their blocks removed."""
    space = prunable.space
    for _ in range(count):
        candidate = dict(space.sample(rng))
        for d in space.keeps:
            candidate[d.name] = d.choices[int(rng.integers(len(d.choices)))]
        yield space.validate(candidate)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "efficientnet_b0"])
def test_canonical_is_the_same_subnet(name):
    prunable, x, _ = derived(name)
    cost = CostModel(prunable)
    changed = 0
    for candidate in _with_removed_blocks(prunable, np.random.default_rng(0), 12):
        same = prunable.canonical(candidate)
        assert prunable.canonical(same) == same
        assert prunable.keeps(same) == prunable.keeps(candidate)
        assert cost.price(same) == cost.price(candidate)
        if same != candidate:
            changed += 1
            with torch.no_grad():
                assert_close(materialize(prunable, same).eval()(x), materialize(prunable, candidate).eval()(x))
    assert changed > 0  # the models have widths inside removable blocks, and some draws change them


def test_widths_outside_blocks_and_kept_blocks_stay():
    prunable, _, _ = derived("resnet20")
    space = prunable.space
    inner = {name for name, blocks in prunable._width_blocks().items() if blocks}
    assert inner and "conv1" not in inner  # the stem's width is the residual stream's: every stage reads it
    smallest = space.smallest()
    same = prunable.canonical(smallest)  # every block removed: every inner width goes to full, nothing else moves
    assert all(same[n] == (space[n].full if n in inner else smallest[n]) for n in space.names)
    kept = space.uniform(0.3)  # every block kept: nothing is idle
    assert prunable.canonical(kept) == kept


def test_depth_encoding_frees_the_widths_of_the_blocks_past_the_depth():
    model, shape = build_model("resnet20")
    prunable = derive(model, torch.randn(1, *shape, generator=torch.Generator().manual_seed(1)),
                      block_encoding="depth")
    depths = prunable.space.depths
    assert depths
    candidate = dict(prunable.space.smallest())
    for d in depths:
        candidate[d.name] = 1  # each stage keeps its first removable block
    same = prunable.canonical(candidate)
    blocks = prunable._width_blocks()
    first = {run[0] for run in prunable.dimension_runs.values()}
    for name, held in blocks.items():
        if held:
            assert same[name] == (candidate[name] if held & first else prunable.space[name].full)
