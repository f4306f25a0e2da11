"""The supernet stage of a run (`--supernet-epochs N`): train the shared weights before the search, in this process
(`search.finetune.supernet`) or data parallel on Ray Train with `--workers` (`search.finetune.supernet_on_ray`)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from spaces.derive import PrunableModel
from spaces.sampling import feasible_sampler

from search.engine.records import SUPERNET_FILE
from search.errors import UserError
from search.finetune.supernet import SupernetSettings, SupernetStats, train_supernet
from search.finetune.supernet_on_ray import train_supernet_on_ray
from search.models.zoo import safe_load
from search.selection.finalists import ShuffledBatches, finalist_batches

if TYPE_CHECKING:
    from search.engine.pipeline import Pipeline

log = logging.getLogger(__name__)


def supernet_stage(pipeline: Pipeline, prunable: PrunableModel, price) -> SupernetStats | None:
    """`--supernet-epochs N`: the base weights trained as a supernet before the search, on the run's training
    batches (the finalists' own: the zoo's fit split or `prune(train=...)`), candidates drawn within the budget.
    The weights are saved in the run directory, so a resumed run searches the same ones without training again.
    """
    c, inputs, run_dir = pipeline.config, pipeline.inputs, pipeline.run_dir
    if not c.supernet_epochs:
        return None
    saved = run_dir.path / SUPERNET_FILE
    if saved.is_file():
        prunable.model.load_state_dict(safe_load(saved, "supernet weights"))
        log.info("supernet: the run's own trained weights (%s)", saved)
        return None
    if inputs.data is None and inputs.train is None:
        raise UserError("--supernet-epochs needs labelled training batches: the zoo's data, or prune(train=...)")
    batches, _ = finalist_batches(pipeline)
    per_epoch = (len(batches.dataset) // c.batch_size if isinstance(batches, ShuffledBatches)
                 else len(inputs.train) if hasattr(inputs.train, "__len__") else len(inputs.calibration))
    settings = SupernetSettings.for_epochs(c.supernet_epochs, max(1, per_epoch), seed=c.seed)
    sample = feasible_sampler(prunable.space, lambda x: pipeline.budget.feasible(price(x)))
    if c.workers or c.ray_address:  # data parallel on Ray Train, one worker per --workers
        prunable.model.to(pipeline.device)
        log.info("supernet: %d sandwich steps on %d Ray Train workers", settings.steps, max(c.workers, 1))
        stats = train_supernet_on_ray(prunable, batches, sample=sample, settings=settings,
                                      calibration=inputs.calibration, workers=max(c.workers, 1),
                                      address=c.ray_address, use_gpu=c.gpus_per_worker > 0, run_path=run_dir.path)
    else:
        stats = train_supernet(prunable, batches, settings=settings, calibration=inputs.calibration, sample=sample,
                               device=pipeline.device, progress=pipeline.progress)
    run_dir.save_model(SUPERNET_FILE, {k: v.detach().cpu() for k, v in prunable.model.state_dict().items()})
    run_dir.update_run(supernet={"epochs": c.supernet_epochs, "steps": stats.steps, "seconds": round(stats.seconds, 1),
                                 "workers": max(c.workers, 1) if c.workers or c.ray_address else 0,
                                 "full_loss": stats.full_loss, "smallest_loss": stats.smallest_loss})
    log.info("supernet: %d sandwich steps in %.1f s (full width loss %.3f, smallest %.3f)", stats.steps,
             stats.seconds, stats.full_loss, stats.smallest_loss)
    return stats
