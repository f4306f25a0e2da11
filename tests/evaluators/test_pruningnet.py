"""PruningNet: warm start equals the base model, training leaves the base model alone, files fit their space."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import build_model, derived
from evaluators.accuracy import AccuracyEvaluator, recalibrate, top1
from evaluators.pruningnet import (PruningNet, PruningNetEvaluator, feasible_sampler, generated_weights,
                                   materialize_generated, train_pruningnet)
from spaces.derive import derive


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))


def candidates(prunable, n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [prunable.space.full(), prunable.space.smallest(), *(prunable.space.sample(rng) for _ in range(n))]


def evaluator(prunable, cls=AccuracyEvaluator):
    return cls.from_dataset(prunable, data(), range(0, 32), range(32, 64), calib_batches=2, batch_size=16,
                            eval_samples=32)


def trained(prunable, seed=0, epochs=1):
    net = PruningNet(prunable)
    loader = DataLoader(data(32, seed=1), batch_size=16, shuffle=True)
    history = train_pruningnet(net, loader, epochs=epochs, lr=1e-3, seed=seed, progress=False)
    return net, history


def test_a_fresh_pruningnet_reproduces_the_base_model_exactly():
    prunable, _, _ = derived("resnet20")
    net = PruningNet(prunable)
    assert len(net.names) == 22 and net.generator_parameters == 22 * 96 + 33 * sum(
        prunable.graph.tensors[n].numel() for n in net.names)
    for candidate in candidates(prunable, 1):
        for name, weight in generated_weights(net, candidate).items():
            assert torch.equal(weight, prunable.graph.tensors[name])
    with evaluator(prunable) as base, evaluator(prunable, PruningNetEvaluator) as generated:
        for candidate in candidates(prunable):
            assert generated.score(candidate) == base.score(candidate)


def test_training_changes_the_generated_weights_and_leaves_the_base_model_alone():
    prunable, _, _ = derived("resnet20")
    model = prunable.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(p.requires_grad, m.training) for m in model.modules() for p in m.parameters(recurse=False)]
    inplace = [m.inplace for m in model.modules() if hasattr(m, "inplace")]
    rng_state = torch.random.get_rng_state()
    net, history = trained(prunable)
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "base parameters or BN changed"
    assert flags == [(p.requires_grad, m.training) for m in model.modules() for p in m.parameters(recurse=False)]
    assert inplace == [m.inplace for m in model.modules() if hasattr(m, "inplace")]
    assert torch.equal(rng_state, torch.random.get_rng_state()), "the global RNG was consumed"
    candidate = candidates(prunable, 1)[2]
    weights = generated_weights(net, candidate)
    assert any(not torch.equal(w, prunable.graph.tensors[n]) for n, w in weights.items())
    again, _ = trained(prunable)  # seeded: the same candidates and batches, the same generators
    assert all(torch.equal(w, generated_weights(again, candidate)[n]) for n, w in weights.items())


def test_save_load_round_trip_and_export_give_the_same_scores(tmp_path):
    prunable, _, _ = derived("resnet20")
    net, _ = trained(prunable, seed=3)
    net.save(tmp_path / "pruningnet.pt")
    loaded = PruningNet.load(tmp_path / "pruningnet.pt", prunable)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))
    before = {k: v.clone() for k, v in prunable.model.state_dict().items()}
    with evaluator(prunable) as base:
        first, second = PruningNetEvaluator.of(base, net), PruningNetEvaluator.of(base, loaded)
        for candidate in candidates(prunable, 2, seed=1):
            score = first.score(candidate)
            assert second.score(candidate) == score
            subnet = materialize_generated(loaded, candidate)  # export with the PruningNet's weights
            recalibrate(subnet, base.calibration)
            assert top1(subnet.eval(), base.held_out) == score
        first.restore(), second.restore()
    assert all(torch.equal(before[k], v) for k, v in prunable.model.state_dict().items())


def test_a_pruningnet_of_another_space_or_other_weights_is_rejected(tmp_path):
    prunable, _, _ = derived("resnet20")
    other, _, _ = derived("resnet56")
    PruningNet(other).save(tmp_path / "resnet56.pt")
    with pytest.raises(ValueError, match="does not fit"):
        PruningNet.load(tmp_path / "resnet56.pt", prunable)
    base = evaluator(prunable)
    with pytest.raises(ValueError, match="does not fit"):
        PruningNetEvaluator.of(base, PruningNet(other))
    torch.manual_seed(5)
    model, shape = build_model("resnet20")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.01)
    retrained = derive(model, torch.zeros(1, *shape))
    with pytest.raises(ValueError, match="base weight"):
        PruningNet(retrained).check(prunable)
    torch.save({"not": "a pruningnet"}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="not a PruningNet"):
        PruningNet.load(tmp_path / "junk.pt", prunable)


def test_feasible_sampler_keeps_to_the_budget():
    prunable, _, _ = derived("resnet20")
    limit = sum(prunable.space.to_ratios(prunable.space.full())) / 2
    feasible = lambda c: sum(prunable.space.to_ratios(c)) <= limit  # noqa: E731
    sample = feasible_sampler(prunable.space, feasible)
    rng = np.random.default_rng(0)
    drawn = [sample(rng) for _ in range(20)]
    assert all(feasible(c) for c in drawn) and len(set(drawn)) > 1
    assert drawn == [sample(r) for r in [np.random.default_rng(0)] for _ in range(20)]
