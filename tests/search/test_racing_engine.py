"""Racing in the engine and the records: the top-k is kept, resume is exact, old journals read, --no-racing."""
from __future__ import annotations

import json
import logging
import zlib

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from agents import make_agent
from conftest import fake_score, setting
from evaluators.racing import Estimate, RaceRule
from search import prune
from search.models.cifar_resnet import resnet20
from search.engine.loop import Engine, Journal, Referee
from search.engine.records import Trial, best_trial, trials_frame
from spaces.records import Result, TrialState
from spaces.space import Candidate

TOTAL, CHUNK = 256, 32


class Racer:
    """A stand-in scorer: each candidate answers every held-out sample right or wrong, fixed by the candidate;
    its share right follows `fake_score`. Racing as the evaluator does: chunk by chunk against the bar."""

    def __init__(self, space):
        self.space, self.calls, self.rule = space, 0, RaceRule(0.99)
        self.top = fake_score(space, space.full())

    def right(self, candidate) -> np.ndarray:
        seed = zlib.crc32(json.dumps(sorted(candidate.items())).encode())
        share = 0.95 * fake_score(self.space, candidate) / self.top
        return np.random.default_rng(seed).random(TOTAL) < share

    def score(self, candidate) -> float:
        return self.estimate(candidate).score

    def estimate(self, candidate, bar=None) -> Estimate:
        self.calls += 1
        seen = np.cumsum(self.right(candidate))
        looks = TOTAL // CHUNK - 1
        for n in range(CHUNK, TOTAL, CHUNK):
            if self.rule.stops(int(seen[n - 1]), n, TOTAL, looks, bar):
                return Estimate(int(seen[n - 1]) / n, n, raced=True)
        return Estimate(int(seen[-1]) / TOTAL, TOTAL)


def engine(trials, *, top_k=5, agent="random", journal=None):
    space, budget, price = setting("0.4flops")
    racer = Racer(space)
    a = make_agent(agent, space, budget, price=price, seed=0, trials=trials)
    return Engine(a, price, budget, racer, trials=trials, journal=journal, progress=False, top_k=top_k), racer


def ranking(trials, k):
    ranked = sorted((t for t in trials if t.result.ok),
                    key=lambda t: (t.result.raced, -t.result.score, t.result.costs["flops"], t.number))
    return [t.number for t in ranked[:k]]


def test_racing_keeps_the_top_k_and_every_full_score():
    raced = engine(80, top_k=5)[0].run().trials
    full = {t.number: t for t in engine(80, top_k=None)[0].run().trials}
    stopped = [t for t in raced if t.result.raced]
    assert len(stopped) >= 20, "the constructed case must exercise racing"
    for t in raced:
        assert t.candidate == full[t.number].candidate
        if t.result.ok and not t.result.raced:
            assert (t.result.score, t.result.samples) == (full[t.number].result.score, TOTAL)
        elif t.result.raced:
            assert t.result.samples < TOTAL and "raced out" in t.result.message
    assert ranking(raced, 5) == ranking(full.values(), 5)
    assert best_trial(raced).number == best_trial(list(full.values())).number
    assert not any(t.result.raced for t in full.values())  # no top_k: no racing


@pytest.mark.parametrize("agent", ["random", "abc"])
def test_resume_with_racing_equals_an_uninterrupted_run(tmp_path, agent):
    uninterrupted = engine(40, agent=agent)[0].run().trials
    engine(15, agent=agent, journal=Journal(tmp_path / "j.jsonl"))[0].run()
    resumed, racer = engine(40, agent=agent, journal=Journal(tmp_path / "j.jsonl"))
    resumed.replay(Journal(tmp_path / "j.jsonl").read())
    trials = resumed.run().trials

    def key(t):
        return t.number, t.candidate, t.result.state, t.result.score, t.result.samples, t.result.raced

    assert sorted(map(key, trials)) == sorted(map(key, uninterrupted))
    assert any(t.result.raced for t in uninterrupted)
    assert racer.calls <= 25   # replayed trials are not scored (nor raced) again


def test_best_trial_never_picks_a_raced_out_candidate_over_a_fully_scored_one():
    space, _, _ = setting("0.4flops")
    a, b = space.full(), space.smallest()
    full = Trial(0, a, Result(TrialState.COMPLETE, 0.70, {"flops": 2.0}, samples=256))
    raced = Trial(1, b, Result(TrialState.COMPLETE, 0.90, {"flops": 1.0}, samples=32, raced=True))
    assert best_trial([full, raced]) is full and best_trial([raced, full]) is full
    assert best_trial([raced]) is raced   # only when nothing was scored in full


def test_a_repeat_of_a_raced_candidate_is_told_the_same_partial_result():
    space, budget, price = setting("0.4flops")
    referee = Referee(price, budget, top_k=1)
    candidate = make_agent("random", space, budget, price=price, seed=0).ask(0)
    referee.remember(candidate, Result(TrialState.COMPLETE, 0.4, {}, samples=64, raced=True))
    assert referee.bar is None   # a raced score never sets the bar
    _, repeat = referee.settle(candidate)
    assert (repeat.score, repeat.samples, repeat.raced) == (0.4, 64, True)


def test_an_old_journal_reads_as_fully_scored_and_the_table_has_the_new_columns(tmp_path):
    space, _, _ = setting("0.4flops")
    candidate = space.full()
    old = {"trial": 0, "asked": 1, "state": "complete", "score": 0.9, "costs": {"flops": 4.0, "params": 2.0},
           "seconds": 0.1, "message": "", "candidate": candidate.to_dict()}
    (tmp_path / "j.jsonl").write_text(json.dumps(old) + "\n")
    (trial,) = Journal(tmp_path / "j.jsonl").read()
    assert (trial.result.samples, trial.result.raced, trial.result.score) == (None, False, 0.9)
    new = Trial(1, Candidate(candidate), Result(TrialState.COMPLETE, 0.5, {"flops": 4.0, "params": 2.0},
                                                samples=64, raced=True), 2)
    assert Trial.from_json(json.loads(json.dumps(new.to_json()))) == new
    frame = trials_frame([trial, new], {"flops": 8.0, "params": 4.0})
    assert frame.samples_scored.isna().tolist() == [True, False] and frame.samples_scored[1] == 64
    assert frame.raced.tolist() == [False, True]


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g)
    return DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16), DataLoader(TensorDataset(x[64:], y[64:]),
                                                                                 batch_size=16)


def test_no_racing_scores_every_candidate_on_every_held_out_sample(tmp_path):
    torch.manual_seed(0)
    model = resnet20(num_classes=4, in_channels=3).eval()
    train, val = _data()
    result = prune(model, budget="0.5flops", agent="random", trials=6, no_one_shot=True, calibration=train, held_out=val,
                   out=tmp_path / "r", progress=False, calib_batches=2, no_racing=True, racing_top_k=1)
    assert result.trials.samples_scored.tolist() == [32] * 6 and not result.trials.raced.any()
    assert json.loads((tmp_path / "r" / "run.json").read_text())["scoring"]["racing"] is None


def test_racing_is_off_with_a_user_score_and_the_log_says_so_once(tmp_path):
    torch.manual_seed(0)
    model = resnet20(num_classes=4, in_channels=3).eval()
    train, _ = _data()
    class Keep(logging.Handler):   # its own handler: an earlier CLI test may have configured logging
        def __init__(self):
            super().__init__(logging.INFO)
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    logger, keep = logging.getLogger("search.engine.pipeline"), Keep()
    level = logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        result = prune(model, budget="0.6flops", agent="random", trials=4, no_one_shot=True, calibration=train, out=tmp_path / "r",
                       score=lambda m: 0.5, progress=False, calib_batches=2, racing_top_k=1)
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
    off = "racing is off: a user score function is called whole, it cannot be scored in chunks"
    assert keep.messages.count(off) == 1
    assert not result.trials.raced.any() and result.trials.samples_scored.isna().all()
