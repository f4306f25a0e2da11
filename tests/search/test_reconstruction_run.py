"""`--reconstruct` in a run: the exported subnet's layers refit to the full model, recorded in best.json, and off on 0."""
from __future__ import annotations

import json

import pytest
import torch

from search import run as run_module
from search.engine.config import RESUMABLE

FAST = ["--agent", "random", "--budget", "0.25flops", "--baseline-epochs", "1", "--trials", "4", "--calib-batches",
        "2", "--batch-size", "32", "--eval-samples", "64", "--no-progress", "--quiet", "--finalists", "2"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESEARCH_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _best(path):
    return json.loads((path / "best.json").read_text())


def test_the_export_is_refit_and_says_so(tmp_path):
    assert run_module.main([*FAST, "--reconstruct", "96", "--out", str(tmp_path / "on")]) == 0
    record = _best(tmp_path / "on")["reconstruction"]
    assert record["inputs"] == 96 and record["layers"] > 0 and record["kept"]
    assert record["output_error_after"] < record["output_error_before"]


def test_by_default_1024_digits_are_used(tmp_path):
    assert run_module.main([*FAST, "--finalists", "0", "--out", str(tmp_path / "default")]) == 0
    record = _best(tmp_path / "default")["reconstruction"]
    assert record["inputs"] == 1024 and record["layers"] > 0


def test_reconstruct_0_keeps_the_copied_weights(tmp_path):
    assert run_module.main([*FAST, "--reconstruct", "0", "--out", str(tmp_path / "off")]) == 0
    assert _best(tmp_path / "off")["reconstruction"] is None
    run = json.loads((tmp_path / "off" / "run.json").read_text())
    assert run["args"]["reconstruct"] == 0


def test_reconstruction_may_change_on_resume():
    assert "reconstruct" in RESUMABLE
