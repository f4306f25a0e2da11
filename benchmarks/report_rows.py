"""The fair report's rows: one record per (model, budget, fine-tune, method, seed), kept in a JSON file.

A run skips every row the file already holds under the same key, so the report can be built across
several runs and regenerated from the file alone (`benchmarks/report.py --render-only`). The key names
everything that changes a figure (data and its test size, model, budget, method, seed, common fine-tune
epochs, trials, finalists and their ranking, one-shot candidates, block encoding, reconstruction, width grid,
what counts as distinct (candidate or subnet), PruningNet epochs,
baseline epochs), never the commit. Rows of another
format (an older report's) are not read; `save` keeps them out of the file.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """What every row of one run shares, besides model, budget, method, seed and fine-tune epochs."""

    data: str
    test_images: int
    trials: int
    finalists: int          # search.run's default finalists: count x steps
    finalist_steps: int
    pruningnet_epochs: int
    baseline_epochs: int
    finalist_rank: str = "ce+proxy"  # how the finalists are ranked (`--finalist-rank`)
    one_shot: bool = False           # the one-shot candidates (global magnitude, uniform) among the finalists
    block_encoding: str = "flags"    # `--block-encoding`
    reconstruct: int = 0             # `--reconstruct`: training inputs the finalists are refit on (0: off)
    export_weights: str = "refit"    # `--export-weights`: what the rows with reconstruction exported (search.run's
    #   default, the refit copy, leaves the key as it was; "base", the copied weights, is keyed apart)
    width_grid: int = 10             # the width ratios k / width_grid, k = 1 .. width_grid (10: search.run's default)
    distinct: str = "candidate"      # what the search scores once and the finalists hold once: each "candidate", or
    #   each "subnet" (candidates that differ only inside removed blocks are one: search.run since 2026-12-07)

    def text(self) -> str:
        # what older rows were measured with (ce+proxy, no one-shot candidates, flags) leaves their keys as they were
        return (f"{self.data}|test={self.test_images}|trials={self.trials}|finalists={self.finalists}x"
                f"{self.finalist_steps}|pruningnet={self.pruningnet_epochs}|baseline={self.baseline_epochs}"
                + (f"|rank={self.finalist_rank}" if self.finalist_rank != "ce+proxy" else "")
                + ("|one-shot" if self.one_shot else "")
                + (f"|blocks={self.block_encoding}" if self.block_encoding != "flags" else "")
                + (f"|recon={self.reconstruct}" if self.reconstruct else "")
                + (f"|export={self.export_weights}" if self.reconstruct and self.export_weights != "refit" else "")
                + (f"|grid={self.width_grid}" if self.width_grid != 10 else "")
                + (f"|distinct={self.distinct}" if self.distinct != "candidate" else ""))


def key(settings: Settings, model: str, budget: str, method: str, seed: int, finetune_epochs: int | None) -> str:
    """The row's key (`finetune_epochs` None: the key of its subnet before the common fine-tune)."""
    tail = "" if finetune_epochs is None else f"|ft={finetune_epochs}"
    return f"{settings.text()}|{model}|{budget}|{method}|seed={seed}{tail}"


@dataclass
class Row:
    """One method's subnet at one budget and seed, after its own training and after the common fine-tune."""

    key: str
    model: str
    budget: str
    method: str
    seed: int
    finetune_epochs: int
    flops: float             # ratio to the base model (FlopCounterMode on the subnet, or our exact price)
    params: float
    held_out: float          # BN-recalibrated held-out top-1 after its training, before the common fine-tune
    test_before: float       # test top-1 before the common fine-tune (after its training)
    test_after: float        # test top-1 after the common fine-tune
    search_s: float          # wall time to find the subnet (search, pruning, PruningNet training, bisection)
    train_s: float           # wall time of the SGD steps before the common fine-tune
    steps: int               # SGD steps the exported subnet had before the common fine-tune
    steps_spent: int         # all SGD steps spent before the common fine-tune (ours: every finalist's)
    evaluations: int         # candidates scored (Torch-Pruning: prunings tried; FastNAS: its runs)
    finetune_s: float        # wall time of the common fine-tune
    note: str = ""


def load(path: Path) -> dict[str, Row]:
    """The rows in `path` by key ({} if none); records of another format are skipped."""
    if not path.is_file():
        return {}
    names = {f.name for f in fields(Row)}
    rows = {}
    for record in json.loads(path.read_text()):
        if isinstance(record, dict) and names - {"note"} <= set(record) and set(record) <= names:
            rows[record["key"]] = Row(**record)
    return rows


def save(path: Path, rows: dict[str, Row]) -> None:
    """Write `rows` to `path` atomically (a killed run keeps the previous file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps([asdict(r) for r in rows.values()], indent=0)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)


def add(path: Path, rows: dict[str, Row], row: Row) -> None:
    """Add `row` to `rows` and to the file, keeping the rows another run of the report wrote there meanwhile (two
    runs filling one report, e.g. one model each, would otherwise save over each other's rows)."""
    rows.update(load(path))
    rows[row.key] = row
    save(path, rows)
