"""The search space's vocabulary: `Dimension`, `Candidate`, `SearchSpace` (no torch, so agents stay light)."""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

WIDTH: Literal["width"] = "width"
KEEP: Literal["keep"] = "keep"
DEPTH: Literal["depth"] = "depth"

#: How a derived space encodes the removal of residual blocks: one keep flag per block, or one depth per
#: run of consecutive removable blocks (a stage: keep its first d blocks, as MetaPruning, AutoSlim and OFA).
#: Flags are the default: at 0.25 x FLOPs on the digits ResNet-20/56 (benchmarks/block_encoding.py) neither
#: encoding searched better across agents and models, and TPE, the strongest agent there, did better on flags.
BLOCK_ENCODINGS: tuple[str, ...] = ("flags", "depth")

#: Default width ratios of a channel group (of its full width). 0.1 .. 1.0 in tenths.
DEFAULT_RATIOS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 11))


@dataclass(frozen=True)
class Dimension:
    """One decision of the search: the width of a channel group, whether a residual block is kept, or how
    many blocks of a stage are kept.

    `choices` are the allowed values, ascending: widths for a channel group (the last is `full`),
    `(0, 1)` for a block keep flag (0 = the block is replaced by the identity), `(0, 1, ..., n)` for the
    depth of a stage of `n` removable blocks (d = its first d blocks are kept, the rest replaced by the
    identity). All are integers, so agents treat a depth like a width.
    `features` are static numbers an agent may use (position, kernel, stride, spatial size,
    share of base FLOPs, ...); they never change during a search.
    """

    name: str
    kind: Literal["width", "keep", "depth"]
    full: int
    choices: tuple[int, ...]
    features: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.choices or list(self.choices) != sorted(set(self.choices)):
            raise ValueError(f"{self.name}: choices must be ascending and unique, got {self.choices}")
        if self.choices[-1] != self.full:
            raise ValueError(f"{self.name}: the largest choice must be the full value {self.full}")

    @property
    def smallest(self) -> int:
        return self.choices[0]

    def ratio(self, value: int) -> float:
        """`value` as a fraction of the full value (keep flags: 0.0 or 1.0; depths: kept share of the stage)."""
        return value / self.full

    def index(self, value: int) -> int:
        try:
            return self.choices.index(value)
        except ValueError:
            raise ValueError(f"{value} is not an allowed value of {self.name} {self.choices}") from None

    def nearest(self, ratio: float) -> int:
        """The allowed value whose ratio is closest to `ratio` (ties go to the larger value)."""
        target = ratio * self.full
        return min(self.choices, key=lambda c: (abs(c - target), -c))

    def floor(self, ratio: float) -> int:
        """The largest allowed value whose ratio is at most `ratio` (the smallest choice if none is)."""
        target = ratio * self.full + 1e-9
        below = [c for c in self.choices if c <= target]
        return below[-1] if below else self.choices[0]


class Candidate(Mapping[str, int]):
    """A point of the search space: `{dimension name: width or keep flag}`. Immutable and hashable."""

    __slots__ = ("_values", "_key")

    def __init__(self, values: Mapping[str, int] | Sequence[tuple[str, int]] = ()):
        items = dict(values)
        self._values: dict[str, int] = {k: int(v) for k, v in items.items()}
        self._key = tuple(sorted(self._values.items()))

    def __getitem__(self, name: str) -> int:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Candidate):
            return self._key == other._key
        if isinstance(other, Mapping):
            return self._key == tuple(sorted((k, int(v)) for k, v in other.items()))
        return NotImplemented

    def __repr__(self) -> str:
        return f"Candidate({self._values})"

    def to_dict(self) -> dict[str, int]:
        return dict(self._values)

    def replace(self, **changes: int) -> Candidate:
        return Candidate({**self._values, **changes})


class SearchSpace:
    """The dimensions of one model's search, in network order.

    `widths` are the channel-group dimensions; `keeps` the block decisions (keep flags, or stage depths
    when the space was derived with `block_encoding="depth"`): setting every one of them to its smallest
    choice removes every removable block.

    Encodings an agent may use: `encode` gives each dimension's choice index (integers),
    `to_ratios` each value's share of its full width (floats in (0, 1]).
    """

    def __init__(self, dimensions: Sequence[Dimension]):
        self.dimensions: tuple[Dimension, ...] = tuple(dimensions)
        self._by_name = {d.name: d for d in self.dimensions}
        if len(self._by_name) != len(self.dimensions):
            raise ValueError("dimension names must be unique")

    # -- container protocol -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.dimensions)

    def __iter__(self) -> Iterator[Dimension]:
        return iter(self.dimensions)

    def __getitem__(self, name: str) -> Dimension:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __repr__(self) -> str:
        depths = self.depths
        blocks = (f"{len(depths)} stage depths ({sum(d.full for d in depths)} blocks)" if depths
                  else f"{len(self.keeps)} keep flags")
        return f"SearchSpace({len(self.widths)} widths, {blocks}, 10^{self.log10_size:.1f} candidates)"

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    @property
    def widths(self) -> list[Dimension]:
        return [d for d in self.dimensions if d.kind == WIDTH]

    @property
    def keeps(self) -> list[Dimension]:
        """The block decisions: keep flags and stage depths (0 removes a block / a stage's blocks)."""
        return [d for d in self.dimensions if d.kind in (KEEP, DEPTH)]

    @property
    def depths(self) -> list[Dimension]:
        return [d for d in self.dimensions if d.kind == DEPTH]

    @property
    def size(self) -> int:
        """The number of distinct candidates."""
        return math.prod(len(d.choices) for d in self.dimensions)

    @property
    def log10_size(self) -> float:
        return sum(math.log10(len(d.choices)) for d in self.dimensions)

    # -- candidates ----------------------------------------------------------------------------
    def full(self) -> Candidate:
        """The unpruned model: every width full, every block kept."""
        return Candidate({d.name: d.full for d in self.dimensions})

    def smallest(self) -> Candidate:
        """Every width at its smallest choice, every block removed."""
        return Candidate({d.name: d.smallest for d in self.dimensions})

    def uniform(self, ratio: float, *, keep_blocks: bool = True, nearest: bool = False) -> Candidate:
        """One width ratio for every channel group, each rounded down (or to the nearest) allowed width;
        every block kept (or every removable block removed)."""
        pick = Dimension.nearest if nearest else Dimension.floor
        return Candidate({d.name: (pick(d, ratio) if d.kind == WIDTH else d.full if keep_blocks else d.smallest)
                          for d in self.dimensions})

    def sample(self, rng: np.random.Generator) -> Candidate:
        """A candidate drawn uniformly over each dimension's choices."""
        return Candidate({d.name: d.choices[int(rng.integers(len(d.choices)))] for d in self.dimensions})

    def validate(self, candidate: Mapping[str, int]) -> Candidate:
        """`candidate` as a `Candidate`, or a ValueError naming what is wrong with it."""
        missing = [n for n in self.names if n not in candidate]
        unknown = [n for n in candidate if n not in self._by_name]
        if missing or unknown:
            raise ValueError(f"candidate does not fit the space: missing {missing[:5]}, unknown {unknown[:5]}")
        for d in self.dimensions:
            d.index(int(candidate[d.name]))
        return candidate if isinstance(candidate, Candidate) else Candidate(candidate)

    def encode(self, candidate: Mapping[str, int]) -> list[int]:
        """Each dimension's choice index, in dimension order."""
        return [d.index(int(candidate[d.name])) for d in self.dimensions]

    def decode(self, indices: Sequence[int]) -> Candidate:
        if len(indices) != len(self.dimensions):
            raise ValueError(f"expected {len(self.dimensions)} indices, got {len(indices)}")
        return Candidate({d.name: d.choices[int(i)] for d, i in zip(self.dimensions, indices)})

    def to_ratios(self, candidate: Mapping[str, int]) -> np.ndarray:
        return np.array([d.ratio(int(candidate[d.name])) for d in self.dimensions], dtype=float)

    def from_ratios(self, ratios: Sequence[float]) -> Candidate:
        """The candidate nearest to the given per-dimension ratios (keep flags: ratio >= 0.5 keeps; depths:
        the nearest number of blocks)."""
        return Candidate({d.name: d.nearest(float(r)) for d, r in zip(self.dimensions, ratios)})

    def to_json(self) -> list[dict]:
        return [{"name": d.name, "kind": d.kind, "full": d.full, "choices": list(d.choices),
                 "features": dict(d.features)} for d in self.dimensions]

    @classmethod
    def from_json(cls, data: Sequence[Mapping]) -> SearchSpace:
        return cls([Dimension(name=d["name"], kind=d["kind"], full=int(d["full"]),
                              choices=tuple(int(c) for c in d["choices"]),
                              features=dict(d.get("features", {}))) for d in data])


def width_choices(full: int, ratios: Sequence[float] = DEFAULT_RATIOS, *, multiple: int = 1) -> tuple[int, ...]:
    """The allowed widths of a group of `full` channels: each ratio's width rounded to `multiple`.

    The full width is always allowed, even when it is not a multiple (e.g. 1000 with multiple 8).
    """
    if full < 1 or multiple < 1:
        raise ValueError("full width and multiple must be positive")
    widths = {full}
    for r in ratios:
        if not 0 < r <= 1:
            raise ValueError(f"width ratios must be in (0, 1], got {r}")
        w = max(multiple, int(round(r * full / multiple)) * multiple)
        widths.add(min(w, full))
    return tuple(sorted(widths))
