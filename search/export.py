"""Rebuild a run's best subnet from `best.json` and a fresh base model (the replayable artifact).

`best.pt` is a convenience (a pickled module with recalibrated BatchNorm); `best.json` is the
record that survives code and pickle changes: the base model's spec, how its space was derived, and
the chosen candidate. Deriving again on the same base weights gives the same channel ranking, so the
same candidate materializes the same subnet.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from spaces.derive import derive
from spaces.materialize import materialize

from .errors import UserError


def rebuild(best: str | Path | Mapping, base_model: nn.Module) -> nn.Module:
    """The subnet of `best` (a best.json path or its contents) cut from `base_model` (reordered in place).

    Its BatchNorm statistics are the base model's: recalibrate or fine-tune before use.
    """
    record = json.loads(Path(best).read_text()) if isinstance(best, (str, Path)) else best
    try:
        options, shape, candidate = record["derive"], record["input_shape"], record["candidate"]
    except KeyError as missing:
        raise UserError(f"not a best.json record: no {missing}") from None
    base_model.eval()
    prunable = derive(base_model, torch.zeros(1, *shape), ratios=tuple(options["ratios"]),
                      round_to=options["round_to"], importance=options.get("importance", "l1"),
                      removable_blocks=options.get("removable_blocks", True))
    try:
        return materialize(prunable, candidate)
    except ValueError as error:
        raise UserError(f"best.json does not fit this base model: {error}") from None
