"""What a search scores with (`Inputs`), and how the zoo's names give them: data, model, cached batches."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from evaluators.accuracy import stack_batches

from search.engine.config import SearchConfig
from search.errors import UserError
from search.models.baseline import trained_baseline
from search.models.zoo import ZOO_MODELS, load_data, load_model

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    """What the search scores with: the base model, one example input, cached batches, the metric."""

    model: nn.Module
    example: torch.Tensor                              # one sample, batch axis included: (1, C, H, W)
    calibration: list[torch.Tensor]                    # BN recalibration batches (inputs only)
    held_out: list[tuple[torch.Tensor, torch.Tensor]]  # (x, y) batches scored by top-1 (unless `score`)
    score: Callable[[nn.Module], float] | None = None  # f(model) -> float, higher is better
    test: Iterable | None = None                       # (x, y) batches to report the final model on
    name: str = "model"
    base_test: float | None = None
    data: Any = None                                   # the zoo's DataBundle, when the data came from a name
    train: Iterable | None = None                      # labelled (x, y) batches the finalists train on


def zoo_inputs(config: SearchConfig, device: torch.device, *, progress: bool = False) -> Inputs:
    """The model, an example input, cached calibration and held-out batches, from the names in `config`.

    A zoo model without weights is trained once and cached (`search.models.baseline`); the test set
    reports the result."""
    c = config
    data = load_data(c.data, held_out=c.held_out_size, seed=c.seed)
    if data.num_classes < 2:
        raise UserError(f"data {c.data} has {data.num_classes} class: a classifier needs at least 2")
    if len(data.fit) < 2 * c.batch_size:
        log.warning("--held-out %s keeps %d of the %d training samples for scoring and leaves %d to train and "
                    "calibrate on, under 2 batches of %d: the baseline, the calibration and the finalists see little",
                    c.held_out, len(data.held_out), len(data.fit) + len(data.held_out), len(data.fit), c.batch_size)
    torch.manual_seed(c.seed)  # the model's initialization (what --weights does not overwrite) is seeded too
    model = load_model(c.model, num_classes=data.num_classes, input_shape=data.input_shape, weights=c.weights,
                       trust_pickle=c.trust_pickle)
    base_test = None
    if c.weights is None and c.model in ZOO_MODELS and c.baseline_epochs > 0:
        model, base_test = trained_baseline(model, c.model, c.data, data, epochs=c.baseline_epochs, seed=c.seed,
                                            batch_size=c.batch_size, held_out=c.held_out, device=device,
                                            progress=progress)
    model = model.cpu().eval()
    calib = data.fit.tolist()[:c.calib_batches * c.batch_size]
    held = data.held_out.tolist()[:c.eval_samples]
    return Inputs(
        model=model, example=data.train_eval[int(data.fit[0])][0].unsqueeze(0),
        calibration=[x for x, _ in stack_batches(data.train_eval, calib, c.batch_size, device)],
        held_out=stack_batches(data.train_eval, held, max(c.batch_size, 256), device),
        test=DataLoader(data.test, batch_size=256), name=c.model, base_test=base_test, data=data)
