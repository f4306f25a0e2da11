"""Export: a run's subnet rebuilt from `best.json` on its base model, written as pt2 / TorchScript / ONNX / a
state dict and checked against the elastic model (`python -m search.export RUN_DIR`)."""
from search.export.command import ExportError, ExportResult, export, main, rebuild

__all__ = ["ExportError", "ExportResult", "export", "main", "rebuild"]
