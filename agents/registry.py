"""The agent registry: agents by name, heavy ones imported only when asked for."""
from __future__ import annotations

import inspect
from importlib import import_module
from typing import Any

from spaces.budget import Budget
from spaces.space import SearchSpace

from .base import Agent, Price

#: name -> "module:Class", imported on first use (agents with heavy dependencies cost nothing until used).
_AGENTS: dict[str, str] = {
    "random": "agents._random:RandomAgent",
    "uniform": "agents._uniform:UniformAgent",
    "abc": "agents._bee_colony:BeeColonyAgent",
    "tpe": "agents._optuna:TPEAgent",
    "nsga2": "agents._optuna:NSGA2Agent",
    "amc": "agents._amc:AMCAgent",
    "evolution": "agents._evolution:EvolutionAgent",
    "metapruning": "agents._evolution:EvolutionAgent",  # scored with a PruningNet by the engine
}


def register_agent(name: str, target: str) -> None:
    """Register `module:Class` under `name`; a name can be registered once."""
    if name in _AGENTS:
        raise ValueError(f"an agent named {name!r} is already registered")
    _AGENTS[name] = target


def list_agents() -> list[str]:
    return sorted(_AGENTS)


def agent_class(name: str) -> type[Agent]:
    if name not in _AGENTS:
        raise KeyError(f"unknown agent {name!r}; choose from {', '.join(list_agents())}")
    module, cls = _AGENTS[name].split(":")
    return getattr(import_module(module), cls)


def agent_options(name: str) -> set[str]:
    """The keyword options an agent takes beyond the common ones (space, budget, price, seed, trials)."""
    options: set[str] = set()
    for cls in agent_class(name).__mro__:
        if cls is Agent:
            break
        init = cls.__dict__.get("__init__")
        if init is not None:
            options |= {p.name for p in inspect.signature(init).parameters.values()
                        if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self")}
    return options


def make_agent(name: str, space: SearchSpace, budget: Budget, *, price: Price, seed: int | None = None,
               trials: int | None = None, **options: Any) -> Agent:
    return agent_class(name)(space, budget, price=price, seed=seed, trials=trials, **options)
