"""Shared test fixtures: tiny inputs, seeded models, derived spaces cached per session."""
from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # the suite runs on 2 processes (pyproject's addopts): one thread each,
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # and for the processes they start; two thread pools spinning
                                                    # on 2 cores made the suite slower than one process
# Ray Train's controller polls its workers every 2 s (it passes this on to them): a fit of a tiny model ends sooner
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from evaluators.cost import CostModel
from search.models.cifar_mobilenet import mobilenetv2
from search.models.cifar_resnet import resnet20, resnet56
from spaces.budget import Budget, Limit
from spaces.derive import PrunableModel, derive
from spaces.space import SearchSpace

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

TORCHVISION = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2",
               "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "densenet121", "vgg11_bn",
               "convnext_tiny", "mnasnet0_5", "squeezenet1_1", "shufflenet_v2_x0_5"]
ALL_MODELS = ["resnet20", "resnet56", "mobilenetv2", *TORCHVISION]


def build_model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A seeded model with non-trivial BN statistics, and the input shape its tests use."""
    torch.manual_seed(0)
    if name in ("resnet20", "resnet56", "mobilenetv2"):
        model, shape = {"resnet20": resnet20, "resnet56": resnet56, "mobilenetv2": mobilenetv2}[name](), (3, 32, 32)
    else:
        model, shape = torchvision.models.get_model(name, weights=None), (3, 64, 64)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval(), shape


@functools.lru_cache(maxsize=None)
def derived(name: str) -> tuple[PrunableModel, torch.Tensor, torch.Tensor]:
    """(prunable model, a 2-sample input, the model's output on it before reordering)."""
    model, shape = build_model(name)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
    return derive(model, x[:1]), x, before


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    """Equal up to float summation-order noise, relative to the output's scale."""
    scale = expected.abs().max().item() + 1e-6
    err = (actual - expected).abs().max().item()
    assert err <= rel * scale, f"max abs difference {err:.3e} at output scale {scale:.3e}"


def assert_exact(prunable, candidates, x: torch.Tensor) -> None:
    """Per candidate: the elastic model equals the materialized subnet on `x`, and the analytic FLOPs/params
    equal FlopCounterMode's count / the subnet's parameters."""
    from torch.utils.flop_counter import FlopCounterMode

    from evaluators.cost import CostModel
    from spaces.elastic import ElasticModel
    from spaces.materialize import materialize

    cost, elastic = CostModel(prunable), ElasticModel(prunable).eval()
    for candidate in candidates:
        elastic.apply(candidate)
        subnet = materialize(prunable, candidate).eval()
        with torch.no_grad():
            assert_close(elastic(x), subnet(x))
            with FlopCounterMode(display=False) as counter:
                subnet(x[:1])
        price = cost.price(candidate)
        assert price.flops == counter.get_total_flops()
        assert price.params == sum(p.numel() for p in subnet.parameters())


BUDGETS = {"0.4flops": [Limit("flops", 0.4, True)],
           "0.25flops+0.5params": [Limit("flops", 0.25, True), Limit("params", 0.5, True)]}


@functools.lru_cache(maxsize=None)
def setting(budget_name: str):
    """(space, resolved budget, price) of ResNet-20 under a named budget."""
    prunable, _, _ = derived("resnet20")
    cost = CostModel(prunable)
    base = cost.base.as_dict()
    budget = Budget(BUDGETS[budget_name]).resolve(base)
    price = cost.costs
    return prunable.space, budget, price


def fake_score(space: SearchSpace, candidate) -> float:
    """A smooth stand-in for accuracy: wider is better, with a preference between dimensions."""
    ratios = space.to_ratios(candidate)
    return float(sum(r * (1 + i % 3) for i, r in enumerate(ratios)) / len(ratios))


def one_run(tmp_path_factory, prefix: str, args: list[str]):
    """A real run directory made once for a test module (`yield from` it in a module-scoped fixture).

    Its baseline is cached under a temporary PRUNESEARCH_CACHE, and torch runs one intra-op thread
    meanwhile: the models are tiny, and on a shared CPU the thread pool only makes them slower (it is
    also the thread count every Ray worker runs with).
    """
    import os

    from search import run as run_module

    root = tmp_path_factory.mktemp(prefix)
    saved, threads = os.environ.get("PRUNESEARCH_CACHE"), torch.get_num_threads()
    os.environ["PRUNESEARCH_CACHE"] = str(root / "cache")
    torch.set_num_threads(1)
    try:
        assert run_module.main(["--agent", "random", "--budget", "0.4flops", "--out", str(root / "run"), *args]) == 0
        yield root
    finally:
        torch.set_num_threads(threads)
        if saved is None:
            os.environ.pop("PRUNESEARCH_CACHE", None)
        else:
            os.environ["PRUNESEARCH_CACHE"] = saved


@pytest.fixture(scope="session")
def digits_baseline(tmp_path_factory) -> Path:
    """A cache holding the baseline that the main-job tests' runs start from (the embedded ResNet-20 on digits,
    1 epoch at batch 32, seed 0, the default split), trained once a session by a run of its own."""
    from search import run as run_module

    root = tmp_path_factory.mktemp("digits-baseline")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRUNESEARCH_CACHE", str(root / "cache"))
        assert run_module.main(["--agent", "uniform", "--budget", "0.5flops", "--trials", "1", "--finalists", "0",
                                "--baseline-epochs", "1", "--batch-size", "32", "--calib-batches", "1",
                                "--eval-samples", "32", "--no-progress", "--quiet", "--out", str(root / "run")]) == 0
    return root / "cache"


@pytest.fixture
def warm_cache(tmp_path, monkeypatch, digits_baseline) -> Path:
    """The test's own PRUNESEARCH_CACHE (`tmp_path / "cache"`), starting with a copy of `digits_baseline`: each test
    writes and damages only its copy, and none trains that baseline again (a cold cache has tests of its own)."""
    cache = tmp_path / "cache"
    shutil.copytree(digits_baseline, cache)
    monkeypatch.setenv("PRUNESEARCH_CACHE", str(cache))
    return cache


# The files that spend longest starting Ray (clusters, actors, Ray Train workers) and the README's snippet: run first,
# so the suite's two processes (pyproject's addopts, one file at a time each) share them and end together, instead
# of one process finishing them alone at the end.
SLOW_FILES = ("test_finetune_on_ray.py", "test_supernet_on_ray.py", "test_ray.py", "test_tune.py", "test_readme.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in SLOW_FILES)  # stable: each file's own order is kept
