"""`search.finetune`: distillation, resume, where it starts, safe loading and every user error as one line (Ray Train:
test_finetune_on_ray.py)."""
from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import one_run
from search.engine import records
from search.finetune import command as ft
from search.finetune import loop
from search.finetune.step import Distillation, distillation_loss


FAST = ["--baseline-epochs", "1", "--trials", "4", "--calib-batches", "2", "--batch-size", "32",
        "--eval-samples", "64", "--no-progress", "--quiet", "--finalists", "2", "--finalist-steps", "2",
        "--reconstruct", "64"]  # the refit on 64 inputs, not 1024: seconds less a run


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One real run directory for the module (see conftest.one_run)."""
    yield from one_run(tmp_path_factory, "finetune", FAST)


@pytest.fixture
def run_dir(made, tmp_path):
    return shutil.copytree(made / "run", tmp_path / "run")


def tune(run, **kw):
    kw = {"epochs": 1, "batch_size": 128, "progress": False, "distill": False, **kw}
    return ft.finetune(run, **kw)


def states_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def saved_state(run):
    return torch.load(run / records.FINETUNED_STATE_FILE, weights_only=True)


# ---------------------------------------------------------------- distillation

def test_distillation_loss_is_ce_at_alpha_0_and_kl_at_alpha_1():
    g = torch.Generator().manual_seed(0)
    logits, teacher, y = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g), torch.arange(8) % 5
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert torch.allclose(distillation_loss(logits, teacher, y, Distillation(4.0, 0.0)), ce)
    soft = distillation_loss(logits, teacher, y, Distillation(4.0, 1.0))
    assert soft > 0 and torch.allclose(distillation_loss(teacher, teacher, y, Distillation(4.0, 1.0)),
                                       torch.zeros(()), atol=1e-6)
    assert torch.allclose(distillation_loss(logits, teacher, y, Distillation(4.0, 0.5)), 0.5 * ce + 0.5 * soft)


def test_distillation_changes_the_fine_tune_and_is_seeded(made, tmp_path):
    runs = [shutil.copytree(made / "run", tmp_path / name) for name in ("kd1", "kd2", "ce")]
    kd1, kd2 = tune(runs[0], distill=True), tune(runs[1], distill=True)
    ce = tune(runs[2], distill=False)
    assert kd1.history[0]["loss"] == kd2.history[0]["loss"] and states_equal(saved_state(runs[0]), saved_state(runs[1]))
    assert kd1.history[0]["loss"] != ce.history[0]["loss"]
    assert not states_equal(saved_state(runs[0]), saved_state(runs[2]))


# ---------------------------------------------------------------- checkpoints and resume, in this process

def test_resume_continues_from_the_last_epoch_and_matches_an_uninterrupted_run(made, tmp_path):
    straight, split = (shutil.copytree(made / "run", tmp_path / name) for name in ("straight", "split"))
    whole = tune(straight, epochs=2)
    first = tune(split, epochs=2, stop_after=1)
    assert first.epochs == 1 and len(pd.read_csv(split / records.FINETUNE_CSV)) == 1
    assert torch.load(split / loop.CHECKPOINT_FILE, weights_only=True)["epoch"] == 1
    rest = tune(split, epochs=2, resume=True)
    assert rest.resumed_from == 1 and [r["epoch"] for r in rest.history] == [1, 2]
    assert rest.history[0] == first.history[0]  # epoch 1 was not trained again
    assert [r["loss"] for r in rest.history] == [r["loss"] for r in whole.history]
    assert states_equal(saved_state(split), saved_state(straight)) and (split / loop.FINETUNE_PLOT).is_file()


def test_an_unfinished_fine_tune_is_never_overwritten_and_resumes_only_its_recipe(run_dir, capsys):
    tune(run_dir, epochs=2, stop_after=1)
    code = ft.main([str(run_dir), "--epochs", "2", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "unfinished fine-tune (epoch 1 of 2): --resume" in err
    code = ft.main([str(run_dir), "--epochs", "2", "--resume", "--lr", "0.01", "--no-progress", "--batch-size", "128",
                    "--no-distill"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--lr (saved 0.05, given 0.01)" in err


# ---------------------------------------------------------------- where the fine-tune starts

@pytest.fixture(scope="module")
def copied_run(tmp_path_factory):
    """A run that exports the base model's copied weights, untouched by finalist steps."""
    at = FAST.index("--finalist-steps")
    args = FAST[:at] + ["--finalist-steps", "0", "--export-weights", "base"] + FAST[at + 2:]
    yield from one_run(tmp_path_factory, "copied", args)


def test_start_base_is_what_export_weights_base_exports(copied_run, tmp_path):
    run = shutil.copytree(copied_run / "run", tmp_path / "run")
    args = records.RunDirectory.open(str(run)).read()["args"]
    subnet = ft.copied_subnet(records.RunDirectory.open(str(run)), args, trust_pickle=False)
    assert states_equal(subnet.state_dict(), torch.load(run / loop.SUBNET_STATE_FILE, weights_only=True))
    from_export = tune(run, epochs=1)
    exported = saved_state(run)
    from_base = tune(run, epochs=1, start="base")
    assert from_base.before_top1 == from_export.before_top1 and states_equal(saved_state(run), exported)
    assert records.RunDirectory.open(str(run)).read()["finetune"]["start"] == "base"


@pytest.fixture(scope="module")
def refit_run(tmp_path_factory):
    """A run that exports the untrained refit copy (the default with --finalist-steps 0)."""
    at = FAST.index("--finalist-steps")
    yield from one_run(tmp_path_factory, "refit", FAST[:at] + ["--finalist-steps", "0"] + FAST[at + 2:])


@pytest.mark.parametrize("best, steps, start", [
    ({"export_weights": "refit", "finetuned_steps": 0, "supernet_epochs": 0}, 600, "base"),
    ({"export_weights": "refit", "finetuned_steps": 0, "supernet_epochs": 0}, 599, "export"),
    ({"export_weights": "refit", "finetuned_steps": 50, "supernet_epochs": 0}, 10**6, "export"),
    ({"export_weights": "supernet, refit", "finetuned_steps": 0, "supernet_epochs": 2}, 10**6, "export"),
    ({"export_weights": "pruningnet", "finetuned_steps": 0}, 10**6, "export"),
    ({"export_weights": "base", "finetuned_steps": 0}, 10**6, "export"),
    ({}, 10**6, "export"),
])
def test_auto_starts_a_long_fine_tune_of_an_untrained_refit_export_from_the_copied_weights(best, steps, start):
    assert loop.auto_start(best, steps) == start


def test_auto_picks_by_the_fine_tune_s_steps_and_a_resume_keeps_its_pick(refit_run, tmp_path, monkeypatch, capsys):
    runs = [shutil.copytree(refit_run / "run", tmp_path / name) for name in ("auto", "base", "short")]
    steps = 2 * loop.steps_per_epoch(len(loop.training_set(ft._run_data(
        records.RunDirectory.open(str(runs[0])).read()["args"]))), 128)
    monkeypatch.setattr(loop, "COPIED_FROM_STEPS", steps)
    first = tune(runs[0], epochs=2, stop_after=1)
    assert first.start == "base" and first.before_top1 == tune(runs[1], epochs=2, start="base").before_top1
    monkeypatch.setattr(loop, "COPIED_FROM_STEPS", steps + 1)  # auto would now pick the export; the resume keeps base
    rest = tune(runs[0], epochs=2, resume=True)
    assert rest.start == "base" and rest.resumed_from == 1 and states_equal(saved_state(runs[0]), saved_state(runs[1]))
    short = tune(runs[2], epochs=2)
    assert short.start == "export" and short.before_top1 != first.before_top1
    assert ft.main([str(runs[2]), "--epochs", "1", "--batch-size", "128", "--no-progress", "--start", "base"]) == 0
    assert "pruned before fine-tuning (copied weights)" in capsys.readouterr().out


def test_start_base_fine_tunes_the_copied_weights_not_the_refit_export(run_dir, capsys):
    from_export = tune(run_dir, epochs=2, stop_after=1)
    assert tune(run_dir, epochs=2, resume=True).resumed_from == 1
    exported = saved_state(run_dir)
    from_base = tune(run_dir, epochs=1, start="base")
    assert from_base.before_top1 != from_export.before_top1 and not states_equal(saved_state(run_dir), exported)
    tune(run_dir, epochs=2, stop_after=1, start="base")
    capsys.readouterr()
    code = ft.main([str(run_dir), "--epochs", "2", "--resume", "--no-progress", "--batch-size", "128", "--start",
                    "export"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--start (saved base, given export)" in err, err
    with pytest.raises(ft.UserError, match="--start must be one of auto, export, base, got 'copied'"):
        tune(run_dir, start="copied")


# ---------------------------------------------------------------- safety and user errors

def test_epoch_order_splits_each_global_batch_over_the_workers():
    whole = loop.epoch_order(100, 8, seed=3, epoch=2)
    parts = [loop.epoch_order(100, 8, seed=3, epoch=2, rank=r, world=2) for r in range(2)]
    assert len(whole) == 96 and sorted(whole) == sorted(parts[0] + parts[1])
    for k in range(12):  # global batch k of one worker = the union of batch k of each of two
        assert set(whole[8 * k:8 * k + 8]) == set(parts[0][4 * k:4 * k + 4]) | set(parts[1][4 * k:4 * k + 4])
    assert loop.epoch_order(100, 8, seed=3, epoch=3) != whole


class _Hostile:
    """Unpickling it opens (creates) the marker file: code from the file would have run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _plant(path, marker):
    with open(path, "wb") as f:
        pickle.dump(_Hostile(marker), f, protocol=2)


@pytest.mark.parametrize("planted, extra, message", [
    ("best.pt", [], "pass --trust-pickle"),
    (loop.SUBNET_STATE_FILE, [], "weights_only"),
    (loop.CHECKPOINT_FILE, ["--resume"], "weights_only"),
])
def test_a_hostile_pickle_never_runs(run_dir, tmp_path, capsys, planted, extra, message):
    marker = tmp_path / "pwned"
    if planted == "best.pt":
        (run_dir / loop.SUBNET_STATE_FILE).unlink()
    _plant(run_dir / planted, marker)
    code = ft.main([str(run_dir), "--epochs", "1", "--no-progress", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and message in err, err
    assert not marker.exists()


def test_a_read_only_run_directory_fails_before_training(run_dir, capsys, monkeypatch):
    os.chmod(run_dir, 0o555)
    if os.geteuid() == 0:  # root writes anyway: refuse writes into the folder as the kernel would
        real = Path.write_text

        def refused(self, *args, **kw):
            if self.parent == run_dir:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kw)

        monkeypatch.setattr(Path, "write_text", refused)
    monkeypatch.setattr(ft, "fit", lambda *a, **k: pytest.fail("training started"))
    try:
        code = ft.main([str(run_dir), "--epochs", "1", "--no-progress"])
    finally:
        os.chmod(run_dir, 0o755)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "cannot write to the run directory" in err, err


def test_a_full_disk_mid_fine_tune_keeps_the_last_epoch(run_dir, capsys, monkeypatch):
    real, writes = torch.save, []

    def full_disk(obj, f, *args, **kw):
        if Path(getattr(f, "name", f)).name.startswith(f".{loop.CHECKPOINT_FILE}."):  # the temporary file
            writes.append(obj["epoch"])
            if obj["epoch"] == 2:
                raise OSError(28, "No space left on device")
        return real(obj, f, *args, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    code = ft.main([str(run_dir), "--epochs", "3", "--no-progress", "--batch-size", "128", "--no-distill"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "No space left on device" in err and writes == [1, 2], err
    assert torch.load(run_dir / loop.CHECKPOINT_FILE, weights_only=True)["epoch"] == 1
    assert not list(run_dir.glob(f".{loop.CHECKPOINT_FILE}.*"))  # no temporary file left
    monkeypatch.setattr(torch, "save", real)
    assert tune(run_dir, epochs=3, resume=True, batch_size=128).resumed_from == 1


def _garbage_best(run):
    (run / loop.SUBNET_STATE_FILE).unlink()
    (run / "best.pt").write_bytes(b"not a pickle at all")


def _state_dict_best(run):
    (run / loop.SUBNET_STATE_FILE).replace(run / "best.pt")


@pytest.mark.parametrize("args, prepare, message", [
    (["--batch-size", "-1"], None, r"--batch-size must be positive, got -1"),
    (["--epochs", "0"], None, r"--epochs must be positive"),
    (["--kd-alpha", "2"], None, r"--kd-alpha must be in \[0, 1\]"),
    (["--workers", "-1"], None, r"--workers must be 0 or more"),
    (["--trust-pickle"], _garbage_best, r"cannot load .*best.pt"),
    ([], _garbage_best, r"pass --trust-pickle"),
    (["--trust-pickle"], _state_dict_best, r"holds a state dict, not a module"),
    (["--workers", "3"], None, r"--batch-size 32 must be a multiple of --workers 3"),
    pytest.param(["--device", "cuda"], None, r"cannot use --device cuda",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
])
def test_user_errors_are_one_line_and_exit_2(run_dir, capsys, args, prepare, message):
    if prepare is not None:
        prepare(run_dir)
    code = ft.main([str(run_dir), "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and err.count("\n") == 0, err
    assert re.search(message, err), err


def test_a_dead_ray_address_in_the_environment_is_refused_in_seconds(run_dir, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # a Ray job's variable, left pointing at a cluster gone
    assert ft.main([str(run_dir), "--no-progress", "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: cannot reach a Ray cluster at RAY_ADDRESS 127.0.0.1:1: Connection refused"
    assert not (run_dir / records.FINETUNE_CSV).exists()


def test_argument_errors_are_one_line_with_a_hint(capsys):
    with pytest.raises(SystemExit) as exit:
        ft.main(["somewhere", "--epochs", "abc"])
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 2 and err.count("\n") == 0
    assert err == "error: argument --epochs: invalid int value: 'abc' (see python -m search.finetune --help)"


def test_a_missing_run_directory(tmp_path, capsys):
    assert ft.main([str(tmp_path / "nope")]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_amp_trains_under_bfloat16_autocast():
    from search.finetune.step import TrainConfig, make_optimizer, train_epoch

    def run(amp):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                    torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4))
        g = torch.Generator().manual_seed(1)
        batches = [(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(3)]
        optimizer, scheduler = make_optimizer(model, TrainConfig(epochs=1, lr=0.05), 3)
        return train_epoch(model, batches, optimizer, scheduler, amp=amp)["loss"]

    plain, amp = run(False), run(True)
    assert amp == amp and abs(amp - plain) < 0.1 and amp != plain  # finite, close, and really in bfloat16
