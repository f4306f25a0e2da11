"""Racing's bound and the raced scorer: a candidate that would enter the top-k is not stopped."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from conftest import derived
from evaluators.accuracy import AccuracyEvaluator
from evaluators.executors import LocalExecutor, score_safely
from evaluators.racing import RaceRule, TopK, binomial_upper, race_batches


def test_binomial_bound_is_above_the_share_and_tightens_with_more_samples():
    assert binomial_upper(60, 60, 0.01) == 1.0
    assert 0.5 < binomial_upper(300, 600, 0.01) < binomial_upper(30, 60, 0.01) < 1
    assert binomial_upper(0, 64, 0.01) == pytest.approx(1 - 0.01 ** (1 / 64))   # the closed form at 0 right


def test_an_evenly_spread_candidate_at_or_above_the_bar_is_never_stopped():
    """A constructed case: every chunk is right as often as the whole set; its full score is the bar or more."""
    rule, total, chunk = RaceRule(0.99), 640, 64
    looks = total // chunk - 1
    for right_per_chunk in range(chunk + 1):
        full = right_per_chunk / chunk
        for bar in (full - 0.05, full):
            assert not any(rule.stops(right_per_chunk * (i + 1), chunk * (i + 1), total, looks, bar)
                           for i in range(looks)), (right_per_chunk, bar)


def test_a_candidate_at_the_bar_is_stopped_at_most_once_in_a_hundred_random_orders():
    rule, total, chunk = RaceRule(0.99), 512, 64
    looks = total // chunk - 1
    rng = np.random.default_rng(0)
    for full in (0.3, 0.6, 0.9, 0.97):
        right = np.zeros(total, dtype=int)
        right[:round(full * total)] = 1
        bar = right.sum() / total   # it ties the k-th best: it would enter the top-k
        stopped = 0
        for _ in range(1000):
            seen = np.cumsum(rng.permutation(right))
            stopped += any(rule.stops(int(seen[n - 1]), n, total, looks, bar) for n in range(chunk, total, chunk))
        assert stopped <= 10, (full, stopped)


def test_a_clearly_worse_candidate_is_stopped_after_the_first_chunk():
    rule = RaceRule(0.99)
    assert rule.stops(20, 64, 1024, 15, bar=0.9)        # 31% right so far against a bar of 90%
    assert not rule.stops(20, 64, 1024, 15, bar=None)   # no bar: racing is off


def test_top_k_bar_is_the_kth_best_full_score():
    top = TopK(3)
    for score in (0.5, 0.9, 0.7):
        assert top.bar is None
        top.add(score)
    assert top.bar == 0.5
    top.add(0.8)
    assert top.bar == 0.7
    assert TopK(None).bar is None


def test_race_batches_keep_every_sample_once():
    x = torch.arange(100.0).reshape(100, 1)
    batches = race_batches([(x[:60], torch.arange(60)), (x[60:], torch.arange(60, 100))], 32, seed=3)
    assert [len(y) for _, y in batches] == [32, 32, 32, 4]
    ys = torch.cat([y for _, y in batches])
    assert sorted(ys.tolist()) == list(range(100)) and ys.tolist() != list(range(100))
    assert all(torch.equal(bx[:, 0], by.float()) for bx, by in batches)   # samples keep their labels


@pytest.fixture(scope="module")
def evaluator():
    prunable, _, _ = derived("resnet20")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(160, 3, 32, 32, generator=g), torch.randint(0, 10, (160,), generator=g)
    held = race_batches([(x[64:], y[64:])], 32)
    with AccuracyEvaluator(prunable, [x[:32], x[32:64]], held) as e:
        yield e


def test_estimate_without_a_bar_is_the_full_score(evaluator, rng):
    candidate = evaluator.prunable.space.sample(rng)
    e = evaluator.estimate(candidate)
    assert (e.samples, e.raced) == (96, False) and e.score == evaluator.score(candidate)
    assert evaluator.estimate(candidate, bar=0.0) == e          # a bar nothing falls under: scored to the end


def test_estimate_stops_at_the_first_chunk_under_an_unreachable_bar(evaluator, rng):
    candidate = evaluator.prunable.space.sample(rng)
    e = evaluator.estimate(candidate, bar=1.01)
    assert e.raced and e.samples == 32 and e.score < 1.01
    x, y = evaluator.held_out[0]
    evaluator.estimate(candidate)   # the same calibration: the first chunk's share is the estimate
    with torch.no_grad():
        assert e.score == (evaluator.elastic(x).argmax(1) == y).float().mean().item()
    scored = score_safely(evaluator, candidate, 1.01)
    assert scored.raced and scored.samples == 32 and scored.ok


def test_local_executor_passes_the_bar(evaluator, rng):
    executor = LocalExecutor(evaluator)
    candidate = evaluator.prunable.space.sample(rng)
    executor.submit(0, candidate, 1.01)
    executor.submit(1, candidate)
    (_, raced), (_, full) = executor.wait()
    assert raced.raced and raced.samples == 32 and not full.raced and full.samples == 96


def test_a_user_metric_is_scored_whole(rng):
    prunable, _, _ = derived("resnet20")
    x = torch.randn(16, 3, 32, 32)
    with AccuracyEvaluator(prunable, [x], [], metric=lambda m: 0.25) as e:
        got = e.estimate(prunable.space.sample(rng), bar=0.9)
    assert (got.score, got.samples, got.raced) == (0.25, None, False)


def test_from_dataset_batches_are_unchanged_by_racing():
    """Racing's chunks are made by the pipeline (`race_batches`); the evaluator scores the batches it is given."""
    prunable, _, _ = derived("resnet20")
    data = TensorDataset(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))
    with AccuracyEvaluator.from_dataset(prunable, data, range(32), range(32, 64), calib_batches=2, batch_size=16,
                                        eval_samples=32) as e:
        assert [len(y) for _, y in e.held_out] == [32]
