"""Layer-wise reconstruction (spaces.reconstruct): refit subnets match the full model better, exactly where they can."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import derived
from spaces.derive import derive
from spaces.materialize import materialize
from spaces.reconstruct import Reconstructor, kept_indices


def _inputs(shape, batches=4, size=32, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, *shape, generator=g) for _ in range(batches)]


def _narrow(prunable, fraction=0.5, drop_blocks=False):
    """Every width at the allowed value nearest `fraction` of it; every removable block dropped when asked."""
    values = {}
    for dim in prunable.space:
        if dim.kind == "width":
            values[dim.name] = min(dim.choices, key=lambda c: abs(c - fraction * dim.full))
        else:
            values[dim.name] = min(dim.choices) if drop_blocks else dim.full
    return prunable.space.validate(values)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_refit_subnet_matches_the_full_model_better(name):
    prunable, x, _ = derived(name)
    candidate = _narrow(prunable, 0.5, drop_blocks=True)
    inputs = _inputs(tuple(x.shape[1:]), batches=3, size=16)
    subnet = materialize(prunable, candidate)
    report = Reconstructor(prunable, inputs)(subnet, candidate)
    assert report.kept and report.layers and not report.skipped
    assert report.error_after < 0.8 * report.error_before
    # the refit subnet is still the candidate's architecture: same shapes, same parameter count
    plain = materialize(prunable, candidate)
    assert {k: v.shape for k, v in subnet.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    # the full model is left as it was
    with torch.no_grad():
        assert torch.equal(prunable.graph.gm.eval()(x), prunable.graph.gm(x))


class TwoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        return self.b(self.a(x))


def test_a_linear_network_is_reconstructed_exactly():
    """No nonlinearity: a hidden layer cut from 8 to 4 units can still give the full output exactly (4 inputs),
    and the least-squares refit finds it."""
    torch.manual_seed(0)
    model = TwoLinear().eval()
    inputs = _inputs((4,), batches=4, size=64)
    prunable = derive(model, inputs[0][:1], ratios=(0.5, 1.0))
    (dim,) = list(prunable.space)
    candidate = prunable.space.validate({dim.name: dim.full // 2})
    subnet = materialize(prunable, candidate)
    report = Reconstructor(prunable, inputs, ridge=1e-9)(subnet, candidate)
    assert report.error_before > 1e-3
    assert report.error_after < 1e-8 * report.error_before
    with torch.no_grad():
        fresh = torch.randn(5, 4)
        assert torch.allclose(subnet(fresh), prunable.graph.gm(fresh), atol=1e-4)


def test_the_full_candidate_keeps_its_output():
    prunable, x, _ = derived("resnet20")
    full = prunable.space.full()
    subnet = materialize(prunable, full)
    report = Reconstructor(prunable, _inputs(tuple(x.shape[1:]), batches=2, size=16))(subnet, full)
    assert report.error_before == 0.0 and report.error_after < 1e-6


def test_a_refit_that_matches_worse_is_undone(monkeypatch):
    prunable, x, _ = derived("resnet20")
    candidate = _narrow(prunable, 0.5)
    reconstructor = Reconstructor(prunable, _inputs(tuple(x.shape[1:]), batches=2, size=16))

    def spoil(layer, x, target, out_index):
        layer.weight.mul_(-3.0)
    monkeypatch.setattr(reconstructor, "_refit", spoil)
    subnet = materialize(prunable, candidate)
    report = reconstructor(subnet, candidate)
    assert not report.kept and report.error_after > report.error_before
    plain = materialize(prunable, candidate)
    for key, value in plain.state_dict().items():
        assert torch.equal(subnet.state_dict()[key], value), key


class Twice(nn.Module):
    """One Linear called twice: its input differs between calls, so it is not one least-squares problem."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.shared = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.shared(torch.relu(self.shared(self.a(x)))))


def test_a_module_called_twice_is_left_alone():
    torch.manual_seed(0)
    model = Twice().eval()
    inputs = _inputs((6,), batches=2, size=32)
    prunable = derive(model, inputs[0][:1], ratios=(0.5, 1.0))
    candidate = prunable.space.full()
    subnet = materialize(prunable, candidate)
    report = Reconstructor(prunable, inputs)(subnet, candidate)
    assert "shared" in report.skipped and "shared" not in report.layers


def test_kept_indices_follow_the_slicing_rules():
    prunable, _, _ = derived("resnet20")
    candidate = _narrow(prunable, 0.5)
    widths = prunable.widths(candidate)
    graph = prunable.graph
    subnet = materialize(prunable, candidate)
    modules = dict(subnet.named_modules())
    for name, layer in graph.gm.named_modules():
        if isinstance(layer, nn.Conv2d) and name in modules:
            index = kept_indices(layer.weight, graph.uses.get(f"{name}.weight", []), widths, graph.groups, 0)
            inner = kept_indices(layer.weight, graph.uses.get(f"{name}.weight", []), widths, graph.groups, 1)
            cut = layer.weight.index_select(0, index).index_select(1, inner)
            assert torch.equal(cut, modules[name].weight), name


def test_no_inputs_is_refused():
    prunable, _, _ = derived("resnet20")
    with pytest.raises(ValueError, match="at least one batch"):
        Reconstructor(prunable, [])


def test_the_subnet_is_left_in_its_mode():
    prunable, x, _ = derived("resnet20")
    candidate = _narrow(prunable, 0.5)
    subnet = materialize(prunable, candidate).train()
    copy.deepcopy(subnet)
    Reconstructor(prunable, _inputs(tuple(x.shape[1:]), batches=1, size=8))(subnet, candidate)
    assert subnet.training and not prunable.graph.gm.training


def test_default_inputs_bound_the_positions():
    from spaces.reconstruct import default_inputs

    assert default_inputs(torch.zeros(2, 1, 8, 8)) == 1024        # digits
    assert default_inputs(torch.zeros(2, 3, 32, 32)) == 1024      # CIFAR
    assert default_inputs(torch.zeros(2, 3, 64, 64)) == 256
    assert default_inputs(torch.zeros(2, 3, 224, 224)) == 32      # ImageNet: at least 32
    assert default_inputs(torch.zeros(2, 197, 192)) == 1024  # tokens: 197 positions each
    assert default_inputs(torch.zeros(2, 20)) == 1024


def test_batches_are_joined_into_one():
    """The inputs run as one batch (one forward refits every layer): split or joined, the refit is the same."""
    prunable, x, _ = derived("resnet20")
    candidate = _narrow(prunable, 0.5)
    split = _inputs(tuple(x.shape[1:]), batches=3, size=8)
    results = []
    for inputs in (split, [torch.cat(split)]):
        subnet = materialize(prunable, candidate)
        report = Reconstructor(prunable, inputs)(subnet, candidate)
        results.append((report.error_after, subnet.state_dict()))
    assert results[0][0] == results[1][0]
    for key, value in results[0][1].items():
        assert torch.equal(value, results[1][1][key]), key


def test_rows_are_subsampled_alike_for_features_and_targets():
    """With fewer rows kept than positions, a layer's features and the full model's targets are the same positions:
    a subnet equal to the full model is still fit exactly."""
    prunable, x, _ = derived("resnet20")
    full = prunable.space.full()
    subnet = materialize(prunable, full)
    report = Reconstructor(prunable, _inputs(tuple(x.shape[1:]), batches=1, size=8), max_rows=500,
                           ridge=1e-9)(subnet, full)
    assert report.error_after < 1e-8  # mismatched rows would fit noise: far from the full output


def test_unfolding_a_few_inputs_at_a_time_gives_the_same_refit(monkeypatch):
    """Large images are unfolded a few at a time (bounded memory): the rows, and so the refit, are the same."""
    import spaces.reconstruct as reconstruct

    prunable, x, _ = derived("mobilenetv2")  # depthwise and plain convolutions
    candidate = _narrow(prunable, 0.5)
    inputs = _inputs(tuple(x.shape[1:]), batches=1, size=6)
    states = []
    for elements in (reconstruct.UNFOLD_ELEMENTS, 1):  # 1: one input at a time
        monkeypatch.setattr(reconstruct, "UNFOLD_ELEMENTS", elements)
        subnet = materialize(prunable, candidate)
        report = Reconstructor(prunable, inputs, max_rows=700)(subnet, candidate)
        assert report.layers
        states.append(subnet.state_dict())
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key


@pytest.mark.parametrize("rows", [20, 200])
def test_the_dual_ridge_solve_is_the_primal_one(rows):
    """Fewer rows than features is solved as a rows x rows system: the same weights as features x features."""
    from spaces.reconstruct import ridge_solve

    g = torch.Generator().manual_seed(0)
    cols, y = torch.randn(rows, 60, generator=g, dtype=torch.float64), torch.randn(rows, 7, generator=g,
                                                                                   dtype=torch.float64)
    w0 = torch.randn(7, 60, generator=g, dtype=torch.float64)
    primal, dual = (ridge_solve(cols, y, w0, 0.1, dual=d) for d in (False, True))
    assert torch.allclose(primal, dual, atol=1e-9)
    assert not torch.allclose(primal, w0, atol=1e-3)  # the data moved the weights
