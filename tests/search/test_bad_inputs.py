"""Hostile and mistaken inputs: each ends in one line on stderr and exit code 2, runs no code, loses nothing.

Every case of the parametrized suite asserts: exit code 2, exactly one stderr line starting `error:`,
no traceback, no run directory left behind (nothing to block the same --out), and no marker file
written by a malicious pickle. The fault-injection tests below check that nothing computed is lost.
"""
from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from search import run as run_module
from search.engine.records import RunDirectory

FAST = ["--baseline-epochs", "1", "--trials", "6", "--calib-batches", "2", "--batch-size", "32",
        "--eval-samples", "64", "--no-progress", "--quiet", "--finalists", "2", "--finalist-steps", "2",
        "--no-one-shot",  # one-shot finalists add trials: test_run has their own tests
        "--reconstruct", "64"]  # the refit on 64 inputs, not 1024: seconds less a run
BASE = ["--agent", "random", "--budget", "0.4flops"]


class Evil:
    """A pickle that, when loaded, writes the marker file (how a malicious checkpoint runs code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.fixture(autouse=True)
def cache(warm_cache):
    """Each test's own cache, holding the digits baseline its runs start from (conftest's `warm_cache`)."""
    return warm_cache


@pytest.fixture
def files(tmp_path, monkeypatch):
    """User files of every kind of mistake, and a marker path that malicious pickles would write."""
    marker = tmp_path / "MARKER"
    torch.save(Evil(marker), tmp_path / "evil.pt")
    (tmp_path / "garbage.pt").write_bytes(b"this is not a torch file at all")
    (tmp_path / "text.pt").write_text("hello, these are my weights\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "random.pt").write_bytes(bytes(range(7, 256)) * 3)
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "wrong.pt")
    (tmp_path / "bad_models.py").write_text(
        "import torch\n"
        "from search.models.cifar_resnet import resnet20\n"
        "def raises(num_classes):\n    raise RuntimeError('factory exploded')\n"
        "def typeerror(num_classes):\n    return len(5)\n"
        "def untraceable(num_classes):\n"
        "    class M(torch.nn.Module):\n"
        "        def __init__(self):\n"
        "            super().__init__(); self.c = torch.nn.Conv2d(1, 8, 3); self.f = torch.nn.Linear(8, num_classes)\n"
        "        def forward(self, x):\n"
        "            y = self.c(x)\n"
        "            if y.sum() > 0:\n                y = y * 2\n"
        "            return self.f(y.mean((2, 3)))\n"
        "    return M()\n"
        "def nan_weights(num_classes):\n"
        "    m = resnet20(num_classes=num_classes, in_channels=1)\n"
        "    with torch.no_grad():\n        [p.fill_(float('nan')) for p in m.parameters()]\n"
        "    return m\n"
        "def not_a_module(num_classes):\n    return 42\n")
    (tmp_path / "bad_syntax.py").write_text("def model(:\n")
    (tmp_path / "bad_import.py").write_text("import no_such_package_anywhere\n")
    (tmp_path / "bad_data.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n"
        "def raises():\n    raise OSError('no such bucket')\n"
        "def negative():\n"
        "    x = torch.randn(40, 1, 8, 8); y = torch.randint(-1, 3, (40,)); y[0] = -1\n"
        "    return TensorDataset(x, y), TensorDataset(x, y)\n"
        "def one_class():\n"
        "    x = torch.randn(40, 1, 8, 8); y = torch.zeros(40, dtype=torch.long)\n"
        "    return TensorDataset(x, y), TensorDataset(x, y)\n"
        "def wrong_type():\n    return [1, 2, 3]\n"
        "def not_images():\n"
        "    x = torch.randn(40, 5); y = torch.randint(0, 3, (40,))\n"
        "    return TensorDataset(x, y), TensorDataset(x, y)\n")
    folder = tmp_path / "images"
    from PIL import Image

    for part in ("train", "val"):
        for cls in ("a", "b"):
            (folder / part / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (12, 12), (40 * i, 80, 120)).save(folder / part / cls / f"{i}.png")
    (folder / "train" / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    hollow = tmp_path / "hollow"  # a class folder of val/ with no image in it
    for part in ("train", "val"):
        for cls in ("a", "b"):
            (hollow / part / cls).mkdir(parents=True)
            if (part, cls) != ("val", "b"):
                Image.new("RGB", (12, 12), (40, 80, 120)).save(hollow / part / cls / "0.png")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path, marker


CASES = {
    # flags and values
    "unknown agent": (["--agent", "nope", "--budget", "0.4flops"], r"unknown agent 'nope'"),
    "no budget": (["--agent", "random"], r"give at least one --budget"),
    "budget typo": ([*BASE[:2], "--budget", "0.4flop"], r"cannot read budget"),
    "budget above 1": ([*BASE[:2], "--budget", "1.5flops"], r"ratio in \(0, 1\]"),
    "budget negative": ([*BASE[:2], "--budget=-1flops"], r"budget"),
    "budget overflow": ([*BASE[:2], "--budget", "1e400mflops"], r"budget"),
    "budget unreachable": ([*BASE[:2], "--budget", "0.0001flops"], r"cannot be met"),
    "trials zero": ([*BASE, "--trials", "0"], r"--trials must be positive"),
    "trials not a number": ([*BASE, "--trials", "abc"], r"--trials: invalid int value"),
    "seed negative": ([*BASE, "--seed", "-1"], r"--seed must be 0 or more"),
    "seed too large": ([*BASE, "--seed", str(2**40)], r"--seed must be below"),
    "batch size negative": ([*BASE, "--batch-size", "-1"], r"--batch-size must be positive"),
    "calib batches zero": ([*BASE, "--calib-batches", "0"], r"--calib-batches must be positive"),
    "eval samples zero": ([*BASE, "--eval-samples", "0"], r"--eval-samples must be positive"),
    "held out zero": ([*BASE, "--held-out", "0"], r"--held-out"),
    "held out nan": ([*BASE, "--held-out", "nan"], r"--held-out"),
    "round to zero": ([*BASE, "--round-to", "0"], r"--round-to must be positive"),
    "width ratios out of range": ([*BASE, "--width-ratios", "0.5,2"], r"--width-ratios"),
    "width ratios not numbers": ([*BASE, "--width-ratios", "a,b"], r"--width-ratios"),
    "latency batch zero": ([*BASE, "--latency-batch", "0"], r"--latency-batch must be positive"),
    "workers negative": ([*BASE, "--workers", "-1"], r"--workers must be 0 or more"),
    "reconstruct negative": ([*BASE, "--reconstruct", "-5"], r"--reconstruct must be 0 or more"),
    "cpus per worker zero": ([*BASE, "--cpus-per-worker", "0"], r"--cpus-per-worker must be positive"),
    "device unknown": ([*BASE, "--device", "tpu"], r"cannot use --device tpu"),
    "device meta": ([*BASE, "--device", "meta"], r"cannot use --device meta"),
    "device cuda without gpu": ([*BASE, "--device", "cuda:7"], r"cannot use --device cuda:7"),
    "scorer unknown": ([*BASE, "--scorer", "oracle"], r"--scorer: invalid choice"),
    "unknown flag": ([*BASE, "--budgett", "0.4flops"], r"unrecognized arguments"),
    # agent options
    "option of another agent": (["--agent", "tpe", "--budget", "0.4flops", "--food-sources", "4"],
                                r"--food-sources does not apply to agent tpe"),
    "abc food sources 1": (["--agent", "abc", "--budget", "0.4flops", "--food-sources", "1"], r"food_sources >= 2"),
    "population zero": (["--agent", "evolution", "--budget", "0.4flops", "--population", "0"],
                        r"--population must be positive"),
    "parents above population": (["--agent", "evolution", "--budget", "0.4flops", "--population", "8",
                                  "--parents", "9"], r"parents must lie in"),
    "unusable storage": (["--agent", "tpe", "--budget", "0.4flops", "--storage", "nosuchdb://x/y"], r"agent tpe"),
    "pruningnet options without metapruning": ([*BASE, "--export-weights", "pruningnet"], r"apply to --agent metapruning"),
    "metapruning with workers": (["--agent", "metapruning", "--budget", "0.4flops", "--workers", "2"],
                                 r"in this process"),
    "garbage pruningnet": (["--agent", "metapruning", "--budget", "0.4flops", "--pruningnet", "{tmp}/garbage.pt"],
                           r"cannot use PruningNet"),
    "malicious pruningnet": (["--agent", "metapruning", "--budget", "0.4flops", "--pruningnet", "{tmp}/evil.pt"],
                             r"cannot use PruningNet"),
    # models
    "unknown model": ([*BASE, "--model", "nosuch"], r"nosuch"),
    "unknown torchvision model": ([*BASE, "--model", "torchvision:resnet_9000"], r"resnet_9000"),
    "pickled model without trust": ([*BASE, "--model", "{tmp}/evil.pt"], r"--trust-pickle"),
    "malicious weights": ([*BASE, "--weights", "{tmp}/evil.pt"], r"cannot load weights file"),
    "garbage weights": ([*BASE, "--weights", "{tmp}/garbage.pt"], r"cannot load weights file"),
    "missing weights": ([*BASE, "--weights", "{tmp}/none.pt"], r"not found"),
    "text file as weights": ([*BASE, "--weights", "{tmp}/text.pt"], r"text.pt: it is a text file"),
    "empty weights": ([*BASE, "--weights", "{tmp}/empty.pt"], r"empty.pt: the file is empty"),
    "random bytes as weights": ([*BASE, "--weights", "{tmp}/random.pt"], r"random.pt: it is not a file torch.save"),
    "pickled pruningnet is not unpickled": (["--agent", "metapruning", "--budget", "0.4flops", "--pruningnet",
                                             "{tmp}/evil.pt"], r"objects beyond tensors"),
    "timm keyword that is not a literal": ([*BASE, "--model", "timm:resnet18?drop_rate=abc", "--baseline-epochs",
                                            "0"], r"drop_rate='abc' were read as text"),
    "absolute budget unreachable": ([*BASE[:2], "--budget", "0.01k"],
                                    r"the smallest subnet of this space has .* M parameters \(budget 0.01k"),
    "weights that do not fit": ([*BASE, "--weights", "{tmp}/wrong.pt"], r"do not fit"),
    "model factory raises": ([*BASE, "--model", "bad_models:raises"], r"factory exploded"),
    "model factory TypeError inside": ([*BASE, "--model", "bad_models:typeerror"], r"TypeError"),
    "model factory not a module": ([*BASE, "--model", "bad_models:not_a_module"], r"not a torch.nn.Module"),
    "model module syntax error": ([*BASE, "--model", "bad_syntax:model"], r"cannot import module 'bad_syntax'"),
    "model module import error": ([*BASE, "--model", "bad_import:model"], r"no_such_package_anywhere"),
    "model missing function": ([*BASE, "--model", "bad_models:nothing"], r"has no function 'nothing'"),
    "model fx cannot trace": ([*BASE, "--model", "bad_models:untraceable", "--baseline-epochs", "0"],
                              r"untraceable|cannot analyse"),
    "nan weights": ([*BASE, "--model", "bad_models:nan_weights"], r"non-finite"),
    # data
    "unknown data": ([*BASE, "--data", "mnist"], r"mnist"),
    "missing cifar folder": ([*BASE, "--data", "cifar10:/no/such/folder"], r"/no/such/folder"),
    "data factory raises": ([*BASE, "--data", "bad_data:raises"], r"no such bucket"),
    "negative labels": ([*BASE, "--data", "bad_data:negative"], r"labels must be class indices"),
    "one class": ([*BASE, "--data", "bad_data:one_class"], r"at least 2"),
    "data factory wrong type": ([*BASE, "--data", "bad_data:wrong_type"], r"must return \(train_dataset"),
    "data not images": ([*BASE, "--data", "bad_data:not_images"], r"\(C, H, W\) tensor"),
    "corrupt image": ([*BASE, "--data", "imagefolder:{tmp}/images@8", "--model", "torchvision:resnet18"],
                      r"cannot read image .*broken.png"),
    "empty class folder": ([*BASE, "--data", "imagefolder:{tmp}/hollow@8", "--model", "torchvision:resnet18"],
                           r"cannot read imagefolder .*hollow/val/: .*\bb\b"),
    "imagefolder size zero": ([*BASE, "--data", "imagefolder:{tmp}/images@0"], r"SIZE as a positive whole .* got @0"),
    "imagefolder size negative": ([*BASE, "--data", "imagefolder:{tmp}/images@-3"], r"got @-3"),
    "imagefolder size text": ([*BASE, "--data", "imagefolder:{tmp}/images@abc"], r"got @abc"),
    "imagefolder size two sides": ([*BASE, "--data", "imagefolder:{tmp}/images@16x16"], r"got @16x16"),
    "cifar10 without a folder": ([*BASE, "--data", "cifar10:"], r"cifar10 needs a folder"),
    "weights a folder": ([*BASE, "--weights", "{tmp}"], r"is a folder, not a file"),
    "weights an empty path": ([*BASE, "--weights", ""], r"--weights was given an empty value"),
    "out an empty path": ([*BASE, "--out", ""], r"--out was given an empty value"),
    "ray address nobody listens on": ([*BASE, "--ray-address", "127.0.0.1:1"], r"cannot reach a Ray cluster at"),
    "ray address without a port": ([*BASE, "--ray-address", "somehost"], r"is not host:port"),
    "batch size one": ([*BASE, "--batch-size", "1"], r"--batch-size must be at least 2"),
    "gpus without a GPU": ([*BASE, "--workers", "1", "--gpus-per-worker", "1"], r"asks for GPUs, but this machine"),
    "weights a device": ([*BASE, "--weights", "/dev/null"], r"/dev/null is not a regular file"),
    # run directories
    "resume of a non-run": (["--resume", "{tmp}"], r"is not a run directory"),
    "output folder is a file": ([*BASE, "--out", "{tmp}/evil.pt"], r"cannot write to output folder"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2(name, files, capsys):
    tmp, marker = files
    args, message = CASES[name]
    args = [a.replace("{tmp}", str(tmp)) for a in args]
    out = tmp / "run"
    try:
        code = run_module.main([*FAST, "--out", str(out), *args] if "--out" not in args else [*FAST, *args])
    except SystemExit as exit_:  # argparse's own errors exit from parse_args
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2, (name, err)
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 0, err
    assert re.search(message, err), err
    assert "weights_only=False" not in err, "never the advice to unpickle"
    assert not marker.exists(), "a pickle ran code"
    assert not (out / "run.json").exists(), "a failed start must leave no run behind"


def test_a_dead_ray_address_in_the_environment_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # a Ray job's variable, left pointing at a cluster gone
    out = tmp_path / "run"
    assert run_module.main([*FAST, *BASE, "--workers", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: cannot reach a Ray cluster at RAY_ADDRESS 127.0.0.1:1: Connection refused"
    assert not (out / "run.json").exists()
    assert run_module.main([*FAST, *BASE, "--out", str(out)]) == 0  # without --workers no Ray is joined


@pytest.mark.parametrize("budget", ["0.5flop", "0.4flops+x", "0ms"])
def test_a_budget_typo_is_refused_before_any_data_or_model_is_loaded(budget, tmp_path, capsys, monkeypatch):
    from search.models import inputs

    def never(*args, **kwargs):
        raise AssertionError("loaded before the budget was read")

    monkeypatch.setattr(inputs, "load_data", never)
    monkeypatch.setattr(inputs, "load_model", never)
    assert run_module.main([*FAST, "--agent", "random", "--budget", budget, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "budget" in err, err


def test_suite_counts_at_least_forty_cases():
    assert len(CASES) >= 40


def test_trusted_pickled_model_loads_only_with_the_flag(files, capsys):
    tmp, marker = files
    from search.models.cifar_resnet import resnet20

    torch.save(resnet20(num_classes=10, in_channels=1), tmp / "whole.pt")
    code = run_module.main([*FAST, *BASE, "--model", str(tmp / "whole.pt"), "--out", str(tmp / "r")])
    assert code == 2 and "--trust-pickle" in capsys.readouterr().err
    code = run_module.main([*FAST, *BASE, "--model", str(tmp / "whole.pt"), "--trust-pickle", "--out", str(tmp / "r")])
    assert code == 0 and (tmp / "r" / "best.json").is_file()


def test_a_poisoned_baseline_cache_is_never_unpickled(files, capsys):
    tmp, marker = files
    assert run_module.main([*FAST, *BASE, "--out", str(tmp / "a")]) == 0
    cached = next((tmp / "cache").glob("*.pt"))
    torch.save(Evil(marker), cached)
    assert run_module.main([*FAST, *BASE, "--out", str(tmp / "b")]) == 0
    assert not marker.exists()
    assert "training it again" in capsys.readouterr().err
    torch.load(cached, weights_only=True)  # replaced by a clean entry


def test_the_baseline_cache_is_keyed_on_the_split(files):
    tmp, _ = files
    assert run_module.main([*FAST, *BASE, "--out", str(tmp / "a")]) == 0
    assert run_module.main([*FAST, *BASE, "--held-out", "0.3", "--out", str(tmp / "b")]) == 0
    assert len(list((tmp / "cache").glob("*.pt"))) == 2


def test_resume_refuses_options_that_would_change_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_module.main([*FAST, *BASE, "--out", str(out)]) == 0
    before = (out / "journal.jsonl").read_text()
    code = run_module.main(["--resume", str(out), "--agent", "tpe", "--budget", "0.2flops", "--seed", "7"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert all(flag in err for flag in ("--agent", "--budget", "--seed")), err
    assert (out / "journal.jsonl").read_text() == before
    # the same values again, and the options that may change, are accepted
    assert run_module.main(["--resume", str(out), "--agent", "random", "--trials", "8", "--no-progress",
                            "--quiet"]) == 0
    assert len(pd.read_csv(out / "trials.csv")) == 8


def test_evolution_takes_a_small_population(tmp_path):
    assert run_module.main([*FAST, "--agent", "evolution", "--budget", "0.4flops", "--population", "6",
                            "--out", str(tmp_path / "r")]) == 0


# ---------------------------------------------------------------- faults: nothing computed is lost

def test_a_corrupted_journal_line_loses_only_itself(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_module.main([*FAST, *BASE, "--trials", "10", "--out", str(out)]) == 0
    whole = pd.read_csv(out / "trials.csv")
    lines = (out / "journal.jsonl").read_text().splitlines()
    lines[3] = lines[3][: len(lines[3]) // 2] + "\x00garbage"
    (out / "journal.jsonl").write_text("\n".join(lines) + "\n")
    assert run_module.main(["--resume", str(out), "--no-progress"]) == 0
    assert "skipped 1 unreadable line" in capsys.readouterr().err
    assert list(out.glob("journal.jsonl.bak-*")), "the corrupted journal is kept"
    resumed = pd.read_csv(out / "trials.csv")
    assert len(resumed) == 10
    pd.testing.assert_frame_equal(resumed.drop(columns=["seconds"]), whole.drop(columns=["seconds"]))


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_on_the_journal_is_one_line_and_resumable(tmp_path, capsys, monkeypatch):
    from search.engine.records import Journal

    out = tmp_path / "run"
    real, calls = Journal.append, []

    def append(self, trial):
        calls.append(trial)
        if len(calls) == 4:
            _enospc()
        real(self, trial)

    monkeypatch.setattr(Journal, "append", append)
    code = run_module.main([*FAST, *BASE, "--trials", "8", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "No space left on device" in err and "--resume" in err
    assert len(Journal(out / "journal.jsonl").read()) == 3
    monkeypatch.setattr(Journal, "append", real)
    assert run_module.main(["--resume", str(out), "--no-progress", "--quiet"]) == 0
    assert len(pd.read_csv(out / "trials.csv")) == 8


def test_disk_full_on_trials_csv_keeps_the_journal_and_no_half_file(tmp_path, capsys, monkeypatch):
    from search.engine import records

    out = tmp_path / "run"
    real = records.atomic_write

    def failing(path, data):
        if Path(path).name == records.TRIALS_FILE:
            def partial(f):  # a write that dies half-way
                f.write(b"trial,state\n0,compl")
                _enospc()
            return real(path, partial)
        return real(path, data)

    monkeypatch.setattr(records, "atomic_write", failing)
    code = run_module.main([*FAST, *BASE, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "No space left" in err
    assert not (out / "trials.csv").exists() and not list(out.glob(".trials.csv*"))
    assert len(records.Journal(out / "journal.jsonl").read()) == 6
    monkeypatch.setattr(records, "atomic_write", real)
    assert run_module.main(["--resume", str(out), "--no-progress", "--quiet"]) == 0
    frame = pd.read_csv(out / "trials.csv")
    assert len(frame) == 6 and json.loads((out / "run.json").read_text())["status"] == "complete"


def test_run_directory_helpers_reject_non_runs(tmp_path):
    from search.errors import UserError

    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a JSON object"):
        RunDirectory.open(str(tmp_path)).read()


def test_a_malicious_best_pt_never_runs_in_export_or_finetune(files, capsys):
    from search.export import main as export_main
    from search.finetune import main as finetune_main

    tmp, marker = files
    out = tmp / "run"
    assert run_module.main([*FAST, *BASE, "--out", str(out)]) == 0
    torch.save(Evil(marker), out / "best.pt")
    assert export_main([str(out), "--format", "state_dict", "--out", str(tmp / "x.pt")]) == 0  # rebuilt, no pickle
    (out / "best.state_dict.pt").unlink()
    capsys.readouterr()
    assert export_main([str(out)]) == 2 and "--trust-pickle" in capsys.readouterr().err
    assert finetune_main([str(out), "--epochs", "1", "--no-progress"]) == 2
    assert not marker.exists()


@pytest.mark.parametrize("agent", ["random", "tpe", "nsga2", "abc", "evolution", "amc", "uniform"])
def test_a_journal_damaged_in_the_middle_resumes_keeping_every_readable_trial(tmp_path, capsys, agent):
    out = tmp_path / "run"
    assert run_module.main([*FAST, "--agent", agent, "--budget", "0.4flops", "--trials", "10", "--out", str(out)]) == 0
    whole = pd.read_csv(out / "trials.csv").set_index("trial")
    lines = (out / "journal.jsonl").read_text().splitlines()
    middle = len(lines) // 2
    lost = json.loads(lines[middle])["trial"]
    lines[middle] = "{garbage"
    (out / "journal.jsonl").write_text("\n".join(lines) + "\n")
    assert run_module.main(["--resume", str(out), "--no-progress", "--quiet"]) == 0
    resumed = pd.read_csv(out / "trials.csv").set_index("trial")
    kept = whole.drop(index=lost)
    columns = ["state", "score", "flops", "architecture"]
    pd.testing.assert_frame_equal(resumed.loc[kept.index, columns], kept[columns])
    assert len(resumed) == len(whole)


def test_a_journal_of_one_half_written_line_is_set_aside_before_the_resume_appends(tmp_path, capsys):
    """A crash in the first trial's write: the resume keeps the line as a backup and starts a clean journal,
    so its first record is not glued onto the half line (and lost at the next resume)."""
    out = tmp_path / "run"
    assert run_module.main([*FAST, "--agent", "random", "--budget", "0.4flops", "--trials", "6", "--out",
                            str(out)]) == 0
    whole = pd.read_csv(out / "trials.csv")
    journal = out / "journal.jsonl"
    journal.write_text(journal.read_text().splitlines()[0][:40])  # half of the first line, no newline
    assert run_module.main(["--resume", str(out), "--no-progress", "--quiet"]) == 0
    assert len(list(out.glob("journal.jsonl.bak-*"))) == 1
    from search.engine.records import Journal

    reader = Journal(journal)
    assert len(reader.read()) == len(whole) and reader.skipped == []


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_second_process_on_a_run_directory_is_refused_in_one_line(tmp_path, capsys):
    import socket
    import subprocess
    import sys

    out = tmp_path / "run"
    assert run_module.main([*FAST, *BASE, "--out", str(out)]) == 0
    assert not (out / "run.lock").exists(), "a finished run releases its lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "run.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                  "since": "2026-01-01 00:00:00"}))
        before = (out / "journal.jsonl").read_text()
        capsys.readouterr()
        assert run_module.main(["--resume", str(out), "--trials", "8", "--no-progress", "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"in use by process {holder.pid}" in err and socket.gethostname() in err, err
        assert (out / "journal.jsonl").read_text() == before, "the refused process wrote nothing"
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_from_a_dead_process_is_taken_over_with_a_warning(tmp_path, capsys):
    import socket

    out = tmp_path / "run"
    assert run_module.main([*FAST, *BASE, "--out", str(out)]) == 0
    pid = _dead_pid()
    (out / "run.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "?"}))
    capsys.readouterr()
    assert run_module.main(["--resume", str(out), "--trials", "8", "--no-progress", "--quiet"]) == 0
    assert f"taking over the lock of process {pid}" in capsys.readouterr().err
    assert len(pd.read_csv(out / "trials.csv")) == 8
    assert not (out / "run.lock").exists()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    from search.errors import UserError

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "?"}))
    with pytest.raises(UserError, match="in use by process 1 on host elsewhere"):
        RunDirectory(out).lock()


def test_options_without_effect_and_budgets_given_twice_are_warned_about(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_module.main([*FAST, "--agent", "random", "--budget", "0.5flops", "--budget", "0.4FLOPS",
                            "--latency-batch", "4", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "--budget limits flops twice (0.5flops, 0.4FLOPS)" in err
    assert "--latency-batch has no effect without a latency budget" in err
    caps = json.loads((out / "run.json").read_text())["budget"]["caps"]
    base = json.loads((out / "run.json").read_text())["base"]["flops"]
    assert caps["flops"] == pytest.approx(0.4 * base)   # 0.4FLOPS is 0.4flops: units are case-insensitive


def test_prunesearch_without_a_command_is_usage_on_stderr_exit_2(capsys):
    from search.cli import main as cli_main

    assert cli_main([]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.startswith("usage: prunesearch")
    assert cli_main(["--help"]) == 0 and capsys.readouterr().out.startswith("usage: prunesearch")


def test_a_round_to_wider_than_every_group_warns_that_only_blocks_are_searched(caplog, monkeypatch):
    import logging

    from search.engine.config import SearchConfig
    from search.engine.pipeline import Pipeline

    config = SearchConfig(model="resnet20", data="digits", agent="random", budget=["0.5flops"], round_to=100000,
                          baseline_epochs=0, trials=2).validate()
    monkeypatch.setattr(logging.getLogger("search"), "propagate", True)  # a CLI test before may have set it off
    with caplog.at_level("WARNING", logger="search.engine.pipeline"):
        prunable = Pipeline(config, progress=False).derive()
    assert not prunable.space.widths and len(prunable.space) > 0
    assert "--round-to 100000 leaves no channel width to search" in caplog.text


def test_a_resume_whose_journal_is_gone_says_it_scores_again(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_module.main([*FAST, "--agent", "random", "--budget", "0.4flops", "--out", str(out)]) == 0
    (out / "journal.jsonl").unlink()
    capsys.readouterr()
    assert run_module.main(["--resume", str(out), "--no-progress", "--quiet"]) == 0
    assert "holds no trial, yet run.json records 6" in capsys.readouterr().err


def test_a_held_out_share_that_leaves_little_to_train_on_is_warned(caplog, monkeypatch):
    import logging

    from search.engine.config import SearchConfig
    from search.engine.pipeline import Pipeline

    config = SearchConfig(model="resnet20", data="digits", agent="random", budget=["0.5flops"], held_out=0.999,
                          baseline_epochs=0, trials=2).validate()
    monkeypatch.setattr(logging.getLogger("search"), "propagate", True)  # a CLI test before may have set it off
    with caplog.at_level("WARNING", logger="search.models.inputs"):
        Pipeline(config, progress=False).load_inputs()
    assert "--held-out 0.999 keeps" in caplog.text and "see little" in caplog.text


def test_ctrl_c_while_a_command_still_imports_is_one_line_exit_130(monkeypatch, capsys):
    import importlib

    from search import cli

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib, "import_module", interrupted)
    assert cli.main(["run", "--agent", "random"]) == 130
    assert capsys.readouterr().err == "interrupted\n"
