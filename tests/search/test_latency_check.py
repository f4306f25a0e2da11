"""The final latency check: intervals, skipping a candidate measured over the cap, no fit (exit 2, resumable),
the summary's figures measured in the same rounds, and a table and export on ONNX Runtime.

The check's timer is faked (`measure_rounds`): each module "runs" in a time set by its parameter count,
so which candidate is over the cap is decided by the test, not by the machine's load.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from evaluators import latency
from search.selection import latency_check
from search import run as run_module
from search.selection.latency_check import Interval, check_latency, median_interval
from search.engine.pipeline import Pipeline
from search.engine.records import Trial
from spaces.budget import Limit
from spaces.records import Result, TrialState
from spaces.space import Candidate

FAST = ["--baseline-epochs", "1", "--trials", "6", "--calib-batches", "2", "--batch-size", "32",
        "--eval-samples", "64", "--no-progress", "--quiet", "--no-one-shot",
        "--reconstruct", "64"]  # the refit on 64 inputs, not 1024: seconds less a run


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache (the digits baseline, the latency table) for the module's runs; tiny, fast timings."""
    root = tmp_path_factory.mktemp("latency-check")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRUNESEARCH_CACHE", str(root / "cache"))
        patch.setattr(latency, "MIN_SECONDS", 0.0002)
        patch.setattr(latency, "GRID", 2)
        patch.setattr(latency, "MAX_AXIS", 2)
        patch.setattr(latency, "CALIBRATION", 6)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield root
        torch.set_num_threads(threads)


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def fake_timer(monkeypatch, factor=lambda calls: 1.0, calls: list | None = None):
    """The check's rounds, faked: a module runs in (its parameters / the base's) x factor(calls so far) ms,
    the base (the first module) in 1 ms; the order of `calls`: the candidates timed so far."""
    calls = [] if calls is None else calls

    def rounds(modules, input_shape, *, batch, device, rounds, backend):
        base, candidate = modules
        if not calls or calls[-1] is not candidate:  # a runtime's check times one candidate in several calls
            calls.append(candidate)
        ms = params(candidate) / params(base) * factor(len(calls))
        return [[1.0, ms] for _ in range(rounds)]

    monkeypatch.setattr(latency_check, "measure_rounds", rounds)
    return calls


def test_the_median_interval_is_bounded_by_order_statistics():
    samples = list(range(1, 16))  # 15 rounds: the 4th and 12th bound the median at 96.5% >= 95%
    assert median_interval(samples) == Interval(8, 4, 12)
    assert median_interval(samples, 0.5).low > 4  # less confidence, a narrower interval
    assert median_interval([3.0, 1.0, 2.0]) == Interval(2.0, 1.0, 3.0)  # too few rounds: the whole range


def trial(number: int, score: float, predicted_ms: float) -> Trial:
    return Trial(number, Candidate({"w": number}), Result(TrialState.COMPLETE, score, {"latency": predicted_ms,
                                                                                      "flops": 1}, 0.0, ""))


def test_a_candidate_measured_over_the_cap_is_skipped_and_the_next_one_chosen(monkeypatch):
    """The table called both feasible; the first measures x0.6 of the base against a 0.5latency cap."""
    sizes = {0: 6, 1: 4, 2: 3}  # parameters per trial; the base has 10
    fake_timer(monkeypatch)
    ranked = [trial(0, 0.9, 0.45), trial(1, 0.8, 0.45), trial(2, 0.7, 0.3)]
    build = lambda t: nn.Linear(sizes[t.number], 1, bias=False)  # noqa: E731
    check = check_latency(ranked, build, nn.Linear(10, 1, bias=False), [Limit("latency", 0.5, True, "0.5latency")],
                          input_shape=(10,), base_predicted_ms=1.0, rounds=5)
    assert check.chosen is ranked[1] and [m.trial for m in check.measurements] == [0, 1]
    assert [m.trial for m in check.skipped] == [0] and check.measurement.ratio.median == pytest.approx(0.4)
    assert check.measurement.predicted_ratio == pytest.approx(0.45)  # the prediction, kept apart
    # an absolute limit reads milliseconds: 0.35 ms lets only the third through
    check = check_latency(ranked, build, nn.Linear(10, 1, bias=False), [Limit("latency", 0.35, False, "0.35ms")],
                          input_shape=(10,), base_predicted_ms=1.0, rounds=5)
    assert check.chosen is ranked[2]
    check = check_latency(ranked, build, nn.Linear(10, 1, bias=False), [Limit("latency", 0.2, True)],
                          input_shape=(10,), base_predicted_ms=1.0, rounds=5)
    assert check.chosen is None and len(check.measurements) == 3 and "no candidate fits" in check.failure("RUN")


def test_on_a_runtime_the_rounds_are_shared_among_freshly_compiled_pairs(monkeypatch):
    """Each compiled pair runs at its own speed (here: ratio 0.45, 0.50, 0.55): the interval covers them all,
    where one pair's rounds alone would be a point. Eager torch compiles nothing: one pair, every round."""
    calls = []

    def rounds(modules, input_shape, *, batch, device, rounds, backend):
        calls.append(rounds)
        return [[1.0, 0.45 + 0.05 * (len(calls) - 1)] for _ in range(rounds)]

    monkeypatch.setattr(latency_check, "measure_rounds", rounds)
    base, module = nn.Linear(10, 1), nn.Linear(5, 1)
    _, _, ratio = latency_check.time_against_base(module, base, input_shape=(10,), backend="onnxruntime", rounds=7)
    assert calls == [3, 2, 2] and latency_check.INSTANCES == 3
    assert ratio.low == pytest.approx(0.45) and ratio.high == pytest.approx(0.55)
    calls.clear()
    _, _, ratio = latency_check.time_against_base(module, base, input_shape=(10,), backend="torch", rounds=7)
    assert calls == [7] and ratio.low == ratio.high == pytest.approx(0.45)


def search(root, name, *extra, budget=("0.99latency", "0.6flops")):
    out = root / name
    args = ["--agent", "random", *[a for b in budget for a in ("--budget", b)], "--out", str(out), *FAST, *extra]
    return run_module.main(args), out


def test_the_pipeline_exports_the_next_candidate_when_the_best_measures_over(cache, monkeypatch, capsys):
    # the best-scored measures far over the cap whatever its size: which candidates the search keeps depends on
    # the latency table, timed on this machine, so the first one timed may be small (x0.18 of the base on one run)
    fake_timer(monkeypatch, factor=lambda calls: 1000.0 if calls == 1 else 0.5)
    code, out = search(cache, "skip")
    assert code == 0
    best = json.loads((out / "best.json").read_text())
    info = json.loads((out / "run.json").read_text())
    first, chosen = info["latency_check"]["measurements"]
    assert not first["fits"] and chosen["fits"] and best["trial"] == chosen["trial"] != first["trial"]
    assert best["latency"]["skipped"][0]["trial"] == first["trial"]
    trials = pd.read_csv(out / "trials.csv")
    top = trials[trials.state == "complete"].sort_values(["score", "flops", "trial"],
                                                         ascending=[False, True, True]).iloc[0]
    assert int(top.trial) == first["trial"]  # the skipped one was the best-scored
    printed = capsys.readouterr().out
    assert "1 better-scored candidate(s) measured over the budget and skipped" in printed


def test_relative_budget_summary_shows_base_and_best_measured_in_the_same_rounds(cache, monkeypatch, capsys):
    calls = fake_timer(monkeypatch, factor=lambda calls: 0.5)
    code, out = search(cache, "same-rounds")
    assert code == 0 and len(calls) == 1
    record = json.loads((out / "best.json").read_text())
    best = record["latency"]
    ratio = best["measured"]["ratio"][0]
    assert best["measured"]["base_ms"] == [1.0, 1.0, 1.0] and best["measured"]["ms"] == [ratio] * 3
    assert ratio == pytest.approx(0.5 * record["ratios"]["params"])  # the fake: half its share of parameters
    assert best["predicted"]["ratio"] == pytest.approx(best["predicted"]["ms"] / best["predicted"]["base_ms"])
    printed = capsys.readouterr().out
    line = next(s for s in printed.splitlines() if s.startswith("latency: best measured"))
    # measured against measured, in one line; the prediction on its own line
    assert f"x{ratio:.3f}" in line and "against base 1.000 [1.000, 1.000] ms in the same 15 interleaved rounds" in line
    assert "predicted" not in line and "within 0.99latency at 95% confidence" in line
    assert any(s.strip().startswith("predicted x") for s in printed.splitlines())


def test_no_fit_exits_2_after_saving_the_trials_and_the_run_resumes(cache, monkeypatch, capsys):
    fake_timer(monkeypatch, factor=lambda calls: 100.0)  # everything measures far over the cap
    code, out = search(cache, "no-fit")
    assert code == 2
    err = capsys.readouterr().err.strip()
    # the error is one line, the last; a loaded machine may add a latency-table warning before it
    assert "no candidate fits 0.99latency as measured" in err.splitlines()[-1] and "--resume" in err.splitlines()[-1]
    assert "Traceback" not in err and err.count("no candidate fits") == 1
    assert len(pd.read_csv(out / "trials.csv")) == 6 and len((out / "journal.jsonl").read_text().splitlines()) == 6
    assert not (out / "best.json").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "over the latency budget"
    fake_timer(monkeypatch, factor=lambda calls: 0.5)  # the machine (here: the fake) lets one fit now
    # the resumed run prices with the run's own table (its re-anchoring too): a table measured or re-anchored
    # again would price the replayed candidates a little differently, and the agent would propose others
    saved = json.loads((out / "latency_table.json").read_text())
    assert saved["meta"]["key"] and saved["scale"] > 0

    def no_measuring(*args, **kwargs):
        raise AssertionError("a resumed run measured its latency table again")

    monkeypatch.setattr(latency, "measure_table", no_measuring)
    code = run_module.main(["--resume", str(out), "--trials", "8", "--no-progress", "--quiet"])
    assert code == 0 and (out / "best.json").is_file()
    assert len(pd.read_csv(out / "trials.csv")) == 8  # the 6 saved ones replayed, 2 more searched


def test_a_resumed_run_prices_with_its_own_table_even_on_another_machine(cache, monkeypatch, capsys):
    """The run's own table is kept for the replay (measured on another machine or thread count: said); one for
    another structure is not: a table is measured here."""
    fake_timer(monkeypatch, factor=lambda calls: 0.5)
    code, out = search(cache, "elsewhere")
    assert code == 0
    saved = json.loads((out / "latency_table.json").read_text())
    measured = []
    real = latency.measure_table
    monkeypatch.setattr(latency, "measure_table", lambda *a, **k: measured.append(a) or real(*a, **k))
    capsys.readouterr()
    pipeline = Pipeline.resume(out, progress=False)
    assert pipeline.cost_model(pipeline.derive())[0].latency.to_json() == saved and not measured  # its own
    assert "another machine" not in capsys.readouterr().err
    saved["meta"]["key"], saved["meta"]["threads"] = "another machine", 64
    (out / "latency_table.json").write_text(json.dumps(saved))
    pipeline = Pipeline.resume(out, progress=False)
    assert pipeline.cost_model(pipeline.derive())[0].latency.to_json() == saved and not measured  # still its own
    err = capsys.readouterr().err  # the run's logging (set up by `search`) writes warnings to stderr
    assert "measured on another machine, thread count or version (cpu, 64 thread(s)" in err
    saved["meta"]["structure"] = "another model"
    (out / "latency_table.json").write_text(json.dumps(saved))
    pipeline = Pipeline.resume(out, progress=False)
    assert pipeline.cost_model(pipeline.derive())[0].latency.to_json() != saved and measured
    assert "is for another model structure or runtime; measuring one here" in capsys.readouterr().err
    (out / "latency_table.json").write_text(json.dumps({"meta": {}}))  # edited: no layers
    pipeline = Pipeline.resume(out, progress=False)
    assert pipeline.cost_model(pipeline.derive())[0].latency is not None
    assert "cannot be used (KeyError: 'layers'); measuring one here" in capsys.readouterr().err


def test_a_runtime_with_slow_unaligned_widths_is_said_with_the_round_to_that_avoids_them(cache, monkeypatch, capsys):
    """When the table finds slow paths at widths the space can pick, the run says so and which --round-to
    keeps every width off them (warnings show even with --quiet); a space rounded so already is not told."""
    fake_timer(monkeypatch, factor=lambda calls: 0.5)
    monkeypatch.setattr(latency.LatencyTable, "slow_paths", lambda self: [("layer1_0_conv1", 16, 6)])
    monkeypatch.setattr(latency.LatencyTable, "aligned_multiple", lambda self, most=16: 4)
    code, _ = search(cache, "slow-paths")
    assert code == 0
    err = capsys.readouterr().err
    assert ("1 layer configurations this space can pick run a slower kernel than wider ones (e.g. layer1_0_conv1 with "
            "16 outputs and 6 inputs)") in err and "--round-to 4 keeps every width off them" in err
    code, _ = search(cache, "slow-paths-rounded", "--round-to", "4")
    assert code == 0 and "slower kernel" not in capsys.readouterr().err


def test_a_missing_runtime_is_one_line(cache, monkeypatch, capsys):
    from evaluators import latency_backends

    monkeypatch.setattr(latency_backends.importlib.util, "find_spec", lambda name: None)
    code, out = search(cache, "no-openvino", "--latency-backend", "openvino")
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err.strip() == ('error: --latency-backend openvino needs the openvino package, which is '
                                                'not installed: pip install "prunesearch[openvino]"')
    code, _ = search(cache, "bad", "--latency-backend", "tensorrt")
    assert code == 2 and "--latency-backend must be one of torch, onnxruntime, openvino" in capsys.readouterr().err


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_runtime_times_the_table_and_the_exported_best_runs_on_it(backend, cache, monkeypatch, tmp_path):
    pytest.importorskip(backend)
    from evaluators.latency_backends import run_once
    from search.engine.api import prune

    monkeypatch.setenv("PRUNESEARCH_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,))
    result = prune(Tiny().eval(), ["0.6flops"], trials=4, calibration=[x], held_out=[(x, y)], out=tmp_path / "run",
                   progress=False, latency=True, latency_backend=backend)
    (table,) = (tmp_path / "cache" / "latency").glob("latency-*.json")
    meta = json.loads(table.read_text())["meta"]
    assert meta["backend"] == backend and meta["runtime"]
    assert result.record["latency"]["backend"] == backend and result.record["latency"]["fits"]
    subnet = result.subnet.cpu().eval()
    (out,) = run_once(subnet, x[:1], backend, torch.device("cpu"))
    with torch.no_grad():
        expected = subnet(x[:1])
    assert torch.allclose(torch.as_tensor(out), expected, atol=5e-2 if backend == "openvino" else 1e-4)
