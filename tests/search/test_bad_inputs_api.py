"""Bad arguments and bad data through the library (`prune`, `search.finetune.finetune`, `search.export.export`).

Every case asserts what the CLI suite (test_bad_inputs.py) asserts of the command line: one `UserError`, its
message on one line, and nothing left on disk (no run directory, no file added to an existing run).
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from search import prune
from search import run as run_module
from search.errors import UserError
from search.export import export
from search.finetune import finetune
from search.models.cifar_resnet import resnet20


def _loaders(channels=3, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, channels, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def _labelled(labels, n=32, channels=3):
    """(x, y) batches of 16 with the labels given (a tensor of n, or a function of n)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, channels, 16, 16, generator=g)
    y = labels(n) if callable(labels) else labels
    return [(x[i:i + 16], y[i:i + 16] if y.dim() else y) for i in range(0, n, 16)]


def _model():
    torch.manual_seed(0)
    return resnet20(num_classes=4, in_channels=3).eval()


def _nan_model():
    model = _model()
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)
    return model


def _prune(tmp, **changes):
    kw = {"budget": "0.5flops", "agent": "random", "trials": 3, "calibration": _loaders(), "held_out": _loaders(seed=1),
              "out": tmp / "run", "progress": False, "calib_batches": 1, "no_one_shot": True, "finalists": 0}
    kw.update(changes)
    model = kw.pop("model", None) or _model()
    return prune(model, **kw)


def _score_returns(value):
    return lambda m: value


def _raises(m):
    raise RuntimeError("metric backend down")


PRUNE = {
    "model not a module": ({"model": "resnet20"}, r"needs a torch.nn.Module"),
    "no held_out and no score": ({"held_out": None}, r"held_out batches .* or a score function"),
    "score not callable": ({"score": 3}, r"score=.*must be a function"),
    "budget an int": ({"budget": 7}, r"budget=.*takes a string"),
    "budget list with an int": ({"budget": ["0.5flops", 7]}, r"budget=.*takes a string"),
    "budget typo": ({"budget": "0.5flop"}, r"cannot read budget"),
    "budget above 1": ({"budget": "1.5flops"}, r"ratio in \(0, 1\]"),
    "budget unreachable": ({"budget": "0.0001flops"}, r"cannot be met"),
    "unknown option": ({"no_such_option": 1}, r"unknown option 'no_such_option'"),
    "option typo": ({"trails": 5}, r"unknown option 'trails'; did you mean 'trials'"),
    "trials not a number": ({"trials": "abc"}, r"trials|wrong type"),
    "trials zero": ({"trials": 0}, r"prune\(\): trials must be positive"),
    "unknown agent": ({"agent": "nope"}, r"unknown agent 'nope'"),
    "option of another agent": ({"agent": "tpe", "food_sources": 4}, r"food_sources does not apply to agent tpe"),
    "seed negative": ({"seed": -1}, r"seed must be 0 or more"),
    "device unknown": ({"device": "tpu"}, r"device"),
    "resume without out": ({"resume": True, "out": None}, r"needs the run's out= folder"),
    "resume of a non-run": ({"resume": True, "out": "{tmp}/empty"}, r"is not a run directory"),
    "out is a file": ({"out": "{tmp}/afile"}, r"cannot write to output folder"),
    "out holds someone's files": ({"out": "{tmp}/theirs"}, r"theirs is not a run but holds trials.csv, which a run"),
    "out empty text": ({"out": ""}, r"prune\(\): out was given an empty value"),
    "held_out of the wrong shape": ({"held_out": _loaders(channels=1)}, r"held_out batches of shape .* do not fit"),
    "calibration of the wrong shape": ({"calibration": _loaders(channels=1)},
                                       r"calibration batches of shape .* do not fit"),
    "calibration of ints": ({"calibration": [1, 2, 3]}, r"calibration must yield tensors"),
    "calibration empty": ({"calibration": []}, r"calibration gave no batches"),
    "calibration without a batch axis": ({"calibration": [torch.zeros(5)]}, r"needs a batch axis"),
    "held_out without labels": ({"held_out": [torch.zeros(4, 3, 16, 16)]}, r"held_out must yield \(inputs, labels\)"),
    "score returns a string": ({"score": _score_returns("high"), "held_out": None}, r"base model's score.*not a number"),
    "score returns None": ({"score": _score_returns(None), "held_out": None}, r"base model's score.*not a number"),
    "score raises": ({"score": _raises, "held_out": None}, r"base model's score.*metric backend down"),
    "score NaN": ({"score": _score_returns(math.nan), "held_out": None}, r"base model's score\(model\) is nan"),
    "nan weights": ({"model": "nan"}, r"non-finite"),
    "supernet without train": ({"supernet_epochs": 1}, r"supernet_epochs=.*needs labelled training batches"),
    "train a generator": ({"train": (b for b in [])}, r"train=.*must be re-iterable .* a generator only once"),
    "held_out labels out of range": ({"held_out": _labelled(lambda n: torch.arange(n) % 7)},
                                     r"held_out labels run from 0 to 6, but the model has 4 outputs"),
    "held_out labels negative": ({"held_out": _labelled(lambda n: -torch.ones(n, dtype=torch.long))},
                                 r"held_out labels run from -1"),
    "held_out labels float": ({"held_out": _labelled(lambda n: torch.zeros(n))},
                              r"held_out labels must be integer class indices, got torch.float32"),
    "held_out labels one-hot": ({"held_out": _labelled(lambda n: torch.zeros(n, 4, dtype=torch.long))},
                                r"held_out labels of shape \(16, 4\) for a batch of 16 inputs"),
    "held_out labels too many": ({"held_out": [(torch.randn(16, 3, 16, 16), torch.zeros(20, dtype=torch.long))]},
                                 r"held_out labels of shape \(20,\) for a batch of 16 inputs"),
    "train of the wrong shape": ({"train": _loaders(channels=1), "finalists": 2},
                                 r"train batches of shape .* do not fit"),
    "train without labels": ({"train": [torch.zeros(4, 3, 16, 16)], "finalists": 2},
                             r"train must yield \(inputs, labels\)"),
    "train labels out of range": ({"train": _labelled(lambda n: torch.full((n,), 9)), "finalists": 2},
                                  r"train labels run from 9 to 9, but the model has 4 outputs"),
    "example_input unlike the data": ({"example_input": torch.zeros(1, 3, 32, 32)},
                                      r"example_input of shape \(1, 3, 32, 32\) is not shaped like the calibration"),
    "example_input of one channel": ({"example_input": torch.zeros(1, 1, 16, 16)},
                                     r"example_input of shape \(1, 1, 16, 16\) is not shaped like"),
    "finalists a fraction": ({"finalists": 2.5}, r"prune\(\): finalists must be a whole number, got 2.5"),
    "finalist steps falling, as text": ({"finalist_steps": "40,10"},
                                        r"prune\(\): finalist_steps must be .* rising .* got '40,10'"),
}


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", list(PRUNE))
def test_prune_refuses_in_one_line_and_writes_nothing(name, tmp_path):
    changes, message = PRUNE[name]
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "trials.csv").write_text("my own table\n")
    changes = {k: (v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v) for k, v in changes.items()}
    if changes.get("model") == "nan":
        changes["model"] = _nan_model()
    before = _files(tmp_path)
    with pytest.raises(UserError) as caught:
        _prune(tmp_path, **changes)
    text = str(caught.value)
    assert "\n" not in text and re.search(message, text), text
    assert _files(tmp_path) == before, "a refused prune() leaves nothing behind"
    assert not (tmp_path / "run").exists()


def test_an_existing_run_is_not_overwritten(tmp_path):
    result = _prune(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in _files(tmp_path)}
    with pytest.raises(UserError, match="already holds a run"):
        _prune(tmp_path)
    assert {p: p.stat().st_mtime_ns for p in _files(tmp_path)} == before
    assert result.best is not None


def test_a_score_that_fails_after_the_base_model_fails_those_candidates(tmp_path):
    calls = []

    def score(m):
        calls.append(1)
        return 0.5 if len(calls) == 1 else ("bad" if len(calls) % 2 else 0.25)

    result = _prune(tmp_path, score=score, held_out=None, trials=4, no_warm_start=True)
    failed = result.trials[result.trials.state == "failed"]
    assert len(failed) >= 1 and failed.message.str.contains("score returned str 'bad', not a number").all()
    csv = (tmp_path / "run" / "trials.csv").read_text()
    assert "not a number" in csv   # the reason is in trials.csv


def test_no_trial_succeeding_is_one_user_error_naming_the_commonest_reason(tmp_path):
    calls = []

    def score(m):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("GPU fell off the bus")
        return 0.5

    with pytest.raises(UserError) as caught:
        _prune(tmp_path, score=score, held_out=None, trials=3, no_warm_start=True)
    text = str(caught.value)
    assert "\n" not in text and "no trial succeeded: 3 of 3 failed" in text and "GPU fell off the bus" in text
    assert (tmp_path / "run" / "trials.csv").is_file(), "what was computed is kept"


# ---------------------------------------------------------------- finetune and export of a run directory

@pytest.fixture(scope="module")
def a_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    out = root / "run"
    assert run_module.main(["--agent", "random", "--budget", "0.5flops", "--baseline-epochs", "1", "--trials", "3",
                            "--calib-batches", "1", "--batch-size", "32", "--eval-samples", "32", "--no-progress",
                            "--quiet", "--finalists", "0", "--no-one-shot", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(a_run, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESEARCH_CACHE", str(a_run.parent / "cache"))
    out = tmp_path / "run"
    shutil.copytree(a_run, out)
    return out


def _killed(run: Path) -> None:
    for name in ("best.json", "best.pt", "best.state_dict.pt"):
        (run / name).unlink(missing_ok=True)
    info = json.loads((run / "run.json").read_text())
    info["status"] = "running"
    (run / "run.json").write_text(json.dumps(info))


LIBRARY = {
    "finetune epochs zero": (lambda r: finetune(r, epochs=0, progress=False), r"--epochs must be positive"),
    "finetune lr negative": (lambda r: finetune(r, lr=-1, progress=False), r"--lr must be positive"),
    "finetune lr nan": (lambda r: finetune(r, lr=float("nan"), progress=False), r"--lr must be positive"),
    "finetune lr inf": (lambda r: finetune(r, lr=float("inf"), progress=False), r"--lr must be positive"),
    "finetune weight decay nan": (lambda r: finetune(r, weight_decay=float("nan"), progress=False),
                                  r"--weight-decay must be"),
    "finetune kd temperature nan": (lambda r: finetune(r, kd_temperature=float("nan"), progress=False),
                                    r"--kd-temperature must be"),
    "finetune diverging": (lambda r: finetune(r, lr=1e30, epochs=1, progress=False), r"loss became nan in epoch 1"),
    "finetune on a dead ray address": (lambda r: finetune(r, ray_address="127.0.0.1:1", progress=False),
                                       r"cannot reach a Ray cluster"),
    "finetune seed negative": (lambda r: finetune(r, seed=-5, progress=False), r"--seed must be"),
    "finetune kd_alpha above 1": (lambda r: finetune(r, kd_alpha=2, progress=False), r"--kd-alpha must be in"),
    "finetune batch size zero": (lambda r: finetune(r, batch_size=0, progress=False), r"--batch-size must be positive"),
    "finetune of a non-run": (lambda r: finetune(r / "nothing", progress=False), r"is not a run directory"),
    "finetune of a killed run": (lambda r: finetune(r, progress=False),
                                 r"did not finish \(3 trial\(s\) scored.*--resume"),
    "export unknown format": (lambda r: export(r, "tflite"), r"unknown format 'tflite'"),
    "export batch zero": (lambda r: export(r, "pt", batch=0), r"--batch must be positive"),
    "export batch beyond memory": (lambda r: export(r, "state_dict", batch=10**12), r"--batch 1000000000000 does "
                                                                                       r"not fit in memory"),
    "export batch a string": (lambda r: export(r, "pt", batch="2"), r"--batch must be positive"),
    "export out empty": (lambda r: export(r, "pt", out=""), r"--out was given an empty value"),
    "export of a non-run": (lambda r: export(r / "nothing"), r"is not a run directory"),
    "export over the run's own file": (lambda r: export(r, "pt", out=r / "journal.jsonl"),
                                       r"would overwrite one of the run's own files"),
    "export over the run's weights": (lambda r: export(r, "pt", out=r / "best.state_dict.pt"),
                                      r"would overwrite one of the run's own files"),
    "export finetuned before fine-tuning": (lambda r: export(r, "pt", finetuned=True), r"no finetuned.pt yet"),
    "export of a killed run": (lambda r: export(r, "pt"), r"did not finish.*--resume"),
}


@pytest.mark.parametrize("name", list(LIBRARY))
def test_finetune_and_export_refuse_in_one_line_and_write_nothing(name, run_copy):
    call, message = LIBRARY[name]
    if "killed" in name:
        _killed(run_copy)
    before = {p: p.stat().st_mtime_ns for p in _files(run_copy)}
    with pytest.raises(UserError) as caught:
        call(run_copy)
    text = str(caught.value)
    assert "\n" not in text and re.search(message, text), text
    assert {p: p.stat().st_mtime_ns for p in _files(run_copy)} == before, "nothing written"


@pytest.mark.parametrize("record", ["{}", "[]", '{"derive": {}, "input_shape": [1, 8, 8], "candidate": {}}'])
def test_a_damaged_best_json_is_one_line_for_finetune_and_export(record, run_copy):
    (run_copy / "best.json").write_text(record)
    for call in (lambda: finetune(run_copy, epochs=1, progress=False), lambda: export(run_copy, "state_dict")):
        with pytest.raises(UserError) as caught:
            call()
        text = str(caught.value)
        assert "\n" not in text and "best.json" in text, text
    assert not (run_copy / "finetuned.pt").exists()


def test_prune_reads_numbers_and_ratios_as_the_command_line_does(tmp_path):
    """trials="3" is 3 (as --trials 3), width_ratios=[0.5, 1.0] is "0.5,1.0"; a word is still refused."""
    result = _prune(tmp_path, trials="3", width_ratios=[0.5, 1.0])
    assert len(result.trials) == 3
    assert json.loads((tmp_path / "run" / "run.json").read_text())["args"]["width_ratios"] == "0.5,1.0"


def test_export_to_a_new_folder_ending_in_a_slash_writes_inside_it(run_copy, tmp_path):
    result = export(run_copy, "state_dict", out=f"{tmp_path}/new/folder/")
    assert result.path == tmp_path / "new" / "folder" / "best.state_dict.pt" and result.path.is_file()


def test_a_user_score_takes_held_out_labels_of_any_kind(tmp_path):
    """Labels are checked as class indices only where top-1 reads them: a score function may use float targets."""
    result = _prune(tmp_path, score=lambda m: 0.5, held_out=_labelled(lambda n: torch.rand(n)))
    assert len(result.trials) == 3


def test_an_absolute_latency_budget_below_the_smallest_subnet_is_refused_in_milliseconds():
    from search.engine.budget import parse_budget, unmet

    base = {"flops": 4e6, "params": 2e5, "latency": 1.56}
    smallest = {"flops": 1e6, "params": 5e4, "latency": 1.12}
    budget = parse_budget(["1ms", "0.5flops"]).resolve(base)
    assert not budget.feasible(smallest)
    text = unmet(budget, smallest, base)
    assert text == ("budget 1ms+0.5flops cannot be met: the smallest subnet of this space has a predicted latency "
                    "of 1.12 ms (budget 1ms; the base model 1.56 ms); loosen it or widen the space (--width-ratios)")


def test_the_suite_counts_at_least_thirty_cases():
    assert len(PRUNE) + len(LIBRARY) >= 30
