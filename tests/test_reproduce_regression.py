"""2D regression reproduction (Figures 6, 13): the smoke run writes its figure and numbers read
from the training logs; the claims are checked on synthetic numbers both ways."""

from __future__ import annotations

import csv
import math

from lipbound.reproduce.common import Settings, run_experiment
from lipbound.reproduce.regression import RUNS, reconstruction_error, regularizer_claims, run


def test_smoke_run_writes_figure_and_finite_numbers(tmp_path):
    settings = Settings(out=tmp_path / "reg", scale="smoke", progress=False)
    result = run_experiment(run, settings)
    for name in ("regression_training.png", "table.csv", "result.json"):
        assert (settings.out / name).stat().st_size > 0
    rows = list(csv.DictReader(open(settings.out / "table.csv")))
    assert [r["run"] for r in rows] == list(RUNS)
    for row in rows:
        assert math.isfinite(float(row["mse"])) and float(row["mse"]) > 0
        assert math.isfinite(float(row["condition"])) and float(row["condition"]) >= 1
    assert len(result.claims) == 2 * (len(RUNS) - 1)


def test_reconstruction_error_is_inf_when_any_round_trip_breaks():
    ok = {"n_nan": 0, "n_inf": 0, "mean": 1e-6}
    assert reconstruction_error(ok) == 1e-6
    assert reconstruction_error({**ok, "n_nan": 1}) == math.inf
    assert reconstruction_error({**ok, "n_inf": 2}) == math.inf


def test_claims_both_ways():
    holds = regularizer_claims("nf", 1e-9, 1e-4, 10.0, 1e8)
    assert [c.holds for c in holds] == [True, True]
    assert "5.0 orders" in holds[0].evidence and "7.0 orders" in holds[1].evidence
    fails = regularizer_claims("nf", 1e-6, 1e-4, 1e3, 1e8)
    assert [c.holds for c in fails] == [False, False]
    broken = regularizer_claims("nf", 1e-7, math.inf, 10.0, 1e8)  # unregularized broke
    assert broken[0].holds is True
