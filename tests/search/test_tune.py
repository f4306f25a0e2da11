"""Agents as Ray Tune searchers, and the search through tune.Tuner (with Tuner.restore on --resume)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from ray.tune.search import Searcher

from agents import list_agents, make_agent
from conftest import fake_score, setting
from search import run as run_module
from search.engine.tune import AgentSearcher


def searcher(name, **options):
    space, budget, price = setting("0.4flops")
    return AgentSearcher(make_agent(name, space, budget, price=price, seed=0, trials=20, **options), price, budget), space


def test_suggest_maps_ask_and_waits_at_a_generation_barrier():
    s, space = searcher("abc", food_sources=3)
    configs = [s.suggest(f"t{i}") for i in range(3)]
    assert all(space.validate(c["candidate"]) for c in configs) and [c["trial"] for c in configs] == [0, 1, 2]
    assert s.suggest("t3") is None  # the colony waits for its first phase
    for i, c in enumerate(configs):
        s.on_trial_complete(f"t{i}", {"score": fake_score(space, c["candidate"])})
    assert isinstance(s.suggest("t3"), dict)


def test_finished_when_the_agent_has_nothing_more_and_errors_are_failures():
    s, _ = searcher("uniform")
    config = s.suggest("a")
    assert s.suggest("b") is None  # its one candidate is still out
    s.on_trial_complete("a", error=True)
    assert s.suggest("b") == Searcher.FINISHED
    assert [t.result.state.value for t in s.trials] == ["failed"] and config["trial"] == 0


@pytest.mark.parametrize("name", list_agents())
def test_save_and_restore_continue_identically_with_trials_outstanding(tmp_path, name):
    a, space = searcher(name)
    configs = {}
    for i in range(7):
        c = a.suggest(f"t{i}")
        if isinstance(c, dict):
            configs[f"t{i}"] = c
        if i < 5 and configs:  # the rest stay outstanding
            tid, done = configs.popitem()
            a.on_trial_complete(tid, {"score": fake_score(space, done["candidate"])})
    a.save(str(tmp_path / "searcher.pt"))
    torch.load(tmp_path / "searcher.pt", weights_only=True)  # tensors and plain data only
    b, _ = searcher(name)
    b.restore(str(tmp_path / "searcher.pt"))
    assert b.outstanding == a.outstanding and b.asked == a.asked
    for s in (a, b):
        for tid, c in configs.items():
            s.on_trial_complete(tid, {"score": fake_score(space, c["candidate"])})
    assert [a.suggest(f"n{i}") for i in range(3)] == [b.suggest(f"n{i}") for i in range(3)]


def test_the_main_job_through_ray_tune_and_its_restore(tmp_path, monkeypatch, capsys):
    # nsga2: Tune pickles the searcher (the agent and its Optuna study) into its experiment state
    pytest.importorskip("ray")
    monkeypatch.setenv("PRUNESEARCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["--agent", "nsga2", "--budget", "0.4flops", "--backend", "tune", "--workers", "2", "--trials", "4",
            "--baseline-epochs", "1", "--calib-batches", "2", "--batch-size", "32", "--eval-samples", "64",
            "--no-progress", "--quiet", "--no-one-shot"]
    assert run_module.main([*args, "--out", str(out)]) == 0
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 4 and (trials.state == "complete").all() and (trials.flops_ratio <= 0.4).all()
    assert (out / "tune" / "search").is_dir() and (out / "best.pt").is_file()
    assert run_module.main(["--resume", str(out), "--no-progress", "--quiet"]) == 0  # Tuner.restore
    assert pd.read_csv(out / "trials.csv")[["trial", "score"]].equals(trials[["trial", "score"]])
    # Tuner.restore keeps the experiment's sample count: more trials are refused, not silently ignored
    assert run_module.main(["--resume", str(out), "--trials", "6", "--no-progress", "--quiet"]) == 2
    assert "--backend tune cannot change --trials on resume" in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["args"]["trials"] == 4
