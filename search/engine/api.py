"""The Python API: `prune(model, budget, calibration=..., held_out=...)`, a search on the user's own objects.

It builds the same `Pipeline` from a `SearchConfig` as `python -m search.run` does; what differs is where
the model and the batches come from (the user's iterables, checked and cached here, not the zoo's names).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.engine.config import DEFAULT_AGENT, DEFAULT_TRIALS, SearchConfig
from search.engine.pipeline import Pipeline, PruneResult
from search.engine.records import RunDirectory
from search.errors import UserError, first_line
from search.finetune.step import device_of
from search.models.inputs import Inputs

log = logging.getLogger(__name__)


def batches_of(items: Iterable, limit: int, *, labelled: bool, what: str) -> list:
    """The first batches of `items` (tensors, or (x, y, ...) tuples) holding up to `limit` samples."""
    out, seen = [], 0
    for item in items:
        if isinstance(item, torch.Tensor):
            if labelled:
                raise UserError(f"{what} must yield (inputs, labels) batches, got bare tensors")
            x, y = item, None
        elif isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
            x, y = item[0], (item[1] if len(item) > 1 else None)
        elif isinstance(item, Mapping) and isinstance(item.get("image", item.get("x")), torch.Tensor):
            x, y = item.get("image", item.get("x")), item.get("label", item.get("y"))
        else:
            raise UserError(f"{what} must yield tensors or (inputs, labels) batches, got {type(item).__name__}")
        if x.dim() < 2:
            raise UserError(f"{what}: a batch needs a batch axis, got shape {tuple(x.shape)}")
        if labelled:
            if not isinstance(y, torch.Tensor):
                raise UserError(f"{what} must yield (inputs, labels) batches with tensor labels")
            if y.dim() == 0 or len(y) != len(x):  # checked before the batch is cut to `limit`
                raise UserError(f"{what} labels of shape {tuple(y.shape)} for a batch of {len(x)} inputs: one "
                                f"label per input")
        x = x[:limit - seen]
        if labelled:
            out.append((x, y[:len(x)]))
        else:
            out.append(x)
        seen += len(x)
        if seen >= limit:
            break
    if not out:
        raise UserError(f"{what} gave no batches")
    return out


def prune(model: nn.Module, budget: str | list[str] = "0.5flops", agent: str = DEFAULT_AGENT,
          trials: int = DEFAULT_TRIALS, *,
          calibration: Iterable, held_out: Iterable | None = None, score: Callable[[nn.Module], float] | None = None,
          train: Iterable | None = None, example_input: torch.Tensor | None = None, workers: int = 0, out: str | Path | None = None,
          seed: int = 0, device: str = "auto", progress: bool = True, resume: bool = False,
          **options: Any) -> PruneResult:
    """Search a pruned architecture of `model` under `budget` with the user's own data; see the README.

    `calibration`: any iterable of input batches (or (x, y) batches): BatchNorm is recalibrated on its first
    `calib_batches` (2) batches for every candidate. `score`: f(model) -> float, higher is better, called on
    the model already set to the candidate and recalibrated, in eval mode (errors are failed trials);
    default: top-1 on `held_out`, an iterable of (x, y) batches (its first `eval_samples`, 1024, samples).
    `train`: labelled (x, y) batches (e.g. the training loader) the finalists fine-tune on; without it
    they are distilled from the model's outputs on the calibration batches (`finalists=0` turns them off).
    `options`: any other `SearchConfig` field (e.g. `width_ratios="0.25,0.5,0.75,1"`, `food_sources=8`).
    Returns a `PruneResult`: `.subnet` (a real module), `.best`, `.trials` (a DataFrame), `.run_dir`.
    The user's model is not modified (the search works on a copy). `resume=True` continues the run in
    `out` (same model, data and options; nothing scored is scored again).
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"prune() needs a torch.nn.Module, got {type(model).__name__}")
    if score is None and held_out is None:
        raise UserError("prune() needs held_out batches (scored by top-1) or a score function")
    if score is not None and not callable(score):
        raise UserError(f"prune(score=...) must be a function f(model) -> float, got {type(score).__name__}")
    if resume and out is None:
        raise UserError("prune(resume=True) needs the run's out= folder")
    config = _config(agent=agent, budget=_budgets(budget), trials=trials, workers=workers,
                     out=None if out is None else str(out), seed=seed, device=device, options=options)
    if train is not None and (not isinstance(train, Iterable) or isinstance(train, Iterator)):
        raise UserError(f"prune(train=...) must be re-iterable (a DataLoader or a list of (x, y) batches): the "
                        f"finalists and the supernet go over it again and again, a {type(train).__name__} only once")
    if config.supernet_epochs and train is None:
        raise UserError("prune(supernet_epochs=...) needs labelled training batches: pass train=(x, y) batches")
    dev = device_of(config.device)
    calib = [x.to(dev) for x in batches_of(calibration, config.calib_batches * config.batch_size, labelled=False,
                                           what="calibration")]
    held = ([(x.to(dev), y.to(dev)) for x, y in batches_of(held_out, config.eval_samples, labelled=True,
                                                           what="held_out")] if held_out is not None else [])
    if example_input is not None and not isinstance(example_input, torch.Tensor):
        raise UserError(f"prune() takes a tensor example_input (its calibration and scoring feed tensor batches), got "
                        f"{type(example_input).__name__}; a model called on tuples, lists or dicts is searched with "
                        f"spaces.derive, evaluators.CostModel, spaces.ElasticModel and spaces.materialize")
    example = (example_input if example_input is not None else calib[0][:1]).detach().cpu()
    if example.dim() < 2 or example.shape[0] != 1:
        example = example[:1]
    first_train = ([(x.to(dev), y.to(dev)) for x, y in batches_of(train, 2, labelled=True, what="train")]
                   if train is not None else [])
    own = copy.deepcopy(model).eval()   # the search's copy: the user's model is never modified
    _check_batches(own.to(dev), calib, held, train=first_train, example=example, labels=score is None)
    torch.manual_seed(seed)
    inputs = Inputs(model=own.cpu(), example=example, calibration=calib, held_out=held,
                    score=None if score is None else UserScore(score), name=type(model).__name__, train=train)
    run_dir = None
    if resume:
        run_dir = RunDirectory.open(str(out))
        saved = run_dir.read().get("args") or {}
        try:
            config = SearchConfig.from_json(saved).resumed(config.to_json())  # refuses what would change the run
        except UserError as error:
            raise UserError(f"prune(resume=True): {api_words(str(error))}") from None
        except TypeError as error:
            raise UserError(f"cannot resume {run_dir.path}: its run.json is not readable ({error})") from None
    pipeline = Pipeline(config, inputs=inputs, run_dir=run_dir, progress=progress)
    try:
        result = pipeline.run()
    finally:
        if pipeline.run_dir is not None:
            pipeline.run_dir.unlock()
    log.info("%s", result.summary)
    if result.best is None and not result.interrupted:
        raise UserError(no_trial_succeeded(result.trials, result.run_dir))
    return result


def no_trial_succeeded(trials, run_dir: Path) -> str:
    """The one line for a search in which no candidate was scored: how many failed, and the commonest reason."""
    states = Counter(trials.state) if len(trials) else Counter()
    reasons = Counter(str(m) for m, st in zip(trials.message, trials.state) if st == "failed" and m)
    if not len(trials):
        return f"no candidate was scored; see {run_dir}"
    if reasons:
        reason, count = reasons.most_common(1)[0]
        return (f"no trial succeeded: {states.get('failed', 0)} of {len(trials)} failed, {count} of them with "
                f"\"{reason}\" (every trial is in {Path(run_dir) / 'trials.csv'})")
    return (f"no trial succeeded: {states.get('infeasible', 0)} of {len(trials)} were over the budget "
            f"(every trial is in {Path(run_dir) / 'trials.csv'})")


class UserScore:
    """A user's `score(model)`, its answer checked: something that is not one number is an error naming it (the
    candidate fails with that reason in trials.csv). A class, not a closure: it travels to Ray actors."""

    def __init__(self, function: Callable[[nn.Module], float]):
        self.function = function

    def __call__(self, module: nn.Module) -> float:
        value = self.function(module)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
            raise TypeError(f"score returned {type(value).__name__} {str(value)[:40]!r}, not a number")
        return float(value)


def _budgets(budget: Any) -> list[str]:
    texts = [budget] if isinstance(budget, str) else budget
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise UserError(f"prune(budget=...) takes a string like '0.5flops' or a list of them, got {budget!r}"[:200])
    return list(texts)


def _config(*, options: Mapping[str, Any], **given: Any) -> SearchConfig:
    """The SearchConfig of a prune() call; an unknown option or a value of the wrong type is one UserError."""
    names = {f.name for f in dataclasses.fields(SearchConfig)} - {"model", "data"}
    for name in options:
        if name not in names:
            near = difflib.get_close_matches(name, sorted(names), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else "; it takes the SearchConfig fields (see the README)"
            raise UserError(f"prune() got an unknown option {name!r}{hint}")
    values = {name: _as_field(field, {**given, **options}[name]) for field in dataclasses.fields(SearchConfig)
              if (name := field.name) in given or name in options}
    try:
        return SearchConfig(model="<module>", data="<iterables>", **values).validate()
    except UserError as error:
        raise UserError(f"prune(): {api_words(str(error))}") from None
    except (TypeError, ValueError, AttributeError) as error:
        raise UserError(f"prune(): an option has a value of the wrong type ({first_line(error)})") from None


def _as_field(field: dataclasses.Field, value: Any) -> Any:
    """A value as the command line would read it: "5" for a number field is 5, a list of width ratios is
    "0.5,1"; anything else is left for validate() to refuse, naming the option."""
    kind = str(field.type).replace(" | None", "")
    if isinstance(value, str) and kind in ("int", "float"):
        try:
            number = float(value)
            return int(number) if kind == "int" and number.is_integer() else number
        except ValueError:
            return value
    if field.name == "width_ratios" and isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return value


def api_words(text: str) -> str:
    """A configuration error in prune()'s words: `--finalist-steps` (the command line's) becomes `finalist_steps`."""
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    return re.sub(r"--([a-z][a-z0-9-]*)", lambda m: m[1].replace("-", "_") if m[1].replace("-", "_") in fields
                  else m[0], text)


def _check_batches(model: nn.Module, calibration: list, held_out: list, *, train: list, example: torch.Tensor,
                   labels: bool) -> None:
    """Run the model (in eval mode, no gradients: nothing in it changes) on one batch of each kind the user gave:
    data that does not fit, labels that are not class indices of its outputs (on `held_out` when scored by top-1,
    `labels`; on `train`'s first batch) and an example_input unlike the calibration batches are refused here, in
    one line, before anything is written."""
    shape = tuple(calibration[0].shape[1:])
    if tuple(example.shape[1:]) != shape:
        raise UserError(f"example_input of shape {tuple(example.shape)} is not shaped like the calibration batches "
                        f"{tuple(calibration[0].shape)}: the costs are priced on example_input and the scores measured "
                        f"on the batches, so they must agree (one sample, shape (1, {', '.join(map(str, shape))}))")
    checked = [("calibration", calibration[0], None), *[("held_out", x, y if labels else None) for x, y in held_out],
               *[("train", x, y) for x, y in train]]
    outputs: dict[str, int] = {}
    for what, x, y in checked:
        if y is not None:
            _check_label_tensor(what, x, y)
        if what not in outputs:  # one forward per kind: the outputs' width is what the labels index
            try:
                with torch.no_grad():
                    out = model(x[:2])
            except Exception as error:  # noqa: BLE001 - the user's data against the user's model: one line
                raise UserError(f"{what} batches of shape {tuple(x.shape)} do not fit the model: "
                                f"{first_line(error, typed=True)}"[:400]) from None
            outputs[what] = out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() == 2 else 0
        if y is not None and outputs[what] and len(y) and not 0 <= int(y.min()) <= int(y.max()) < outputs[what]:
            raise UserError(f"{what} labels run from {int(y.min())} to {int(y.max())}, but the model has "
                            f"{outputs[what]} outputs: labels must be class indices 0..{outputs[what] - 1}")


def _check_label_tensor(what: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """Labels are one integer class index per input."""
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise UserError(f"{what} labels must be integer class indices, got {y.dtype} (e.g. y.long() for class "
                        f"numbers)")
    if tuple(y.shape) != (len(x),):
        raise UserError(f"{what} labels of shape {tuple(y.shape)} for a batch of {len(x)} inputs: one class index "
                        f"per input, shape ({len(x)},)")
