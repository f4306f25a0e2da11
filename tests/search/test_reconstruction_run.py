"""`--reconstruct` in a run: untrained finalists are ranked on refit copies, the export keeps the copied weights
(or is refit with `--export-weights refit`), best.json and finalists.csv say which, and 0 turns it off."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from search import run as run_module
from search.engine.config import RESUMABLE
from search.export import load_subnet
from search.selection.finalists import FINALISTS_FILE

FAST = ["--agent", "random", "--budget", "0.25flops", "--baseline-epochs", "1", "--trials", "4", "--calib-batches",
        "2", "--batch-size", "32", "--eval-samples", "64", "--no-progress", "--quiet", "--finalists", "3"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESEARCH_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _best(path):
    return json.loads((path / "best.json").read_text())


def test_finalists_rank_on_refit_copies_and_the_refit_copy_is_exported(tmp_path):
    run = tmp_path / "on"
    assert run_module.main([*FAST, "--reconstruct", "96", "--out", str(run)]) == 0
    best = _best(run)
    record = best["reconstruction"]
    assert record["inputs"] == 96 and record["layers"] > 0 and record["kept"]
    assert record["finalists_ranked_refit"] and record["export_refit"] and best["export_weights"] == "refit"
    assert record["output_error_after"] < record["output_error_before"]
    assert "refit and re-ranked" in best["selected_by"]
    finalists = pd.read_csv(run / FINALISTS_FILE)
    first = finalists[finalists.exported].iloc[0]
    assert (finalists.finalist_score != finalists.proxy_score).any()  # refit: other scores than the proxy's
    assert best["held_out_top1"] == pytest.approx(first.finalist_score) == pytest.approx(record["refit_held_out_top1"])
    assert all(torch.isfinite(p).all() for p in load_subnet(run).parameters())


def test_export_weights_base_ranks_on_refit_copies_and_exports_the_copied_weights(tmp_path):
    run = tmp_path / "base"
    assert run_module.main([*FAST, "--reconstruct", "96", "--export-weights", "base", "--out", str(run)]) == 0
    best = _best(run)
    record = best["reconstruction"]
    assert record["finalists_ranked_refit"] and not record["export_refit"] and best["export_weights"] == "base"
    finalists = pd.read_csv(run / FINALISTS_FILE)
    first = finalists[finalists.exported].iloc[0]
    assert record["refit_held_out_top1"] == pytest.approx(first.finalist_score)  # the refit copy ranked it
    # what is exported is the copied weights (BN recalibrated): the search's own score, not the refit copy's
    assert best["held_out_top1"] == pytest.approx(first.proxy_score, abs=0.02)


def test_by_default_1024_digits_are_used_and_without_finalists_the_export_is_refit(tmp_path):
    assert run_module.main([*FAST, "--finalists", "0", "--out", str(tmp_path / "default")]) == 0
    best = _best(tmp_path / "default")
    record = best["reconstruction"]
    assert record["inputs"] == 1024 and record["layers"] > 0
    assert record["export_refit"] and not record["finalists_ranked_refit"] and record["refit_held_out_top1"] is None
    assert best["selected_by"] == "search score"


def test_more_inputs_than_the_fit_split_holds_are_one_pass_of_it(tmp_path):
    """--reconstruct above the training data refits on each fit image once (no repeated epochs)."""
    from search.models.zoo import load_data

    assert run_module.main([*FAST, "--reconstruct", "8000", "--finalists", "0", "--out", str(tmp_path / "all")]) == 0
    fit = len(load_data("digits").fit)
    assert _best(tmp_path / "all")["reconstruction"]["inputs"] == fit // 32 * 32  # --batch-size 32, last one dropped


def test_samples_per_pass():
    from torch.utils.data import DataLoader, TensorDataset

    from search.selection.finalists import ShuffledBatches, samples_per_pass

    data = TensorDataset(torch.zeros(70, 2), torch.zeros(70))
    assert samples_per_pass(ShuffledBatches(data, 32)) == 64 == sum(len(x) for x, _ in
                                                                    _one_pass(ShuffledBatches(data, 32)(0), 2))
    assert samples_per_pass(ShuffledBatches(data, 100)) == 70
    assert samples_per_pass(DataLoader(data, batch_size=32)) == 70
    assert samples_per_pass(DataLoader(data, batch_size=32, drop_last=True)) == 64
    assert samples_per_pass([(torch.zeros(4, 2), torch.zeros(4))]) is None  # a plain list of batches: unknown


def _one_pass(batches, count):
    return [next(batches) for _ in range(count)]


def test_reconstruct_0_keeps_the_copied_weights(tmp_path):
    assert run_module.main([*FAST, "--reconstruct", "0", "--out", str(tmp_path / "off")]) == 0
    best = _best(tmp_path / "off")
    assert best["reconstruction"] is None and "refit" not in best["selected_by"]
    finalists = pd.read_csv(tmp_path / "off" / FINALISTS_FILE)
    assert (finalists.finalist_score == finalists.proxy_score).all()  # untrained, copied: the proxy's own score
    run = json.loads((tmp_path / "off" / "run.json").read_text())
    assert run["args"]["reconstruct"] == 0


def test_export_weights_refit_needs_reconstruction(tmp_path, capsys):
    assert run_module.main([*FAST, "--reconstruct", "0", "--export-weights", "refit",
                            "--out", str(tmp_path / "bad")]) == 2
    assert "--export-weights refit" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_more_reconstruction_inputs_than_one_batch_holds_is_refused(tmp_path, capsys):
    from spaces.reconstruct import MAX_POSITIONS

    too_many = MAX_POSITIONS // 64 + 1  # digits are 8 x 8
    assert run_module.main([*FAST, "--reconstruct", str(too_many), "--out", str(tmp_path / "big")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--reconstruct {too_many}" in err and "at most 131072" in err
    assert "Traceback" not in err and not (tmp_path / "big").exists()


def test_reconstruction_may_change_on_resume():
    assert "reconstruct" in RESUMABLE
