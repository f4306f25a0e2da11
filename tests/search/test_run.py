"""The main job through `search.run.main`: every option on tiny settings, every user error as one line."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from search import run as run_module
from search.export import rebuild
from search.finetune import finetune
from search.finetune import main as finetune_main
from search.models.zoo import load_data, load_model

FAST = ["--baseline-epochs", "1", "--trials", "6", "--calib-batches", "2", "--batch-size", "32",
        "--eval-samples", "64", "--no-progress", "--quiet", "--finalists", "2", "--finalist-steps", "2",
        "--no-one-shot",  # one-shot finalists add trials: test_run has their own tests
        "--reconstruct", "64"]  # the refit on 64 inputs, not 1024: seconds less a run


@pytest.fixture(autouse=True)
def cache(warm_cache):
    """Each test's own cache, holding the digits baseline its runs start from (conftest's `warm_cache`)."""
    return warm_cache


def search(tmp_path, *extra, out="run", agent="random", budget=("0.4flops",)):
    """A run of `search.run` on FAST settings; `agent=None` gives no --agent."""
    args = [*(["--agent", agent] if agent else []), *[a for b in budget for a in ("--budget", b)],
            "--out", str(tmp_path / out), *FAST, *extra]
    return run_module.main(args), tmp_path / out


def test_default_job_writes_a_complete_run_directory(tmp_path, capsys):
    code, out = search(tmp_path)
    assert code == 0
    for name in ("run.json", "trials.csv", "journal.jsonl", "best.json", "best.pt", "pareto.png"):
        assert (out / name).is_file(), name
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 6 and set(trials.state) <= {"complete", "infeasible", "failed"}
    assert (trials.flops_ratio <= 0.4 + 1e-9).all()
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and info["base"]["flops"] > 0 and info["args"]["agent"] == "random"
    best = json.loads((out / "best.json").read_text())
    assert best["ratios"]["flops"] <= 0.4
    subnet = torch.load(out / "best.pt", weights_only=False).eval()
    data = load_data("digits")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        subnet(torch.zeros(1, *data.input_shape))
    assert counter.get_total_flops() == best["costs"]["flops"]
    printed = capsys.readouterr().out
    assert "best :" in printed and "python -m search.finetune" in printed


def test_explain_prints_the_space_with_nothing_else_given(tmp_path, capsys):
    assert run_module.main(["--explain", "--out", str(tmp_path / "run"), *FAST]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out.lower() and "width" in out.lower()
    assert not (tmp_path / "run").exists()  # nothing searched, nothing written


def test_without_agent_the_search_runs_the_default_one_and_resumes_with_it(tmp_path, capsys):
    code, out = search(tmp_path, agent=None)
    assert code == 0
    assert json.loads((out / "run.json").read_text())["args"]["agent"] == "amc"
    assert run_module.main(["--resume", str(out), "--trials", "8", "--no-progress", "--quiet"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["args"]["agent"] == "amc" and info["args"]["trials"] == 8
    assert len(pd.read_csv(out / "trials.csv")) == 8
    assert run_module.main(["--resume", str(out), "--agent", "random", "--no-progress", "--quiet"]) == 2
    assert "cannot change --agent when resuming" in capsys.readouterr().err


def test_best_json_replays_onto_a_fresh_base_model(tmp_path):
    code, out = search(tmp_path, "--model", "resnet20", "--finalists", "0", "--export-weights", "base")  # copied weights
    assert code == 0
    data = load_data("digits")
    base = load_model("resnet20", num_classes=10, input_shape=data.input_shape)
    cached = next((tmp_path / "cache").glob("*.pt"))
    base.load_state_dict(torch.load(cached))
    rebuilt = rebuild(out / "best.json", base)
    exported = torch.load(out / "best.pt", weights_only=False)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in exported.state_dict().items()}
    weights = [k for k in exported.state_dict() if k.endswith("weight")]
    assert all(torch.equal(rebuilt.state_dict()[k], exported.state_dict()[k]) for k in weights)


def test_uniform_agent_several_budgets_and_options(tmp_path):
    code, out = search(tmp_path, "--width-ratios", "0.25,0.5,0.75,1", "--round-to", "4", "--no-block-removal",
                       agent="uniform", budget=("0.5flops", "0.6params"))
    assert code == 0
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 1  # uniform proposes its one candidate
    arch = json.loads(trials.architecture[0])
    assert not any(k.startswith("keep:") for k in arch)
    assert all(v % 4 == 0 for v in arch.values())
    assert trials.flops_ratio[0] <= 0.5 and trials.params_ratio[0] <= 0.6


def test_resume_gives_the_uninterrupted_result(tmp_path):
    assert search(tmp_path, "--trials", "8", out="whole")[0] == 0
    assert search(tmp_path, "--trials", "4", out="parts")[0] == 0
    assert run_module.main(["--resume", str(tmp_path / "parts"), "--trials", "8", "--no-progress", "--quiet"]) == 0
    whole, parts = (pd.read_csv(tmp_path / d / "trials.csv") for d in ("whole", "parts"))
    columns = ["trial", "state", "score", "flops", "params", "architecture"]
    pd.testing.assert_frame_equal(whole[columns], parts[columns])
    assert json.loads((tmp_path / "whole" / "best.json").read_text())["candidate"] == \
        json.loads((tmp_path / "parts" / "best.json").read_text())["candidate"]


def test_ctrl_c_leaves_a_consistent_run_that_resumes(tmp_path, monkeypatch, capsys):
    from evaluators.accuracy import AccuracyEvaluator
    from search.selection import finalists as finalists_module

    real, calls = AccuracyEvaluator.estimate, {"n": 0}

    def interrupted(self, candidate, bar=None):
        calls["n"] += 1
        if calls["n"] == 5:  # the base model's score is call 1
            raise KeyboardInterrupt
        return real(self, candidate, bar)

    def no_finalists(*args, **kwargs):
        raise AssertionError("a Ctrl-C in the search skips the finalists: the user asked to stop")

    monkeypatch.setattr(AccuracyEvaluator, "estimate", interrupted)
    monkeypatch.setattr(finalists_module, "train_finalist", no_finalists)
    code, out = search(tmp_path)
    assert code == 130
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert len(pd.read_csv(out / "trials.csv")) == 3 and (out / "best.pt").is_file()
    assert json.loads((out / "best.json").read_text())["finetuned_steps"] == 0
    printed = capsys.readouterr()
    assert "interrupted" in printed.err and "keeping the trials" not in printed.out
    monkeypatch.setattr(AccuracyEvaluator, "estimate", real)
    monkeypatch.undo()
    assert run_module.main(["--resume", str(out), "--no-progress", "--quiet"]) == 0
    assert len(pd.read_csv(out / "trials.csv")) == 6


def test_failing_candidates_are_recorded_and_the_search_goes_on(tmp_path, monkeypatch):
    from evaluators.accuracy import AccuracyEvaluator

    from evaluators.racing import Estimate

    real, calls = AccuracyEvaluator.estimate, {"n": 0}

    def flaky(self, candidate, bar=None):
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            raise RuntimeError("CUDA error: an illegal memory access")
        if calls["n"] % 3 == 0:
            return Estimate(float("nan"))
        return real(self, candidate, bar)

    monkeypatch.setattr(AccuracyEvaluator, "estimate", flaky)
    code, out = search(tmp_path)
    trials = pd.read_csv(out / "trials.csv")
    assert code == 0 and len(trials) == 6
    assert (trials.state == "failed").sum() >= 3 and trials.message.str.contains("illegal memory").any()


def test_finetune_reports_and_writes_its_files(tmp_path, capsys):
    code, out = search(tmp_path)
    assert code == 0
    result = finetune(out, epochs=2, progress=False)
    assert 0 <= result.test_top1 <= 1 and result.base_test_top1 is not None and len(result.history) == 2
    assert (out / "finetuned.pt").is_file() and len(pd.read_csv(out / "finetune.csv")) == 2
    assert finetune_main([str(out), "--epochs", "1", "--no-progress"]) == 0
    assert "after 1 epochs" in capsys.readouterr().out


def test_user_brought_model_and_data(tmp_path, monkeypatch):
    (tmp_path / "my_project.py").write_text(
        "import torch, torchvision\n"
        "from torch.utils.data import TensorDataset\n"
        "def data():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x, y = torch.randn(96, 3, 32, 32, generator=g), torch.randint(0, 4, (96,), generator=g)\n"
        "    return TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:])\n"
        "def model(num_classes):\n"
        "    return torchvision.models.mobilenet_v3_small(num_classes=num_classes)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = tmp_path / "w.pt"
    torch.save({"state_dict": load_model("my_project:model", num_classes=4, input_shape=(3, 32, 32)).state_dict()},
               weights)
    code, out = search(tmp_path, "--model", "my_project:model", "--data", "my_project:data", "--weights",
                       str(weights), "--held-out", "16")
    assert code == 0
    assert json.loads((out / "best.json").read_text())["ratios"]["flops"] <= 0.4


@pytest.mark.parametrize("args, message", [
    (["--agent", "nope", "--budget", "0.4flops"], r"unknown agent 'nope'; choose from .*random.*uniform"),
    (["--agent", "random", "--budget", "0.4flop"], r"cannot read budget '0.4flop'; expected <ratio>flops"),
    (["--agent", "random", "--budget", "1.5flops"], r"must be a ratio in \(0, 1\]"),
    (["--agent", "random", "--budget", "0.0001flops"], r"cannot be met: the smallest subnet .* 0\.0\d+ x its flops"),
    (["--agent", "random", "--budget", "0.4flops", "--latency-batch", "0"], r"--latency-batch must be positive"),
    (["--agent", "random", "--budget", "0.4flops", "--model", "nosuch"], r"nosuch"),
    (["--agent", "random", "--budget", "0.4flops", "--model", "torchvision:resnet_9000"], r"resnet_9000"),
    (["--agent", "random", "--budget", "0.4flops", "--data", "mnist"], r"mnist"),
    (["--agent", "random", "--budget", "0.4flops", "--data", "cifar10:/no/such/folder"], r"/no/such/folder"),
    (["--agent", "random", "--budget", "0.4flops", "--trials", "0"], r"--trials must be positive"),
    (["--agent", "random", "--budget", "0.4flops", "--width-ratios", "0.5,2"], r"--width-ratios"),
    (["--agent", "random", "--budget", "0.4flops", "--device", "tpu"], r"cannot use --device tpu"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    code = run_module.main([*FAST, "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert re.search(message, err), err


def test_weights_that_do_not_fit_the_model(tmp_path, capsys):
    weights = tmp_path / "r56.pt"
    torch.save(load_model("resnet56", num_classes=10, input_shape=(1, 8, 8)).state_dict(), weights)
    code = run_module.main(["--agent", "random", "--budget", "0.4flops", "--weights", str(weights), *FAST,
                            "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "unexpected" in err


def test_unwritable_output_and_resume_of_a_non_run(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = run_module.main(["--agent", "random", "--budget", "0.4flops", "--out", str(blocker / "run"), *FAST])
    assert code == 2 and "cannot write to output folder" in capsys.readouterr().err
    code = run_module.main(["--resume", str(tmp_path), *FAST])
    assert code == 2 and "is not a run directory" in capsys.readouterr().err
    code = finetune_main([str(tmp_path)])
    assert code == 2 and "is not a run directory" in capsys.readouterr().err


def test_an_existing_run_is_never_overwritten(tmp_path, capsys):
    assert search(tmp_path)[0] == 0
    before = (tmp_path / "run" / "journal.jsonl").read_text()
    code, _ = search(tmp_path)
    assert code == 2 and "already holds a run; use --resume" in capsys.readouterr().err
    assert (tmp_path / "run" / "journal.jsonl").read_text() == before


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_module.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in run_module.get_args_parser()._actions:
        for option in action.option_strings:
            assert option in text


def test_same_seed_same_run_even_from_a_cold_cache(tmp_path, monkeypatch):
    frames = []
    for name in ("a", "b"):
        monkeypatch.setenv("PRUNESEARCH_CACHE", str(tmp_path / f"cache-{name}"))
        torch.randn(7)  # move the global RNG: the run must not depend on it
        assert search(tmp_path, out=name)[0] == 0
        frames.append(pd.read_csv(tmp_path / name / "trials.csv")[["state", "score", "flops", "architecture"]])
    pd.testing.assert_frame_equal(*frames)
    infos = [json.loads((tmp_path / n / "run.json").read_text())["base"] for n in ("a", "b")]
    assert infos[0] == infos[1]


@pytest.mark.parametrize("agent, extra", [("abc", ["--food-sources", "3", "--limit", "2"]),
                                          ("tpe", ["--startup-trials", "3"]), ("nsga2", ["--population", "4"])])
def test_every_agent_runs_the_main_job_and_writes_the_pareto_front(tmp_path, agent, extra):
    code, out = search(tmp_path, "--trials", "10", *extra, agent=agent, budget=("0.3flops",))
    assert code == 0
    trials = pd.read_csv(out / "trials.csv")
    assert (trials.flops_ratio <= 0.3 + 1e-9).all()
    front = pd.read_csv(out / "pareto.csv")
    done = trials[trials.state == "complete"]
    for _, row in front.iterrows():  # nothing scored beats a front member on both counts
        assert not ((done.score > row.score) & (done.flops <= row.flops)).any()
    assert front.score.max() == done.score.max()


def test_resume_with_an_optuna_storage(tmp_path):
    storage = ["--storage", f"sqlite:///{tmp_path / 'study.db'}"]
    assert search(tmp_path, "--trials", "8", *storage, agent="tpe", out="parts")[0] == 0
    assert run_module.main(["--resume", str(tmp_path / "parts"), "--trials", "12", "--no-progress",
                            "--quiet"]) == 0
    trials = pd.read_csv(tmp_path / "parts" / "trials.csv")
    assert len(trials) == 12 and (trials.state == "complete").all()


def test_agent_options_must_fit_the_agent(tmp_path, capsys):
    code = run_module.main([*FAST, "--agent", "tpe", "--budget", "0.4flops", "--food-sources", "4",
                            "--out", str(tmp_path / "r")])
    assert code == 2 and "--food-sources does not apply to agent tpe" in capsys.readouterr().err
    code = run_module.main([*FAST, "--agent", "abc", "--budget", "0.4flops", "--food-sources", "1",
                            "--out", str(tmp_path / "r")])
    assert code == 2 and "food_sources >= 2" in capsys.readouterr().err


def test_latency_budget_prices_measures_and_reports(tmp_path, monkeypatch, capsys, request):
    from evaluators import latency

    monkeypatch.setattr(latency, "MIN_SECONDS", 0.001)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny timings on a shared CPU: a second thread only adds stalls
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    # On this tiny model latency is mostly per-op overhead (the smallest subnet keeps ~70% of it), so the
    # latency limit is loose: the test checks that it is priced, enforced and reported, not how tight it can be.
    code, out = search(tmp_path, "--trials", "8", budget=("0.99latency", "0.6flops"))
    assert code == 0
    trials = pd.read_csv(out / "trials.csv")
    assert trials.latency_ms.notna().all() and trials.measured_latency_ms.notna().sum() >= 2
    assert (trials.latency_ms <= 0.99 * json.loads((out / "run.json").read_text())["base"]["latency"] + 1e-9).all()
    best = json.loads((out / "best.json").read_text())
    assert best["latency"]["predicted"]["ms"] <= 0.99 * best["latency"]["predicted"]["base_ms"] + 1e-9
    ratio, low, high = best["latency"]["measured"]["ratio"]  # the final check: measured, with its interval
    assert 0 < low <= ratio <= high <= 0.99 and best["latency"]["fits"] and best["ratios"]["latency"] <= 0.99 + 1e-9
    assert "predictor error over" in capsys.readouterr().out
    cached = list((tmp_path / "cache" / "latency").glob("latency-*.json"))
    assert len(cached) == 1  # measured once, then reused


def test_metapruning_trains_a_pruningnet_and_exports_its_weights(tmp_path):
    code, out = search(tmp_path, "--trials", "8", "--pruningnet-epochs", "1", "--export-weights", "pruningnet",
                       agent="metapruning")
    assert code == 0 and (out / "pruningnet.pt").is_file()
    best = json.loads((out / "best.json").read_text())
    assert best["export_weights"] == "pruningnet" and 0 <= best["held_out_top1"] <= 1
    assert best["weights"] is None  # the base model's weights (none given: the cached baseline)
    code, again = search(tmp_path, "--trials", "8", "--pruningnet", str(out / "pruningnet.pt"), out="reuse",
                         agent="metapruning")
    assert code == 0 and not (again / "pruningnet.pt").exists()  # loaded, not trained again
    assert pd.read_csv(again / "trials.csv").score.tolist() == pd.read_csv(out / "trials.csv").score.tolist()


def test_metapruning_options_are_checked(tmp_path, capsys):
    code = run_module.main([*FAST, "--agent", "random", "--budget", "0.4flops", "--export-weights", "pruningnet",
                            "--out", str(tmp_path / "r")])
    assert code == 2 and "apply to --agent metapruning only" in capsys.readouterr().err
    code = run_module.main([*FAST, "--agent", "metapruning", "--budget", "0.4flops", "--workers", "2",
                            "--out", str(tmp_path / "r")])
    assert code == 2 and "in this process" in capsys.readouterr().err


def test_the_search_starts_from_global_magnitude_pruning_unless_told_not_to(tmp_path):
    from search.engine.loop import Journal

    code, out = search(tmp_path, "--trials", "3")
    assert code == 0
    first = Journal(out / "journal.jsonl").read()[0]
    widths = [v for k, v in first.candidate.items() if not k.startswith("keep:")]
    assert all(v == 1 for k, v in first.candidate.items() if k.startswith("keep:"))  # every block kept
    assert first.result.costs["flops"] <= 0.4 * json.loads((out / "run.json").read_text())["base"]["flops"]
    code, cold = search(tmp_path, "--trials", "3", "--no-warm-start", out="cold")
    assert code == 0 and json.loads((cold / "run.json").read_text())["args"]["no_warm_start"] is True
    assert Journal(cold / "journal.jsonl").read()[0].candidate != first.candidate
    assert len(set(widths)) > 1  # not one common ratio: each group keeps what passes one threshold


def test_version_prints_the_package_and_its_libraries(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_module.main(["--version"])
    out = capsys.readouterr().out.strip()
    assert exit_.value.code == 0 and out.startswith("prunesearch ") and "\n" not in out
    for library in ("torch", "optuna", "ray", "timm"):
        assert f" {library} " in out


def test_a_resumed_run_says_which_library_moved_since_it_started(tmp_path, capsys):
    assert search(tmp_path, "--trials", "3", out="run")[0] == 0
    run_json = tmp_path / "run" / "run.json"
    record = json.loads(run_json.read_text())
    assert {"prunesearch", "torch", "optuna", "ray", "timm"} <= record["versions"].keys()
    record["versions"]["optuna"] = "0.0.1"  # as if the run had started under another Optuna
    run_json.write_text(json.dumps(record))
    capsys.readouterr()
    assert run_module.main(["--resume", str(tmp_path / "run"), "--trials", "4", "--no-progress", "--quiet"]) == 0
    assert "resuming with other versions than the run started with: optuna 0.0.1 -> " in capsys.readouterr().err
    after = json.loads(run_json.read_text())
    assert after["versions"]["optuna"] == "0.0.1"  # what it started with is kept; the resume's own beside it
    assert after["resumed_versions"]["optuna"] != "0.0.1"


def test_every_option_default_is_the_config_s_own():
    # each default is written once, in SearchConfig; the command line reads it from there
    import dataclasses

    from search.engine.config import SearchConfig

    fields = {f.name: f.default for f in dataclasses.fields(SearchConfig)}
    parser = run_module.get_args_parser()
    options = [a for a in parser._actions if a.dest in fields and a.dest not in ("agent", "budget")]
    assert len(options) > 40
    assert all(a.default == fields[a.dest] for a in options), [a.dest for a in options if a.default != fields[a.dest]]


def test_rungs_of_finalists_with_one_shot_candidates_and_best_json_says_who_picked(tmp_path):
    out = tmp_path / "rungs"
    args = [a for a in FAST if a != "--no-one-shot"]  # one-shot candidates on, as by default
    code = run_module.main(["--agent", "random", "--budget", "0.25flops", "--out", str(out), *args,
                            "--finalists", "4", "--finalist-steps", "2,6"])
    assert code == 0
    best = json.loads((out / "best.json").read_text())
    assert "successive halving over rungs of 2, 6 steps" in best["selected_by"] and best["finetuned_steps"] == 6
    assert best["origin"] in ("search", "one-shot: global magnitude", "one-shot: uniform",
                              "search, also one-shot: global magnitude", "search, also one-shot: uniform")
    finalists = pd.read_csv(out / "finalists.csv")
    assert sorted(finalists.steps)[-1] == 6 and set(finalists.rung) == {1, 2}
    trials = pd.read_csv(out / "trials.csv")
    one_shot = set(trials.trial[trials.message.fillna("").str.startswith("one-shot")])
    assert one_shot and one_shot <= set(finalists.trial)  # scored as extra trials, always among the finalists
    assert len(trials) == 6 + len(one_shot)


def test_finalist_steps_that_do_not_rise_are_refused_in_one_line(tmp_path, capsys):
    code, _ = search(tmp_path, "--finalist-steps", "8,4")
    assert code == 2 and "--finalist-steps must be" in capsys.readouterr().err


def test_supernet_weights_are_searched_saved_and_reused_on_resume(tmp_path):
    code, out = search(tmp_path, "--supernet-epochs", "0.5", "--trials", "3", out="part")
    assert code == 0 and (out / "supernet.state_dict.pt").is_file()
    record = json.loads((out / "run.json").read_text())
    assert record["supernet"]["steps"] > 0 and record["base"]["held_out_top1"] > 0.5  # the base: the model's own
    before = (out / "supernet.state_dict.pt").stat().st_mtime_ns
    assert run_module.main(["--resume", str(out), "--trials", "6", "--no-progress", "--quiet"]) == 0
    assert (out / "supernet.state_dict.pt").stat().st_mtime_ns == before  # loaded, not trained again
    assert search(tmp_path, "--supernet-epochs", "0.5", "--trials", "6", out="whole")[0] == 0
    best = json.loads((tmp_path / "whole" / "best.json").read_text())
    assert best["export_weights"] == "supernet, refit" and best["supernet_epochs"] == 0.5  # the export inherits them
    columns = ["trial", "state", "score", "architecture"]
    whole, part = (pd.read_csv(tmp_path / d / "trials.csv") for d in ("whole", "part"))
    pd.testing.assert_frame_equal(whole[columns], part[columns])


def test_ctrl_c_in_the_finalists_exports_the_search_s_best_and_resume_picks_again(tmp_path, monkeypatch):
    import search.selection.finalists as finalists_module

    real = finalists_module.train_finalist

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finalists_module, "train_finalist", interrupted)
    code, out = search(tmp_path)
    assert code == 130
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    best = json.loads((out / "best.json").read_text())
    assert best["selected_by"] == "search score" and (out / "best.pt").is_file() and (out / "trials.csv").is_file()
    assert not (out / "finalists.csv").exists()
    monkeypatch.setattr(finalists_module, "train_finalist", real)
    assert run_module.main(["--resume", str(out), "--no-progress", "--quiet"]) == 0
    assert json.loads((out / "best.json").read_text())["selected_by"].startswith("finalists")
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_ctrl_c_before_the_search_is_one_line_exit_130_and_resumable(tmp_path, monkeypatch, capsys):
    import search.engine.pipeline as pipeline_module

    real = pipeline_module.supernet_stage

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_module, "supernet_stage", interrupted)
    code, out = search(tmp_path, "--supernet-epochs", "0.5", "--trials", "3")
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err
    assert f"interrupted: before the search began, nothing scored yet (--resume {out} starts it again)" in err
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(pipeline_module, "supernet_stage", real)
    assert run_module.main(["--resume", str(out), "--no-progress", "--quiet"]) == 0
    assert (out / "supernet.state_dict.pt").is_file() and len(pd.read_csv(out / "trials.csv")) == 3


def test_a_resumed_run_without_finalists_leaves_no_finalists_table_of_an_earlier_pass(tmp_path, capsys):
    code, out = search(tmp_path, "--trials", "3")
    assert code == 0 and (out / "finalists.csv").is_file()
    assert run_module.main(["--resume", str(out), "--finalists", "0", "--finalist-steps", "4",
                            "--no-progress"]) == 0
    assert "--finalists 0: --finalist-steps, --no-one-shot have no effect" in capsys.readouterr().err
    assert json.loads((out / "best.json").read_text())["selected_by"] == "search score"
    assert not (out / "finalists.csv").exists()  # it named another export


def test_the_warm_start_among_the_finalists_is_named_as_the_one_shot_candidate_it_is(tmp_path):
    args = [a for a in FAST if a != "--no-one-shot"]
    out = tmp_path / "run"
    assert run_module.main(["--agent", "random", "--budget", "0.4flops", "--out", str(out), *args,
                            "--trials", "3", "--finalists", "1"]) == 0
    trials = pd.read_csv(out / "trials.csv")
    extra = set(trials.message.dropna())
    assert "one-shot: global magnitude" not in extra  # the search's trial 0 held it: not scored again
    finalists = pd.read_csv(out / "finalists.csv").set_index("trial")
    assert finalists.origin[0] == "search, also one-shot: global magnitude"
    best = json.loads((out / "best.json").read_text())
    assert best["origin"] == finalists.origin[best["trial"]]


def test_a_resume_that_exports_another_subnet_removes_what_was_made_from_the_old_one(tmp_path, capsys):
    code, out = search(tmp_path, "--trials", "3")
    assert code == 0
    made = ["finetuned.pt", "finetuned.state_dict.pt", "finetuned.onnx", "finetune.csv", "finetune.png",
            "finetune_checkpoint.pt", "best.onnx"]
    for name in made:  # what search.finetune and search.export wrote from this export
        (out / name).write_bytes(b"x")
    record = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**record, "finetune": {"epochs": 1}}))
    assert run_module.main(["--resume", str(out), "--no-progress"]) == 0  # the same export: all kept
    assert all((out / name).exists() for name in made)
    assert run_module.main(["--resume", str(out), "--finalist-steps", "5", "--no-progress"]) == 0  # new weights
    assert "the export changed since the earlier pass" in capsys.readouterr().err
    assert not any((out / name).exists() for name in made)
    assert "finetune" not in json.loads((out / "run.json").read_text())
    assert {"best.json", "best.pt", "best.state_dict.pt"} <= {p.name for p in out.iterdir()}


def test_a_fine_tune_checkpoint_of_another_subnet_is_refused_in_one_line():
    from search.errors import UserError
    from search.finetune.command import _check_fits

    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    _check_fits({"model": model.state_dict()}, model)
    with pytest.raises(UserError, match="checkpoint is of another subnet than best.json's"):
        _check_fits({"model": torch.nn.Sequential(torch.nn.Linear(4, 5)).state_dict()}, model)
