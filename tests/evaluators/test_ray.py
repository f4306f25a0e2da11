"""Scoring on Ray: equal to local scoring, and a search survives a node leaving the cluster."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch.utils.data import TensorDataset

from agents import make_agent
from conftest import derived, setting
from evaluators.accuracy import AccuracyEvaluator, EvaluatorPayload, build_evaluator
from evaluators.executors import RayExecutor
from search import run as run_module
from search.engine.loop import Engine, Journal

ray = pytest.importorskip("ray")
FAST = ["--baseline-epochs", "1", "--trials", "12", "--calib-batches", "2", "--batch-size", "32",
        "--eval-samples", "64", "--no-progress", "--quiet", "--finalists", "3", "--finalist-steps", "3",
        "--reconstruct", "64"]  # the refit on 64 inputs, not 1024: seconds less a run


def test_two_workers_give_the_local_result(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESEARCH_CACHE", str(tmp_path / "cache"))
    base = ["--agent", "random", "--budget", "0.4flops", *FAST]
    assert run_module.main([*base, "--out", str(tmp_path / "local")]) == 0
    assert run_module.main([*base, "--out", str(tmp_path / "ray"), "--workers", "2"]) == 0
    assert not ray.is_initialized()  # the run shut down the Ray it started
    columns = ["trial", "state", "score", "flops", "architecture"]
    local, remote = (pd.read_csv(tmp_path / d / "trials.csv").sort_values("trial")[columns].reset_index(drop=True)
                     for d in ("local", "ray"))
    pd.testing.assert_frame_equal(local, remote)
    assert json.loads((tmp_path / "ray" / "run.json").read_text())["args"]["workers"] == 2
    # the finalists trained as Ray tasks: the same finalists, the same seeded fine-tune
    local, remote = (pd.read_csv(tmp_path / d / "finalists.csv") for d in ("local", "ray"))
    assert sorted(local.trial) == sorted(remote.trial) and (remote.steps == 3).all()
    by_trial = remote.set_index("trial").finalist_score
    assert all(abs(by_trial[t] - s) <= 1 / 64 + 1e-9 for t, s in zip(local.trial, local.finalist_score))


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [c.add_node(num_cpus=2) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def test_a_search_survives_a_node_leaving(cluster, tmp_path):
    c, nodes = cluster
    prunable, _, _ = derived("resnet20")
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
    evaluator = AccuracyEvaluator.from_dataset(prunable, data, range(32), range(32, 64), calib_batches=2,
                                               batch_size=16, eval_samples=32)
    payload = EvaluatorPayload.of(evaluator, {}, "cpu")
    executor = RayExecutor(build_evaluator, payload, workers=2, address=c.address)
    space, budget, price = setting("0.4flops")
    waits = {"n": 0}
    real_wait = executor.wait

    def wait_then_lose_a_node():
        waits["n"] += 1
        if waits["n"] == 4:
            c.remove_node(nodes[0])  # the actor there dies with its candidate in flight
        return real_wait()

    executor.wait = wait_then_lose_a_node
    agent = make_agent("random", space, budget, price=price, seed=0, trials=12)
    outcome = Engine(agent, price, budget, executor, trials=12, journal=Journal(tmp_path / "j.jsonl"),
                     progress=False).run()
    executor.close()
    assert executor.replaced >= 1  # the node's actor died and was replaced
    journal = Journal(tmp_path / "j.jsonl").read()
    assert sorted(t.number for t in journal) == list(range(12))  # every candidate exactly once
    assert all(t.result.ok for t in outcome.trials)
    local = Engine(make_agent("random", space, budget, price=price, seed=0, trials=12), price, budget, evaluator,
                   trials=12, progress=False).run()
    assert {t.number: t.result.score for t in outcome.trials} == {t.number: t.result.score for t in local.trials}
    evaluator.restore()


def test_without_an_address_a_new_local_ray_starts_beside_a_running_cluster(monkeypatch):
    """A `ray start` cluster on the machine (its address file written, as the test Cluster writes it) is not
    joined without `--ray-address`: a bare `ray.init(num_cpus=...)` would join it and then refuse the CPU count.
    `RAY_ADDRESS` (a Ray job's) is joined."""
    from ray.cluster_utils import Cluster

    from evaluators.executors import init_ray
    from search.finetune.on_ray import ray_session

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        assert init_ray(num_cpus=2)
        assert ray.get_runtime_context().gcs_address != c.address and ray.cluster_resources()["CPU"] == 2
        ray.shutdown()
        with ray_session(workers=1, address=None, use_gpu=False):
            assert ray.get_runtime_context().gcs_address != c.address and ray.cluster_resources()["CPU"] == 1
        assert not ray.is_initialized()  # the session shut down the Ray it started
        monkeypatch.setenv("RAY_ADDRESS", c.address)
        assert init_ray(num_cpus=2) and ray.get_runtime_context().gcs_address == c.address
    finally:
        ray.shutdown()
        c.shutdown()


def test_racing_bar_travels_with_the_candidate_to_the_actor():
    from evaluators.racing import race_batches

    prunable, _, _ = derived("resnet20")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
    evaluator = AccuracyEvaluator(prunable, [x[:32]], race_batches([(x[32:], y[32:])], 16))
    executor = RayExecutor(build_evaluator, EvaluatorPayload.of(evaluator, {}, "cpu"), workers=1)
    candidate = prunable.space.smallest()
    try:
        executor.submit(0, candidate, 1.01)   # a bar no candidate can reach: stopped after the first chunk
        executor.submit(1, candidate)
        done: dict = {}
        while len(done) < 2:
            done.update(executor.wait())
    finally:
        executor.close()
    assert done[0].raced and done[0].samples == 16 and not done[1].raced and done[1].samples == 32
    assert done[1].score == evaluator.score(candidate)
    evaluator.restore()
