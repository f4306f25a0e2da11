"""Finalists: the search's best few candidates, each briefly fine-tuned and scored again, so that the
exported subnet is picked by accuracy after training, not by the proxy alone.

A BN-recalibrated score ranks candidates by what their inherited weights do today; the user keeps the
model after fine-tuning. After the search, the top `count` distinct scored candidates are materialized
with the weights that will be exported (the base model's, or MetaPruning's PruningNet's), trained for
`steps` SGD steps (cosine from `lr` to 0, the shared training step of `search.finetune.step`), recalibrated
on the calibration batches and scored on the held-out batches again. They are ranked (`rank`) by one of:
`"tce"` their held-out cross-entropy at the temperature that minimizes it (`tempered_ce`), `"ce"` the
cross-entropy at the logits' own scale, `"score"` the held-out score; each alone, or `"...+proxy"`: that
figure's rank plus the proxy's (ties keep the proxy's order). With the user's own metric there is no
cross-entropy: its score stands in. The first is exported with the weights it was trained to, and its
held-out score, the score of what is exported, is the one reported.

What they train on: labelled training batches when the data has them (the zoo's fit split, never the
held-out part); otherwise the calibration inputs, distilled from the base model's outputs (no labels
needed). With `steps=0` nothing trains: the finalists are only scored again with the exported weights,
which is what makes MetaPruning's result honest (its proxy scores PruningNet weights), and re-ranked by
their held-out cross-entropy after BN recalibration (search.run's default, `--finalists 10 --finalist-steps 0
--finalist-rank tce`: in `benchmarks/fidelity.py` that cross-entropy ranked the candidates' accuracy after the
common fine-tune better than the top-1 the search ranks by, and better than any short fine-tune; tempered, it
no longer prefers a near-chance subnet whose logits are merely flat, which on MobileNetV2 at 0.1 x FLOPs
exported the one-shot magnitude candidate: docs/benchmarks.md).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from evaluators.accuracy import AccuracyEvaluator, recalibrate, top1
from spaces.derive import PrunableModel
from spaces.space import Candidate

from search.engine.config import FINALIST_RANKINGS as RANKINGS
from search.engine.records import FINALISTS_FILE, Trial
from search.finetune.step import Distillation, TrainConfig, make_optimizer, train_epoch
from search.selection.one_shot import one_shot_finalists, origin

if TYPE_CHECKING:
    from search.engine.pipeline import Pipeline

log = logging.getLogger(__name__)

Batches = Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]  # seed -> endless (x, y) batches


@dataclass(frozen=True)
class FinalistSettings:
    count: int = 5          # candidates fine-tuned and scored again (0: pick by the proxy alone)
    steps: int = 50         # SGD steps each (0: scored again with the exported weights only)
    lr: float = 0.05        # peak learning rate, cosine to 0 over the steps (0.01 picked worse: the benchmark)
    weight_decay: float = 5e-4
    seed: int = 0
    rank: str = "ce+proxy"  # one of RANKINGS: how the finalists are ordered (see the module docstring)
    rungs: tuple[int, ...] = ()  # rising total steps (successive halving); () is one rung of `steps`
    halving: int = 3        # each rung keeps its best 1/halving for the next (at least one)

    def schedule(self) -> tuple[int, ...]:
        """The total steps a finalist has after each rung."""
        return tuple(self.rungs) or (self.steps,)


@dataclass
class Finalist:
    trial: Trial                    # the search's trial: its score is the proxy's
    score: float                    # held-out score after the short fine-tune (NaN if it diverged)
    seconds: float
    steps: int = 0                   # fine-tuning steps it had
    module: nn.Module | None = None  # trained and recalibrated; dropped once the winner is known
    loss: float = math.nan           # held-out cross-entropy after the short fine-tune, tempered when ranked by
                                     # tce (NaN with a user metric)
    rung: int = 0                    # the last rung it trained in (successive halving; 0 with one rung)

    @property
    def proxy(self) -> float:
        return float(self.trial.result.score)


def top_distinct(trials: Sequence[Trial], count: int,
                 canonical: Callable[[Candidate], Candidate] | None = None) -> list[Trial]:
    """The `count` best scored trials, each subnet once (best first: fully scored before raced-out ones, then
    score, then fewer FLOPs, then earlier). `canonical` names a candidate's subnet (`PrunableModel.canonical`:
    candidates that differ only inside removed blocks are one subnet); default: each candidate is its own."""
    done = sorted((t for t in trials if t.result.ok and t.result.score is not None and math.isfinite(t.result.score)),
                  key=lambda t: (t.result.raced, -t.result.score, t.result.costs.get("flops", 0), t.number))
    seen: set[Candidate] = set()
    chosen = []
    for trial in done:
        subnet = canonical(trial.candidate) if canonical is not None else trial.candidate
        if subnet not in seen:
            seen.add(subnet)
            chosen.append(trial)
        if len(chosen) == count:
            break
    return chosen


def loader_batches(loader: Iterable, device: torch.device | str | None = None) -> Batches:
    """Endless (x, y) batches from a labelled loader (re-iterated as often as needed; moved to `device` if given).
    A batch of one sample (a loader's last, without `drop_last`) is skipped: BatchNorm cannot train on it."""
    def batches(seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        torch.manual_seed(seed)  # a shuffling loader's order and random augmentations follow the seed
        while True:
            empty = True
            for x, y in loader:
                if len(x) < 2:
                    continue
                empty = False
                y = torch.as_tensor(y)
                yield (x, y) if device is None else (x.to(device), y.to(device))
            if empty:
                return
    return batches


@dataclass
class ShuffledBatches:
    """Endless shuffled (x, y) batches of a dataset, the order seeded (picklable: it travels to Ray workers)."""

    dataset: Any
    batch_size: int

    def __call__(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True,
                            drop_last=len(self.dataset) > self.batch_size,
                            generator=torch.Generator().manual_seed(seed))
        return loader_batches(loader)(seed)

    @property
    def per_pass(self) -> int:
        """Samples one pass yields: its last partial batch is dropped when there is more than one batch."""
        n = len(self.dataset)
        return n // self.batch_size * self.batch_size if n > self.batch_size else n


def samples_per_pass(source: Any) -> int | None:
    """How many distinct samples one pass of `source` yields (a `ShuffledBatches`, or a loader with a sized
    `dataset` and a `batch_size`, as `torch.utils.data.DataLoader`); None when it cannot tell."""
    if isinstance(source, ShuffledBatches):
        return source.per_pass
    try:
        n, size = len(source.dataset), source.batch_size
    except (AttributeError, TypeError):
        return None
    return n // size * size if getattr(source, "drop_last", False) and size else n


def distilled_batches(inputs: Sequence[torch.Tensor], teacher: nn.Module) -> Batches:
    """Endless (x, teacher's argmax) batches over `inputs` in a seeded order: with `Distillation(alpha=1)` the
    loss is the teacher's soft targets alone (the argmax only fills the unused hard term)."""
    with torch.no_grad():
        was = teacher.training
        teacher.eval()
        labels = [teacher(x).argmax(1) for x in inputs]
        teacher.train(was)

    def batches(seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng(seed)
        while True:
            for i in rng.permutation(len(inputs)):
                yield inputs[i], labels[i]
    return batches


def short_finetune(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], settings: FinalistSettings,
                   *, device: torch.device, teacher: nn.Module | None = None) -> int:
    """`settings.steps` steps of the shared training step on `batches`, in place (distilled when `teacher`); the
    steps taken (fewer when `batches` ran out)."""
    if settings.steps <= 0:
        return 0
    optimizer, scheduler = make_optimizer(model, TrainConfig(epochs=1, lr=settings.lr,
                                                             weight_decay=settings.weight_decay), settings.steps)
    kd = Distillation(alpha=1.0) if teacher is not None else None
    taken = itertools.count()
    counted = (batch for batch, _ in zip(itertools.islice(batches, settings.steps), taken))
    train_epoch(model, counted, optimizer, scheduler, device=device, teacher=teacher, kd=kd)
    model.eval()
    return next(taken)


def train_finalist(module: nn.Module, rank: int, settings: FinalistSettings, batches: Batches | None,
                   calibration: Sequence[torch.Tensor], held_out: Sequence[tuple[torch.Tensor, torch.Tensor]],
                   metric: Callable[[nn.Module], float] | None, teacher: nn.Module | None,
                   device: torch.device | str) -> tuple[nn.Module, float, int, float, float]:
    """One finalist: its short fine-tune, BN recalibration and held-out score; (module, score, steps, seconds,
    held-out cross-entropy).
    Self-contained (its inputs travel to a Ray worker as they are)."""
    started = time.perf_counter()
    device = torch.device(device)
    module = module.to(device)
    calibration = [x.to(device) for x in calibration]
    held_out = [(x.to(device), y.to(device)) for x, y in held_out]
    steps = 0
    if settings.steps and batches is not None:
        torch.manual_seed(settings.seed + rank)  # dropout and stochastic depth, reproducibly
        steps = short_finetune(module.train(), batches(settings.seed), settings, device=device,
                               teacher=None if teacher is None else teacher.to(device))
    recalibrate(module, calibration)
    try:
        score = score_module(module, held_out, metric)
    except Exception as error:  # noqa: BLE001 - a finalist the user's score rejects is not exported
        log.warning("finalist %d: scoring failed (%s); skipped", rank + 1, error)
        score = math.nan
    loss = held_out_loss(module, held_out, calibrated=settings.rank.startswith("tce")) \
        if metric is None and math.isfinite(score) else math.nan
    return module, score, steps, time.perf_counter() - started, loss


def run_finalists(trials: Sequence[Trial], settings: FinalistSettings, *, build: Callable[[Candidate], nn.Module],
                  batches: Batches | None, calibration: Sequence[torch.Tensor],
                  held_out: Sequence[tuple[torch.Tensor, torch.Tensor]],
                  metric: Callable[[nn.Module], float] | None = None, teacher: nn.Module | None = None,
                  device: torch.device | str, progress: Callable[[str], None] | None = None,
                  parallel: Callable[[Callable, list[tuple]], list] | None = None,
                  forced: Sequence[Trial] = (), origin_of: Callable[[Trial], str] | None = None,
                  canonical: Callable[[Candidate], Candidate] | None = None) -> list[Finalist]:
    """Fine-tune and score again the top `settings.count` distinct trials, and the `forced` ones (the one-shot
    candidates) after them; best first (by `settings.rank`), then those a rung left behind.

    With one rung (`settings.schedule()` is `(steps,)`) every finalist trains `steps` steps. With several
    (successive halving), every finalist trains to the first, is scored and ranked (by `settings.rank`), and the
    best `1 / settings.halving` of each rung (at least one) trains on, from where it is, to the next, where it is
    ranked by that rung's own score or cross-entropy (the `+proxy` part of a ranking counts only in the first
    rung: the proxy already chose who went on, and with two left a rank sum ties whenever they disagree). Synchronous
    rungs: each is decided on the scores of all its finalists, so the order they finish in never matters (the
    asynchronous ASHA of Optuna's and Ray Tune's schedulers promotes the first finalists of a rung whatever
    comes after). Nor can those schedulers (Optuna's `SuccessiveHalvingPruner`, Ray Tune's `ASHAScheduler` and
    `HyperBandScheduler`) express rungs like 20, 80, 320 with a third going on: one reduction factor sets both
    the rungs' spacing (r, r * eta, r * eta^2) and the fraction promoted (1 / eta). `build(candidate)` materializes a subnet with the weights to export. `parallel(fn, jobs)` runs
    `fn(*job)` for every job (e.g. as Ray tasks) and returns the results in order; default: one after the other.
    `origin_of(trial)` names where a finalist came from in the progress lines (default: `origin` without the
    one-shot methods' names). `canonical` names a candidate's subnet (see `top_distinct`): each subnet is one
    finalist, however many names the search gave it.
    """
    chosen = top_distinct(trials, settings.count, canonical)
    subnet = canonical or (lambda candidate: candidate)
    extra = [t for t in forced if all(subnet(t.candidate) != subnet(c.candidate) for c in chosen)]
    # one proxy order for all (the "+proxy" rankings read it): a forced one takes the place its own score gives it
    chosen = top_distinct([*chosen, *extra], len(chosen) + len(extra), canonical)
    label = origin_of or (lambda trial: origin(trial, {}))
    alive = [Finalist(trial, math.nan, 0.0, 0, build(trial.candidate)) for trial in chosen]  # in the proxy's order
    behind: list[Finalist] = []
    done, schedule = 0, settings.schedule()
    for rung, total in enumerate(schedule):
        step = dataclasses.replace(settings, steps=total - done, seed=settings.seed + rung)
        jobs = [(f.module, chosen.index(f.trial), step, batches, calibration, held_out, metric, teacher, device)
                for f in alive]
        results = parallel(train_finalist, jobs) if parallel is not None else [train_finalist(*job) for job in jobs]
        for f, (module, score, steps, seconds, loss) in zip(alive, results):
            f.module, f.score, f.loss, f.seconds, f.steps = module, score, loss, f.seconds + seconds, f.steps + steps
            f.rung = rung
            if progress is not None:
                progress(f"finalist {chosen.index(f.trial) + 1}/{len(chosen)}"
                         + (f", rung {rung + 1}/{len(schedule)}" if len(schedule) > 1 else "")
                         + f": trial {f.trial.number}{' (' + where + ')' if (where := label(f.trial)) != 'search' else ''}"
                         f", proxy {f.proxy:.4f} -> {score:.4f} after {f.steps} steps"
                         + (f" (cross-entropy {loss:.4f})" if math.isfinite(loss) else ""))
        # the first rung by `settings.rank`; a later one by its own signal alone, ties kept in the previous rung's
        # order: the proxy already chose who got this far, and with two finalists left a rank sum always ties
        ranked = rank_finalists(alive, settings.rank if rung == 0 else settings.rank.removesuffix("+proxy"))
        if rung == len(schedule) - 1:
            break
        keep = max(1, math.ceil(len(ranked) / settings.halving))
        for f in ranked[keep:]:
            f.module = None  # left behind at this rung: not exported
        behind = ranked[keep:] + behind
        alive = ranked[:keep]  # in this rung's order: the next rung's ties follow it
        done = total
    return ranked + behind


def rank_finalists(finalists: Sequence[Finalist], rank: str = "ce+proxy") -> list[Finalist]:
    """`finalists` (given in the proxy's order) ordered by `rank` (see the module docstring), best first; those
    without a finite score last. Cross-entropy stands in for the score only when every finalist with a finite
    score has a finite one (not with a user metric)."""
    if rank not in RANKINGS:
        raise ValueError(f"finalists' rank must be one of {', '.join(RANKINGS)}, got {rank!r}")
    scored = [f for f in finalists if math.isfinite(f.score)]
    use_ce = rank.startswith(("ce", "tce")) and bool(scored) and all(math.isfinite(f.loss) for f in scored)
    signal = [(-f.loss if use_ce else f.score) if math.isfinite(f.score) else -math.inf for f in finalists]
    order = sorted(range(len(finalists)), key=lambda i: (-signal[i], i))
    place = {i: r for r, i in enumerate(order)}
    with_proxy = rank.endswith("+proxy")
    key = lambda i: (not math.isfinite(finalists[i].score), place[i] + (i if with_proxy else 0), i)  # noqa: E731
    return [finalists[i] for i in sorted(range(len(finalists)), key=key)]


def ray_parallel(cpus: float = 1, gpus: float = 0) -> Callable[[Callable, list[tuple]], list]:
    """`parallel` for `run_finalists`: each finalist a Ray task (on the running Ray, e.g. the search's workers')."""
    import ray

    def parallel(fn: Callable, jobs: list[tuple]) -> list:
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(fn)
        moved = [(module.cpu(), rank, settings, batches, [x.cpu() for x in calibration],
                  [(x.cpu(), y.cpu()) for x, y in held_out], metric,
                  None if teacher is None else copy.deepcopy(teacher).cpu(), "cuda" if gpus > 0 else "cpu")
                 for module, rank, settings, batches, calibration, held_out, metric, teacher, _ in jobs]
        results = ray.get([task.remote(*job) for job in moved])
        return results
    return parallel


def score_module(module: nn.Module, held_out: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 metric: Callable[[nn.Module], float] | None = None) -> float:
    """A materialized, recalibrated subnet's held-out score, in eval mode: the user's metric, else top-1
    (NaN when its weights are not finite, e.g. after a diverged fine-tune)."""
    module.eval()
    if not all(torch.isfinite(p).all() for p in module.parameters()):
        return math.nan
    with torch.no_grad():
        return float(metric(module)) if metric is not None else top1(module, held_out)


def held_out_loss(module: nn.Module, held_out: Sequence[tuple[torch.Tensor, torch.Tensor]],
                  calibrated: bool = False) -> float:
    """Mean held-out cross-entropy of a recalibrated classifier, in eval mode (NaN if its output is not a logits
    matrix or the loss is not finite). `calibrated`: at the temperature that minimizes it (`tempered_ce`)."""
    module.eval()
    logits, labels = [], []
    with torch.no_grad():
        for x, y in held_out:
            out = module(x)
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                return math.nan
            logits.append(out.float())
            labels.append(y)
    if not logits:
        return math.nan
    z, y = torch.cat(logits), torch.cat(labels).to(logits[0].device)
    loss = tempered_ce(z, y) if calibrated else F.cross_entropy(z, y).item()
    return loss if math.isfinite(loss) else math.nan


def tempered_ce(logits: torch.Tensor, labels: torch.Tensor, iterations: int = 60) -> float:
    """The cross-entropy of `logits` at the temperature that minimizes it (temperature scaling, Guo et al. 2017):
    min over b >= 0 of CE(b * logits), which is convex in b (b = 0: uniform, log C). It measures what the
    logits tell apart, not their scale: after heavy pruning, BN recalibration leaves many subnets near chance,
    and at their own scale the one with the flattest logits has the lowest cross-entropy, whatever it knows."""
    if not torch.isfinite(logits).all():
        return math.nan

    def ce(b: float) -> float:
        return F.cross_entropy(logits * b, labels).item()

    high = 1.0
    while ce(2 * high) < ce(high) and high < 2 ** 20:  # bracket the minimum: convex, so it lies below 2 * high
        high *= 2
    low, high = 0.0, 2 * high
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = ce(a), ce(b)
    for _ in range(iterations):  # golden-section search: the bracket shrinks by 0.618 each step
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = ce(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = ce(b)
    return min(fa, fb, ce(0.0), ce(1.0))


def finalists_frame(finalists: Sequence[Finalist], base: dict[str, float], exported: Trial | None,
                    one_shot: Mapping[str, Trial] | None = None) -> pd.DataFrame:
    """finalists.csv: one row per finalist, in the order they were ranked; `exported` marks the one exported
    (the first, unless the latency check skipped it; none if it skipped them all); `one_shot` ({method: trial})
    names the one-shot methods in `origin`."""
    rows = [{"rank": i + 1, "trial": f.trial.number, "proxy_score": f.proxy, "finalist_score": f.score,
             "finalist_ce": f.loss, "steps": f.steps, "rung": f.rung + 1, "origin": origin(f.trial, one_shot or {}),
             "flops_ratio": f.trial.result.costs.get("flops", math.nan) / base["flops"],
             "params_ratio": f.trial.result.costs.get("params", math.nan) / base["params"],
             "seconds": round(f.seconds, 3), "exported": f.trial is exported} for i, f in enumerate(finalists)]
    return pd.DataFrame(rows, columns=["rank", "trial", "origin", "proxy_score", "finalist_score", "finalist_ce", "steps", "rung",
                                       "flops_ratio", "params_ratio", "seconds", "exported"])


# ---------------------------------------------------------------- the stage in a run
def finalist_batches(pipeline: Pipeline):
    """What finalists train on: labelled batches (the zoo's fit split, or `prune(train=...)`), else the
    calibration inputs distilled from the base model when its output is a logits matrix, else None."""
    inputs, c = pipeline.inputs, pipeline.config
    if inputs.data is not None:
        return ShuffledBatches(Subset(inputs.data.train, inputs.data.fit.tolist()), c.batch_size), None
    if inputs.train is not None:
        return loader_batches(inputs.train), None
    teacher = inputs.model.to(pipeline.device).eval()
    with torch.no_grad():
        out = teacher(inputs.calibration[0][:2])
    if isinstance(out, torch.Tensor) and out.dim() == 2:
        return distilled_batches(inputs.calibration, teacher), teacher
    return None, None


def pick_finalists(pipeline: Pipeline, prunable: PrunableModel, trials: list[Trial], evaluator: AccuracyEvaluator,
                   pruningnet=None) -> list[Finalist]:
    """The top `--finalists` candidates, fine-tuned briefly and scored again, best first (see
    `search.selection.finalists`); [] when the proxy's pick stands (no finalists, or nothing they could change)."""
    c = pipeline.config
    rescore = c.scorer_name == "pruningnet" and c.exported_weights != "pruningnet"  # the proxy scored other weights
    rescore = rescore or c.finalist_rank.startswith(("ce", "tce"))  # untrained, the cross-entropy still re-ranks them
    rungs = c.finalist_rungs
    batches, teacher = finalist_batches(pipeline) if c.finalists and rungs[-1] else (None, None)
    if batches is None:
        rungs = (0,)
    steps = rungs[-1]
    if not c.finalists or (steps == 0 and not rescore):
        if c.finalists and c.finalist_rungs[-1]:
            log.info("finalists skipped: no labelled training batches, and the model's output is not a "
                     "logits matrix to distil (pass prune(train=...) to fine-tune finalists)")
        return []
    settings = FinalistSettings(count=c.finalists, steps=steps, lr=c.finalist_lr, seed=c.seed,
                                rank=c.finalist_rank, rungs=rungs if len(rungs) > 1 else ())
    forced = one_shot_finalists(pipeline.one_shot)
    log.info("finalists: the best %s%s, %s, scored again on held-out",
             "candidate" if c.finalists == 1 else f"{c.finalists} candidates",
             " and the one-shot ones (" + ", ".join(f"{name}: trial {t.number}" for name, t in pipeline.one_shot.items())
             + ")" if forced else "",
             f"{steps} fine-tuning steps each" if len(rungs) == 1 else
             f"rungs of {', '.join(map(str, rungs))} steps, the best third of each going on")
    parallel, started = None, False
    if steps and (c.workers or c.ray_address):  # the finalists train at once, one per Ray worker
        from evaluators.executors import init_ray

        started = init_ray(c.ray_address, num_cpus=max(c.workers, 1) * c.cpus_per_worker)
        parallel = ray_parallel(c.cpus_per_worker, c.gpus_per_worker)
        log.info("finalists: trained as Ray tasks (%g CPU, %g GPU each)", c.cpus_per_worker, c.gpus_per_worker)
    try:
        refit = True if pipeline.ranks_refit(prunable) else None  # untrained: scored on refit copies (--reconstruct)
        ranked = run_finalists(trials, settings, build=pipeline.build(prunable, pruningnet, refit=refit), batches=batches,
                               calibration=evaluator.calibration, held_out=evaluator.held_out,
                               metric=evaluator.metric, teacher=teacher, device=pipeline.device,
                               progress=log.info, parallel=parallel, forced=forced,
                               origin_of=lambda trial: origin(trial, pipeline.one_shot), canonical=prunable.canonical)
    finally:
        if started:
            import ray

            ray.shutdown()
    for finalist in ranked:
        if finalist.module is not None:
            finalist.module.to(pipeline.device)
    if not ranked or not np.isfinite(ranked[0].score):
        log.warning("no finalist scored a finite value after fine-tuning: exporting the proxy's best as it is")
        return []
    first = ranked[0]
    log.info("finalists ranked by %s: first trial %d (%s), %s %.4f%s", c.finalist_rank, first.trial.number,
             origin(first.trial, pipeline.one_shot), "score" if evaluator.metric else "held-out top-1", first.score,
             f", cross-entropy {first.loss:.4f}" if math.isfinite(first.loss) else "")
    return ranked
