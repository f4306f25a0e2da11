"""examples/detection.py runs end to end at tiny size: YOLOv8n searched by mAP@0.5 through prune(score=...)."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_detection_by_map50_through_the_api(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ultralytics")
    pytest.importorskip("torchmetrics")
    monkeypatch.setenv("PRUNESEARCH_CACHE", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("detection", EXAMPLES / "detection.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    score = example.main(["--trials", "3", "--size", "64", "--train-steps", "2", "--out", str(tmp_path / "run")])
    assert 0.0 <= score <= 1.0
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["ratios"]["flops"] <= 0.5
    printed = capsys.readouterr().out
    found = re.search(r"exported subnet: (\d+) FLOPs counted by FlopCounterMode, (\d+) priced", printed)
    assert found and int(found[1]) == int(found[2]) == best["costs"]["flops"]
    assert "output structure the same as the model's" in printed
