"""After the search: filling the budget and the finalists (picking the export by a short fine-tune)."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from search import prune
from search.models.cifar_resnet import resnet20
from search.engine.config import SearchConfig
from search.selection.finalists import (FINALISTS_FILE, Finalist, FinalistSettings, held_out_loss, loader_batches,
                                        rank_finalists, score_module, tempered_ce, top_distinct, train_finalist)
from search.export.subnet import load_subnet
from search.engine.records import Trial
from spaces.fill import fill
from spaces.records import Result, TrialState
from spaces.space import Candidate, Dimension, SearchSpace


def _trial(number, score, values, state=TrialState.COMPLETE, flops=1.0):
    return Trial(number, Candidate(values), Result(state, score, {"flops": flops}))


def test_top_distinct_ranks_scored_trials_each_candidate_once():
    trials = [_trial(0, 0.5, {"a": 1}), _trial(1, 0.9, {"a": 2}), _trial(2, 0.9, {"a": 2}),
              _trial(3, None, {"a": 3}, TrialState.FAILED), _trial(4, math.nan, {"a": 4}),
              _trial(5, 0.9, {"a": 5}, flops=0.5), _trial(6, 0.7, {"a": 6})]
    assert [t.number for t in top_distinct(trials, 3)] == [5, 1, 6]  # ties: fewer FLOPs first, then earlier
    assert [t.number for t in top_distinct(trials, 10)] == [5, 1, 6, 0]


def test_top_distinct_keeps_each_subnet_once_under_its_first_name():
    trials = [_trial(0, 0.9, {"keep": 0, "inner": 4}), _trial(1, 0.9, {"keep": 0, "inner": 8}),
              _trial(2, 0.8, {"keep": 1, "inner": 4}), _trial(3, 0.7, {"keep": 1, "inner": 8})]

    def canonical(c):  # "inner" is read only by the block "keep" removes
        return c if c["keep"] else c.replace(inner=8)

    assert [t.number for t in top_distinct(trials, 3)] == [0, 1, 2]
    assert [t.number for t in top_distinct(trials, 3, canonical)] == [0, 2, 3]


def _finalists(*pairs):
    """Finalists in the proxy's order, from (score after the steps, held-out cross-entropy) pairs."""
    return [Finalist(_trial(i, 1.0 - i / 10, {"a": i}), score, 0.0, loss=loss) for i, (score, loss) in enumerate(pairs)]


def test_finalists_are_ranked_by_each_rule_with_unscored_ones_last():
    found = _finalists((0.5, 0.9), (0.6, 1.0), (0.4, 0.5), (math.nan, math.nan))
    order = lambda rank, items=found: [f.trial.number for f in rank_finalists(items, rank)]  # noqa: E731
    assert order("score") == [1, 0, 2, 3]
    assert order("ce") == [2, 0, 1, 3] and order("tce") == order("ce")  # the loss a finalist holds, either way
    assert order("ce+proxy") == [0, 2, 1, 3]      # cross-entropy ranks 1, 2, 0 plus proxy ranks 0, 1, 2
    assert order("score+proxy") == [0, 1, 2, 3]   # a tie (1 + 0 = 0 + 1) keeps the proxy's order
    metric = _finalists((0.5, math.nan), (0.6, math.nan), (0.4, math.nan))  # a user metric: no cross-entropy
    assert order("ce", metric) == [1, 0, 2] and order("ce+proxy", metric) == [0, 1, 2]
    assert order("ce+proxy", _finalists((math.nan, math.nan), (0.1, 2.0))) == [1, 0]  # diverged: last
    with pytest.raises(ValueError, match="rank"):
        rank_finalists(found, "test")


class _Lookup(torch.nn.Module):
    """Logits read off the input: `scale` times a one-hot of column 0 (its guess), plus `noise` times columns 1.."""

    def __init__(self, scale: float, noise: float):
        super().__init__()
        self.scale, self.noise = scale, noise

    def forward(self, x):
        return self.scale * torch.nn.functional.one_hot(x[:, 0].long(), 10).float() + self.noise * x[:, 1:]


def test_tempered_cross_entropy_ignores_the_logits_scale_and_prefers_what_they_tell_apart():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (400,), generator=g)
    guess = torch.where(torch.rand(400, generator=g) < 0.4, y, torch.randint(0, 10, (400,), generator=g))
    x = torch.cat([guess[:, None].float(), torch.randn(400, 10, generator=g)], 1)
    held = [(x[:200], y[:200]), (x[200:], y[200:])]
    informed, flat = _Lookup(scale=20.0, noise=0.0), _Lookup(scale=0.0, noise=0.01)  # 40% right but sure; chance
    # at their own scale the flat, near-chance logits have the lower cross-entropy; tempered, the informed ones
    assert held_out_loss(flat, held) < held_out_loss(informed, held)
    assert held_out_loss(informed, held, calibrated=True) < held_out_loss(flat, held, calibrated=True)
    assert held_out_loss(flat, held, calibrated=True) == pytest.approx(math.log(10), abs=1e-3)
    z = torch.randn(300, 5, generator=g) + 2 * torch.nn.functional.one_hot(y[:300] % 5, 5)
    best = min(torch.nn.functional.cross_entropy(z * math.exp(t), y[:300] % 5).item()
               for t in torch.linspace(-5, 5, 4001).tolist())
    for scale in (0.01, 1.0, 100.0):  # the same minimum, whatever the scale the logits come at
        assert tempered_ce(z * scale, y[:300] % 5) == pytest.approx(best, abs=1e-4)
    assert math.isnan(tempered_ce(torch.full((2, 3), math.inf), torch.zeros(2, dtype=torch.long)))
    assert SearchConfig().finalist_rank == "tce"


def _space():
    return SearchSpace([Dimension("a", "width", 10, tuple(range(1, 11))), Dimension("b", "width", 20, (5, 10, 15, 20)),
                        Dimension("keep:x", "keep", 1, (0, 1))])


def test_fill_widens_until_no_group_can_grow_and_leaves_blocks_alone():
    space = _space()
    cost = lambda c: c["a"] * 3 + c["b"] * 2 + c["keep:x"] * 7  # noqa: E731
    feasible = lambda c: cost(c) <= 50  # noqa: E731
    start = Candidate({"a": 2, "b": 5, "keep:x": 0})
    wider = fill(space, start, feasible)
    assert feasible(wider) and wider["keep:x"] == 0
    assert all(wider[n] >= start[n] for n in ("a", "b"))
    for d in space.widths:  # maximal: no single group can take one more step
        if wider[d.name] < d.full:
            assert not feasible(wider.replace(**{d.name: d.choices[d.index(wider[d.name]) + 1]}))
    assert wider == Candidate({"a": 6, "b": 15, "keep:x": 0})  # the narrowest ratio grows first
    assert fill(space, space.full(), lambda c: True) == space.full()
    over = Candidate({"a": 10, "b": 20, "keep:x": 1})
    assert fill(space, start, lambda c: c == start) == start  # nothing fits: unchanged
    assert over == space.full()


def _data(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()  # learnable labels
    return (DataLoader(TensorDataset(x[:96], y[:96]), batch_size=16),
            [(x[96:], y[96:])])


@pytest.fixture
def model():
    torch.manual_seed(0)
    return resnet20(num_classes=4, in_channels=3).eval()


def test_finalists_pick_and_report_the_score_of_what_is_exported(model, tmp_path):
    train, held = _data()
    kw = dict(budget="0.5flops", agent="random", trials=6, no_one_shot=True, calibration=train, held_out=held, train=train,
              progress=False, calib_batches=2, finalists=3, finalist_steps=4, finalist_lr=0.05)
    result = prune(model, out=tmp_path / "a", **kw)
    finalists = pd.read_csv(tmp_path / "a" / FINALISTS_FILE)
    assert len(finalists) == 3 and finalists.exported.tolist() == [True, False, False]
    assert (finalists.steps == 4).all() and finalists.finalist_ce.notna().all()  # ranked by cross-entropy + proxy
    best = json.loads((tmp_path / "a" / "best.json").read_text())
    assert best["trial"] == finalists.trial[0] == result.best.number
    assert best["held_out_top1"] == pytest.approx(finalists.finalist_score[0])
    assert best["search_score"] == pytest.approx(finalists.proxy_score[0]) == pytest.approx(result.best.result.score)
    # the exported weights (the finalist's, fine-tuned and recalibrated) score exactly what best.json says
    subnet = load_subnet(tmp_path / "a", model=model)
    assert score_module(subnet, held) == pytest.approx(best["held_out_top1"])
    # the exported candidate is within budget, and the same seed gives the same finalists
    assert result.trials.set_index("trial").flops_ratio[best["trial"]] <= 0.5 + 1e-9
    again = prune(model, out=tmp_path / "b", **kw)
    pd.testing.assert_frame_equal(finalists.drop(columns="seconds"),
                                  pd.read_csv(tmp_path / "b" / FINALISTS_FILE).drop(columns="seconds"))
    assert again.best.number == result.best.number


def test_without_labels_finalists_distil_and_zero_turns_them_off(model, tmp_path):
    train, held = _data()
    kw = dict(budget="0.5flops", agent="random", trials=4, no_one_shot=True, calibration=train, held_out=held, progress=False,
              calib_batches=2, finalist_steps=3, no_warm_start=True)
    result = prune(model, out=tmp_path / "kd", finalists=2, **kw)
    assert (pd.read_csv(tmp_path / "kd" / FINALISTS_FILE).steps == 3).all()  # distilled from the model's outputs
    assert result.record["finetuned_steps"] == 3
    off = prune(model, out=tmp_path / "off", finalists=0, reconstruct=0, **kw)  # the proxy's pick, weights as copied
    assert not (tmp_path / "off" / FINALISTS_FILE).exists() and off.finalists is None
    assert off.record["selected_by"] == "search score" and off.record["finetuned_steps"] == 0
    assert off.best.number == max(
        (t for t in off.trials.itertuples() if t.state == "complete"), key=lambda t: (t.score, -t.flops, -t.trial)).trial
    assert off.record["held_out_top1"] == pytest.approx(off.best.result.score)


def test_untrained_finalists_are_re_ranked_by_held_out_cross_entropy(model, tmp_path):
    """`--finalist-steps 0 --finalist-rank ce --reconstruct 0`: nothing trains; the proxy's top K are re-ranked by
    the held-out cross-entropy of the exported weights, and the lowest is exported as it is."""
    train, held = _data()
    result = prune(model, out=tmp_path / "ce", budget="0.5flops", agent="random", trials=6, no_one_shot=True,
                   calibration=train, held_out=held, train=train, progress=False, calib_batches=2, finalists=4,
                   finalist_steps=0, finalist_rank="ce", no_warm_start=True, reconstruct=0)
    finalists = pd.read_csv(tmp_path / "ce" / FINALISTS_FILE)
    assert len(finalists) == 4 and (finalists.steps == 0).all()
    assert finalists.finalist_ce.is_monotonic_increasing and finalists.exported.tolist() == [True] + [False] * 3
    assert (finalists.finalist_score == finalists.proxy_score).all()  # untrained: the same weights, the same score
    best = result.record
    assert best["trial"] == finalists.trial[0] and best["finetuned_steps"] == 0
    assert best["selected_by"] == "finalists (4, untrained, re-ranked on held-out)"
    subnet = load_subnet(tmp_path / "ce", model=model)
    assert score_module(subnet, held) == pytest.approx(best["held_out_top1"])


def test_fill_adds_widened_trials_that_stay_within_budget(model, tmp_path):
    train, held = _data()
    result = prune(model, budget="0.3flops", agent="uniform", trials=1, calibration=train, held_out=held,
                   out=tmp_path / "f", progress=False, calib_batches=2, fill=True, finalists=0,
                   width_ratios="0.25,0.5,0.75,1")
    trials = result.trials
    filled = trials[trials.message.fillna("").str.startswith("fill of trial 0")]
    assert len(trials) == 2 and len(filled) == 1
    assert trials.flops_ratio[0] < filled.flops_ratio.iloc[0] <= 0.3 + 1e-9


def test_successive_halving_keeps_the_best_third_of_each_rung_and_one_shot_ones_always_compete():
    from torch import nn

    from search.selection.finalists import FinalistSettings, run_finalists

    trials = [_trial(i, 1.0 - i / 100, {"a": i}) for i in range(12)]
    one_shot = _trial(99, 0.1, {"a": 99})  # far below the top 9 by the proxy: forced in all the same
    quality = {i: (i * 7) % 10 / 10 for i in range(12)} | {99: 0.95}  # what training reveals, unlike the proxy
    deltas = []

    def train(module, rank, settings, *rest):  # a stand-in for train_finalist: (module, score, steps, s, ce)
        deltas.append(settings.steps)
        module.trained += settings.steps
        return module, quality[module.a] + module.trained / 1000, settings.steps, 0.0, math.nan

    def build(candidate):
        module = nn.Identity()
        module.a, module.trained = candidate["a"], 0
        return module

    settings = FinalistSettings(count=9, steps=160, rank="score", rungs=(10, 40, 160))
    ranked = run_finalists(trials, settings, build=build, batches=None, calibration=[], held_out=[], device="cpu",
                           parallel=lambda fn, jobs: [train(*job) for job in jobs], forced=[one_shot])
    assert len(ranked) == 10 and deltas == [10] * 10 + [30] * 4 + [120] * 2  # 10 -> ceil(10/3) = 4 -> 2
    assert [f.trial.number for f in ranked[:2]] == [99, 7]    # the best two of rung 2, by their final score
    assert [f.steps for f in ranked] == [160, 160, 40, 40] + [10] * 6 and [f.rung for f in ranked[:4]] == [2, 2, 1, 1]
    rung1 = sorted((n for n in list(range(9)) + [99]), key=lambda n: -quality[n])[:4]
    assert {f.trial.number for f in ranked[:4]} == set(rung1)  # those that went on were rung 1's best third
    assert all(f.module is None for f in ranked[2:]) and ranked[0].module is not None
    assert FinalistSettings(steps=50).schedule() == (50,)


def test_a_forced_one_shot_finalist_takes_its_place_in_the_proxy_order():
    # appended after the top k, it would always hold the worst proxy rank whatever its score ("+proxy" rankings)
    from torch import nn

    from search.selection.finalists import FinalistSettings, run_finalists

    trials = [_trial(i, 0.9 - i / 100, {"a": i}) for i in range(5)]
    one_shot = _trial(9, 0.95, {"a": 9})  # not among the search's trials, but the best proxy score of all
    order = []

    def train(module, rank, settings, *rest):
        order.append(module.a)
        return module, 0.5, settings.steps, 0.0, 1.0  # every finalist alike after its steps: the proxy decides

    def build(candidate):
        module = nn.Identity()
        module.a = candidate["a"]
        return module

    ranked = run_finalists(trials, FinalistSettings(count=3, steps=1, rank="ce+proxy"), build=build, batches=None,
                           calibration=[], held_out=[], device="cpu",
                           parallel=lambda fn, jobs: [train(*job) for job in jobs], forced=[one_shot])
    assert order == [9, 0, 1, 2] and ranked[0].trial.number == 9


def test_a_later_rung_is_ranked_by_its_own_signal_not_the_proxy():
    # with "ce+proxy", two finalists that disagree tie on the rank sum and the proxy's order would always win:
    # past the first rung, the rung's cross-entropy decides (ties in the previous rung's order)
    from torch import nn

    from search.selection.finalists import FinalistSettings, run_finalists

    trials = [_trial(i, 0.9 - i / 100, {"a": i}) for i in range(4)]
    loss = {0: [1.0, 0.9], 1: [1.1, 0.5], 2: [2.0, 2.0], 3: [3.0, 3.0]}  # trial 1 overtakes trial 0 in rung 2

    def train(module, rank, settings, *rest):
        ce = loss[module.a][module.rung]
        module.rung += 1
        return module, 1 - ce / 10, settings.steps, 0.0, ce

    def build(candidate):
        module = nn.Identity()
        module.a, module.rung = candidate["a"], 0
        return module

    settings = FinalistSettings(count=4, steps=8, rank="ce+proxy", rungs=(2, 8), halving=2)
    ranked = run_finalists(trials, settings, build=build, batches=None, calibration=[], held_out=[], device="cpu",
                           parallel=lambda fn, jobs: [train(*job) for job in jobs])
    assert [f.trial.number for f in ranked] == [1, 0, 2, 3] and [f.rung for f in ranked] == [1, 1, 0, 0]


def test_a_loader_s_one_sample_batch_is_skipped_and_text_rungs_work_from_python(tmp_path):
    """A user's train loader without drop_last ends in a batch of one, on which a BatchNorm1d cannot train: the
    finalists and the supernet skip it. `finalist_steps="2,4"` is read as on the command line."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 12),
                              torch.nn.BatchNorm1d(12), torch.nn.ReLU(), torch.nn.Linear(12, 4)).eval()
    loader, held = _data()
    x, y = loader.dataset.tensors
    train = DataLoader(TensorDataset(x[:33], y[:33]), batch_size=16)  # 16, 16, 1
    result = prune(net, budget="0.6flops", agent="random", trials=3, calibration=loader, held_out=held, train=train,
                   progress=False, calib_batches=2, finalists=2, finalist_steps="2,4", supernet_epochs=1,
                   out=tmp_path / "r")
    finalists = pd.read_csv(tmp_path / "r" / FINALISTS_FILE)
    assert sorted(finalists.steps)[-1] == 4 and set(finalists.rung) == {1, 2}
    assert result.record["finetuned_steps"] == 4 and "rungs of 2, 4 steps" in result.record["selected_by"]
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["args"]["finalist_steps"] == [2, 4] and run["supernet"]["steps"] == 3  # 3 batches an epoch


def test_a_finalist_reports_the_steps_it_took_not_the_steps_asked():
    torch.manual_seed(0)
    net = resnet20(num_classes=4, in_channels=3)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))
    singles = loader_batches([(x[i:i + 1], y[i:i + 1]) for i in range(8)])  # only batches of one: none trains
    settings = FinalistSettings(count=1, steps=5, rank="score")
    _, _, steps, _, _ = train_finalist(net, 0, settings, singles, [x], [(x, y)], None, None, "cpu")
    assert steps == 0
    three = lambda seed: iter([(x[:4], y[:4])] * 3)  # noqa: E731 - a stream that ends after 3 batches
    _, _, steps, _, _ = train_finalist(net, 0, settings, three, [x], [(x, y)], None, None, "cpu")
    assert steps == 3
