"""A run directory and what goes in it: run.json, journal.jsonl, trials.csv, best.json, best.pt, pareto.png.

Every file but the journal is written whole or not at all (a temporary file, then `os.replace`), so
a full disk or a killed process never leaves a half-written table. The journal is append-only, one
JSON line per finished trial, flushed as it ends: what `--resume` replays. A line that cannot be read
(a crash mid-write, a corrupted disk block) is skipped and reported; every readable line is kept,
and the journal is never rewritten without keeping the original beside it.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from torch import nn

from spaces.files import atomic_write  # noqa: F401 (where the run directory's writers import it from)
from spaces.records import Result, TrialState
from spaces.space import Candidate

from search.errors import UserError

log = logging.getLogger(__name__)

RUN_FILE, JOURNAL_FILE, TRIALS_FILE = "run.json", "journal.jsonl", "trials.csv"
BEST_FILE, BEST_MODEL_FILE, PLOT_FILE, PARETO_FILE = "best.json", "best.pt", "pareto.png", "pareto.csv"
BEST_STATE_FILE = "best.state_dict.pt"   # the subnet's state dict: rebuild(best.json, base).load_state_dict(...)
FINETUNED_MODEL_FILE, FINETUNE_CSV = "finetuned.pt", "finetune.csv"
FINETUNED_STATE_FILE = "finetuned.state_dict.pt"
SUPERNET_FILE = "supernet.state_dict.pt"  # the base weights trained as a supernet (--supernet-epochs), for resume
LATENCY_TABLE_FILE = "latency_table.json"  # the table the run priced latency with (a resume reuses it)
LOCK_FILE = "run.lock"  # the process that runs the search in this directory: {"pid", "host", "since"}
FINALISTS_FILE = "finalists.csv"  # the finalists' short fine-tunes, one row each
FINETUNE_CHECKPOINT_FILE = "finetune_checkpoint.pt"  # where an interrupted fine-tune resumes from
# what the search and the fine-tune write into a run directory: nothing else (an export's --out) may overwrite them
RUN_OWN_FILES = (RUN_FILE, JOURNAL_FILE, TRIALS_FILE, BEST_FILE, BEST_MODEL_FILE, PLOT_FILE, PARETO_FILE,
                 BEST_STATE_FILE, FINETUNED_MODEL_FILE, FINETUNE_CSV, FINETUNED_STATE_FILE, SUPERNET_FILE,
                 LATENCY_TABLE_FILE, LOCK_FILE, FINALISTS_FILE, FINETUNE_CHECKPOINT_FILE)


@dataclass(frozen=True)
class Trial:
    number: int          # the order in which the agent proposed it
    candidate: Candidate
    result: Result
    asked: int = 0       # candidates asked of the agent when this one was told (for exact replay)

    def to_json(self) -> dict:
        r = self.result
        return {"trial": self.number, "asked": self.asked, "state": r.state.value, "score": r.score,
                "costs": dict(r.costs), "seconds": round(r.seconds, 6), "message": r.message,
                "samples": r.samples, "raced": r.raced, "candidate": self.candidate.to_dict()}

    @classmethod
    def from_json(cls, data: Mapping) -> Trial:
        """From a journal line; a line written before racing (no `samples`, no `raced`) reads as fully scored."""
        samples = data.get("samples")
        result = Result(TrialState(data["state"]), data["score"], data["costs"], data["seconds"], data["message"],
                        None if samples is None else int(samples), bool(data.get("raced", False)))
        return cls(int(data["trial"]), Candidate(data["candidate"]), result, int(data.get("asked", data["trial"] + 1)))


def best_trial(trials: Sequence[Trial]) -> Trial | None:
    """The highest score of a fully scored trial (a raced-out one only if no trial was fully scored); among
    equal scores, the fewest FLOPs, then the earliest."""
    done = [t for t in trials if t.result.ok]
    return max(done, key=lambda t: (not t.result.raced, t.result.score, -t.result.costs.get("flops", 0), -t.number),
               default=None)


@dataclass
class PruneResult:
    """What a search gives back (`prune`, `Pipeline.run`)."""

    subnet: nn.Module | None        # a real nn.Module, BN recalibrated (None if nothing was scored)
    best: Trial | None              # the best trial: candidate, score, costs
    trials: pd.DataFrame            # the same columns as trials.csv
    run_dir: Path
    base: dict[str, float]          # the base model's costs and scores
    interrupted: bool = False
    summary: str = ""
    record: dict[str, Any] = field(default_factory=dict)   # best.json
    finalists: pd.DataFrame | None = None                  # finalists.csv (None when picked by the proxy alone)


class Journal:
    """Append-only JSON lines, one per trial, flushed as each trial ends (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.skipped: list[int] = []  # line numbers (1-based) the last `read` could not use

    def read(self) -> list[Trial]:
        """Every readable trial, in file order; unreadable lines are skipped and listed in `skipped`."""
        self.skipped = []
        if not self.path.exists():
            return []
        trials, seen = [], set()
        with self.path.open("rb") as f:
            lines = f.read().split(b"\n")
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                trial = Trial.from_json(json.loads(raw.decode("utf-8")))
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                self.skipped.append(number)
                continue
            if trial.number in seen:  # a line written twice (a crash between append and truncate)
                continue
            seen.add(trial.number)
            trials.append(trial)
        if self.skipped:
            log.warning("journal %s: skipped %d unreadable line(s) (line %s); kept the %d readable trials",
                        self.path, len(self.skipped), ", ".join(map(str, self.skipped[:5])), len(trials))
        return trials

    def truncate(self, trials: Sequence[Trial]) -> None:
        """Rewrite the journal to exactly `trials`, atomically; a journal with unreadable lines is kept as
        `journal.jsonl.bak-<time>` first."""
        if self.skipped and self.path.exists():
            backup = self.path.with_name(f"{self.path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
            shutil.copy2(self.path, backup)
            log.warning("journal %s: the original is kept as %s", self.path, backup.name)
        atomic_write(self.path, "".join(json.dumps(t.to_json()) + "\n" for t in trials))
        self.skipped = []

    def append(self, trial: Trial) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(trial.to_json()) + "\n")
            f.flush()




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


def trials_frame(trials: Sequence[Trial], base: Mapping[str, float],
                 measured_latency: Mapping[int, float] | None = None) -> pd.DataFrame:
    """One row per trial; latency columns (predicted, and measured where it was) when latency is priced."""
    measured_latency = measured_latency or {}
    rows = []
    for t in sorted(trials, key=lambda t: t.number):  # in the order proposed, whatever order they finished in
        r = t.result
        rows.append({"trial": t.number, "state": r.state.value, "score": r.score, "samples_scored": r.samples,
                     "raced": r.raced,
                     "flops": r.costs.get("flops"), "params": r.costs.get("params"),
                     "flops_ratio": r.costs["flops"] / base["flops"] if "flops" in r.costs else None,
                     "params_ratio": r.costs["params"] / base["params"] if "params" in r.costs else None,
                     "latency_ms": r.costs.get("latency"), "measured_latency_ms": measured_latency.get(t.number),
                     "seconds": round(r.seconds, 4), "message": r.message,
                     "architecture": json.dumps(t.candidate.to_dict(), separators=(",", ":"))})
    columns = ["trial", "state", "score", "samples_scored", "raced", "flops", "params", "flops_ratio", "params_ratio", "latency_ms",
               "measured_latency_ms", "seconds", "message", "architecture"]
    frame = pd.DataFrame(rows, columns=columns).astype({"samples_scored": "Int64"})
    if "latency" not in base:
        frame = frame.drop(columns=["latency_ms", "measured_latency_ms"])
    return frame


def _alive(pid: int) -> bool:
    """Whether a process `pid` runs on this host (one we may not signal is alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


class RunDirectory:
    """A run's folder (see the module docstring). One process at a time searches in it: `lock`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.journal = Journal(self.path / JOURNAL_FILE)
        self._locked = False

    def lock(self) -> None:
        """Take `run.lock` (PID and host) for this process, or refuse in one line naming the process that holds it.

        A lock left by a process that is gone (a dead PID on this host) is taken over with a warning; one held
        by this very process is kept (a resume in the same Python session). Released by `unlock`, or at exit."""
        path = self.path / LOCK_FILE
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder(path)
                if holder is None:
                    continue  # removed between the two calls, or unreadable and removed: try again
                pid, host = holder.get("pid"), holder.get("host")
                if host == me["host"] and pid == me["pid"]:
                    break
                if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                    log.warning("%s: taking over the lock of process %d on %s, which is gone (the run was killed)",
                                self.path, pid, host)
                    path.unlink(missing_ok=True)
                    continue
                raise UserError(f"{self.path} is in use by process {pid} on host {host} (since "
                                f"{holder.get('since', '?')}); wait for it to end, or stop it, then resume "
                                f"(remove {path} only if that process is gone)")
            except OSError as error:
                raise UserError(f"cannot lock {self.path}: {error.strerror or error}") from None
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(me) + "\n")
                break
        else:
            raise UserError(f"cannot lock {self.path}: {path} keeps changing; is another process starting this run?")
        if not self._locked:
            self._locked = True
            atexit.register(self.unlock)

    def _holder(self, path: Path) -> dict | None:
        """The lock's content; an unreadable lock (a crash while writing it) is removed (None)."""
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and "pid" in data:
                return data
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        if time.time() - path.stat().st_mtime < 5:  # being written right now by its owner
            return {"pid": "?", "host": "?", "since": "just now"}
        log.warning("%s: removing an unreadable lock file", self.path)
        path.unlink(missing_ok=True)
        return None

    def unlock(self) -> None:
        """Release this process's lock (a lock another process holds is left alone)."""
        if not self._locked:
            return
        self._locked = False
        path = self.path / LOCK_FILE
        try:
            data = json.loads(path.read_text())
            if data.get("pid") == os.getpid() and data.get("host") == socket.gethostname():
                path.unlink()
        except (OSError, ValueError, AttributeError):
            pass

    @classmethod
    def create(cls, out: str | None, *, model: str, agent: str, budget: str) -> RunDirectory:
        """`out`, or `runs/<time>-<model>-<agent>-<budget>/`; an unwritable folder is a UserError."""
        if out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = os.path.join("runs", "-".join(_slug(s) for s in (stamp, model, agent, budget)))
        path = Path(out).expanduser()
        if path.exists() and not path.is_dir():
            raise UserError(f"cannot write to output folder {path}: it is a file")
        if (path / RUN_FILE).exists():
            raise UserError(f"{path} already holds a run; use --resume {path} to continue it or pick another --out")
        theirs = [n for n in RUN_OWN_FILES if n != LOCK_FILE and (path / n).exists()] if path.is_dir() else []
        if theirs:  # not a run (no run.json), yet it holds files a run writes: someone's, which must not be overwritten
            raise UserError(f"{path} is not a run but holds {', '.join(theirs[:3])}, which a run would overwrite; "
                            f"pick another --out (or an empty folder)")
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise UserError(f"cannot write to output folder {path}: {error.strerror or error}") from None
        run = cls(path)
        run.lock()
        return run

    @classmethod
    def open(cls, path: str) -> RunDirectory:
        """An existing run (for --resume and fine-tuning); a folder that is not one is a UserError."""
        run = cls(Path(path))
        if not (run.path / RUN_FILE).is_file():
            raise UserError(f"{path} is not a run directory (no {RUN_FILE} in it)")
        return run

    def read(self, name: str = RUN_FILE) -> dict:
        try:
            data = json.loads((self.path / name).read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read {self.path / name}: {str(error).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise UserError(f"cannot read {self.path / name}: it holds a {type(data).__name__}, not a JSON object")
        return data

    def write(self, name: str, data: Mapping) -> None:
        atomic_write(self.path / name, json.dumps(data, indent=2, default=str) + "\n")

    def update_run(self, **fields) -> None:
        data = self.read() if (self.path / RUN_FILE).exists() else {}
        data.update(fields)
        self.write(RUN_FILE, data)

    def write_trials(self, trials: Sequence[Trial], base: Mapping[str, float],
                     measured_latency: Mapping[int, float] | None = None) -> pd.DataFrame:
        """trials.csv (`trials_frame`), written atomically; returns the frame."""
        frame = trials_frame(trials, base, measured_latency)
        self.write_table(TRIALS_FILE, frame)
        return frame

    def write_table(self, name: str, frame: pd.DataFrame) -> None:
        """A CSV table (e.g. finalists.csv), written atomically."""
        atomic_write(self.path / name, frame.to_csv(index=False))

    def remove(self, name: str) -> None:
        """Delete a file a previous pass of this run wrote and this one does not (e.g. a resumed run's finalists.csv
        when its finalists stage is skipped), so that no record contradicts another."""
        (self.path / name).unlink(missing_ok=True)

    def write_pareto(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The scored trials no other beats on both held-out score and FLOPs, by FLOPs."""
        front = pareto_front(frame)
        self.write_table(PARETO_FILE, front)
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
        try:
            atomic_write(self.path / PLOT_FILE, lambda f: fig.savefig(f, format="png"))
        finally:
            plt.close(fig)

    def save_model(self, name: str, obj: object) -> None:
        """`torch.save` of a module or a state dict, atomically."""
        import torch

        atomic_write(self.path / name, lambda f: torch.save(obj, f))
