"""`python -m search.export RUN_DIR`: write a run's best subnet in a deployable form, and check it.

    python -m search.export runs/20261122-140000-resnet20-random-0.4flops                  # best.pt2
    python -m search.export runs/20261122-140000-resnet20-random-0.4flops --format onnx --finetuned

From Python: `export("runs/...", "onnx")` returns an `ExportResult`. The subnet is the run's best one,
rebuilt from `best.json` and `best.state_dict.pt` on the run's base model (no pickle is loaded; with
`--finetuned`, the fine-tuned weights written by `python -m search.finetune RUN_DIR`); the example input
is a seeded random batch of `--batch` samples of the `input_shape` in `best.json`. Formats and the file
each writes into the run directory (`finetuned.*` with `--finetuned`; `--out` picks another path), written
in a folder beside it and moved into place whole (`spaces.files.staged`), so a failed export keeps the old file:

| format | file | what it is | load it with |
|---|---|---|---|
| `pt` | `best.pt2` | a `torch.export` ExportedProgram (`torch.export.save`) | `torch.export.load(f).module()` |
| `torchscript` | `best.torchscript.pt` | `torch.jit.script` (`torch.jit.trace` if scripting fails) | `torch.jit.load(f)` |
| `onnx` | `best.onnx` | `torch.onnx.export`, needs `pip install "prunesearch[onnx]"` | `onnxruntime.InferenceSession(f)` |
| `state_dict` | `best.state_dict.pt` | `torch.save(subnet.state_dict())` | `rebuild(best.json, base_model).load_state_dict(torch.load(f))` |

The batch axis is dynamic where the exporter allows it (`pt` and `onnx` need `--batch` of 2 or more).
Every artifact is loaded back and its outputs compared with the PyTorch subnet's on another seeded batch
(and on a batch one larger when the batch axis is dynamic); a max abs difference above 1e-4 x the
output scale is a failure (exit 1). ONNX outputs are compared only where `onnxruntime` is installed
(otherwise the model is only checked with `onnx.checker`).

`rebuild(best, base_model)` rebuilds the subnet from `best.json` and a fresh base model (the replayable
artifact). `best.pt` is a convenience (a pickled module with recalibrated BatchNorm); `best.json` is the
record that survives code and pickle changes: the base model's spec, how its space was derived, and the
chosen candidate. Deriving again on the same base weights gives the same channel ranking, so the same
candidate materializes the same subnet.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spaces.files import staged

from search.errors import UserError, first_line
from search.engine.records import BEST_FILE, BEST_MODEL_FILE, FINETUNED_MODEL_FILE, RUN_OWN_FILES, RunDirectory
from search.export.subnet import load_subnet, no_subnet_message

log = logging.getLogger("search.export")

SUFFIXES = {"pt": ".pt2", "torchscript": ".torchscript.pt", "onnx": ".onnx", "state_dict": ".state_dict.pt"}
FORMATS = tuple(SUFFIXES)
ONNX_EXTRA = 'pip install "prunesearch[onnx]"'
RTOL = 1e-4  # allowed max abs difference, relative to the largest absolute output


@dataclass
class ExportResult:
    path: Path                      # the artifact written
    format: str                     # pt | torchscript | onnx | state_dict
    max_abs_diff: float | None      # artifact vs the PyTorch subnet; None when not compared
    compared: bool                  # False only for onnx without onnxruntime
    output_scale: float | None = None  # the largest absolute output of the PyTorch subnet on the check batch
    dynamic_batch: bool = False     # whether the artifact was checked on a second batch size
    source: Path | None = None      # best.pt or finetuned.pt
    notes: list[str] = field(default_factory=list)  # fallbacks taken (also logged as warnings)


class ExportError(RuntimeError):
    """The exporter failed, or the artifact does not reproduce the subnet (`result` then says by how much)."""

    def __init__(self, message: str, result: ExportResult | None = None):
        super().__init__(message)
        self.result = result


def _optional(name: str):
    """The module, or None when it is not installed (or blocked in sys.modules)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences torch's warnings and log lines while exporting: the comparison afterwards is the check."""
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_log.setLevel(level)


def _note(notes: list[str], message: str) -> None:
    notes.append(message)
    log.warning(message)


def _leaves(output: Any) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, or nested tuples, lists and dicts of them), in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [t for v in output.values() for t in _leaves(v)]
    if isinstance(output, (list, tuple)):
        return [t for v in output for t in _leaves(v)]
    raise ExportError(f"the subnet returns {type(output).__name__}, not tensors: cannot compare its outputs")


def _batch(batch: int, shape: list[int], seed: int) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def _with_dynamic_batch(export: Callable[[Any], Any], batch: int, notes: list[str], what: str,
                        specializes_one: bool = True) -> tuple[Any, bool]:
    """`export(dynamic_shapes)` with a dynamic batch axis if it can be had, else `export(None)`: a fixed one.

    torch.export specializes a dimension of size 1, so with `specializes_one` a batch of 1 stays fixed.
    """
    if batch >= 2 or not specializes_one:
        try:
            with _quiet():
                return export(({0: torch.export.Dim("batch")},)), True
        except Exception as error:  # noqa: BLE001 - any exporter failure: retry with a fixed batch
            reason = f"{what} could not make the batch axis dynamic ({first_line(error, typed=True)})"
    else:
        reason = "torch.export specializes a batch of 1; use --batch 2 or more for a dynamic batch axis"
    with _quiet():
        result = export(None)
    _note(notes, f"the batch size is fixed to {batch}: {reason}")
    return result, False


def _export_pt(model: nn.Module, example: torch.Tensor, path: Path, notes: list[str]):
    program, dynamic = _with_dynamic_batch(
        lambda shapes: torch.export.export(model, (example,), dynamic_shapes=shapes), len(example), notes,
        "torch.export")
    with _quiet(), open(path, "wb") as f:  # a file object: torch.export.save wants a .pt2 name otherwise
        torch.export.save(program, f)

    def load(at: Path):
        with _quiet():
            return torch.export.load(str(at)).module()

    return load, dynamic


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, notes: list[str]):
    try:
        with _quiet():
            scripted, dynamic = torch.jit.script(model), True
    except Exception as error:  # noqa: BLE001 - TorchScript rejects much Python; tracing is the fallback
        _note(notes, f"torch.jit.script failed ({first_line(error, typed=True)}); traced instead: control flow that "
                     f"depends on the input is frozen to the example's path, and only batch {len(example)} "
                     f"is checked")
        with _quiet():
            scripted, dynamic = torch.jit.trace(model, (example,)), False
    scripted.save(str(path))

    def load(at: Path):
        with _quiet():  # torch.jit.load warns that TorchScript is deprecated
            return torch.jit.load(str(at), map_location="cpu")

    return load, dynamic


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, notes: list[str], n_outputs: int):
    onnx = importlib.import_module("onnx")  # checked by _check_exporter
    names = {"input_names": ["input"],
             "output_names": ["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]}
    big = sum(p.numel() * p.element_size() for p in model.state_dict().values()) > 1.5 * 2**30
    has_dynamo = "dynamo" in inspect.signature(torch.onnx.export).parameters
    dynamo = has_dynamo and _optional("onnxscript") is not None
    if dynamo:
        def run(shapes):
            torch.onnx.export(model, (example,), str(path), dynamo=True, verbose=False, external_data=big,
                              dynamic_shapes=shapes, **names)
    else:
        if has_dynamo:
            _note(notes, "onnxscript is not installed: used torch's legacy TorchScript-based ONNX exporter "
                         f"({ONNX_EXTRA} installs the current one)")

        def run(shapes):
            axes = {name: {0: "batch"} for name in names["input_names"] + names["output_names"]}
            legacy = {"dynamo": False} if has_dynamo else {}
            torch.onnx.export(model, (example,), str(path), dynamic_axes=axes if shapes else None, **legacy,
                              **names)
    with _quiet():
        _, dynamic = _with_dynamic_batch(run, len(example), notes, "torch.onnx.export", specializes_one=dynamo)
    if big and dynamo:
        _note(notes, f"the weights are over 1.5 GiB: they are in {path.name}.data beside {path.name}")
    ort = _optional("onnxruntime")
    if ort is None:
        onnx.checker.check_model(str(path))
        _note(notes, f"outputs not compared: onnxruntime is not installed ({ONNX_EXTRA}); "
                     f"onnx.checker.check_model passed")
        return None, dynamic

    def load(at: Path):
        session = ort.InferenceSession(str(at), providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name
        return lambda x: [torch.from_numpy(o) for o in session.run(None, {feed: x.numpy()})]

    return load, dynamic


def _export_state_dict(model: nn.Module, path: Path):
    torch.save(model.state_dict(), path)

    def load(at: Path):
        fresh = copy.deepcopy(model)
        with torch.no_grad():  # wipe it, so that only what the file holds can make the outputs match
            for tensor in fresh.state_dict().values():
                tensor.zero_()
        fresh.load_state_dict(torch.load(at, map_location="cpu", weights_only=True), strict=True)
        return fresh.eval()

    return load, True


def _check_exporter(format: str) -> None:
    """A UserError naming the extra to install when the format's optional packages are missing."""
    if format == "onnx" and _optional("onnx") is None:
        raise UserError(f"--format onnx needs the onnx package, which is not installed: {ONNX_EXTRA}")


def _source(run: RunDirectory, finetuned: bool) -> Path:
    """The name the exported files are named after (best.* or finetuned.*)."""
    return run.path / (FINETUNED_MODEL_FILE if finetuned else BEST_MODEL_FILE)


def _target(run: RunDirectory, source: Path, format: str, out: str | Path | None) -> Path:
    name = Path(source).stem + SUFFIXES[format]
    if out is not None and not str(out).strip():
        raise UserError("--out was given an empty value: give a file or a folder, or leave it out")
    path = run.path / name if out is None else Path(out).expanduser()
    if path.is_dir() or (out is not None and str(out).endswith(("/", os.sep))):  # a folder, made if it is new
        path = path / name
    # the run's own files are off limits, but for the one this very export writes by default (a state dict
    # exported to best.state_dict.pt holds what the search wrote there)
    protected = {(run.path / f).resolve() for f in RUN_OWN_FILES} - {(run.path / name).resolve()}
    if path.resolve() in protected:
        raise UserError(f"--out {path} would overwrite one of the run's own files; pick another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {path.parent}: {error.strerror or error}") from None
    return path


def export(run_dir: str | Path, format: str = "pt", *, finetuned: bool = False, out: str | Path | None = None,
           batch: int = 2, trust_pickle: bool = False, model: nn.Module | None = None) -> ExportResult:
    """Export a run's best (or fine-tuned) subnet in `format`, load it back and compare; see the module docstring.

    `out` is a file path or an existing folder (default: the run directory, `best<suffix>`). Raises
    UserError for what the user asked wrong, ExportError when the exporter fails or the artifact's
    outputs differ from the subnet's by more than 1e-4 x the output scale (the file is kept). `model`: the base
    model the subnet is rebuilt from (a run of `search.prune` needs the user's own; see `load_subnet`).
    """
    if format not in SUFFIXES:
        raise UserError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
    if not isinstance(batch, int) or batch < 1:
        raise UserError(f"--batch must be positive, got {batch}")
    _check_exporter(format)
    run = RunDirectory.open(str(run_dir))
    source = _source(run, finetuned)
    if not (run.path / BEST_FILE).is_file():
        raise UserError(no_subnet_message(run))
    shape = run.read(BEST_FILE).get("input_shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s > 0 for s in shape):
        raise UserError(f"{run.path / BEST_FILE} has no valid input_shape (got {shape!r})")
    path = _target(run, source, format, out)

    model = load_subnet(run.path, finetuned=finetuned, trust_pickle=trust_pickle, model=model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    try:
        example = _batch(batch, shape, seed=0).to(dtype)
        with torch.no_grad():
            n_outputs = len(_leaves(model(example)))
    except ExportError:
        raise
    except (MemoryError, RuntimeError) as error:  # torch.OutOfMemoryError is a RuntimeError
        text = str(error).lower()
        if isinstance(error, RuntimeError) and "alloc" not in text and "out of memory" not in text:
            raise ExportError(f"{source.name} does not run on a batch of shape ({batch}, "
                              f"{', '.join(map(str, shape))}): {first_line(error, typed=True)}") from error
        raise UserError(f"--batch {batch} does not fit in memory: the export needs only a small example batch "
                        f"(default 2)") from None
    except Exception as error:  # the subnet itself does not run on the example
        raise ExportError(f"{source.name} does not run on a batch of shape {tuple(example.shape)}: "
                          f"{first_line(error, typed=True)}") from error

    notes: list[str] = []
    try:  # written beside `path` and moved into place whole: a failed export leaves no half-written file
        with torch.no_grad(), staged(path) as writing:
            if format == "pt":
                load, dynamic = _export_pt(model, example, writing, notes)
            elif format == "torchscript":
                load, dynamic = _export_torchscript(model, example, writing, notes)
            elif format == "onnx":
                load, dynamic = _export_onnx(model, example, writing, notes, n_outputs)
            else:
                load, dynamic = _export_state_dict(model, writing)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None
    except (UserError, ExportError):
        raise
    except Exception as error:  # the exporter's own failure, said in one line
        raise ExportError(f"{format} export of {source.name} failed: {first_line(error, typed=True)}") from error

    result = ExportResult(path, format, None, False, None, dynamic, source, notes)
    if load is None:
        return result
    checks = [_batch(batch, shape, seed=1)] + ([_batch(batch + 1, shape, seed=2)] if dynamic else [])
    checks = [x.to(dtype) for x in checks]
    try:
        artifact = load(path)
        diff, scale = 0.0, 0.0
        with torch.no_grad():
            for x in checks:
                expected, actual = _leaves(model(x)), _leaves(artifact(x))
                if len(expected) != len(actual) or any(a.shape != e.shape for a, e in zip(actual, expected)):
                    raise ExportError(f"{path} ({format}) returns outputs of other shapes than the subnet on "
                                      f"a batch of {len(x)}", result)
                scale = max([scale] + [e.abs().max().item() for e in expected if e.numel()])
                diff = max([diff] + [(a.float() - e.float()).abs().max().item() for a, e in zip(actual, expected)
                                     if e.numel()])
    except ExportError:
        raise
    except Exception as error:  # loading or running the artifact failed
        raise ExportError(f"{path} ({format}) was written but does not load or run: {first_line(error, typed=True)}",
                          result) from error
    result.max_abs_diff, result.compared, result.output_scale = diff, True, scale
    tolerance = RTOL * (scale + 1e-6)
    if not diff <= tolerance:
        raise ExportError(f"{path} ({format}) does not reproduce the PyTorch subnet: max abs diff {diff:.3g} > "
                          f"{tolerance:.3g} (1e-4 x output scale {scale:.3g}); the file is kept for inspection",
                          result)
    return result


def _report(result: ExportResult, best_json: Path | None = None) -> list[str]:
    """The CLI's report: the checked artifact, then how to load it."""
    what = result.format
    if result.format != "state_dict":
        what += ", dynamic batch" if result.dynamic_batch else ", fixed batch"
    if result.compared:
        head = (f"exported {result.path} (format {what}): max abs diff {result.max_abs_diff:.3g} vs the "
                f"PyTorch subnet (output scale {result.output_scale:.3g})")
    else:
        head = (f"exported {result.path} (format {what}): max abs diff n/a, outputs not compared "
                f"(onnxruntime is not installed)")
    p = str(result.path)
    load = {"pt": f"torch.export.load({p!r}).module()", "torchscript": f"torch.jit.load({p!r})",
            "onnx": f"onnxruntime.InferenceSession({p!r})",
            "state_dict": f"search.export.rebuild({str(best_json)!r}, base_model).load_state_dict(torch.load({p!r}))"
                          "  (base_model: the run's base model with its trained weights)"}[result.format]
    return [head, f"load : {load}"]


def get_args_parser() -> argparse.ArgumentParser:
    from search.cli import ArgumentParser

    p = ArgumentParser(prog="python -m search.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run directory written by python -m search.run")
    p.add_argument("--format", default="pt", choices=FORMATS,
                   help="pt: torch.export program (best.pt2; torch.export.load(f).module()); "
                        "torchscript: torch.jit.script, or trace if scripting fails (best.torchscript.pt; "
                        "torch.jit.load); onnx: torch.onnx.export (best.onnx; needs "
                        f"{ONNX_EXTRA}); state_dict: torch.save(state_dict) (best.state_dict.pt; "
                        "search.export.rebuild(best.json, base_model) + load_state_dict rebuilds the module)")
    p.add_argument("--finetuned", action="store_true",
                   help="export finetuned.pt (from python -m search.finetune) instead of best.pt; "
                        "files are then named finetuned.*")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="the file to write, or an existing folder to write the default name into "
                        "(default: the run directory)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading the pickled best.pt / finetuned.pt of a run that has no state dict (older "
                        "runs): unpickling runs code from the file")
    p.add_argument("--batch", type=int, default=2,
                   help="samples in the example batch of the input shape in best.json; pt and onnx get a "
                        "dynamic batch axis from 2 up")
    return p


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        print(f"warning: {self.format(record)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    log.handlers[:] = [_StderrHandler()]
    log.setLevel(logging.WARNING)
    log.propagate = False
    try:
        result = export(args.run_dir, args.format, finetuned=args.finetuned, out=args.out, batch=args.batch,
                        trust_pickle=args.trust_pickle)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n".join(_report(result, Path(args.run_dir) / BEST_FILE)))
    return 0

