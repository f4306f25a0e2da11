"""The search-space vocabulary: dimensions, candidates, encodings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from spaces import DEPTH, KEEP, WIDTH, Candidate, Dimension, SearchSpace, width_choices


def space() -> SearchSpace:
    return SearchSpace([
        Dimension("conv1", WIDTH, 16, width_choices(16)),
        Dimension("keep:layer1.0", KEEP, 1, (0, 1)),
        Dimension("layer1.0.conv1", WIDTH, 64, width_choices(64, (0.25, 0.5, 1.0), multiple=8)),
    ])


def test_width_choices_round_and_always_include_full():
    assert width_choices(16) == (2, 3, 5, 6, 8, 10, 11, 13, 14, 16)
    assert width_choices(64, (0.25, 0.5, 1.0), multiple=8) == (16, 32, 64)
    assert width_choices(1000, (0.5,), multiple=8) == (496, 1000)
    assert width_choices(4, (0.1,), multiple=8) == (4,)
    with pytest.raises(ValueError):
        width_choices(16, (1.5,))


def test_dimension_rejects_bad_choices_and_rounds_ratios():
    with pytest.raises(ValueError):
        Dimension("d", WIDTH, 8, (4, 2, 8))
    with pytest.raises(ValueError):
        Dimension("d", WIDTH, 8, (2, 4))
    d = Dimension("d", WIDTH, 64, (16, 32, 64))
    assert d.nearest(0.3) == 16 and d.nearest(0.375) == 32 and d.floor(0.49) == 16 and d.floor(0.1) == 16


def test_candidate_is_a_hashable_mapping():
    a = Candidate({"x": 3, "y": 1})
    b = Candidate([("y", 1), ("x", 3)])
    assert a == b and hash(a) == hash(b) and a == {"x": 3, "y": 1}
    assert len({a, b}) == 1
    assert a.replace(x=4)["x"] == 4 and a["x"] == 3
    assert json.loads(json.dumps(a.to_dict())) == a


def test_encode_decode_and_ratios_round_trip():
    s = space()
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = s.sample(rng)
        assert s.decode(s.encode(c)) == c
        assert s.from_ratios(s.to_ratios(c)) == c
    assert s.size == 10 * 2 * 3
    assert s.full() == {"conv1": 16, "keep:layer1.0": 1, "layer1.0.conv1": 64}
    assert s.smallest() == {"conv1": 2, "keep:layer1.0": 0, "layer1.0.conv1": 16}
    assert s.uniform(0.5) == {"conv1": 8, "keep:layer1.0": 1, "layer1.0.conv1": 32}


def test_sampling_is_reproducible_with_a_seed():
    s = space()
    draw = lambda seed: [s.sample(np.random.default_rng(seed)) for _ in range(5)]  # noqa: E731
    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_validate_names_what_is_wrong():
    s = space()
    with pytest.raises(ValueError, match="missing"):
        s.validate({"conv1": 16})
    with pytest.raises(ValueError, match="not an allowed value"):
        s.validate({"conv1": 7, "keep:layer1.0": 1, "layer1.0.conv1": 64})
    assert isinstance(s.validate(dict(s.full())), Candidate)


def test_json_round_trip():
    s = space()
    again = SearchSpace.from_json(json.loads(json.dumps(s.to_json())))
    assert [d.name for d in again] == s.names and again["conv1"].choices == s["conv1"].choices


def test_stage_depths_are_integer_block_decisions():
    s = SearchSpace([*space(), Dimension("depth:layer2", DEPTH, 3, (0, 1, 2, 3))])
    assert [d.name for d in s.keeps] == ["keep:layer1.0", "depth:layer2"]
    assert [d.name for d in s.depths] == ["depth:layer2"]
    assert s.full()["depth:layer2"] == 3 and s.smallest()["depth:layer2"] == 0
    assert s.uniform(0.5)["depth:layer2"] == 3 and s.uniform(0.5, keep_blocks=False)["depth:layer2"] == 0
    assert s.from_ratios([1.0, 0.0, 1.0, 0.6])["depth:layer2"] == 2
    assert "1 stage depths (3 blocks)" in repr(s)
    again = SearchSpace.from_json(json.loads(json.dumps(s.to_json())))
    assert again["depth:layer2"] == s["depth:layer2"]
    with pytest.raises(ValueError):
        Dimension("depth:x", DEPTH, 3, (0, 1, 2))
