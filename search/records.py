"""A run directory and what goes in it: run.json, journal.jsonl, trials.csv, best.json, best.pt, pareto.png."""
from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from .engine import Journal, Trial
from .errors import UserError

RUN_FILE, JOURNAL_FILE, TRIALS_FILE = "run.json", "journal.jsonl", "trials.csv"
BEST_FILE, BEST_MODEL_FILE, PLOT_FILE, PARETO_FILE = "best.json", "best.pt", "pareto.png", "pareto.csv"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")[:60] or "run"


def pareto_front(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of scored trials that no other scored trial beats on both score (higher) and FLOPs (lower)."""
    done = frame[frame.state == "complete"].sort_values(["flops", "score"], ascending=[True, False])
    keep, best = [], float("-inf")
    for index, score in zip(done.index, done.score):
        if score > best:
            keep.append(index)
            best = score
    return done.loc[keep]


class RunDirectory:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.journal = Journal(self.path / JOURNAL_FILE)

    @classmethod
    def create(cls, out: str | None, *, model: str, agent: str, budget: str) -> RunDirectory:
        """`out`, or `runs/<time>-<model>-<agent>-<budget>/`; an unwritable folder is a UserError."""
        if out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = os.path.join("runs", "-".join(_slug(s) for s in (stamp, model, agent, budget)))
        path = Path(out)
        if (path / RUN_FILE).exists():
            raise UserError(f"{path} already holds a run; use --resume {path} to continue it or pick another --out")
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise UserError(f"cannot write to output folder {path}: {error.strerror or error}") from None
        return cls(path)

    @classmethod
    def open(cls, path: str) -> RunDirectory:
        """An existing run (for --resume and fine-tuning); a folder that is not one is a UserError."""
        run = cls(Path(path))
        if not (run.path / RUN_FILE).is_file():
            raise UserError(f"{path} is not a run directory (no {RUN_FILE} in it)")
        return run

    def read(self, name: str = RUN_FILE) -> dict:
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read {self.path / name}: {error}") from None

    def write(self, name: str, data: Mapping) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        tmp.replace(self.path / name)

    def update_run(self, **fields) -> None:
        data = self.read() if (self.path / RUN_FILE).exists() else {}
        data.update(fields)
        self.write(RUN_FILE, data)

    def write_trials(self, trials: Sequence[Trial], base: Mapping[str, float],
                     measured_latency: Mapping[int, float] | None = None) -> pd.DataFrame:
        """One row per trial; latency columns (predicted, and measured where it was) when latency is priced."""
        measured_latency = measured_latency or {}
        rows = []
        for t in trials:
            r = t.result
            rows.append({"trial": t.number, "state": r.state.value, "score": r.score,
                         "flops": r.costs.get("flops"), "params": r.costs.get("params"),
                         "flops_ratio": r.costs["flops"] / base["flops"] if "flops" in r.costs else None,
                         "params_ratio": r.costs["params"] / base["params"] if "params" in r.costs else None,
                         "latency_ms": r.costs.get("latency"), "measured_latency_ms": measured_latency.get(t.number),
                         "seconds": round(r.seconds, 4), "message": r.message,
                         "architecture": json.dumps(t.candidate.to_dict(), separators=(",", ":"))})
        columns = ["trial", "state", "score", "flops", "params", "flops_ratio", "params_ratio", "latency_ms",
                   "measured_latency_ms", "seconds", "message", "architecture"]
        frame = pd.DataFrame(rows, columns=columns)
        if "latency" not in base:
            frame = frame.drop(columns=["latency_ms", "measured_latency_ms"])
        frame.to_csv(self.path / TRIALS_FILE, index=False)
        return frame

    def write_pareto(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The scored trials no other beats on both held-out score and FLOPs, by FLOPs."""
        front = pareto_front(frame)
        front.to_csv(self.path / PARETO_FILE, index=False)
        return front

    def plot(self, frame: pd.DataFrame, *, caps: Mapping[str, float], base: Mapping[str, float],
             best: Trial | None, title: str) -> None:
        """Score against FLOPs ratio: every scored trial, the Pareto front, the budget line, the best."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        done = frame[frame.state == "complete"]
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        ax.scatter(done.flops_ratio, done.score, s=14, alpha=0.6, label="scored candidates")
        front = pareto_front(frame)
        if len(front):
            ax.step(front.flops_ratio, front.score, where="post", color="tab:green", lw=1.2, marker="o",
                    markersize=4, label=f"Pareto front ({len(front)})")
        if "flops" in caps:
            ax.axvline(caps["flops"] / base["flops"], color="tab:red", ls="--", lw=1, label="FLOPs budget")
        if best is not None:
            ax.scatter([best.result.costs["flops"] / base["flops"]], [best.result.score], marker="*", s=220,
                       color="tab:orange", edgecolor="black", zorder=5, label="best")
        ax.set_xlabel("FLOPs / base FLOPs")
        ax.set_ylabel("held-out top-1 (BN-recalibrated)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(self.path / PLOT_FILE)
        plt.close(fig)
