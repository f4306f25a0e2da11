"""A journal damaged anywhere resumes with every readable trial kept, for every agent (none scored again)."""
from __future__ import annotations

import json

import pytest

from agents import make_agent
from agents.registry import list_agents
from search.engine.loop import Engine, Journal
from tests.search.test_engine import CountingScorer
from conftest import setting

AGENTS = [a for a in list_agents() if a != "metapruning"]  # metapruning is evolution, scored otherwise


def _engine(path, agent, trials, scorer=None):
    space, budget, price = setting("0.4flops")
    make = lambda: make_agent(agent, space, budget, price=price, seed=0, trials=trials)
    scorer = scorer or CountingScorer(space)
    return Engine(make(), price, budget, scorer, trials=trials, journal=Journal(path), progress=False), scorer, make


@pytest.mark.parametrize("agent", AGENTS)
@pytest.mark.parametrize("line", [2, 8])
def test_a_journal_damaged_in_the_middle_resumes_with_every_readable_trial(tmp_path, agent, line):
    path = tmp_path / "j.jsonl"
    first, _, _ = _engine(path, agent, 15)
    before = {t.number: t for t in first.run().trials}
    lines = path.read_text().splitlines(keepends=True)
    if len(lines) < line + 2:
        pytest.skip(f"{agent} proposed only {len(lines)} candidates")
    lost = json.loads(lines[line - 1])["trial"]
    lines[line - 1] = '{"trial": 7, "asked": \x00garbage\n'
    path.write_text("".join(lines))
    readable = Journal(path).read()
    assert len(readable) == len(lines) - 1
    resumed, scorer, make = _engine(path, agent, 15)
    resumed.replay(readable, make)
    outcome = resumed.run()
    after = {t.number: t for t in outcome.trials}
    for number, trial in before.items():   # every readable trial kept, with its result
        if number != lost:
            kept = after[number]
            assert (kept.candidate, kept.result.state, kept.result.score) == (
                trial.candidate, trial.result.state, trial.result.score)
    assert len(outcome.trials) == len(before) or outcome.finished_early
    scored = {t.candidate for n, t in before.items() if n != lost and t.result.ok}
    new = [t for t in outcome.trials if t.number not in before or t.number == lost]
    assert scorer.calls <= len(new)  # at most the new trials were scored: none of the readable ones again
    assert all(t.result.message == "repeat of an earlier candidate" for t in new if t.candidate in scored)


def test_an_exact_replay_is_kept_where_the_agent_can_do_it(tmp_path):
    """random proposes the same candidates whatever it is told: the hole is asked again, the rest is exact."""
    path = tmp_path / "j.jsonl"
    first, _, _ = _engine(path, "random", 10)
    before = [t.candidate for t in first.run().trials]
    lines = path.read_text().splitlines(keepends=True)
    lines[4] = "not json\n"
    path.write_text("".join(lines))
    resumed, scorer, make = _engine(path, "random", 10)
    assert resumed.replay(Journal(path).read(), make) is True
    outcome = resumed.run()
    assert [t.candidate for t in sorted(outcome.trials, key=lambda t: t.number)] == before
    assert scorer.calls == 1


def test_tpe_learns_the_readable_trials_as_data(tmp_path):
    path = tmp_path / "j.jsonl"
    first, _, _ = _engine(path, "tpe", 15)
    first.run()
    lines = path.read_text().splitlines(keepends=True)
    lines[7] = "{broken\n"
    path.write_text("".join(lines))
    resumed, _, make = _engine(path, "tpe", 15)
    assert resumed.replay(Journal(path).read(), make) is False
    study = resumed.agent.study
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "FAIL")]
    assert len(done) == 14
