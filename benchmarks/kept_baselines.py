"""A report's trained baselines, kept beside its rows so that the report can be resumed on another machine.

The zoo trains a baseline once and caches it (`search.models.baseline`), but a cache is one machine's: trained
again elsewhere, the same seeded recipe gives another model (CPU kernels round differently), and rows measured
on one baseline cannot be paired with rows measured on another. So a report keeps a copy of each baseline it
measured on (tensors and the record, the cache's own two files, loaded with `weights_only=True` as every cached
baseline is) and puts it back into the cache before it measures again.
"""
from __future__ import annotations

from pathlib import Path

from search.engine.config import SearchConfig
from search.engine.records import atomic_write
from search.models.baseline import baseline_files


def cached_files(config: SearchConfig) -> tuple[Path, Path]:
    """The cache's files for the baseline `config` trains (the zoo model, data and recipe it names)."""
    return baseline_files(config.model, config.data, seed=config.seed, epochs=config.baseline_epochs,
                          batch_size=config.batch_size, held_out=config.held_out)


def restore(config: SearchConfig, folders: list[Path]) -> Path | None:
    """Put the first kept copy of `config`'s baseline found in `folders` into the cache, when the cache lacks
    it; the folder it came from, or None (the cache has it already, or no folder keeps it)."""
    cached = cached_files(config)
    if all(path.is_file() for path in cached):
        return None
    for folder in folders:
        kept = [folder / path.name for path in cached]
        if all(path.is_file() for path in kept):
            _copy(kept, cached)
            return folder
    return None


def keep(config: SearchConfig, folder: Path) -> bool:
    """Copy `config`'s cached baseline into `folder` when it lacks it; whether a copy was made."""
    cached = cached_files(config)
    kept = [folder / path.name for path in cached]
    if all(path.is_file() for path in kept) or not all(path.is_file() for path in cached):
        return False
    _copy(cached, kept)
    return True


def _copy(sources: list[Path] | tuple[Path, ...], targets: list[Path] | tuple[Path, ...]) -> None:
    for source, target in zip(sources, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, source.read_bytes())
