"""Budgets: limits on a candidate's costs that every agent must respect. All limits must hold.

A `Limit` is on one cost (`flops`, `params`, later `latency`), either absolute or relative to the base
model (`0.4flops`: at most 0.4 x the base model's FLOPs). `Budget.resolve(base)` turns relative
limits into absolute ones; agents then ask `feasible(costs)` or `violations(costs)` (positive =
over budget, as Optuna's constraints expect) of the costs a `Price` function returns.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .space import Candidate

METRICS = ("flops", "params", "latency")

#: candidate -> its costs ({"flops": ..., "params": ...}); cheap, no forward pass. The engine injects one
#: into every agent (`agents.base.Agent`) and prices every candidate with it (`search.engine.loop`).
Price = Callable[[Candidate], Mapping[str, float]]


@dataclass(frozen=True)
class Limit:
    metric: str
    value: float
    relative: bool
    text: str = ""

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown budget metric {self.metric!r}")
        if self.value <= 0:
            raise ValueError("a budget must be positive")

    def absolute(self, base: Mapping[str, float]) -> float:
        return self.value * base[self.metric] if self.relative else self.value

    def __str__(self) -> str:
        return self.text or (f"{self.value:g}{self.metric}" if self.relative else f"{self.metric}<={self.value:g}")


class Budget:
    """A conjunction of limits, resolved against the base model's costs."""

    def __init__(self, limits: Sequence[Limit], base: Mapping[str, float] | None = None):
        self.limits = tuple(limits)
        self.base = dict(base) if base is not None else None
        self._caps = [lim.absolute(base) for lim in self.limits] if base is not None else None

    def resolve(self, base: Mapping[str, float]) -> Budget:
        return Budget(self.limits, base)

    @property
    def caps(self) -> dict[str, float]:
        """The absolute cap on each metric (the tightest where a metric is limited twice)."""
        self._require_base()
        caps: dict[str, float] = {}
        for lim, cap in zip(self.limits, self._caps):
            caps[lim.metric] = min(cap, caps.get(lim.metric, float("inf")))
        return caps

    def _require_base(self) -> None:
        if self._caps is None:
            raise RuntimeError("resolve the budget against the base model's costs first")

    def violations(self, costs: Mapping[str, float]) -> list[float]:
        """Per limit: (cost - cap) / cap; <= 0 where the limit holds."""
        self._require_base()
        return [(costs[lim.metric] - cap) / cap for lim, cap in zip(self.limits, self._caps)]

    def feasible(self, costs: Mapping[str, float]) -> bool:
        return all(v <= 1e-12 for v in self.violations(costs))

    def __str__(self) -> str:
        return "+".join(str(lim) for lim in self.limits) or "unlimited"

    def __repr__(self) -> str:
        return f"Budget({self})"
