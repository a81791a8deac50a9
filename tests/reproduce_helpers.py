"""Shared checks of the reproduction smoke tests: run an experiment at smoke scale into a folder
and read back what it wrote."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from lipbound.reproduce import ExperimentResult, Settings, run_experiment


def run_smoke(run, out: Path) -> tuple[ExperimentResult, ExperimentResult, list[dict[str, str]]]:
    """Run ``run`` at smoke scale into ``out``; return the result, the one read back from
    ``result.json``, and the rows of ``table.csv``. Asserts every listed file exists and every
    PNG is a PNG."""
    result = run_experiment(run, Settings(out=out, scale="smoke", progress=False))
    for name in result.files:
        assert (out / name).is_file(), name
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(f.endswith(".png") for f in result.files)
    back = ExperimentResult.from_json(json.loads((out / "result.json").read_text()))
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert len(rows) == len(result.rows)
    return result, back, rows


def finite(value) -> bool:
    """A number that is finite (floats read back from CSV as strings too)."""
    return math.isfinite(float(value))
