"""search.models.zoo: data and model specs, weights loading, and the UserError for every mistake."""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from search.models.cifar_resnet import resnet20
from search.errors import UserError
from search.models.zoo import cache_dir, list_models, load_data, load_model, model_key

DIGITS = {"num_classes": 10, "input_shape": (1, 8, 8)}

FACTORIES = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset

def data():
    x = torch.randn(12, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(12) % 4
    return TensorDataset(x, y), TensorDataset(x[:4], y[:4])

def not_data():
    return 42

def mlp(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

def fixed():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

def not_a_model(num_classes):
    return "model"
'''


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of an importable module holding the factories above."""
    (tmp_path / "zoo_test_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "zoo_test_factories", raising=False)
    return "zoo_test_factories"


def write_fake_cifar(root: Path, per_batch: int = 3) -> None:
    """The files torchvision's CIFAR10 reads, with a few random images each."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))


def write_image_folder(root: Path, parts: tuple[str, ...] = ("train", "val"),
                       classes: tuple[str, ...] = ("a", "b", "c")) -> None:
    rng = np.random.default_rng(0)
    for part in parts:
        for cls in classes:
            (root / part / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / part / cls / f"{i}.png")


# ---------------------------------------------------------------- data

def test_digits_shapes_and_split() -> None:
    data = load_data("digits", seed=0)
    assert data.name == "digits" and data.num_classes == 10 and data.input_shape == (1, 8, 8)
    assert data.train is data.train_eval
    assert len(data.train) + len(data.test) == 1797 and len(data.test) == 360
    x, y = data.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(data.mean) == len(data.std) == 1
    all_x = data.train.tensors[0]
    assert abs(all_x.mean().item()) < 1e-4 and abs(all_x.std().item() - 1) < 1e-3
    assert not np.intersect1d(data.fit, data.held_out).size
    assert np.array_equal(np.sort(np.concatenate([data.fit, data.held_out])), np.arange(len(data.train)))
    assert len(data.held_out) == round(0.2 * len(data.train))


def test_split_is_seeded() -> None:
    a, b, c = load_data("digits", seed=0), load_data("digits", seed=0), load_data("digits", seed=1)
    assert np.array_equal(a.held_out, b.held_out) and np.array_equal(a.fit, b.fit)
    assert not np.array_equal(a.held_out, c.held_out)
    assert torch.equal(a.test.tensors[0], c.test.tensors[0])  # the test set does not move with the seed


@pytest.mark.parametrize("held_out, expected", [(5, 5), (0.5, 718), (10**6, 1436), (0, 1)])
def test_held_out_count_fraction_and_clipping(held_out: int | float, expected: int) -> None:
    data = load_data("digits", held_out=held_out)
    assert len(data.held_out) == expected and len(data.fit) == 1437 - expected


def test_cifar10_from_local_folder(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)
    data = load_data(f"cifar10:{tmp_path}", held_out=3)
    assert data.name == "cifar10" and data.num_classes == 10 and data.input_shape == (3, 32, 32)
    assert len(data.train) == len(data.train_eval) == 15 and len(data.test) == 3
    assert len(data.fit) == 12 and len(data.held_out) == 3
    assert data.train_eval[4][1] == data.train[4][1]
    x_eval, _ = data.train_eval[0]
    assert torch.equal(x_eval, data.train_eval[0][0])  # eval transforms are deterministic
    assert data.train[0][0].shape == (3, 32, 32) and len(data.mean) == 3


def test_imagefolder_with_size(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    data = load_data(f"imagefolder:{tmp_path}@32", held_out=2)
    assert data.name == "imagefolder" and data.num_classes == 3 and data.input_shape == (3, 32, 32)
    assert data.train[0][0].shape == (3, 32, 32) and len(data.train) == len(data.train_eval) == 6
    assert [y for _, y in data.train_eval.samples] == [y for _, y in data.train.samples]
    assert len(data.test) == 6 and len(data.held_out) == 2


def test_data_factory(factories: str) -> None:
    data = load_data(f"{factories}:data", held_out=0.25)
    assert data.num_classes == 4 and data.input_shape == (2, 6, 6)
    assert data.train is data.train_eval and len(data.test) == 4
    assert len(data.held_out) == 3 and data.mean == () and data.std == ()


@pytest.mark.parametrize("spec, match", [
    ("mnist", r"unknown data 'mnist'.*digits, cifar10:DIR, imagefolder:DIR\[@SIZE\], package.module:factory"),
    ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
])
def test_bad_data_specs(spec: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        load_data(spec)


def test_data_factory_errors(factories: str) -> None:
    with pytest.raises(UserError, match="must return \\(train_dataset, test_dataset\\), got int"):
        load_data(f"{factories}:not_data")
    with pytest.raises(UserError, match="has no function 'missing'"):
        load_data(f"{factories}:missing")


def test_missing_cifar_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no CIFAR-10 in .*nope.*cifar-10-batches-py"):
        load_data(f"cifar10:{tmp_path / 'nope'}")


def test_imagefolder_errors(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "no_val", parts=("train",))
    with pytest.raises(UserError, match="has no val/ folder"):
        load_data(f"imagefolder:{tmp_path / 'no_val'}@32")
    write_image_folder(tmp_path / "odd", parts=("train",))
    write_image_folder(tmp_path / "odd", parts=("val",), classes=("a", "b", "z"))
    with pytest.raises(UserError, match="different classes.*c, z"):
        load_data(f"imagefolder:{tmp_path / 'odd'}@32")


# ---------------------------------------------------------------- models

def test_zoo_models_follow_the_data() -> None:
    model = load_model("resnet20", num_classes=7, input_shape=(1, 8, 8))
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7 and not model.training
    assert "resnet56" in list_models() and any(name.startswith("torchvision:") for name in list_models())


def test_torchvision_model() -> None:
    model = load_model("torchvision:resnet18", num_classes=5, input_shape=(3, 32, 32))
    assert model.fc.out_features == 5


def test_model_factories(factories: str) -> None:
    assert load_model(f"{factories}:mlp", num_classes=3, input_shape=(1, 8, 8))[1].out_features == 3
    assert load_model(f"{factories}:fixed", **DIGITS)[1].out_features == 10


@pytest.mark.parametrize("spec, kwargs, match", [
    ("resnet999", DIGITS, r"unknown model 'resnet999'.*resnet20, resnet56, mobilenetv2, torchvision:NAME, "
                          r"package.module:factory, PATH.pt"),
    ("torchvision:resnet_18", DIGITS, "unknown torchvision model 'resnet_18'; e.g. resnet18"),
    ("torchvision:resnet18", DIGITS, "takes 3-channel images but the data has 1 channel"),
])
def test_bad_model_specs(spec: str, kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        load_model(spec, **kwargs)


def test_model_factory_errors(factories: str) -> None:
    with pytest.raises(UserError, match="gave a str object, not a torch.nn.Module"):
        load_model(f"{factories}:not_a_model", **DIGITS)
    with pytest.raises(UserError, match=r"mlp does not accept inputs of shape \(3, 8, 8\) from the data: .*192"):
        load_model(f"{factories}:mlp", num_classes=10, input_shape=(3, 8, 8))  # 192 inputs into Linear(64)
    with pytest.raises(UserError, match=r"outputs \(1, 10\).*needs \(1, 4\)"):
        load_model(f"{factories}:fixed", num_classes=4, input_shape=(1, 8, 8))


# ---------------------------------------------------------------- weights

@pytest.fixture
def trained() -> nn.Module:
    torch.manual_seed(0)
    model = resnet20(num_classes=10, in_channels=1)
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-1, 1)
    return model


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": sd},
    lambda sd: {"model_state_dict": sd, "optimizer": {}},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},
], ids=["plain", "state_dict", "model", "model_state_dict", "dataparallel"])
def test_weights_formats(tmp_path: Path, trained: nn.Module, wrap) -> None:
    torch.save(wrap(trained.state_dict()), tmp_path / "w.pt")
    loaded = load_model("resnet20", **DIGITS, weights=str(tmp_path / "w.pt"))
    assert_same_weights(loaded, trained)


def test_whole_saved_model(tmp_path: Path, trained: nn.Module) -> None:
    torch.save(trained, tmp_path / "whole.pt")
    with pytest.raises(UserError, match="--trust-pickle"):  # unpickling a module runs code: only when told
        load_model(str(tmp_path / "whole.pt"), **DIGITS)
    assert_same_weights(load_model(str(tmp_path / "whole.pt"), **DIGITS, trust_pickle=True), trained)
    torch.save(trained.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(UserError, match="gave a OrderedDict object, not a torch.nn.Module"):
        load_model(str(tmp_path / "sd.pt"), **DIGITS)


def test_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="weights file .*missing.pt not found"):
        load_model("resnet20", **DIGITS, weights=str(tmp_path / "missing.pt"))
    state = resnet20(num_classes=10, in_channels=1).state_dict()
    torch.save({"extra.weight": torch.zeros(1), **{k: v for k, v in state.items() if k != "fc.bias"}},
               tmp_path / "keys.pt")
    with pytest.raises(UserError, match=r"1 missing keys \(fc.bias\), 1 unexpected keys \(extra.weight\)"):
        load_model("resnet20", **DIGITS, weights=str(tmp_path / "keys.pt"))
    torch.save(resnet20(num_classes=5, in_channels=1).state_dict(), tmp_path / "shapes.pt")
    with pytest.raises(UserError, match=r"fc.weight has shape \(5, 64\) in the file but \(10, 64\) in the model"):
        load_model("resnet20", **DIGITS, weights=str(tmp_path / "shapes.pt"))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot load weights file"):
        load_model("resnet20", **DIGITS, weights=str(tmp_path / "junk.pt"))


# ---------------------------------------------------------------- cache

def test_cache_dir_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNESEARCH_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache" and (tmp_path / "cache").is_dir()


def test_model_key_is_stable_and_safe() -> None:
    key = model_key("torchvision:resnet18", "cifar10:/data/cifar")
    assert key == model_key("torchvision:resnet18", "cifar10:/data/cifar")
    assert key != model_key("torchvision:resnet18", "cifar10:/data/cifar2")
    assert all(c.isalnum() or c in "._-" for c in key) and key.startswith("torchvision_resnet18-cifar10_")
