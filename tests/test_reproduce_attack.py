"""Invertibility-attack reproduction (Figures 11, 12): the smoke run writes its numbers; the
truncated Residual Flow stops after 5 iterations; the claims are checked both ways."""

from __future__ import annotations

import csv
import math

import torch

from lipbound.blocks import residual_flow
from lipbound.reproduce.attack import attack_claims, run, truncated, worst_error
from lipbound.reproduce.common import Settings, run_experiment
from lipbound.reproduce.digits_flows import dequantization_centres


def test_smoke_run_writes_numbers(tmp_path):
    settings = Settings(out=tmp_path / "attack", scale="smoke", progress=False)
    run_experiment(run, settings)
    for name in ("attack_images.png", "table.csv", "result.json"):
        assert (settings.out / name).stat().st_size > 0
    rows = {r["model"]: r for r in csv.DictReader(open(settings.out / "table.csv"))}
    assert set(rows) == {"affine", "modified-affine", "resflow (5 iterations)",
                         "resflow (converged)"}
    for row in rows.values():  # tiny models after 3 steps: finite round trips
        assert math.isfinite(float(row["attacked_max_error"]))
        assert float(row["attacked_max_error"]) >= 0


def test_truncated_inverse_stops_after_five_iterations():
    torch.manual_seed(0)
    model = residual_flow((4,), 2, 16, coeff=0.9).double().eval()
    x = torch.randn(8, 4, dtype=torch.float64)
    y = model(x)
    short = truncated(model)
    with torch.no_grad():
        err_short = float((short.inverse(y) - x).norm())
        err_full = float((model.inverse(y) - x).norm())
    iterations = [b.last_convergence.iterations for b in short.modules()
                  if hasattr(b, "last_convergence") and b.last_convergence is not None]
    assert iterations and max(iterations) <= 5
    assert err_full < 1e-10 < err_short  # the original is untouched and converges


def test_dequantization_centres():
    x = torch.tensor([[-0.5 + 3.2 / 17, 0.5 - 0.01]], dtype=torch.float64)
    c = dequantization_centres(x, 17, -0.5)
    assert torch.allclose(c, torch.tensor([[-0.5 + 3.5 / 17, -0.5 + 16.5 / 17]],
                                          dtype=torch.float64))
    assert torch.equal(dequantization_centres(c, 17, -0.5), c)


def test_worst_error_and_claims_both_ways():
    assert worst_error(torch.tensor([1e-3, 2e-3])) == 2e-3
    assert worst_error(torch.tensor([1e-3, math.nan])) == math.inf
    holds = attack_claims({"affine": math.inf, "modified-affine": 1e-3, "resflow": 1e-6},
                          1e-3, 1e-6)
    assert [c.holds for c in holds] == [True, True, True]
    fails = attack_claims({"affine": 1e-5, "modified-affine": 1e-6, "resflow": 1e-6},
                          1e-6, 1e-6)
    assert [c.holds for c in fails] == [False, False, False]
    both_broke = attack_claims({"affine": math.inf, "modified-affine": math.inf,
                                "resflow": 1e-6}, 1e-3, 1e-6)
    assert [c.holds for c in both_broke] == [True, True, True]  # the paper's Figure 11
    one_stable = attack_claims({"affine": math.inf, "modified-affine": 1e-6,
                                "resflow": 1e-6}, 1e-3, 1e-6)
    assert [c.holds for c in one_stable] == [True, False, True]
    resflow_broke = attack_claims({"affine": math.inf, "modified-affine": math.inf,
                                   "resflow": math.inf}, 1e-3, 1e-6)
    assert resflow_broke[0].holds is False and resflow_broke[1].holds is False
    assert "Residual Flow" in resflow_broke[0].evidence
