"""The examples in examples/ run end to end at tiny size."""
from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_segmentation_by_mean_iou_through_the_api(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESEARCH_CACHE", str(tmp_path / "cache"))
    example = _load("segmentation")
    score = example.main(["--trials", "4", "--size", "32", "--train-steps", "5", "--out", str(tmp_path / "run")])
    assert 0.0 <= score <= 1.0
    assert (tmp_path / "run" / "best.json").is_file() and (tmp_path / "run" / "trials.csv").is_file()
