"""Training and fine-tuning: the one training step (`step`), the fine-tune's loop and recipe (`loop`), its command (`command`,
`python -m search.finetune RUN_DIR`) and the same loop on Ray Train (`on_ray`).

The public names load on first use (`from search.finetune import finetune`), so that importing the
training step alone does not import the fine-tune's command line and what it needs."""
from search.lazy import lazy_getattr

_LAZY = {**{name: "loop" for name in ("FinetuneResult", "Recipe", "finetune_module", "fit")},
         **{name: "command" for name in ("finetune", "main")}}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
