"""`tpe` and `nsga2`: Optuna's samplers through ask-and-tell, with the budget as constraints.

One Optuna parameter per dimension: an integer over the index of its allowed widths (TPE models the
order of widths), a categorical for keep flags. Each asked trial is priced at once; an over-budget
one is told to Optuna as infeasible (its constraint values are the budget violations: positive means
over) and never reaches the engine, so no evaluation is spent on it.
- `tpe`: Optuna's multivariate `TPESampler` with those constraints, maximizing the score. Its own
  time per trial stays flat as a search grows: the sampler sees a bounded view of the study (the
  `history` most recent trials, the `BEST_KEPT` best ones and every outstanding one; `history=0`
  shows it everything) and the space's distributions are fixed up front (the space does not change
  between trials, so Optuna need not re-derive it from every past trial). With several candidates
  outstanding, `constant_liar` (default on) makes TPE treat them as poor results, so it proposes
  distinct, spread-out candidates instead of the same region N times.
- `nsga2`: `NSGAIISampler` with those constraints over (score, FLOPs): the run's Pareto front
  (pareto.csv) is the trade-off curve to pick from after one search.
`storage` (an RDB URL such as sqlite:///study.db, or a path ending in .log for a journal file)
keeps the study on disk: a resumed run, or several processes, continue the same study.

An agent's state (`state_dict`) is plain data that survives the next Optuna release: the study's trials
(params, distributions, values, states, attributes) and the sampler's random states. It is restored
into a fresh study with `create_study` + `add_trials`, never by unpickling Optuna's objects (a pickled
study broke when Optuna 5.1 gave NSGA-II a thread lock).
"""
from __future__ import annotations

import copy
import datetime
import heapq
import inspect
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (BaseDistribution, CategoricalDistribution, IntDistribution, distribution_to_json,
                                  json_to_distribution)

from spaces.records import Result
from spaces.space import KEEP, Candidate

from .base import Agent

_MAX_INFEASIBLE_ASKS = 500  # then the last ask is repaired into the budget


def _storage(url: str | None):
    if url is None or "://" in url:
        return url
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(url))


#: Optuna >= 5 takes constraints per trial (`Trial.set_constraint`); older versions through `constraints_func`.
_PER_TRIAL_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")


def _constraints(trial: optuna.trial.FrozenTrial) -> Sequence[float]:
    return trial.user_attrs.get("constraints", (0.0,))


def _constraint_options() -> dict[str, Any]:
    return {} if _PER_TRIAL_CONSTRAINTS else {"constraints_func": _constraints}


def _set_constraints(trial: optuna.trial.Trial, violations: Sequence[float]) -> None:
    if _PER_TRIAL_CONSTRAINTS:
        for i, v in enumerate(violations):
            trial.set_constraint(f"budget{i}", float(v))
    else:
        trial.set_user_attr("constraints", list(violations))


class OptunaAgent(Agent):
    directions: tuple[str, ...] = ("maximize",)

    def __init__(self, *args: Any, storage: str | None = None, study_name: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        self.study = optuna.create_study(directions=list(self.directions), sampler=self.sampler(),
                                         storage=_storage(storage), load_if_exists=storage is not None,
                                         study_name=study_name or (f"prunesearch-{self.name}" if storage else None))
        self._stored = storage is not None
        self._storage_url, self._study_name = storage, self.study.study_name
        self._running: dict[int, int] = {}  # ticket -> Optuna trial number: asked, not told
        if not self.study.trials:  # a fresh study: warm starts, then feasible random draws, are its first trials
            for candidate in self.initial:
                self._enqueue(candidate)
            for _ in range(max(0, self.startup() - len(self.initial))):
                self._enqueue(self.sample_feasible())

    def startup(self) -> int:
        """Trials the sampler draws at random before it models the study: these are enqueued as feasible
        random draws (as `random` proposes them). Optuna's own random draws are uniform over the whole space;
        at a tight budget nearly all are over it, are told as infeasible without an evaluation, and use up the
        startup while the engine sees only the warm start."""
        return 0

    def _enqueue(self, candidate: Candidate) -> None:
        self.study.enqueue_trial({d.name: candidate[d.name] if d.kind == KEEP else d.index(candidate[d.name])
                                  for d in self.space.dimensions})

    def sampler(self) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def _suggest(self, trial: optuna.trial.Trial) -> Candidate:
        values = {}
        for d in self.space.dimensions:
            if d.kind == KEEP:
                values[d.name] = trial.suggest_categorical(d.name, [0, 1])
            else:
                values[d.name] = d.choices[trial.suggest_int(d.name, 0, len(d.choices) - 1)]
        return Candidate(values)

    def _values(self, score: float, costs) -> list[float]:
        return [score]

    def _propose(self, trial: optuna.trial.Trial) -> Candidate | None:
        """The trial's candidate if it is within budget; otherwise told to Optuna as infeasible (None)."""
        candidate = self._suggest(trial)
        costs = self.price(candidate)
        violations = self.budget.violations(costs)
        _set_constraints(trial, violations)
        if all(v <= 1e-12 for v in violations):
            return candidate
        self.study.tell(trial, self._values(0.0, costs))  # infeasible: known without an evaluation
        self._last_infeasible = candidate
        return None

    def ask(self, ticket: int) -> Candidate:
        for _ in range(_MAX_INFEASIBLE_ASKS):
            trial = self.study.ask()
            candidate = self._propose(trial)
            if candidate is not None:
                break
        else:
            repaired = self.repair(self._last_infeasible)  # Optuna keeps missing: hand it a repaired candidate
            self._enqueue(repaired)
            trial = self.study.ask()
            candidate = self._propose(trial)
            assert candidate is not None, "a repaired candidate is within budget"
        self._running[ticket] = trial.number
        return candidate

    def tell(self, ticket: int, result: Result) -> None:
        trial = self._running.pop(ticket, None)
        if trial is None:
            return  # not one of ours (or told twice)
        if result.ok:
            self.study.tell(trial, self._values(result.score, result.costs))
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def restore(self, events) -> dict[int, Candidate]:
        """With a stored study, Optuna already holds the history: nothing to replay."""
        if self._stored and len(self.study.trials) > 0:
            return {}
        return super().restore(events)

    def learn(self, known) -> None:
        """Known results become completed (or failed) trials of the study, as Optuna's `add_trial` does; the
        enqueued startup draws stay queued."""
        distributions = {d.name: CategoricalDistribution([0, 1]) if d.kind == KEEP else
                         IntDistribution(0, len(d.choices) - 1) for d in self.space.dimensions}
        for candidate, result in known:
            params = {d.name: candidate[d.name] if d.kind == KEEP else d.index(candidate[d.name])
                      for d in self.space.dimensions}
            violations = [float(v) for v in self.budget.violations(result.costs or self.price(candidate))]
            attrs = ({"user_attrs": {}, "system_attrs": {f"constraints:budget{i}": v for i, v in enumerate(violations)}}
                     if _PER_TRIAL_CONSTRAINTS else {"user_attrs": {"constraints": violations}, "system_attrs": {}})
            if result.ok and result.score is not None:
                state, values = optuna.trial.TrialState.COMPLETE, self._values(result.score, result.costs)
            elif result.state.value == "infeasible":
                state, values = optuna.trial.TrialState.COMPLETE, self._values(0.0, result.costs)
            else:
                state, values = optuna.trial.TrialState.FAIL, None
            self.study.add_trial(optuna.trial.create_trial(state=state, values=values, params=params,
                                                           distributions=distributions, **attrs))

    def state_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able): the study's trials and the sampler's random states, unless the study lives
        in a storage already (then the storage is the state)."""
        return {**super().state_dict(), "study": None if self._stored else _study_to_data(self.study),
                "running": [[ticket, n] for ticket, n in self._running.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state["study"] is not None:
            if not isinstance(state["study"], Mapping):
                raise ValueError(f"{self.name}: this agent state holds a pickled Optuna study (an older prunesearch); "
                                 "it cannot be restored safely: resume the run from its journal instead")
            self.study = self._study_from_data(state["study"])
        self._running = {int(ticket): int(n) for ticket, n in state["running"]}

    def _study_from_data(self, data: Mapping[str, Any]) -> optuna.Study:
        study = optuna.create_study(directions=list(self.directions), sampler=self.sampler())
        study.add_trials([_trial_from_data(t) for t in data["trials"]])
        _load_random_states(study.sampler, data["random_states"])
        return study

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (by Ray Tune's experiment state, a process pool) as plain data, never Optuna's objects."""
        state = dict(self.__dict__)
        study = state.pop("study")
        state["_study_data"] = None if self._stored else _study_to_data(study)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        data = state.pop("_study_data")
        self.__dict__.update(state)
        self.study = (self._study_from_data(data) if data is not None else
                      optuna.load_study(study_name=self._study_name, storage=_storage(self._storage_url),
                                        sampler=self.sampler()))


def _study_to_data(study: optuna.Study) -> dict[str, Any]:
    return {"trials": [_trial_to_data(t) for t in study.get_trials(deepcopy=False)],
            "random_states": _random_states_to_data(study.sampler)}


def _time(moment: datetime.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _moment(text: str | None) -> datetime.datetime | None:
    return None if text is None else datetime.datetime.fromisoformat(text)


def _trial_to_data(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One trial as plain data: what `add_trials` needs to rebuild it, in any Optuna version we support."""
    return {"state": trial.state.name, "values": None if trial.values is None else [float(v) for v in trial.values],
            "params": dict(trial.params),
            "distributions": {n: distribution_to_json(d) for n, d in trial.distributions.items()},
            "user_attrs": dict(trial.user_attrs), "system_attrs": dict(trial.system_attrs),
            "intermediate_values": {str(k): float(v) for k, v in trial.intermediate_values.items()},
            "datetime_start": _time(trial.datetime_start), "datetime_complete": _time(trial.datetime_complete)}


def _trial_from_data(data: Mapping[str, Any]) -> optuna.trial.FrozenTrial:
    return optuna.trial.FrozenTrial(
        number=0, trial_id=0, state=optuna.trial.TrialState[data["state"]], value=None, values=data["values"],
        datetime_start=_moment(data["datetime_start"]), datetime_complete=_moment(data["datetime_complete"]),
        params=dict(data["params"]),
        distributions={n: json_to_distribution(d) for n, d in data["distributions"].items()},
        user_attrs=dict(data["user_attrs"]), system_attrs=dict(data["system_attrs"]),
        intermediate_values={int(k): float(v) for k, v in data["intermediate_values"].items()})


def _random_states(sampler: optuna.samplers.BaseSampler) -> dict[str, np.random.RandomState]:
    """Every NumPy random state a sampler draws from, by attribute path (`_rng`, `_random_sampler._rng`, ...).

    Found by walking the sampler's attributes and those of the Optuna objects it holds (strategies, the
    random sampler it falls back to), so a sampler that gains a random state in a new release is covered.
    """
    found: dict[str, np.random.RandomState] = {}

    def walk(obj: Any, path: str, depth: int) -> None:
        for name, value in sorted(vars(obj).items()):
            where = f"{path}{name}"
            if isinstance(value, np.random.RandomState):
                found[where] = value
            elif type(value).__name__ == "LazyRandomState":  # Optuna >= 3.5 seeds its RandomState lazily
                found[where] = value.rng
            elif (depth < 2 and not isinstance(value, type) and hasattr(value, "__dict__")
                  and type(value).__module__.startswith("optuna")):
                walk(value, f"{where}.", depth + 1)

    walk(sampler, "", 0)
    return found


def _random_states_to_data(sampler: optuna.samplers.BaseSampler) -> dict[str, dict[str, Any]]:
    out = {}
    for where, rng in _random_states(sampler).items():
        state = rng.get_state(legacy=False)
        out[where] = {**state, "state": {"key": [int(k) for k in state["state"]["key"]],
                                         "pos": int(state["state"]["pos"])}}
    return out


def _load_random_states(sampler: optuna.samplers.BaseSampler, data: Mapping[str, Mapping[str, Any]]) -> None:
    states = _random_states(sampler)
    for where, state in data.items():
        if where in states:  # a state this sampler no longer has is left out
            states[where].set_state({**state, "state": {"key": np.asarray(state["state"]["key"], dtype=np.uint32),
                                                         "pos": int(state["state"]["pos"])}})


_RUNNING = optuna.trial.TrialState.RUNNING
#: Optuna's TPE converts trials through these two methods, given the study (Optuna >= 5); older versions
#: convert on every ask, without it
_REPR_TAKES_STUDY = "study" in inspect.signature(optuna.samplers.TPESampler._get_internal_repr).parameters
_ROWS_CACHEABLE = _REPR_TAKES_STUDY and hasattr(optuna.samplers.TPESampler, "_get_params")
#: candidates TPE draws from its model of good trials per ask, keeping the one most likely good (Optuna: 24)
EI_CANDIDATES = 24
#: best finished trials a bounded TPE always sees, besides the recent ones (TPE's "good" group has at most 25)
BEST_KEPT = 50


class _View:
    """A study as a bounded TPE sees it: only `trials`; everything else is the study's own."""

    def __init__(self, study: optuna.Study, trials: list[optuna.trial.FrozenTrial]):
        self._study, self._trials = study, trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = False, states=None, use_cache: bool = False):
        trials = [t for t in self._trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials


class _BoundedTPESampler(optuna.samplers.TPESampler):
    """Multivariate TPE on a fixed search space that models a bounded view of the study (see the module).

    The view costs the same at any length: the best older trials are kept in a heap that each ask
    updates with the trials that left the recent window or finished since (never a scan of the
    whole study), and each viewed finished trial's parameters are converted to Optuna's internal
    form once, not on every ask.
    """

    def __init__(self, space: dict[str, BaseDistribution], history: int, **kwargs: Any):
        super().__init__(multivariate=True, **kwargs)
        self._space, self._history = space, history
        self._scanned = 0                          # trials numbered below this were looked at for the best
        self._open: list[int] = []                 # ... of which these were not finished then
        self._best: list[tuple[float, int]] = []   # min-heap of (signed value, -number): the BEST_KEPT best
        self._rows: dict[int, np.ndarray] = {}     # finished trial in view -> its parameters, internal form

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return dict(self._space)  # every trial suggests every dimension with these distributions

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return super().sample_relative(self._view(study), trial, search_space)

    def _view(self, study: optuna.Study):
        """The `history` most recent trials, the `BEST_KEPT` best finished older ones and every running one."""
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        if not self._history or len(trials) <= self._history + BEST_KEPT:
            return study
        end = len(trials) - self._history
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        still_open = []
        for i in [*self._open, *range(self._scanned, end)]:  # a trial's index in the study is its number
            t = trials[i]
            if not t.state.is_finished():
                still_open.append(i)
            elif t.state == optuna.trial.TrialState.COMPLETE and t.value is not None:
                entry = (sign * t.value, -i)  # ties: the earlier trial is kept
                if len(self._best) < BEST_KEPT:
                    heapq.heappush(self._best, entry)
                elif entry > self._best[0]:
                    heapq.heapreplace(self._best, entry)
        self._open, self._scanned = still_open, max(self._scanned, end)
        kept = sorted({-n for _, n in self._best} | {i for i in still_open if trials[i].state == _RUNNING})
        view = [trials[i] for i in kept] + trials[end:]
        self._rows = {t.number: self._rows[t.number] for t in view if t.number in self._rows}
        return _View(study, view)

    def _get_internal_repr(self, trials, search_space, study=None) -> dict[str, np.ndarray]:
        """Optuna's own conversion, with each finished trial's row remembered (the space is fixed)."""
        if not _ROWS_CACHEABLE or study is None or search_space.keys() != self._space.keys():
            return super()._get_internal_repr(trials, search_space, *([study] if _REPR_TAKES_STUDY else []))
        rows = []
        for t in trials:
            row = self._rows.get(t.number)
            if row is None:
                params = self._get_params(t, study)
                if not search_space.keys() <= params.keys():
                    continue
                row = np.array([d.to_internal_repr(params[n]) for n, d in search_space.items()], dtype=float)
                if t.state.is_finished():
                    self._rows[t.number] = row
            rows.append(row)
        matrix = np.array(rows, dtype=float).reshape(len(rows), len(search_space))
        return {n: matrix[:, j].astype(np.int64) if isinstance(d, CategoricalDistribution) else matrix[:, j]
                for j, (n, d) in enumerate(search_space.items())}


class TPEAgent(OptunaAgent):
    """Options: `startup_trials` (random trials first; default `max(10, min(30, trials // 5))`),
    `history` (recent trials TPE models, besides the best; 0: all), `ei_candidates` (candidates drawn from
    the model of good trials per ask, the most promising kept), `constant_liar`."""

    name = "tpe"

    def __init__(self, *args: Any, startup_trials: int | None = None, history: int = 100,
                 ei_candidates: int = EI_CANDIDATES, constant_liar: bool = True, **kwargs: Any):
        for key, value, least in (("history", history, 0), ("ei_candidates", ei_candidates, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"tpe: {key} must be a whole number >= {least}, got {value!r}")
        self.startup_trials, self.history, self.constant_liar = startup_trials, history, bool(constant_liar)
        self.ei_candidates = ei_candidates
        super().__init__(*args, **kwargs)

    def _distributions(self) -> dict[str, BaseDistribution]:
        """Exactly what `_suggest` asks Optuna for, per dimension."""
        return {d.name: CategoricalDistribution([0, 1]) if d.kind == KEEP else IntDistribution(0, len(d.choices) - 1)
                for d in self.space.dimensions}

    def startup(self) -> int:
        return self.startup_trials or max(10, min(30, (self.trials or 100) // 5))

    def sampler(self) -> optuna.samplers.BaseSampler:
        return _BoundedTPESampler(self._distributions(), self.history, seed=self.seed,
                                  n_startup_trials=self.startup(), n_ei_candidates=self.ei_candidates,
                                  constant_liar=self.constant_liar, **_constraint_options())


class NSGA2Agent(OptunaAgent):
    name = "nsga2"
    directions = ("maximize", "minimize")

    def __init__(self, *args: Any, population: int = 20, **kwargs: Any):
        self.population = population
        super().__init__(*args, **kwargs)

    def startup(self) -> int:
        return self.population  # the first generation

    def sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(seed=self.seed, population_size=self.population,
                                             **_constraint_options())

    def _values(self, score: float, costs) -> list[float]:
        return [score, float(costs["flops"])]
