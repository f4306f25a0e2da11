"""Filling the budget: widen a candidate, one allowed width at a time, until the next step would break the budget.

A search ends on a candidate that may sit well below its budget: a common ratio on a coarse width grid
(`uniform`), or an agent that found its best early. `fill` spends what is left: each round widens the
narrowest channel group (the lowest kept ratio; ties go to the group listed first) to its next allowed
width, if the result is still feasible; a group that cannot grow once never can (costs only grow as
other groups widen), so it leaves the rounds. Keep flags and depths are left as they are: bringing a
removed block back is a different architecture, not a wider one. Pricing only, no torch.
"""
from __future__ import annotations

from collections.abc import Callable

from .space import Candidate, SearchSpace


def fill(space: SearchSpace, candidate: Candidate, feasible: Callable[[Candidate], bool]) -> Candidate:
    """`candidate` widened while `feasible` holds (see the module docstring); itself if nothing fits."""
    values = dict(candidate)
    growing = [d for d in space.widths if values[d.name] < d.full]
    while growing:
        dim = min(growing, key=lambda d: values[d.name] / d.full)
        wider = {**values, dim.name: dim.choices[dim.index(values[dim.name]) + 1]}
        if feasible(Candidate(wider)):
            values = wider
            if values[dim.name] == dim.full:
                growing.remove(dim)
        else:
            growing.remove(dim)
    return Candidate(values)
