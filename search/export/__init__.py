"""Export: a run's subnet rebuilt from `best.json` on its base model (`rebuild`), written as pt2 / TorchScript /
ONNX / a state dict and checked against the PyTorch subnet (`command`, `python -m search.export RUN_DIR`).

The public names load on first use (`from search.export import rebuild`)."""
from search.lazy import lazy_getattr

_LAZY = {**{name: "command" for name in ("ExportError", "ExportResult", "export", "main")},
         **{name: "subnet" for name in ("base_model", "load_subnet", "rebuild")}}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
