"""A run's subnet as a module again: `rebuild` (best.json on a base model), `base_model`, `load_subnet`.

`best.json` is the record that survives code and pickle changes: the base model's spec, how its space was
derived, and the chosen candidate. Deriving again on the same base weights gives the same channel ranking,
so the same candidate materializes the same subnet; its weights come from the state dict beside it.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spaces.derive import derive
from spaces.materialize import materialize

from search.engine.config import SearchConfig
from search.engine.records import (BEST_FILE, BEST_MODEL_FILE, BEST_STATE_FILE, FINETUNED_MODEL_FILE,
                                   FINETUNED_STATE_FILE, RunDirectory)
from search.errors import UserError, first_line
from search.models.inputs import zoo_inputs
from search.models.zoo import load_data, load_model, safe_load


def rebuild(best: str | Path | Mapping, base_model: nn.Module) -> nn.Module:
    """The subnet of `best` (a best.json path or its contents) cut from `base_model` (reordered in place).

    Its BatchNorm statistics are the base model's: recalibrate or fine-tune before use.
    """
    record = checked_record(json.loads(Path(best).read_text()) if isinstance(best, (str, Path)) else best,
                            str(best) if isinstance(best, (str, Path)) else "best")
    options, shape, candidate = record["derive"], record["input_shape"], record["candidate"]
    base_model.eval()
    prunable = derive(base_model, torch.zeros(1, *shape), ratios=tuple(options["ratios"]),
                      round_to=options["round_to"], importance=options.get("importance", "l1"),
                      removable_blocks=options.get("removable_blocks", True),
                      block_encoding=options.get("block_encoding", "flags"))
    try:
        return materialize(prunable, candidate)
    except ValueError as error:
        raise UserError(f"best.json does not fit this base model: {error}") from None


def checked_record(record: Any, where: str) -> Mapping:
    """best.json's contents, with what rebuilding the subnet reads present and well formed; else one UserError."""
    if not isinstance(record, Mapping):
        raise UserError(f"{where} is not a best.json record (a JSON object)")
    for key in ("derive", "input_shape", "candidate"):
        if key not in record:
            raise UserError(f"{where} is not a complete best.json record: no {key!r} (rerun the search, or "
                            f"--resume it, to write it again)")
    shape, options = record["input_shape"], record["derive"]
    if not (isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape)):
        raise UserError(f"{where} has no valid input_shape (got {shape!r})")
    if not (isinstance(options, Mapping) and "ratios" in options and "round_to" in options
            and isinstance(record["candidate"], Mapping)):
        raise UserError(f"{where} is not a complete best.json record: its derive or candidate is malformed")
    return record


def no_subnet_message(run: RunDirectory) -> str:
    """Why a run has no subnet to load, and what to do: a search that did not finish is resumed."""
    scored = sum(1 for t in run.journal.read() if t.result.ok)
    status = run.read().get("status")
    if status != "complete" and not (run.path / BEST_FILE).is_file():
        return (f"{run.path} has no exported subnet yet: its search did not finish ({scored} trial(s) scored in its "
                f"journal); continue it with `python -m search.run --resume {run.path}` (or prune(..., resume=True))")
    return (f"{run.path} has no {BEST_MODEL_FILE} or {BEST_STATE_FILE}: the search exported no subnet ("
            f"{'no trial was scored' if not scored else f'{scored} trial(s) scored, none exported'})")


def base_model(config: SearchConfig, *, progress: bool = False) -> nn.Module:
    """A run's base model, rebuilt from its configuration: the zoo name and weights, or the cached baseline."""
    if config.model == "<module>":
        raise UserError("this run was searched from Python (search.prune) with the user's own model object: "
                        "rebuild its subnet with search.export.rebuild(best.json, model)")
    return zoo_inputs(config, torch.device("cpu"), progress=progress).model


def load_subnet(run_dir: str | Path, *, finetuned: bool = False, trust_pickle: bool = False,
                num_classes: int | None = None, model: nn.Module | None = None) -> nn.Module:
    """A run's exported subnet (or fine-tuned one), without unpickling code.

    Rebuilt from `best.json` (the architecture) and the state dict beside it (`weights_only=True`; it holds
    every weight and BatchNorm statistic of the subnet), so the base model only lends its structure: an
    untrained one of the run's model name is enough (`model` overrides it; `num_classes`, the data's, saves
    reading the data). A run with only the pickled `best.pt` / `finetuned.pt` needs `trust_pickle=True`.
    """
    run = RunDirectory.open(str(run_dir))
    state_name, pickle_name = ((FINETUNED_STATE_FILE, FINETUNED_MODEL_FILE) if finetuned
                               else (BEST_STATE_FILE, BEST_MODEL_FILE))
    from_python = SearchConfig.from_json(run.read().get("args", {})).model == "<module>"
    if from_python and model is None and not (trust_pickle and (run.path / pickle_name).is_file()):
        raise UserError(f"{run.path} was searched from Python (search.prune) with your own model object, which "
                        f"it does not hold: pass it (load_subnet(RUN, model=...), export(RUN, ..., model=...)), "
                        f"or --trust-pickle to load the pickled {pickle_name}")
    if (run.path / state_name).is_file() and (run.path / BEST_FILE).is_file() and not (from_python and model is None):
        state = safe_load(run.path / state_name, "subnet weights")
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"{run.path / state_name} is not a state dict (name -> tensor)")
        best = checked_record(run.read(BEST_FILE), str(run.path / BEST_FILE))
        if model is None:
            config = SearchConfig.from_json(run.read().get("args", {}))
            if num_classes is None:
                num_classes = load_data(config.data, held_out=config.held_out_size, seed=config.seed).num_classes
            torch.manual_seed(config.seed)
            model = load_model(config.model, num_classes=num_classes, input_shape=tuple(best["input_shape"]),
                               trust_pickle=trust_pickle)
        subnet = rebuild(best, copy.deepcopy(model))
        try:
            subnet.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise UserError(f"{run.path / state_name} does not fit the subnet of best.json: "
                            f"{first_line(error)}") from None
        return subnet.eval()
    if not (run.path / pickle_name).is_file():
        if finetuned:
            raise UserError(f"{run.path} has no {FINETUNED_MODEL_FILE} yet: run `python -m search.finetune "
                            f"{run.path}` first, or leave out --finetuned")
        raise UserError(no_subnet_message(run))
    if not trust_pickle:
        raise UserError(f"{run.path} has only {pickle_name}, a pickled module (unpickling can run code from the "
                        f"file): pass --trust-pickle if you trust this run directory")
    subnet = safe_load(run.path / pickle_name, "subnet", weights_only=False)
    if not isinstance(subnet, nn.Module):
        what = "a state dict" if isinstance(subnet, Mapping) else f"a {type(subnet).__name__}"
        raise UserError(f"{run.path / pickle_name} holds {what}, not a module (the subnet's state dict belongs in "
                        f"{state_name} beside best.json)")
    return subnet.eval()
