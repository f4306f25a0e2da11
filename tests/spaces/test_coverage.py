"""The foundation's invariants on every supported model: reorder, elastic, materialize and price agree."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import ALL_MODELS, assert_close, derived
from evaluators.cost import CostModel
from spaces.elastic import ElasticModel
from spaces.materialize import materialize


def candidates(prunable, rng, n=3):
    space = prunable.space
    return [space.smallest(), *(space.sample(rng) for _ in range(n))]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_space_is_derived_and_reordering_keeps_the_function(name):
    prunable, x, before = derived(name)
    assert len(prunable.space.widths) >= 5
    with torch.no_grad():
        assert_close(prunable.model(x), before)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_input_and_classifier_output_are_never_pruned(name):
    prunable, x, _ = derived(name)
    graph = prunable.graph
    placeholder = next(n for n in graph.gm.graph.nodes if n.op == "placeholder")
    output = next(n for n in graph.gm.graph.nodes if n.op == "output")
    for node in (placeholder, *output.all_input_nodes):
        for seg in graph.specs[node.name].layout:
            assert not graph.groups[seg.group].prunable


@pytest.mark.parametrize("name", ALL_MODELS)
def test_elastic_full_width_reproduces_the_model(name):
    prunable, x, before = derived(name)
    elastic = ElasticModel(prunable).eval()
    with torch.no_grad():
        assert_close(elastic(x), before)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_elastic_equals_materialized(name, rng):
    prunable, x, _ = derived(name)
    elastic = ElasticModel(prunable).eval()
    with torch.no_grad():
        for candidate in candidates(prunable, rng):
            elastic.apply(candidate)
            subnet = materialize(prunable, candidate).eval()
            assert_close(elastic(x), subnet(x))
        elastic.reset()
        assert_close(elastic(x), prunable.model(x))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_cost_is_exact(name, rng):
    prunable, x, _ = derived(name)
    cost = CostModel(prunable)
    for candidate in [prunable.space.full(), *candidates(prunable, rng, n=2)]:
        subnet = materialize(prunable, candidate).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            subnet(x[:1])
        price = cost.price(candidate)
        assert price.flops == counter.get_total_flops()
        assert price.params == sum(p.numel() for p in subnet.parameters())
    assert cost.price(prunable.space.smallest()).flops < cost.base.flops


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v3_small", "convnext_tiny", "densenet121"])
def test_materialized_subnet_is_a_real_module(name, rng):
    prunable, x, _ = derived(name)
    subnet = materialize(prunable, prunable.space.sample(rng)).eval()
    with torch.no_grad():
        expected = subnet(x)
        buffer = io.BytesIO()
        torch.save(subnet, buffer)
        buffer.seek(0)
        assert_close(torch.load(buffer, weights_only=False)(x), expected)
        assert_close(torch.jit.script(subnet)(x), expected)
    # it owns its weights: training it leaves the base model alone
    base = [p.detach().clone() for p in prunable.model.parameters()]
    subnet.train()
    loss = subnet(x).square().mean()
    loss.backward()
    torch.optim.SGD(subnet.parameters(), lr=0.1).step()
    assert all(torch.equal(a, b) for a, b in zip(base, prunable.model.parameters()))
    assert all(isinstance(p, nn.Parameter) for p in subnet.parameters())
