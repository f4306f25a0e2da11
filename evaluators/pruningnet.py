"""MetaPruning's PruningNet (Liu et al., ICCV 2019), built for any derived space, and a scorer using it.

A PruningNet generates the weights of every subnet of a space from the subnet's encoding. Here it is
built automatically from a `PrunableModel`: every conv/linear weight of `graph.sites` whose tensor has
channel uses gets a small generator

    encoding (k = 2) -> Linear(2, hidden) -> ReLU -> Linear(hidden, numel) -> x scale -> correction

and the weight the subnet computes with is `base_weight + correction`, cut to the subnet's widths as
usual. The encoding of a layer is (kept fraction of its output axis, kept fraction of its input axis):
for a one-group axis that is the group's width ratio; for an axis laid out as several segments (a
concatenation) it is the kept share of the whole axis, i.e. the size-weighted mean of the segments'
ratios; an axis of a fixed group (the image channels, the classes) is always 1. `scale` is a fixed
buffer, the base weight's standard deviation, so that one learning rate suits every layer. The
generator's last layer starts at zero: a fresh PruningNet generates exactly the base weights and
scores exactly like the base model (warm start). Everything else (biases, BatchNorm affine parameters,
residual blocks' keep flags) comes from the base model unchanged: BN recalibration already adapts
each subnet's statistics, and the generators alone reach a training loss near the base model's in
the benchmark. With `hidden=32` the generators of ResNet-20 (22 layers) hold 8,941,680 parameters on
RGB input, 8,932,176 on the 1-channel digits: 33 per conv/linear weight (270,896 / 270,608) plus 96
per layer, about 36 MB in float32 (Adam keeps two more copies while training).

It plugs into an `ElasticModel` through `state.override` (`install(elastic)`): for a name with a
generator it returns `base + correction(encoding of the widths in force)`, every other tensor passes
through. Scoring uses the cached path (each layer generates once per candidate, under no_grad);
`train_pruningnet` sets `state.volatile` so every forward generates again, with gradients.

Training (`train_pruningnet`): every mini-batch draws a candidate with `sample(rng)`, applies it and
trains the generators alone with cross-entropy (Adam, fused where available, cosine decay of `lr` to 0
over all steps; the default lr 1e-3 is relative to each layer's weight scale). The
base model's BatchNorms run in train mode (batch statistics, as the subnet's statistics are unknown
until recalibrated); their running statistics are snapshotted before and restored after, and the base
model's parameters get no gradient, so the base model is unchanged afterwards. (Removed residual
blocks pass their input through; the elastic model keeps the activations after them out of place, so
backward is safe.)

Scoring (`PruningNetEvaluator`): an `AccuracyEvaluator` whose elastic model computes with the
generated weights: generate, recalibrate the BatchNorms on the calibration batches, top-1 on the
held-out batches, exactly as `AccuracyEvaluator` does with the base weights.

Exporting a subnet with PruningNet weights: `materialize_generated(pruningnet, candidate)` copies the
candidate's generated weights into the base model's parameters, materializes, and puts the base
weights back (`generated_parameters` is that context manager); recalibrate the subnet's BatchNorms
afterwards (`AccuracyEvaluator.recalibrated`), as its running statistics are the base model's.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from spaces.derive import PrunableModel
from spaces.elastic import ElasticModel, ElasticState
from spaces.files import atomic_write
from spaces.materialize import materialize
from spaces.sampling import feasible_sampler  # noqa: F401 - re-exported: its old home
from spaces.slicing import kept_length
from spaces.space import Candidate

from .accuracy import AccuracyEvaluator, hits

FORMAT = "prunesearch-pruningnet-1"
#: the encoding's length: (output axis kept fraction, input axis kept fraction)
ENCODING = 2
#: relative tolerance of the base-weight fingerprint check
_FINGERPRINT_TOL = 1e-5


def _fingerprint(tensor: torch.Tensor) -> tuple[float, float]:
    """(an order-sensitive weighted sum, the sum of magnitudes): tells other weights or channel orders apart."""
    flat = tensor.detach().flatten().double().cpu()
    ramp = torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64)
    return float((flat * ramp).sum()), float(flat.abs().sum())


def _layers(prunable: PrunableModel) -> list[str]:
    """The conv/linear weights with channel uses, in graph order (a module called twice counted once)."""
    names: list[str] = []
    for site in prunable.graph.sites:
        if site.weight in prunable.graph.uses and site.weight not in names:
            names.append(site.weight)
    return names


class PruningNet(nn.Module):
    """Weight generators for every conv/linear layer of a derived space; see the module docstring.

    `seed` seeds the generators' first layers (their last layers start at zero).
    """

    def __init__(self, prunable: PrunableModel, *, hidden: int = 32, seed: int = 0):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be positive, got {hidden}")
        self.prunable = prunable  # a plain attribute: the base model is not part of this module
        self.hidden = hidden
        graph = prunable.graph
        self.names = _layers(prunable)
        self.shapes = [tuple(graph.tensors[n].shape) for n in self.names]
        self.fingerprint = [_fingerprint(graph.tensors[n]) for n in self.names]
        self._index = {n: i for i, n in enumerate(self.names)}
        self._axes = []  # per layer: [(use, axis length)] for the output axis (0) and the input axis (1)
        for name, shape in zip(self.names, self.shapes):
            by_axis = {u.axis: u for u in graph.uses[name]}
            self._axes.append([(by_axis.get(a), shape[a]) for a in (0, 1)])
        self.generators = nn.ModuleList()
        with torch.random.fork_rng(devices=[]):  # seeded first layers; the caller's RNG is untouched
            torch.manual_seed(seed)
            for name, shape in zip(self.names, self.shapes):
                last = nn.Linear(hidden, math.prod(shape))
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
                self.generators.append(nn.Sequential(nn.Linear(ENCODING, hidden), nn.ReLU(), last))
        base = graph.tensors
        self.register_buffer("scales", torch.tensor(
            [float(base[n].detach().float().std()) if base[n].numel() > 1 else 1.0 for n in self.names]))

    # -- generation ------------------------------------------------------------------------------
    def encoding(self, name: str, widths: Sequence[int]) -> list[float]:
        """The layer's encoding under `widths`: kept fractions of its output and input axes."""
        groups = self.prunable.graph.groups
        return [kept_length(use, widths, groups) / length if use is not None else 1.0
                for use, length in self._axes[self._index[name]]]

    def correction(self, name: str, widths: Sequence[int]) -> torch.Tensor:
        """The full-size correction to the base weight `name` under `widths` (gradients as in force)."""
        i = self._index[name]
        scales = self.scales
        code = torch.tensor(self.encoding(name, widths), dtype=scales.dtype, device=scales.device)
        return (self.generators[i](code) * scales[i]).view(self.shapes[i])

    def generate(self, name: str, base: torch.Tensor, widths: Sequence[int]) -> torch.Tensor:
        """`base + correction` for a layer with a generator; any other tensor unchanged (detached)."""
        if name not in self._index:
            return base.detach()
        return base.detach() + self.correction(name, widths).to(base.dtype)

    def install(self, elastic: ElasticModel) -> None:
        """Make `elastic` compute with generated weights (its cut tensors are refreshed)."""
        state: ElasticState = elastic.state
        state.override = lambda name, tensor: self.generate(name, tensor, state.widths)
        state.version += 1

    @staticmethod
    def uninstall(elastic: ElasticModel) -> None:
        elastic.state.override = None
        elastic.state.volatile = False
        elastic.state.version += 1

    # -- fitting a space ---------------------------------------------------------------------------
    def mismatch(self, prunable: PrunableModel) -> str | None:
        """Why this PruningNet does not fit `prunable` (another space, other base weights), or None."""
        names = _layers(prunable)
        if names != self.names:
            extra, missing = sorted(set(self.names) - set(names)), sorted(set(names) - set(self.names))
            return (f"its layers differ from the space's ({len(self.names)} vs {len(names)} generated layers; "
                    f"not in the space: {extra[:3]}, not generated: {missing[:3]})")
        for name, shape, (weighted, total) in zip(names, self.shapes, self.fingerprint):
            tensor = prunable.graph.tensors[name]
            if tuple(tensor.shape) != tuple(shape):
                return f"{name} is {tuple(tensor.shape)} in the space but {tuple(shape)} in the PruningNet"
            w, t = _fingerprint(tensor)
            if abs(w - weighted) > _FINGERPRINT_TOL * (2 * total + 1e-12) or abs(t - total) > _FINGERPRINT_TOL * (total + 1e-12):
                return (f"{name} differs from the base weight it was trained on (other weights, or another "
                        "channel order)")
        return None

    def check(self, prunable: PrunableModel) -> None:
        reason = self.mismatch(prunable)
        if reason is not None:
            raise ValueError(f"the PruningNet does not fit this space: {reason}")

    @property
    def generator_parameters(self) -> int:
        return sum(p.numel() for p in self.generators.parameters())

    # -- files -------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Everything `load` needs (the generators, and what they fit), in one torch file."""
        state = {"format": FORMAT, "hidden": self.hidden, "names": list(self.names),
                 "shapes": [list(s) for s in self.shapes], "fingerprint": [list(f) for f in self.fingerprint],
                 "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}
        atomic_write(Path(path), lambda f: torch.save(state, f))

    @classmethod
    def load(cls, path: str | Path, prunable: PrunableModel) -> PruningNet:
        """A PruningNet saved by `save`, for `prunable`; a ValueError if it does not fit that space."""
        data = torch.load(Path(path), map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a PruningNet file (format {FORMAT})")
        net = cls(prunable, hidden=int(data["hidden"]))
        net.names = list(data["names"])
        net.shapes = [tuple(s) for s in data["shapes"]]
        net.fingerprint = [tuple(f) for f in data["fingerprint"]]
        reason = net.mismatch(prunable)
        if reason is not None:
            raise ValueError(f"{path} does not fit this space: {reason}")
        net.load_state_dict(data["state_dict"])
        device = next(iter(prunable.model.parameters()), torch.empty(0)).device
        return net.to(device)


# -- training --------------------------------------------------------------------------------------
def train_pruningnet(pruningnet: PruningNet, loader: Iterable, *, epochs: int, lr: float = 1e-3,
                     sample: Callable[[np.random.Generator], Candidate] | None = None, seed: int = 0,
                     progress: bool = True) -> list[dict[str, float]]:
    """Train the generators on `loader` ((x, y) batches), one random candidate per mini-batch.

    `sample(rng)` draws the candidates (default: uniform over the whole space, as MetaPruning does;
    `feasible_sampler` keeps to a budget). Adam at `lr`, decayed to 0 by a cosine over all steps. Seeded:
    the candidates come from `np.random.default_rng(seed)`, and torch's global RNG (a shuffling
    loader, augmentation) is seeded with `seed` inside a fork, so the caller's RNG state is untouched.
    The base model is left as it was (see the module docstring). Returns one record per epoch.
    """
    if epochs < 0 or lr <= 0:
        raise ValueError("train_pruningnet needs epochs >= 0 and lr > 0")
    prunable = pruningnet.prunable
    space = prunable.space
    sample = sample or space.sample
    rng = np.random.default_rng(seed)
    elastic = ElasticModel(prunable)
    snapshot = elastic.bn_snapshot()
    steps = max(1, epochs * len(loader))  # type: ignore[arg-type]
    history: list[dict[str, float]] = []
    bar = tqdm(total=epochs * len(loader), desc="training the PruningNet", disable=not progress, leave=False)  # type: ignore[arg-type]
    try:
        with elastic.trainable(seed, freeze_base=True) as device:
            pruningnet.to(device).train()
            try:  # the fused kernel is ~10x faster on the generators' millions of parameters
                optimizer = torch.optim.Adam(pruningnet.generators.parameters(), lr=lr, fused=True)
            except (RuntimeError, TypeError, ValueError):
                optimizer = torch.optim.Adam(pruningnet.generators.parameters(), lr=lr)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                          lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
            pruningnet.install(elastic)
            for epoch in range(epochs):
                started = time.perf_counter()
                loss_sum = correct = seen = 0.0
                for x, y in loader:
                    x, y = x.to(device), torch.as_tensor(y).to(device)
                    elastic.apply(sample(rng))
                    out = elastic(x)
                    loss = F.cross_entropy(out, y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    loss_sum += loss.item() * y.numel()
                    correct += hits(out, y).item()
                    seen += y.numel()
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", refresh=False)
                history.append({"epoch": epoch + 1, "loss": loss_sum / max(1, seen),
                                "train_top1": correct / max(1, seen), "lr": optimizer.param_groups[0]["lr"],
                                "seconds": time.perf_counter() - started})
    finally:
        bar.close()
        PruningNet.uninstall(elastic)
        elastic.restore_bn(snapshot)
        pruningnet.eval()
    return history


# -- scoring ---------------------------------------------------------------------------------------
class PruningNetEvaluator(AccuracyEvaluator):
    """`AccuracyEvaluator` scoring with the PruningNet's generated weights (a fresh one if None).

    Same inputs, same scoring loop (BN recalibration on the calibration batches, top-1 on the held-out
    batches), same `restore()` and context manager. `of(evaluator, pruningnet)` shares the batches of
    an existing `AccuracyEvaluator` and the base statistics it snapshotted.
    """

    def __init__(self, prunable: PrunableModel, calibration: Sequence[torch.Tensor],
                 held_out: Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str = "cpu",
                 pruningnet: PruningNet | None = None):
        if pruningnet is not None:
            pruningnet.check(prunable)
        super().__init__(prunable, calibration, held_out, device)
        self.pruningnet = (pruningnet or PruningNet(prunable)).to(self.device).eval()
        self.pruningnet.install(self.elastic)

    @classmethod
    def of(cls, evaluator: AccuracyEvaluator, pruningnet: PruningNet) -> PruningNetEvaluator:
        """A PruningNet scorer on `evaluator`'s cached batches (no data loaded again)."""
        new = cls(evaluator.prunable, evaluator.calibration, evaluator.held_out, evaluator.device, pruningnet)
        new.bn_state = [tuple(t.clone() for t in saved) for saved in evaluator.bn_state]
        return new


# -- generated weights and export ----------------------------------------------------------------------
@torch.no_grad()
def generated_weights(pruningnet: PruningNet, candidate: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """The full-size weights the PruningNet generates for `candidate`, by parameter name (detached)."""
    prunable = pruningnet.prunable
    widths = prunable.widths(prunable.space.validate(candidate))
    return {name: pruningnet.generate(name, prunable.graph.tensors[name], widths).detach().clone()
            for name in pruningnet.names}


@contextlib.contextmanager
def generated_parameters(pruningnet: PruningNet, candidate: Mapping[str, int]) -> Iterator[None]:
    """Within the block, the base model's parameters hold the candidate's generated weights."""
    tensors = pruningnet.prunable.graph.tensors
    weights = generated_weights(pruningnet, candidate)
    saved = {name: tensors[name].detach().clone() for name in weights}
    try:
        with torch.no_grad():
            for name, weight in weights.items():
                tensors[name].copy_(weight)
        yield
    finally:
        with torch.no_grad():
            for name, weight in saved.items():
                tensors[name].copy_(weight)


def materialize_generated(pruningnet: PruningNet, candidate: Mapping[str, int]) -> nn.Module:
    """`materialize(candidate)` with the PruningNet's weights (recalibrate its BatchNorms before use)."""
    with generated_parameters(pruningnet, candidate):
        return materialize(pruningnet.prunable, candidate)


__all__ = ["PruningNet", "PruningNetEvaluator", "feasible_sampler", "generated_parameters", "generated_weights",
           "materialize_generated", "train_pruningnet"]
