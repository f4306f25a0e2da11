"""Parse `--budget` strings into a `spaces.budget.Budget`.

Grammar (case-insensitive, one limit per string, `--budget` repeatable, all limits must hold):
  <ratio>flops      e.g. 0.4flops   FLOPs at most ratio x the base model's (0 < ratio <= 1)
  <ratio>params     e.g. 0.5params  parameters at most ratio x the base model's
  <n>mflops | <n>gflops | <n>kflops   absolute FLOPs per sample (FlopCounterMode's count)
  <n>m | <n>k       absolute parameter count (e.g. 1.2m, 300k)
  <n>ms             latency in milliseconds;  <ratio>latency   relative latency
Units are read case-insensitively (`0.4FLOPS` is `0.4flops`, as `2GFLOPs` is `2gflops`): the unit's letters
name one thing whatever their case, so refusing them would only stand in the user's way. Two limits on one
metric both hold (the tighter decides) and are warned about: one of them is probably a slip.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable

from spaces.budget import Budget, Limit

from search.errors import UserError

log = logging.getLogger(__name__)

GRAMMAR = ("<ratio>flops | <ratio>params | <n>mflops | <n>gflops | <n>kflops | <n>m | <n>k (params) | "
           "<n>ms | <ratio>latency   e.g. 0.4flops, 300mflops, 1.2m")
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?"
_UNITS = {
    "flops": ("flops", True, 1.0), "params": ("params", True, 1.0), "latency": ("latency", True, 1.0),
    "kflops": ("flops", False, 1e3), "mflops": ("flops", False, 1e6), "gflops": ("flops", False, 1e9),
    "k": ("params", False, 1e3), "m": ("params", False, 1e6), "ms": ("latency", False, 1.0),
}


def parse_limit(text: str) -> Limit:
    match = re.fullmatch(_NUMBER + r"\s*([a-z]+)", text.strip().lower())
    if not match or match.group(3) not in _UNITS:
        raise UserError(f"cannot read budget {text!r}; expected {GRAMMAR}")
    try:
        number = float(f"{match.group(1)}e{match.group(2) or 0}")
    except (OverflowError, ValueError):
        number = math.inf
    metric, relative, scale = _UNITS[match.group(3)]
    if not math.isfinite(number * scale):
        raise UserError(f"budget {text!r} is not a finite number")
    if number <= 0:
        raise UserError(f"budget {text!r} must be positive")
    if relative and number > 1:
        raise UserError(f"relative budget {text!r} must be a ratio in (0, 1] of the base model")
    return Limit(metric, number * scale, relative, text.strip())


def parse_budget(texts: Iterable[str]) -> Budget:
    limits = [parse_limit(t) for t in texts]
    if not limits:
        raise UserError(f"give at least one --budget ({GRAMMAR})")
    for metric in dict.fromkeys(lim.metric for lim in limits):
        same = [lim.text for lim in limits if lim.metric == metric]
        if len(same) > 1:
            log.warning("--budget limits %s twice (%s): both must hold, so the tighter one decides; give one "
                        "--budget per metric if that was a slip", metric, ", ".join(same))
    return Budget(limits)


_UNIT = {"flops": (1e6, "MFLOPs"), "params": (1e6, "M parameters"), "latency": (1.0, "ms")}


def unmet(budget: Budget, smallest: dict[str, float], base: dict[str, float]) -> str:
    """Why a resolved `budget` cannot be met: what the smallest subnet costs for each limit it breaks, in the
    units the limit was given in (milliseconds for `1ms`, a ratio for `0.4flops`)."""
    broken = []
    for lim in budget.limits:
        cost, cap = smallest.get(lim.metric), lim.absolute(base)
        if cost is None or cost <= cap * (1 + 1e-12):
            continue
        if lim.relative:
            broken.append(f"{cost / base[lim.metric]:.3f} x its {lim.metric} (budget {lim})")
        else:
            scale, unit = _UNIT.get(lim.metric, (1.0, lim.metric))
            what = "a predicted latency of " if lim.metric == "latency" else ""
            broken.append(f"{what}{cost / scale:.3g} {unit} (budget {lim}; the base model {base[lim.metric] / scale:.3g}"
                          f" {unit})")
    return (f"budget {budget} cannot be met: the smallest subnet of this space has {' and '.join(broken)}; loosen "
            f"it or widen the space (--width-ratios)")
