"""Training and fine-tuning: the one training step (`step`), the fine-tune of a run's subnet (`command`,
`python -m search.finetune RUN_DIR`) and the same loop on Ray Train (`on_ray`)."""
from search.finetune.command import FinetuneResult, Recipe, finetune, finetune_module, fit, main

__all__ = ["FinetuneResult", "Recipe", "finetune", "finetune_module", "fit", "main"]
