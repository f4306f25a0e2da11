"""`amc`: AMC-style DDPG (He et al., ECCV 2018, "AMC: AutoML for Model Compression") on any derived space.

One episode walks the space's dimensions in their order (network order) and makes one decision per
dimension; the finished walk is one candidate. `ask()` returns it, `tell()` gives its reward, and every
transition of the episode gets that reward (as in AMC).
- Actions are in [0, 1]. For a width dimension the action is the width ratio, mapped onto the allowed
  widths with `Dimension.nearest` (as AMC rounds its preserve ratio), never above the wall's cap. Not
  `Dimension.floor`: the actor's sigmoid never reaches 1, so floor could never give a full width.
  Keep flags (block removal) are decided in the same walk: an action below 0.5 removes the block,
  0.5 or more keeps it.
- State per step: index, type (1 width / 0 keep), in width, out width (the dimension's `full`), kernel,
  stride, spatial size (`positions`), the dimension's base FLOPs share (static, from
  `Dimension.features`, missing keys 0, each min-max normalised over the steps of the space), then
  the FLOPs already reduced (share of base FLOPs removed by the earlier decisions, the rest at full;
  priced with `price`), the FLOPs still to decide (as in AMC: the base FLOPs shares of the later
  dimensions over the sum of all shares, static) and the previous action; all in [0, 1].
- Budget: AMC's action wall, for every limit of the budget (FLOPs, params, any metric `price` gives).
  The action is capped to the ratio of the largest choice of the dimension for which the candidate,
  earlier decisions fixed and the remaining dimensions at their cheapest (smallest width, blocks
  removed), is still feasible, and floored at the smallest ratio. The choices are tried from the
  action's own (the smallest at or above it) down: where that one fits the cap cannot bind, so a
  step costs one pricing, not one per choice above the action (the same walk as scanning from the top
  while costs grow with widths). Costs grow with widths and kept blocks, so where the candidate
  with the remaining dimensions at full (priced for the state anyway) fits, nothing is capped and no
  choice is priced. A block whose keeping would break the budget this way is removed
  (its action is capped to 0). Every episode is therefore feasible (checked; `repair` is the fallback).
  The action stored in the replay buffer (and fed back as "previous action") is the capped action.
- Networks as in AMC: actor state-300-300-1 with a sigmoid; critic with the state through a 300 layer,
  joined with the action, 300, 1. Adam (actor 1e-4, critic 1e-3), soft target updates (tau 0.01),
  replay buffer of 2000 transitions, batch 64, discount 1 (with bootstrapping through the target
  networks, as AMC does), rewards centred by AMC's moving-average baseline (alpha 0.5, updated on each
  batch's mean reward). Warm-up episodes take uniform random actions (default 100, or
  `min(100, max(5, trials // 4))` when the engine's trial budget is known); afterwards the action is
  the actor's plus truncated-normal noise on [0, 1] (sigma 0.5, times 0.95 per episode). After each
  told episode, `updates` gradient updates (default 2; None: one per step of the episode, as in AMC,
  49 on ResNet-50's space: ~0.19 s of CPU per episode against ~8 ms, for no better synthetic score
  in `benchmarks/agent_scaling.py`).
- Two departures from AMC, for robustness with short searches: during warm-up the critic alone is
  trained on the random episodes (AMC trains nothing), so the actor starts by following a fitted
  critic rather than the random slope of a fresh one; and the actor's loss adds 1e-3 x its squared
  pre-sigmoid output, so the sigmoid never saturates (where its gradient vanishes for good). Without
  them, 2 of 10 seeds drove every action to 0 within a few episodes and never recovered.
- Reward: `reward="score"` (default) is the told score; `reward="error_log_flops"` is AMC's
  `-(1 - score) * log(FLOPs)`. Failed results give 0, infeasible ones -1 (the wall prevents them).
- Several episodes may be outstanding: `ask(ticket)` never returns None and keeps the episode under its
  ticket, and `tell(ticket, result)` rewards that episode. Once the noise has decayed the policy proposes
  the same candidate again and again; an episode equal to one already proposed in this search (told
  or still outstanding) is walked again with noise at least 0.1 (up to 20 times), so N workers get N
  distinct candidates and a long search does not spend its trials on known results (at 150 trials,
  111 of ResNet-20's 150 were distinct before).
Seeded throughout: numpy `self.rng` for actions, noise and batches; a `torch.Generator` derived from it
initialises the networks (no global RNG is touched). `state_dict()` holds everything needed to
continue exactly: networks, target networks, optimisers, replay buffer, noise, baseline, counters,
outstanding episodes and both generators.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from spaces.records import Result, TrialState
from spaces.space import KEEP, Candidate

from .base import Agent

_REWARDS = ("score", "error_log_flops")
_HIDDEN = 300
_ACTOR_LR, _CRITIC_LR = 1e-4, 1e-3
_TAU = 0.01
_BUFFER = 2000
_BATCH = 64
_UPDATES = 2  # gradient updates per told episode (AMC: one per step)
_DISCOUNT = 1.0
_MOVING_ALPHA = 0.5
_SIGMA, _SIGMA_DECAY = 0.5, 0.95
_SIGMA_REDRAW, _REDRAWS = 0.1, 20  # an episode equal to one already proposed is walked again with this noise
_INIT_W = 3e-3  # the output layers start near zero, as in AMC
_PENALTY = 1e-3  # on the actor's squared pre-sigmoid output: keeps the sigmoid out of saturation


def _linear(n_in: int, n_out: int, generator: torch.Generator, bound: float | None = None) -> nn.Linear:
    """A linear layer initialised from `generator` (fan-in uniform, or +-bound), not from the global RNG."""
    layer = torch.nn.utils.skip_init(nn.Linear, n_in, n_out)
    bound = 1.0 / math.sqrt(n_in) if bound is None else bound
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def _adam(module: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam, fused where this torch has a fused CPU Adam (2.4 on; several times faster here)."""
    params = list(module.parameters())
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


class _Actor(nn.Module):
    def __init__(self, n_states: int, generator: torch.Generator):
        super().__init__()
        self.net = nn.Sequential(_linear(n_states, _HIDDEN, generator), nn.ReLU(),
                                 _linear(_HIDDEN, _HIDDEN, generator), nn.ReLU(),
                                 _linear(_HIDDEN, 1, generator, _INIT_W))

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.net(states)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(states))


class _Critic(nn.Module):
    def __init__(self, n_states: int, generator: torch.Generator):
        super().__init__()
        self.state = _linear(n_states, _HIDDEN, generator)
        self.joint = _linear(_HIDDEN + 1, _HIDDEN, generator)
        self.out = _linear(_HIDDEN, 1, generator, _INIT_W)

    def forward(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.state(states))
        h = torch.relu(self.joint(torch.cat([h, actions], dim=1)))
        return self.out(h)


def _normalised(columns: np.ndarray) -> np.ndarray:
    """Min-max normalise each column over the rows (a constant column becomes 0)."""
    low, high = columns.min(axis=0), columns.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return np.where(high > low, (columns - low) / span, 0.0)


class AMCAgent(Agent):
    """AMC's DDPG agent; see the module docstring.

    Options: `warmup` (episodes of random actions; default `min(100, max(5, trials // 4))`, or 100
    without a trial budget), `reward` ("score" or "error_log_flops"), `updates` (gradient updates
    per told episode; None: one per step).
    """

    name = "amc"

    def __init__(self, *args: Any, warmup: int | None = None, reward: str = "score", updates: int | None = _UPDATES,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        if updates is not None and (isinstance(updates, bool) or not isinstance(updates, (int, np.integer))
                                    or updates < 1):
            raise ValueError(f"amc: updates must be a whole number >= 1 or None, got {updates!r}")
        self.updates = None if updates is None else int(updates)
        if warmup is not None and (isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer))
                                   or warmup < 0):
            raise ValueError(f"amc: warmup must be a whole number >= 0, got {warmup!r}")
        if reward not in _REWARDS:
            raise ValueError(f"amc: reward must be one of {', '.join(_REWARDS)}, got {reward!r}")
        if warmup is None:
            warmup = min(100, max(5, self.trials // 4)) if self.trials else 100
        self.warmup, self.reward = int(warmup), reward

        dims = self.space.dimensions
        self._cheapest = tuple(0 if d.kind == KEEP else d.smallest for d in dims)
        self._full = tuple(d.full for d in dims)
        self._prices: dict[tuple[int, ...], dict[str, float]] = {}
        self._base_flops = float(self._price(self._full)["flops"])
        static = np.array([[t, float(d.kind != KEEP), d.features.get("in_width", 0.0), d.full,
                            d.features.get("kernel", 0.0), d.features.get("stride", 0.0),
                            d.features.get("positions", 0.0), d.features.get("flops_share", 0.0)]
                           for t, d in enumerate(dims)], dtype=float)
        self._static = _normalised(static)
        shares = np.array([d.features.get("flops_share", 0.0) for d in dims], dtype=float)
        later = shares[::-1].cumsum()[::-1] - shares  # the shares of the dimensions after each one
        self._rest = later / shares.sum() if shares.sum() > 0 else np.linspace(1.0, 0.0, len(dims))
        self.n_states = self._static.shape[1] + 3  # + reduced, rest, previous action

        self.generator = torch.Generator().manual_seed(int(self.rng.integers(2**62)))
        self.actor = _Actor(self.n_states, self.generator)
        self.critic = _Critic(self.n_states, self.generator)
        self.actor_target, self.critic_target = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        for p in (*self.actor_target.parameters(), *self.critic_target.parameters()):
            p.requires_grad_(False)
        self.actor_optim, self.critic_optim = _adam(self.actor, _ACTOR_LR), _adam(self.critic, _CRITIC_LR)

        self.buffer = {"states": torch.zeros(_BUFFER, self.n_states), "actions": torch.zeros(_BUFFER, 1),
                       "rewards": torch.zeros(_BUFFER, 1), "next_states": torch.zeros(_BUFFER, self.n_states),
                       "done": torch.zeros(_BUFFER, 1)}
        self.stored = 0      # transitions in the buffer (at most _BUFFER)
        self.cursor = 0      # where the next transition goes (a ring)
        self.sigma = _SIGMA
        self.baseline: float | None = None
        self.asked = 0       # episodes proposed
        self.told = 0        # episodes told
        #: every candidate proposed so far (a repeat would spend a trial on a known result)
        self.proposed: dict[Candidate, None] = {}  # in the order proposed
        #: outstanding episodes by ticket, in the order asked: (candidate, states, capped actions)
        self.outstanding: dict[int, tuple[Candidate, list[list[float]], list[float]]] = {}

    # -- pricing ---------------------------------------------------------------------------------
    def _price(self, values: tuple[int, ...]) -> dict[str, float]:
        costs = self._prices.get(values)
        if costs is None:
            if len(self._prices) > 50_000:
                self._prices.clear()
            costs = dict(self.price(Candidate(zip(self.space.names, values))))
            self._prices[values] = costs
        return costs

    def _fits(self, values: tuple[int, ...]) -> bool:
        return self.budget.feasible(self._price(values))

    # -- one episode -----------------------------------------------------------------------------
    def _noisy(self, mean: float, sigma: float) -> float:
        """A draw of the normal(mean, sigma) truncated to [0, 1] (rejection; the mean is in [0, 1])."""
        for _ in range(1000):
            a = float(self.rng.normal(mean, sigma))
            if 0.0 <= a <= 1.0:
                return a
        return float(np.clip(mean, 0.0, 1.0))

    def _act(self, state: list[float], warm: bool, sigma: float) -> float:
        if warm:
            return float(self.rng.uniform(0.0, 1.0))
        with torch.no_grad():
            mean = float(self.actor(torch.tensor([state], dtype=torch.float32))[0, 0])
        return self._noisy(mean, sigma)

    def _wall(self, t: int, action: float, decided: tuple[int, ...], free: bool = False) -> tuple[int, float]:
        """AMC's action wall: (value, capped action) for dimension t, the rest kept feasible at their cheapest.

        `free`: the candidate with dimensions t, t+1, ... at full fits, so nothing needs capping.
        """
        d = self.space.dimensions[t]
        rest = self._cheapest[t + 1:]
        if d.kind == KEEP:
            cap = 1.0 if free or self._fits(decided + (1,) + rest) else 0.0
            capped = min(action, cap)
            return int(capped >= 0.5), capped
        wanted = max(action, d.ratio(d.smallest))
        # the largest fitting choice, looked for from the action's own choice (the smallest at or above
        # it) down: where that one fits, the cap does not bind and one pricing settles the step
        start = next((c for c in d.choices if d.ratio(c) >= wanted), d.full)
        top = d.full if free else next((c for c in reversed(d.choices) if c <= start and
                                        self._fits(decided + (c,) + rest)), d.smallest)
        capped = min(wanted, d.ratio(top))
        return min(d.nearest(capped), top), capped  # nearest, not floor: a sigmoid never reaches 1

    def _episode(self, sigma: float) -> tuple[Candidate, list[list[float]], list[float]]:
        warm = self.asked < self.warmup
        decided: tuple[int, ...] = ()
        states: list[list[float]] = []
        actions: list[float] = []
        previous = 1.0
        for t in range(len(self.space)):
            at_full = self._price(decided + self._full[t:])
            reduced = 1.0 - at_full["flops"] / self._base_flops
            state = [*map(float, self._static[t]), reduced, float(self._rest[t]), previous]
            value, capped = self._wall(t, self._act(state, warm, sigma), decided, free=self.budget.feasible(at_full))
            decided += (value,)
            states.append(state)
            actions.append(capped)
            previous = capped
        candidate = Candidate(zip(self.space.names, decided))
        if not self._fits(decided):  # cannot happen while the smallest candidate fits
            candidate = self.repair(candidate)
        return candidate, states, actions

    def ask(self, ticket: int) -> Candidate:
        episode = self._episode(self.sigma)
        for _ in range(_REDRAWS):  # already proposed (the noise has decayed): explore more
            if episode[0] not in self.proposed:
                break
            episode = self._episode(max(self.sigma, _SIGMA_REDRAW))
        self.proposed[episode[0]] = None
        if self.asked >= self.warmup:
            self.sigma *= _SIGMA_DECAY
        self.asked += 1
        self.outstanding[ticket] = episode
        return episode[0]

    def learn(self, known) -> None:
        """Known candidates count as proposed episodes (the noise decays as if they had been asked, and they are
        not proposed again); the policy learns from its own episodes only (their states and actions)."""
        for candidate, _ in known:
            self.proposed[candidate] = None
            if self.asked >= self.warmup:
                self.sigma *= _SIGMA_DECAY
            self.asked += 1

    # -- learning --------------------------------------------------------------------------------
    def _reward(self, candidate: Candidate, result: Result) -> float:
        if result.state is TrialState.INFEASIBLE:
            return -1.0
        if not result.ok or result.score is None or not math.isfinite(result.score):
            return 0.0
        if self.reward == "error_log_flops":
            flops = max(float(self._price(tuple(candidate[n] for n in self.space.names))["flops"]), 1.0)
            return -(1.0 - result.score) * math.log(flops)
        return float(result.score)

    def tell(self, ticket: int, result: Result) -> None:
        episode = self.outstanding.pop(ticket, None)
        if episode is None:
            return  # not one of ours (or told twice): nothing to learn from
        candidate, states, actions = episode
        reward = self._reward(candidate, result)
        for t, (state, action) in enumerate(zip(states, actions)):
            last = t == len(states) - 1
            self._store(state, action, reward, state if last else states[t + 1], last)
        self.told += 1
        for _ in range(self.updates or len(states)):  # during warm-up the critic alone learns (see the module docstring)
            self._update(actor=self.told >= self.warmup)

    def _store(self, state, action, reward, next_state, done) -> None:
        i = self.cursor
        self.buffer["states"][i] = torch.tensor(state)
        self.buffer["actions"][i, 0] = action
        self.buffer["rewards"][i, 0] = reward
        self.buffer["next_states"][i] = torch.tensor(next_state)
        self.buffer["done"][i, 0] = float(done)
        self.cursor = (i + 1) % _BUFFER
        self.stored = min(self.stored + 1, _BUFFER)

    def _update(self, actor: bool = True) -> None:
        if self.stored == 0:
            return
        idx = torch.from_numpy(self.rng.integers(self.stored, size=_BATCH))
        s, a, r, s2, done = (self.buffer[k][idx] for k in ("states", "actions", "rewards", "next_states", "done"))
        mean = float(r.mean())
        self.baseline = mean if self.baseline is None else self.baseline + _MOVING_ALPHA * (mean - self.baseline)
        r = r - self.baseline
        with torch.no_grad():
            target = r + _DISCOUNT * (1.0 - done) * self.critic_target(s2, self.actor_target(s2))
        critic_loss = nn.functional.mse_loss(self.critic(s, a), target)
        self.critic_optim.zero_grad()
        critic_loss.backward()
        self.critic_optim.step()
        pairs = [(self.critic, self.critic_target)]
        if actor:
            logits = self.actor.logits(s)
            actor_loss = -self.critic(s, torch.sigmoid(logits)).mean() + _PENALTY * logits.square().mean()
            self.actor_optim.zero_grad()
            actor_loss.backward()
            self.actor_optim.step()
            pairs.append((self.actor, self.actor_target))
        with torch.no_grad():  # soft target updates
            for net, target_net in pairs:
                for p, q in zip(net.parameters(), target_net.parameters()):
                    q.mul_(1.0 - _TAU).add_(p, alpha=_TAU)

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy({
            **super().state_dict(), "generator": self.generator.get_state(),
            "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(), "critic_target": self.critic_target.state_dict(),
            "actor_optim": self.actor_optim.state_dict(), "critic_optim": self.critic_optim.state_dict(),
            "buffer": self.buffer, "stored": self.stored, "cursor": self.cursor, "sigma": self.sigma,
            "baseline": self.baseline, "asked": self.asked, "told": self.told, "warmup": self.warmup,
            "outstanding": [(t, c.to_dict(), s, a) for t, (c, s, a) in self.outstanding.items()],
            "proposed": [c.to_dict() for c in self.proposed]})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = copy.deepcopy(dict(state))  # never share tensors with the snapshot
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])
        for key in ("actor", "critic", "actor_target", "critic_target", "actor_optim", "critic_optim"):
            getattr(self, key).load_state_dict(state[key])
        self.buffer = state["buffer"]
        self.stored, self.cursor, self.sigma = state["stored"], state["cursor"], state["sigma"]
        self.baseline, self.asked, self.told = state["baseline"], state["asked"], state["told"]
        self.warmup = state["warmup"]
        self.outstanding = {int(t): (Candidate(c), s, a) for t, c, s, a in state["outstanding"]}
        self.proposed = dict.fromkeys(Candidate(c) for c in state.get("proposed", []))
