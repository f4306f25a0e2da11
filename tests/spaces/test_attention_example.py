"""examples/vit.py runs end to end at tiny size: heads searched, the subnet priced exactly."""
from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "vit.py"


def test_vit_search_with_heads_through_the_api(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESEARCH_CACHE", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("vit_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    report = example.main(["--trials", "3", "--size", "32", "--train-steps", "2", "--out", str(tmp_path / "run")])
    assert 0.0 <= report["score"] <= 1.0 and report["ratio"] <= 0.5
    assert report["flops"] == report["counted"]  # the exported subnet costs what the search priced
    assert len(report["heads"]) == 12 and all(1 <= n <= 3 for n in report["heads"].values())
    assert (tmp_path / "run" / "best.json").is_file()
