"""Checkerboard reproduction (Figures 2, 3, 8): the smoke run writes its maps and numbers; the
failure accounting and the claims are checked on synthetic numbers both ways."""

from __future__ import annotations

import csv
import json
import math

import torch

from lipbound.reproduce.checkerboard import (
    condition_summary,
    failure_fractions,
    instability_claims,
    outside_mask,
    run,
)
from lipbound.reproduce.common import Settings, run_experiment


def test_smoke_run_writes_maps_and_finite_numbers(tmp_path):
    settings = Settings(out=tmp_path / "cb", scale="smoke", progress=False)
    result = run_experiment(run, settings)
    for name in ("checkerboard_maps.png", "checkerboard_samples.png", "table.csv",
                 "result.json"):
        assert (settings.out / name).stat().st_size > 0
    rows = list(csv.DictReader(open(settings.out / "table.csv")))
    assert [r["model"] for r in rows] == ["affine", "modified-affine", "resflow"]
    for row in rows:  # a tiny model after 3 steps reconstructs everywhere
        assert 0 <= float(row["outside_max_error"]) < 1e-3
        assert math.isfinite(float(row["max_condition"]))
        assert int(row["nonfinite_condition"]) == 0
    assert len(result.claims) == 4
    written = json.loads((settings.out / "result.json").read_text())
    assert written["scale"] == "smoke"
    # a second run reuses the cached models
    again = run_experiment(run, settings)
    assert any("cached" in note for note in again.notes)


def test_failure_fractions_count_nan_inf_and_large_apart():
    errors = torch.tensor([1e-7, 2e-3, math.inf, math.nan, 5e-4, 1e-2, math.nan, 0.0])
    f = failure_fractions(errors)
    assert f["over"] == 2 / 8 and f["inf"] == 1 / 8 and f["nan"] == 2 / 8
    assert f["failed"] == 5 / 8 and f["max_finite"] == 1e-2 and f["worst"] == math.inf
    assert failure_fractions(torch.tensor([1e-7, 2e-3]))["worst"] == 2e-3
    assert math.isnan(failure_fractions(torch.tensor([math.nan]))["max_finite"])


def test_outside_mask():
    xs = torch.linspace(-8, 8, 5, dtype=torch.float64)  # -8, -4, 0, 4, 8
    mask = outside_mask(xs)
    assert int((~mask).sum()) == 9 and bool(mask[0, 2]) and not bool(mask[1, 3])


def test_claims_both_ways():
    holds = instability_claims({"affine": 0.3, "modified-affine": 0.01, "resflow": 0.0},
                               {"affine": 1.0, "modified-affine": 1e-2, "resflow": 1e-6})
    assert [c.holds for c in holds] == [True, True, True, True]
    fails = instability_claims({"affine": 0.0, "modified-affine": 0.2, "resflow": 0.1},
                               {"affine": 1e-6, "modified-affine": 1e-2, "resflow": 1e-6})
    assert [c.holds for c in fails] == [False, False, False, False]


def test_inf_or_nan_round_trips_count_as_infinite_worst_error():
    failed = {"affine": 0.3, "modified-affine": 0.01, "resflow": 0.0}
    # the affine model's largest *finite* error is small, but it broke: its worst is infinite
    broke = instability_claims(failed, {"affine": math.inf, "modified-affine": 1e-2,
                                        "resflow": 1e-6})
    assert broke[3].holds is True
    modified_broke = instability_claims(failed, {"affine": 1e-2, "modified-affine": math.inf,
                                                 "resflow": 1e-6})
    assert modified_broke[3].holds is False
    both = instability_claims(failed, {"affine": math.inf, "modified-affine": math.inf,
                                       "resflow": 1e-6})
    assert both[3].holds is None and "Inf/NaN" in both[3].evidence


def test_condition_summary_counts_non_finite_and_survives_all_non_finite():
    s = condition_summary(torch.tensor([[3.0, math.inf], [math.nan, 7.0]]))
    assert s == {"max_finite": 7.0, "nonfinite": 2}
    s = condition_summary(torch.tensor([[math.inf, math.nan]]))
    assert math.isnan(s["max_finite"]) and s["nonfinite"] == 2
