"""The zoo: the models and datasets a user names on the command line (`resnet20`, `digits`, `cifar10:DIR`, ...)."""
from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from torchvision import transforms as T
from torchvision.datasets import CIFAR10, ImageFolder
from torchvision.datasets.vision import StandardTransform, VisionDataset

from search.models import cifar_mobilenet, cifar_resnet
from search.errors import UserError, first_line

DATA_FORMS = "digits, cifar10:DIR, imagefolder:DIR[@SIZE], package.module:factory"
MODEL_FORMS = "resnet20, resnet56, mobilenetv2, torchvision:NAME, package.module:factory, PATH.pt"
ZOO: dict[str, Callable[..., nn.Module]] = {"resnet20": cifar_resnet.resnet20, "resnet56": cifar_resnet.resnet56,
                                            "mobilenetv2": cifar_mobilenet.mobilenetv2}
ZOO_MODELS = tuple(ZOO)  # this package's own models: trained once on the data and cached when given no weights
CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class DataBundle:
    name: str
    train: Dataset          # training samples with training transforms (augmentation): fine-tuning only
    train_eval: Dataset     # the same samples, same order, with eval transforms: calibration and held-out scoring
    test: Dataset           # eval transforms; only for reporting the final model
    num_classes: int
    input_shape: tuple[int, int, int]   # (C, H, W) of one transformed sample
    fit: np.ndarray         # indices into train/train_eval for training and BN calibration
    held_out: np.ndarray    # disjoint indices into train/train_eval, never trained on, for scoring candidates
    mean: tuple[float, ...]
    std: tuple[float, ...]


class _Source(NamedTuple):
    """What a data loader knows; `load_data` adds the input shape and the fit/held-out split."""
    name: str
    train: Dataset
    train_eval: Dataset
    test: Dataset
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# ---------------------------------------------------------------- data

def load_data(spec: str, *, held_out: int | float = 0.2, seed: int = 0) -> DataBundle:
    """The data named by `spec`, its training set split (seeded) into fit and held-out indices."""
    if spec == "digits":
        source = _digits()
    elif spec.startswith("cifar10:"):
        if not spec.removeprefix("cifar10:").strip():
            raise UserError("cifar10 needs a folder: cifar10:DIR (holding cifar-10-batches-py/)")
        source = _cifar10(Path(spec.removeprefix("cifar10:")).expanduser())
    elif spec.startswith("imagefolder:"):
        source = _imagefolder(spec.removeprefix("imagefolder:"))
    elif ":" in spec:
        source = _data_factory(spec)
    else:
        raise UserError(f"unknown data {spec!r}; valid forms: {DATA_FORMS}")
    fit, held = _split(len(source.train), held_out, seed)
    return DataBundle(**source._asdict(), input_shape=_input_shape(source.train_eval, spec), fit=fit, held_out=held)


def _split(n: int, held_out: int | float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held_out): a seeded partition of range(n); `held_out` is a fraction if below 1, else a count."""
    if n < 2:
        raise UserError(f"the training set has {n} sample(s); at least 2 are needed to hold some out")
    if held_out < 0:
        raise UserError(f"held-out size must be a fraction in [0, 1) or a count >= 1, got {held_out}")
    count = round(held_out * n) if isinstance(held_out, float) and held_out < 1 else int(held_out)
    count = min(max(count, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[count:]), np.sort(order[:count])


def _input_shape(dataset: Dataset, spec: str) -> tuple[int, int, int]:
    x = dataset[0][0]
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise UserError(f"data {spec}: a sample must be a (C, H, W) tensor, got {got}")
    return tuple(x.shape)


def _digits() -> _Source:
    """scikit-learn's bundled 8x8 digits: a fixed stratified 80/20 train/test split, normalised by the train part."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, stratify=digits.target, random_state=0)
    mean, std = x[tr].mean().item(), x[tr].std().item()
    x = (x - mean) / std
    train = TensorDataset(x[tr], y[tr])
    return _Source("digits", train, train, TensorDataset(x[te], y[te]), 10, (mean,), (std,))


class _LocalCIFAR10(CIFAR10):
    """torchvision's CIFAR-10 read from a local copy: the files must exist; their checksums are not enforced."""
    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


def _cifar10(root: Path) -> _Source:
    folder = root / CIFAR10.base_folder
    expected = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise UserError(f"no CIFAR-10 in {root}: expected {folder}/ holding data_batch_1..5, test_batch and "
                        f"batches.meta (the python version); missing {missing[0]}")
    normalize = [T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]
    eval_tf = T.Compose(normalize)
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *normalize])
    try:
        train = _LocalCIFAR10(str(root), train=True, transform=train_tf)
        test = _LocalCIFAR10(str(root), train=False, transform=eval_tf)
    except Exception as e:
        raise UserError(f"cannot read CIFAR-10 from {folder}: {first_line(e)}") from None
    return _Source("cifar10", train, _retransformed(train, eval_tf), test, len(train.classes), CIFAR_MEAN, CIFAR_STD)


def _imagefolder(rest: str) -> _Source:
    """`DIR[@SIZE]`: DIR/train/<class>/* and DIR/val/<class>/*, cropped to SIZE (default 224) as for ImageNet."""
    folder, at, size_text = rest.rpartition("@")
    if not at or not folder or Path(rest).expanduser().is_dir():  # no @SIZE (or a folder whose name holds an @)
        folder, size_text = rest, "224"
    if not folder:
        raise UserError(f"imagefolder needs a folder: imagefolder:DIR[@SIZE], got imagefolder:{rest}")
    if not re.fullmatch(r"\d+", size_text) or int(size_text) == 0:
        raise UserError(f"imagefolder:DIR@SIZE takes SIZE as a positive whole number of pixels (the square crop's "
                        f"side, default 224), got @{size_text}")
    root, size = Path(folder).expanduser(), int(size_text)
    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise UserError(f"imagefolder {root} has no {part}/ folder; expected {root}/train/<class>/*.jpg "
                            f"and {root}/val/<class>/*.jpg")
    normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    eval_tf = T.Compose([T.Resize(round(size * 8 / 7)), T.CenterCrop(size), *normalize])
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *normalize])
    train, test = (_image_folder(root / part, tf) for part, tf in (("train", train_tf), ("val", eval_tf)))
    _check_images(root, [path for path, _ in train.samples + test.samples])
    if test.classes != train.classes:
        odd = sorted(set(train.classes) ^ set(test.classes))
        raise UserError(f"imagefolder {root}: val/ and train/ have different classes; "
                        f"in only one of them: {_few(odd)}")
    return _Source("imagefolder", train, _retransformed(train, eval_tf), test, len(train.classes),
                   IMAGENET_MEAN, IMAGENET_STD)


def _image_folder(folder: Path, transform) -> ImageFolder:
    """One part (train/ or val/) of an imagefolder; a part it cannot read (an empty class folder) named."""
    try:
        return ImageFolder(str(folder), transform=transform, loader=_read_image)
    except OSError as e:
        raise UserError(f"cannot read imagefolder {folder}/: {first_line(e)}") from None


def _check_images(root: Path, paths: list[str]) -> None:
    """Open every image's header now (PIL reads no pixels), so that a file that is not an image is refused when
    the data is loaded, not minutes later in training; `_read_image` still names any file that fails later."""
    from PIL import Image, UnidentifiedImageError

    bad = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 - the header is parsed on open; the size proves it
        except (OSError, UnidentifiedImageError, ValueError) as e:
            bad.append((path, e))
    if bad:
        path, e = bad[0]
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise UserError(f"cannot read image {path}{more} in imagefolder {root}: {first_line(e)} (remove or "
                        f"replace the file)")


def _read_image(path: str):
    """torchvision's image loader; an unreadable image is a UserError naming the file."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except Exception as e:  # noqa: BLE001 - truncated or not an image at all
        raise UserError(f"cannot read image {path}: {first_line(e)} (remove or replace the file)") from None


def _retransformed(dataset: VisionDataset, transform: Callable) -> VisionDataset:
    """A shallow copy sharing `dataset`'s samples (same order) with another transform."""
    twin = copy.copy(dataset)
    twin.transform = transform
    twin.transforms = StandardTransform(transform, dataset.target_transform)
    return twin


def _data_factory(spec: str) -> _Source:
    """`package.module:factory`, where factory() returns (train_dataset, test_dataset)."""
    result = _call(_import_factory(spec, DATA_FORMS), f"data factory {spec}")
    if not (isinstance(result, (tuple, list)) and len(result) == 2
            and all(hasattr(d, "__len__") and hasattr(d, "__getitem__") for d in result)):
        raise UserError(f"data factory {spec} must return (train_dataset, test_dataset), "
                        f"got {type(result).__name__}")
    train, test = result
    if len(train) == 0:
        raise UserError(f"data factory {spec} returned an empty training set")
    try:
        labels = [int(train[i][1]) for i in range(len(train))]
    except Exception as e:  # noqa: BLE001 - a user's dataset: one line
        raise UserError(f"data factory {spec}: cannot read an integer label from every training sample "
                        f"({first_line(e)})") from None
    if min(labels) < 0:
        raise UserError(f"data factory {spec}: labels must be class indices 0..C-1, found {min(labels)}")
    num_classes = 1 + max(labels)
    return _Source(spec, train, train, test, num_classes, (), ())


# ---------------------------------------------------------------- models

def load_model(spec: str, *, num_classes: int, input_shape: tuple[int, int, int],
               weights: str | None = None, trust_pickle: bool = False) -> nn.Module:
    """The model named by `spec` for data of `num_classes` classes and (C, H, W) `input_shape`, in eval mode.

    `weights` is loaded with `weights_only=True` (tensors only: no code runs). A whole pickled model
    (`spec` a file) is unpickled only with `trust_pickle=True` (`--trust-pickle`): unpickling runs code.
    """
    model = _build_model(spec, num_classes, input_shape, trust_pickle)
    if weights is not None:
        _load_weights(model, Path(weights).expanduser(), spec)
    _dry_run(model, spec, num_classes, input_shape)
    return model


def list_models() -> list[str]:
    return [*ZOO, "torchvision:NAME (NAME from torchvision.models.list_models(module=torchvision.models))"]


def _build_model(spec: str, num_classes: int, input_shape: tuple[int, int, int], trust_pickle: bool) -> nn.Module:
    if spec in ZOO:
        return ZOO[spec](num_classes=num_classes, in_channels=input_shape[0])
    if spec.startswith("torchvision:"):
        return _torchvision_model(spec.removeprefix("torchvision:"), num_classes, input_shape[0])
    if spec.startswith("timm:"):
        from search.models.timm_models import load_timm

        return _must_be_module(_call(lambda: load_timm(spec.removeprefix("timm:"), num_classes, input_shape[0]),
                                     f"model {spec}"), spec)
    if Path(spec).expanduser().is_file():
        if not trust_pickle:
            try:  # tensors only: a state dict is read (and named as such) without running anything
                obj = torch.load(Path(spec).expanduser(), map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - a whole pickled module (or garbage): refused without the flag
                raise UserError(f"model file {spec} is a pickled module, and unpickling runs code from the file: "
                                f"pass --trust-pickle if you trust it, or give a factory (package.module:fn) and "
                                f"--weights") from None
            return _must_be_module(obj, spec)
        return _must_be_module(safe_load(spec, "model file", weights_only=False), spec)
    if ":" in spec:
        factory = _import_factory(spec, MODEL_FORMS)
        takes_classes = _accepts(factory, "num_classes")
        model = _call(lambda: factory(num_classes=num_classes) if takes_classes else factory(), f"model factory {spec}")
        return _must_be_module(model, spec)
    raise UserError(f"unknown model {spec!r} (no such name or file); valid forms: {MODEL_FORMS}")


def _torchvision_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """A randomly initialised torchvision classifier (weights are never downloaded)."""
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        some = difflib.get_close_matches(name, names, n=5) or names[:6]
        raise UserError(f"unknown torchvision model {name!r}; e.g. {', '.join(some)} "
                        f"(all: torchvision.models.list_models())")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels != in_channels:
        raise UserError(f"torchvision:{name} takes {first.in_channels}-channel images but the data has "
                        f"{in_channels} channel(s); use {first.in_channels}-channel data or a model built for it "
                        f"(e.g. resnet20)")
    return model


def _must_be_module(obj: Any, spec: str) -> nn.Module:
    if not isinstance(obj, nn.Module):
        raise UserError(f"model {spec} gave a {type(obj).__name__} object, not a torch.nn.Module (a state "
                        f"dict is loaded as the weights of a named model)")
    return obj


def _load_weights(model: nn.Module, path: Path, spec: str) -> None:
    """Load a state dict (plain or inside a checkpoint dict, `module.` prefixes stripped) strictly into `model`."""
    obj = safe_load(path, "weights file")
    if isinstance(obj, Mapping):
        obj = next((obj[k] for k in CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)), obj)
    if not isinstance(obj, Mapping):
        raise UserError(f"weights file {path} holds a {type(obj).__name__} object, not a state dict")
    state = {str(k).removeprefix("module."): v for k, v in obj.items()}
    check_fit(model.state_dict(), state, f"weights {path} do not fit model {spec}")
    model.load_state_dict(state, strict=True)


def check_fit(expected: Mapping[str, torch.Tensor], state: Mapping[str, Any], what: str) -> None:
    """UserError unless `state` has exactly `expected`'s keys, with the same shapes."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise UserError(f"{what}: {len(missing)} missing keys ({_few(missing)}), "
                        f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    for key, tensor in expected.items():
        found = state[key]
        if not isinstance(found, torch.Tensor) or found.shape != tensor.shape:
            got = tuple(found.shape) if isinstance(found, torch.Tensor) else type(found).__name__
            raise UserError(f"{what}: {key} has shape {got} in the file but {tuple(tensor.shape)} in the model")


def _timm_text_options(spec: str) -> list[str]:
    """`key=text` for each keyword of a timm spec whose value is not a Python literal (it is passed as text)."""
    import ast

    if not spec.startswith("timm:"):
        return []
    out = []
    for item in filter(None, spec.partition("?")[2].split("&")):
        key, _, text = item.partition("=")
        try:
            ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out.append(f"{key}={text!r}")
    return out


def _dry_run(model: nn.Module, spec: str, num_classes: int, input_shape: tuple[int, int, int]) -> None:
    """UserError unless one zero input of `input_shape` gives (1, num_classes) logits."""
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, *input_shape))
    except Exception as e:
        texts = _timm_text_options(spec)
        if texts:
            raise UserError(f"model {spec} fails on one input ({first_line(e, typed=True)}); its timm option(s) "
                            f"{', '.join(texts)} were read as text, not Python literals: check their values"
                            ) from None
        raise UserError(f"model {spec} does not accept inputs of shape {tuple(input_shape)} from the data: "
                        f"{first_line(e)}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"model {spec} outputs {got} for one input; the data needs (1, {num_classes}) "
                        f"for its {num_classes} classes")


# ---------------------------------------------------------------- cache

def model_key(model_spec: str, data_spec: str) -> str:
    """A filesystem-safe cache key for a (model, data) pair: a readable slug and a short hash of both specs."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model_spec}-{data_spec}")[:60].strip("_")
    digest = hashlib.sha1(f"{model_spec}\0{data_spec}".encode()).hexdigest()[:10]
    return f"{slug}-{digest}"


def cache_dir() -> Path:
    """`$PRUNESEARCH_CACHE`, else ~/.cache/prunesearch; created on demand."""
    path = Path(os.environ.get("PRUNESEARCH_CACHE") or Path.home() / ".cache" / "prunesearch").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------- shared

def _import_factory(spec: str, forms: str) -> Callable[..., Any]:
    """The callable named by `package.module:function`."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - ImportError, a SyntaxError or any error raised while importing
        raise UserError(f"{spec!r}: cannot import module {module_name!r} ({first_line(e)}); "
                        f"valid forms: {forms}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"{spec!r}: module {module_name} has no function {attr!r}")
    return factory


def safe_load(path: str | Path, what: str, *, weights_only: bool = True) -> Any:
    """`torch.load(path, weights_only=True)` (no code runs), any failure one UserError line naming `what`."""
    if not str(path).strip():
        raise UserError(f"{what}: an empty path was given")
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file")
    if path.exists() and not path.is_file():
        raise UserError(f"{what} {path} is not a regular file")
    if not path.exists():
        raise UserError(f"{what} {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - garbage, truncated, or a pickle holding code
        raise UserError(unreadable(path, e, what)) from None


def unreadable(path: str | Path, error: BaseException, what: str) -> str:
    """Why `torch.load` could not read `path`, as a person would say it (never PyTorch's advice to load with
    weights_only=False, which would run any code the file holds)."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as e:
        return f"cannot read {what} {path}: {e.strerror or e}"
    torch_file = head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"   # torch.save's zip, or a legacy pickle
    if not head:
        return f"cannot load {what} {path}: the file is empty (0 bytes); save it again with torch.save"
    if torch_file and "weights_only" in str(error).lower().replace(" ", "_"):
        return (f"cannot load {what} {path}: it holds Python objects beyond tensors, and prunesearch loads tensors "
                f"only (weights_only=True: unpickling could run code from the file); save a state dict "
                f"(model.state_dict()) instead")
    if torch_file:
        return f"cannot load {what} {path}: the file is damaged or truncated ({first_line(error, typed=True)})"
    try:
        text = head.decode("utf-8")
        is_text = all(c.isprintable() or c.isspace() for c in text)
    except UnicodeDecodeError:
        is_text = False
    kind = "a text file" if is_text else "not a file torch.save wrote (nor a pickle)"
    return f"cannot load {what} {path}: it is {kind}; give a file saved with torch.save(model.state_dict(), path)"


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether `fn` takes a keyword argument `name` (or any **kwargs)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _call(fn: Callable[[], Any], what: str) -> Any:
    """`fn()`; anything it raises is one UserError line naming `what` and the error."""
    try:
        return fn()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code: its failure is theirs to read, in one line
        raise UserError(f"{what} failed: {type(e).__name__}: {first_line(e)}") from None


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")
