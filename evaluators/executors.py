"""Executors: where candidates are scored. `LocalExecutor` in this process, `RayExecutor` on Ray actors.

Both take `submit(ticket, candidate, bar=None)` and give back finished work from `wait()` as
`(ticket, Estimate)` pairs; `slots` is how many candidates the engine keeps in flight. `bar` is racing's
bar for that candidate (`evaluators.racing`), passed to a scorer that races (one with `estimate`); it
travels with the candidate to a Ray actor. A failure while scoring is an `Estimate` with an error, never
an exception: the engine records it as a failed candidate.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from .racing import Estimate

log = logging.getLogger(__name__)


@runtime_checkable
class Scorer(Protocol):
    """Scores one candidate (higher is better); an exception is a failed candidate, not a failed search."""

    def score(self, candidate: Mapping[str, int]) -> float: ...


@runtime_checkable
class RacingScorer(Scorer, Protocol):
    """A scorer that can stop a candidate early against a bar (`evaluators.racing`)."""

    def estimate(self, candidate: Mapping[str, int], bar: float | None = None) -> Estimate: ...


@runtime_checkable
class Executor(Protocol):
    """Where candidates are scored: `slots` in flight at once, `submit` them, collect from `wait`
    (`close()`, where an executor has one, releases its workers)."""

    slots: int

    def submit(self, ticket: int, candidate: Mapping[str, int], bar: float | None = None) -> None: ...

    def wait(self) -> list[tuple[int, Estimate]]: ...


def cluster_address(address: str | None) -> tuple[str | None, str]:
    """The Ray cluster a run joins and where the user named it: `--ray-address`, else `RAY_ADDRESS` (set for a
    script a Ray job runs), else (None, "") for a new local Ray."""
    if address:
        return address, "--ray-address"
    env = os.environ.get("RAY_ADDRESS") or None
    return env, "RAY_ADDRESS" if env else ""


def unreachable(address: str, timeout: float = 5.0, *, named: str = "--ray-address") -> str | None:
    """Why no Ray cluster can be joined at `address` ("host:port", "ray://host:port"), or None where a TCP
    connection opens (or the address is Ray's "auto"/"local", which Ray resolves itself). Seconds, not the
    minutes ray.init spends retrying a dead address. `named` says where the address came from."""
    if address in ("auto", "local"):
        return None
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{named} {address} is not host:port (e.g. 10.0.0.5:6379, ray://10.0.0.5:10001 or auto)"
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        return f"cannot reach a Ray cluster at {named} {address}: {error.strerror or error}"
    return None


def check_cluster(address: str | None) -> str | None:
    """Why the cluster a run would join (`cluster_address`) cannot be, in one line; None where it can or where
    the run starts its own."""
    joined, named = cluster_address(address)
    return unreachable(joined, named=named) if joined else None


def init_ray(address: str | None = None, *, num_cpus: float = 1, num_gpus: int | None = None) -> bool:
    """Join the cluster at `address`, or start a local Ray with `num_cpus` (and `num_gpus`); False if Ray was
    already up. A cluster that cannot be joined is a ConnectionError whose message says so in one line.

    With no `address`, `RAY_ADDRESS` (set for a script a Ray job runs) is joined like one (`cluster_address`).
    Otherwise the local Ray is always a new one (`address="local"`): a bare `ray.init()` would join the cluster a
    `ray start` left running on this machine and then refuse the CPU count; joining that one is
    `--ray-address auto`.
    """
    import ray

    if ray.is_initialized():
        return False
    address, _ = cluster_address(address)
    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConnectionError(f"cannot join the Ray cluster at {address}: {reason}") from None
    else:
        ray.init(address="local", num_cpus=max(1, math.ceil(num_cpus)), num_gpus=num_gpus, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False)
    return True


def score_safely(scorer: Scorer, candidate: Mapping[str, int], bar: float | None = None) -> Estimate:
    """Score `candidate` (raced against `bar` where the scorer races), timing it; an exception is data."""
    start = time.perf_counter()
    try:
        if isinstance(scorer, RacingScorer):
            estimate = scorer.estimate(candidate, bar)
        else:
            estimate = Estimate(float(scorer.score(candidate)))
    except Exception as error:  # noqa: BLE001 - one candidate's failure is data
        log.debug("candidate failed", exc_info=True)
        return Estimate(None, seconds=time.perf_counter() - start,
                        error=f"{type(error).__name__}: {error}".splitlines()[0][:300])
    seconds, score = time.perf_counter() - start, float(estimate.score)
    return replace(estimate, score=score, seconds=seconds, error="" if math.isfinite(score) else "score is not finite")


class LocalExecutor:
    """Scores each candidate at once, in this process."""

    slots = 1

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self._done: list[tuple[int, Estimate]] = []

    def submit(self, ticket: int, candidate: Mapping[str, int], bar: float | None = None) -> None:
        self._done.append((ticket, score_safely(self.scorer, candidate, bar)))

    def wait(self) -> list[tuple[int, Estimate]]:
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        pass


class _Worker:
    """A Ray actor: builds its scorer once (model, elastic wrapper, cached batches), then scores dicts."""

    def __init__(self, build: Callable[..., Scorer], payload: Any, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.scorer = build(payload)

    def score(self, candidate: dict[str, int], bar: float | None = None) -> Estimate:
        return score_safely(self.scorer, candidate, bar)

    def ready(self) -> bool:
        return True


class RayExecutor:
    """A pool of Ray actors, each holding its own scorer; a dead actor's candidate goes to another.

    `build(payload)` runs once on each actor and returns its scorer; `payload` is put in Ray's object
    store once and fetched by every actor (so a candidate travels as a small dict). An actor that dies
    (or whose node leaves) is replaced and its candidate resubmitted, up to `retries` times. Actors are
    spread over the cluster's nodes, so losing a node loses as few of them as possible.
    """

    def __init__(self, build: Callable[..., Scorer], payload: Any, *, workers: int, cpus_per_worker: float = 1,
                 gpus_per_worker: float = 0, address: str | None = None, retries: int = 3):
        import ray

        self.ray = ray
        self._owns_ray = init_ray(address, num_cpus=workers * cpus_per_worker)
        self.slots, self.retries = workers, retries
        self._actor_class = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=0,
                                       max_task_retries=0, scheduling_strategy="SPREAD")(_Worker)
        self._build, self._payload = build, ray.put(payload)
        self._threads = max(1, int(cpus_per_worker))
        self._actors = [self._start() for _ in range(workers)]
        ray.get([a.ready.remote() for a in self._actors])  # fail early if a scorer cannot be built
        self._idle = list(self._actors)
        self._running: dict[Any, tuple[int, dict[str, int], float | None, Any, int]] = {}
        # ref -> ticket, candidate, bar, actor, tries
        self._queue: list[tuple[int, dict[str, int], float | None, int]] = []
        self.replaced = 0  # actors that died and were replaced

    def _start(self):
        return self._actor_class.remote(self._build, self._payload, self._threads)

    def submit(self, ticket: int, candidate: Mapping[str, int], bar: float | None = None) -> None:
        self._queue.append((ticket, dict(candidate), bar, 0))
        self._dispatch()

    def _dispatch(self) -> None:
        while self._queue and self._idle:
            ticket, candidate, bar, tries = self._queue.pop(0)
            actor = self._idle.pop(0)
            self._running[actor.score.remote(candidate, bar)] = (ticket, candidate, bar, actor, tries)

    def wait(self) -> list[tuple[int, Estimate]]:
        done: list[tuple[int, Estimate]] = []
        while not done and self._running:
            ready, _ = self.ray.wait(list(self._running), num_returns=1)
            for ref in ready:
                ticket, candidate, bar, actor, tries = self._running.pop(ref)
                try:
                    done.append((ticket, self.ray.get(ref)))
                    self._idle.append(actor)
                except self.ray.exceptions.RayActorError as error:
                    self._replace(actor)
                    if tries + 1 > self.retries:
                        done.append((ticket, Estimate(None, error=f"worker died {tries + 1} times: {error}"[:300])))
                    else:
                        log.warning("a worker died; candidate %d goes to another (try %d)", ticket, tries + 2)
                        self._queue.insert(0, (ticket, candidate, bar, tries + 1))
            self._dispatch()
        return done

    def _replace(self, dead) -> None:
        self.replaced += 1
        self._actors.remove(dead)
        try:
            self.ray.kill(dead)
        except Exception:  # noqa: BLE001 - it is already gone
            pass
        actor = self._start()
        self._actors.append(actor)
        self._idle.append(actor)

    def close(self) -> None:
        for actor in self._actors:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001
                pass
        self._actors.clear()
        if self._owns_ray:
            self.ray.shutdown()
