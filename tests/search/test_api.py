"""The Python API: `search.prune` with the user's own model, batches and score function."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from search import SearchConfig, prune
from search.models.cifar_resnet import resnet20
from search.errors import UserError


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g)
    return DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16), DataLoader(TensorDataset(x[64:], y[64:]),
                                                                                 batch_size=16)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return resnet20(num_classes=4, in_channels=3).eval()


def test_prune_with_loaders_gives_a_real_subnet_within_budget(model, tmp_path):
    train, val = _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = prune(model, budget="0.5flops", agent="random", trials=5, no_one_shot=True, calibration=train, held_out=val,
                   out=tmp_path / "r", progress=False, calib_batches=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model untouched
    assert isinstance(result.trials, pd.DataFrame) and len(result.trials) == 5
    assert result.best is not None and 0 <= result.best.result.score <= 1
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        result.subnet.cpu()(torch.zeros(1, 3, 16, 16))
    assert counter.get_total_flops() == result.best.result.costs["flops"] <= 0.5 * result.base["flops"]
    assert (tmp_path / "r" / "best.json").is_file() and (tmp_path / "r" / "best.state_dict.pt").is_file()


def test_a_user_score_is_called_on_the_recalibrated_candidate_and_its_errors_are_failed_trials(model, tmp_path):
    train, _ = _data()
    calls = []

    def score(m):
        calls.append(m.training)
        if len(calls) == 3:
            raise RuntimeError("my metric broke")
        with torch.no_grad():
            return float(m(torch.ones(2, 3, 16, 16)).std())

    result = prune(model, budget="0.6flops", agent="random", trials=6, no_one_shot=True, calibration=train, score=score,
                   out=tmp_path / "r", progress=False, calib_batches=2, no_warm_start=True)
    assert calls and not any(calls)  # eval mode, every time
    states = result.trials.state.tolist()
    assert states.count("failed") == 1 and "my metric broke" in result.trials.message.dropna().str.cat()
    assert (result.trials.flops_ratio <= 0.6 + 1e-9).all()


def test_same_seed_same_search_and_resume_from_python(model, tmp_path):
    train, val = _data()
    kw = dict(budget="0.5flops", agent="random", calibration=train, held_out=val, progress=False, calib_batches=2,
              no_one_shot=True)
    whole = prune(model, trials=8, out=tmp_path / "a", **kw)
    part = prune(model, trials=4, out=tmp_path / "b", **kw)
    assert len(part.trials) == 4
    resumed = prune(model, trials=8, out=tmp_path / "b", resume=True, **kw)
    cols = ["trial", "state", "score", "flops", "architecture"]
    pd.testing.assert_frame_equal(whole.trials[cols], resumed.trials[cols])
    with pytest.raises(UserError, match=r"prune\(resume=True\): cannot change agent when resuming"):
        prune(model, trials=8, out=tmp_path / "b", resume=True, **{**kw, "agent": "abc"})


def test_prune_refuses_what_cannot_work(model):
    train, val = _data()
    with pytest.raises(UserError, match="held_out batches"):
        prune(model, calibration=train)
    with pytest.raises(UserError, match="nn.Module"):
        prune("resnet20", calibration=train, held_out=val)
    with pytest.raises(UserError, match="calibration must yield"):
        prune(model, calibration=[1, 2, 3], held_out=val)


def test_config_round_trips_through_json_and_validates():
    config = SearchConfig(agent="abc", budget=["0.4flops"], food_sources=6).validate()
    assert SearchConfig.from_json(config.to_json()) == config
    with pytest.raises(UserError, match="--limit does not apply"):
        SearchConfig(agent="tpe", budget=["0.4flops"], limit=3).validate()


def test_a_run_of_prune_is_exported_with_the_user_s_model_and_says_how_on_the_command_line(model, tmp_path,
                                                                                             capsys):
    from search.export import export, load_subnet
    from search.export import main as export_main
    from search.finetune import main as finetune_main

    train, val = _data()
    result = prune(model, budget="0.5flops", trials=3, calibration=train, held_out=val, out=tmp_path / "r",
                   progress=False, calib_batches=2, no_one_shot=True)
    with pytest.raises(UserError, match=r"searched from Python .* pass it \(load_subnet\(RUN, model=...\)"):
        load_subnet(tmp_path / "r")
    subnet = load_subnet(tmp_path / "r", model=model)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(subnet(x), result.subnet.cpu().eval()(x))
    assert export(tmp_path / "r", "state_dict", model=model).path.is_file()
    assert export_main([str(tmp_path / "r"), "--format", "pt"]) == 2
    assert "--trust-pickle to load the pickled best.pt" in capsys.readouterr().err
    assert export_main([str(tmp_path / "r"), "--format", "pt", "--trust-pickle"]) == 0
    assert finetune_main([str(tmp_path / "r"), "--epochs", "1"]) == 2
    assert "searched from Python (search.prune) on your own model and data" in capsys.readouterr().err
