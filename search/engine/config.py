"""`SearchConfig`: everything a search run is, typed and self-validating; saved as `run.json`'s `args`.

One dataclass is the configuration of a run for the CLI (`search.run` builds it from its flags), for
the Python API (`search.prune`) and for the benchmarks. Its fields carry the CLI's option names
(`--no-warm-start` is `no_warm_start`), so a run directory written by any of them reads the same.

What may change on resume (`RESUMABLE`): how long the search goes on (`trials`), where it runs
(`workers`, `ray_address`, `cpus_per_worker`, `gpus_per_worker`) and where an Optuna study lives
(`storage`, `study_name`), and what happens after it (filling the budget, the finalists and the reconstruction
of what is built: `fill`, `finalists`, `finalist_steps`, `finalist_lr`, `finalist_rank`, `reconstruct`). Everything else decides which candidates are proposed or how they are
scored; changing it would make the resumed run a different run, so it is refused (`resumed`).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from search.errors import UserError

DEFAULT_TRIALS = 200
DEFAULT_RATIOS_TEXT = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"
#: agent options a user may set; each applies only to the agents whose constructor takes it
AGENT_OPTIONS = ("food_sources", "limit", "genes", "startup_trials", "history", "ei_candidates", "updates",
                 "population", "parents", "storage", "study_name")
#: fields a resumed run may change (see the module docstring), in the order the refusal lists them
RESUMABLE_ORDER = ("trials", "workers", "ray_address", "cpus_per_worker", "gpus_per_worker", "storage", "study_name",
                   "fill", "finalists", "finalist_steps", "finalist_lr", "finalist_rank", "no_one_shot",
                   "reconstruct")
RESUMABLE = frozenset(RESUMABLE_ORDER)
#: counts: a fraction of one is refused (an API caller's finalists=2.5 is not rounded silently)
WHOLE = ("trials", "calib_batches", "batch_size", "eval_samples", "round_to", "latency_batch", "racing_top_k",
         "racing_chunk", "pruningnet_epochs", "baseline_epochs", "workers", "seed", "finalists", "reconstruct")
SCORERS = ("base", "pruningnet")
BACKENDS = ("actors", "tune")
BLOCK_ENCODINGS = ("flags", "depth")
#: how finalists are ordered after their short fine-tune (`search.selection.finalists`; benchmarks/finalists.py measured them)
FINALIST_RANKINGS = ("tce", "tce+proxy", "ce", "ce+proxy", "score", "score+proxy")


def parse_steps(text: str) -> int | list[int]:
    """`--finalist-steps` as written: one number of steps ("50"), or rising ones separated by commas (rungs:
    "20,80,320"); a ValueError when a part is not a whole number."""
    steps = [int(part) for part in text.split(",")]
    return steps[0] if len(steps) == 1 else steps


@dataclass
class SearchConfig:
    agent: str = ""
    budget: list[str] = field(default_factory=list)      # repeatable limits, all must hold (search.engine.budget)
    model: str = "resnet20"
    weights: str | None = None
    data: str = "digits"
    trials: int = DEFAULT_TRIALS
    seed: int = 0                                         # the data split, the baseline and the agent
    width_ratios: str = DEFAULT_RATIOS_TEXT               # allowed width ratios of every channel group
    round_to: int = 1
    no_block_removal: bool = False
    block_encoding: str = "flags"      # flags: a keep flag per removable block; depth: a depth per run of blocks
    no_warm_start: bool = False
    scorer: str | None = None          # base | pruningnet; None: pruningnet for metapruning, else base
    calib_batches: int = 2             # BN recalibration batches: benchmarks/calibration.py (rho >= 0.994 vs 32)
    batch_size: int = 64
    eval_samples: int = 1024
    held_out: float = 0.2              # a share of the training set if < 1, else a count
    no_racing: bool = False            # score every candidate on all held-out samples (evaluators.racing)
    racing_top_k: int = 10             # racing stops a candidate once it cannot enter the k best scores so far
    racing_confidence: float = 0.99    # per candidate: the chance that racing does not stop one that would enter
    racing_chunk: int = 64             # held-out samples per racing step (the held-out batch size when racing)
    device: str = "auto"
    latency: bool = False
    latency_batch: int = 1
    latency_backend: str = "torch"     # the runtime latency is timed on: torch | onnxruntime | openvino
    baseline_epochs: int = 30          # epochs to train a zoo model given without weights (cached)
    workers: int = 0
    ray_address: str | None = None
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    backend: str = "actors"
    food_sources: int | None = None
    limit: int | None = None
    genes: int | None = None
    startup_trials: int | None = None
    history: int | None = None         # tpe: recent trials its model sees (plus the 50 best); 0: all
    ei_candidates: int | None = None   # tpe: candidates drawn per ask to maximize expected improvement (24)
    updates: int | None = None         # amc: gradient updates per episode
    population: int | None = None
    parents: int | None = None
    storage: str | None = None
    study_name: str | None = None
    pruningnet: str | None = None
    pruningnet_epochs: int = 30
    export_weights: str = "base"
    supernet_epochs: float = 0         # epochs training the shared weights as a supernet before the search (sandwich
    #   rule, in-place distillation: search.finetune.supernet); the search scores and exports those weights
    fill: bool = False                 # widen the best candidates until the budget binds; scored as extra trials
    finalists: int = 10                # top candidates scored again on all of held-out (after their steps, if any)
    finalist_steps: int | list[int] = 0   # SGD steps per finalist (0: scored again with the exported weights only;
    #   benchmarks/train_aware.py: 10 x 0 by cross-entropy matched 5 x 50 at equal training on ResNet-20, led on
    #   MobileNetV2, and costs no SGD step);
    #   a rising list (20,80,320) runs rungs: every finalist trains to the first, the best third of each rung
    #   trains on to the next (successive halving), and the last rung's best is exported
    no_one_shot: bool = False          # else global magnitude and uniform pruning at the budget are scored (extra
    #   trials) and always among the finalists, so the export is never one the finalists rank below one-shot pruning
    finalist_lr: float = 0.05          # 0.01 picked worse than the proxy alone (benchmarks/finalists.py)
    finalist_rank: str = "tce"         # one of FINALIST_RANKINGS: held-out cross-entropy after BN recalibration, at the
    #   temperature that minimizes it (tce; ce: at the logits' own scale, which a near-chance subnet with flat
    #   logits wins: docs/benchmarks.md); +proxy adds the proxy's rank
    reconstruct: int | None = None     # training inputs on which every subnet built for the finalists and the export
    #   gets its layers refit by least squares to the full model's outputs (spaces.reconstruct); 0: off; None:
    #   spaces.reconstruct.default_inputs (1024, fewer for large inputs)
    trust_pickle: bool = False         # allow unpickling a whole model file (--model PATH.pt): runs its code
    out: str | None = None

    # ------------------------------------------------------------------ derived views
    @property
    def ratios(self) -> tuple[float, ...]:
        try:
            ratios = tuple(sorted({float(r) for r in str(self.width_ratios).split(",") if r.strip()}))
        except ValueError:
            raise UserError(f"--width-ratios must be numbers separated by commas, got {self.width_ratios!r}") from None
        if not ratios or not all(0 < r <= 1 for r in ratios):
            raise UserError(f"--width-ratios must lie in (0, 1], got {self.width_ratios!r}")
        return ratios

    @property
    def finalist_rungs(self) -> tuple[int, ...]:
        """The finalists' steps as rungs: (50,) for one short fine-tune, (20, 80, 320) for successive halving."""
        steps = self.finalist_steps
        return tuple(steps) if isinstance(steps, (list, tuple)) else (steps,)

    @property
    def scorer_name(self) -> str:
        return self.scorer or ("pruningnet" if self.agent == "metapruning" else "base")

    @property
    def held_out_size(self) -> int | float:
        return self.held_out if self.held_out < 1 else int(self.held_out)

    def agent_options(self) -> dict[str, Any]:
        """The agent options that were set; one the agent does not take is a UserError."""
        from agents.registry import agent_options

        options = {k: getattr(self, k) for k in AGENT_OPTIONS if getattr(self, k) is not None}
        accepted = agent_options(self.agent)
        for name in options:
            if name not in accepted:
                raise UserError(f"--{name.replace('_', '-')} does not apply to agent {self.agent}")
        return options

    def idle_finalist_options(self) -> list[str]:
        """The finalists' options set away from their defaults while `--finalists 0` turns the stage off."""
        if self.finalists:
            return []
        return ["--" + name.replace("_", "-") for name in ("finalist_steps", "finalist_rank", "finalist_lr", "no_one_shot")
                if _normal(getattr(self, name)) != _normal(getattr(SearchConfig, name))]

    def derive_options(self) -> dict[str, Any]:
        return {"ratios": self.ratios, "round_to": self.round_to, "removable_blocks": not self.no_block_removal,
                "block_encoding": self.block_encoding}

    # ------------------------------------------------------------------ validation
    def validate(self) -> SearchConfig:
        """Every check that needs no model or data; raises UserError naming the option."""
        from agents.registry import list_agents

        if not self.agent:
            raise UserError(f"give --agent ({', '.join(list_agents())})")
        if self.agent not in list_agents():
            raise UserError(f"unknown agent {self.agent!r}; choose from {', '.join(list_agents())}")
        for name in ("trials", "calib_batches", "batch_size", "eval_samples", "round_to", "latency_batch",
                     "racing_top_k", "racing_chunk",
                     "pruningnet_epochs", "cpus_per_worker", *[o for o in AGENT_OPTIONS if o not in
                                                               ("storage", "study_name", "history")]):
            value = getattr(self, name)
            if value is not None and not (_finite(value) and value > 0):
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.batch_size is not None and _finite(self.batch_size) and self.batch_size == 1:
            raise UserError("--batch-size must be at least 2: BatchNorm cannot train on batches of one sample")
        for name in ("baseline_epochs", "workers", "gpus_per_worker", "seed", "finalists", "supernet_epochs",
                     "reconstruct"):
            value = getattr(self, name)
            if not (value is None and name == "reconstruct") and not (_finite(value) and value >= 0):
                raise UserError(f"--{name.replace('_', '-')} must be 0 or more, got {value}")
        for name in WHOLE:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value != int(value)):
                raise UserError(f"--{name.replace('_', '-')} must be a whole number, got {value}")
        given = self.finalist_steps
        if isinstance(given, str):  # an API caller's "20,80,320", as on the command line
            try:
                self.finalist_steps = parse_steps(given)
            except ValueError:
                pass  # refused just below, naming what was given
        rungs = self.finalist_rungs
        if not rungs or not all(isinstance(r, int) and r >= 0 for r in rungs) or list(rungs) != sorted(set(rungs)):
            raise UserError(f"--finalist-steps must be a whole number of steps >= 0, or rising ones separated by "
                            f"commas (rungs, e.g. 20,80,320), got {given!r}")
        if not (_finite(self.finalist_lr) and self.finalist_lr > 0):
            raise UserError(f"--finalist-lr must be positive, got {self.finalist_lr}")
        if self.finalist_rank not in FINALIST_RANKINGS:
            raise UserError(f"--finalist-rank must be one of {', '.join(FINALIST_RANKINGS)}, got {self.finalist_rank!r}")
        if not (_finite(self.racing_confidence) and 0 < self.racing_confidence < 1):
            raise UserError(f"--racing-confidence must lie in (0, 1), got {self.racing_confidence}")
        if self.history is not None and self.history < 0:
            raise UserError(f"--history must be 0 (all trials) or more, got {self.history}")
        if not (_finite(self.held_out) and self.held_out > 0):
            raise UserError(f"--held-out must be a share in (0, 1) or a count >= 1, got {self.held_out}")
        if self.seed >= 2**32:
            raise UserError(f"--seed must be below 2**32, got {self.seed}")
        if not self.budget:
            raise UserError("give at least one --budget (e.g. --budget 0.4flops)")
        from search.engine.budget import parse_limit

        for text in self.budget:  # its syntax now, before a model is loaded or a baseline trained
            parse_limit(text)
        for name in ("out", "weights", "ray_address"):
            value = getattr(self, name)
            if value is not None and not str(value).strip():
                raise UserError(f"--{name.replace('_', '-')} was given an empty value: give a path"
                                f"{' (host:port)' if name == 'ray_address' else ''} or leave the option out")
        if self.gpus_per_worker and not self.ray_address:
            import torch

            if not torch.cuda.is_available():
                raise UserError(f"--gpus-per-worker {self.gpus_per_worker} asks for GPUs, but this machine has none "
                                f"(CUDA is not available): leave it out, or join a cluster that has them "
                                f"(--ray-address)")
        self.ratios  # noqa: B018 - validates --width-ratios
        if self.block_encoding not in BLOCK_ENCODINGS:
            raise UserError(f"--block-encoding must be one of {', '.join(BLOCK_ENCODINGS)}, got {self.block_encoding!r}")
        from evaluators.latency_backends import missing

        if missing(self.latency_backend):
            raise UserError(missing(self.latency_backend))
        if self.backend not in BACKENDS:
            raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.export_weights not in ("base", "pruningnet"):
            raise UserError(f"--export-weights must be base or pruningnet, got {self.export_weights!r}")
        if self.scorer is not None and self.scorer not in SCORERS:
            raise UserError(f"--scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")
        if self.scorer_name == "pruningnet":
            if self.workers or self.ray_address or self.backend == "tune":
                raise UserError(f"--agent {self.agent} with the pruningnet scorer scores in this process: "
                                "drop --workers, --ray-address and --backend tune")
        elif self.pruningnet or self.export_weights == "pruningnet":
            raise UserError("--pruningnet and --export-weights pruningnet apply to --agent metapruning only "
                            "(or to --scorer pruningnet)")
        self.agent_options()
        return self

    # ------------------------------------------------------------------ JSON and resume
    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SearchConfig:
        """From `run.json`'s `args` (unknown keys of older or newer versions are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("budget"), str):
            values["budget"] = [values["budget"]]
        return cls(**values)

    def resumed(self, changes: Mapping[str, Any]) -> SearchConfig:
        """This (saved) configuration with `changes` the user gave on resume; others are refused in one line."""
        refused = sorted(k for k, v in changes.items() if k not in RESUMABLE and k in _FIELDS and
                         _normal(getattr(self, k)) != _normal(v))
        if refused:
            flags = ", ".join("--" + k.replace("_", "-") for k in refused)
            raise UserError(f"cannot change {flags} when resuming (they decide what the run searches); "
                            f"resumable: {', '.join('--' + k.replace('_', '-') for k in RESUMABLE_ORDER)}")
        values = self.to_json()
        values.update({k: v for k, v in changes.items() if k in RESUMABLE})
        return SearchConfig(**values)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


_FIELDS = frozenset(f.name for f in fields(SearchConfig))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
