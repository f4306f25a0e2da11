"""The coverage sweep's bookkeeping: each model in its own process, rows appended, a rerun skips done models."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "coverage.py"
_spec = importlib.util.spec_from_file_location("coverage_sweep", _PATH)
coverage = sys.modules.setdefault("coverage_sweep", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(coverage)


def test_rows_are_appended_once_and_a_rerun_skips_them(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    assert coverage.main(["--models", "resnet20", "--samples", "1", "--rows", str(rows)]) == 0
    first = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [r["name"] for r in first] == ["resnet20"] and first[0]["ok"] and first[0]["widths"] > 5
    assert coverage.main(["--models", "resnet20,nonexistent_model", "--samples", "1", "--rows", str(rows)]) == 1
    second = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [r["name"] for r in second] == ["resnet20", "nonexistent_model"]  # resnet20 not checked again
    assert not second[1]["ok"] and second[1]["error"]
    assert "fails: nonexistent_model" in capsys.readouterr().out


def test_random_candidates_do_not_depend_on_the_order_of_models():
    a = coverage.seeded("timm:resnet18").integers(1 << 30, size=3)
    assert (a == coverage.seeded("timm:resnet18").integers(1 << 30, size=3)).all()
    assert (a != coverage.seeded("resnet18").integers(1 << 30, size=3)).any()
