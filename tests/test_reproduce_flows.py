"""Table 1 / Figure 5 reproduction: the smoke run writes its files with finite numbers, and the
claims are decided from the numbers both ways."""

from __future__ import annotations

import math

from reproduce_helpers import finite, run_smoke

from lipbound.reproduce import flows


def test_smoke_run_writes_files_with_finite_numbers(tmp_path):
    result, back, rows = run_smoke(flows.run, tmp_path)
    assert "figure5_samples.png" in result.files
    assert [r["model"] for r in rows] == list(flows.MODELS)
    for label in flows.MODELS:
        ours = back.ours[label]
        for key in ("train_bpd", "test_bpd", "sample_error_mean", "sample_error_max"):
            assert finite(ours[key]), (label, key, ours[key])
        # bits per dimension of 17-level data lie between 0 and log2(17) + slack at init
        assert 0 < ours["test_bpd"] < 10
        assert ours["status"] == "done" and ours["steps"] == 6
        assert 0 <= ours["sample_fail_pct"] <= 100
    assert back.paper == flows.PAPER
    assert [c.holds for c in back.claims] == [c.holds for c in result.claims]


def _numbers(additive_fail: float, affine_fail: float, modified_fail: float,
             bpds=(3.55, 3.51, 3.50)) -> dict:
    fails = (additive_fail, affine_fail, modified_fail)
    return {m: {"sample_fail_pct": f, "test_bpd": b}
            for m, f, b in zip(flows.MODELS, fails, bpds)}


def test_claims_hold_when_only_affine_samples_fail():
    claims = flows.claims(_numbers(0.0, 2.5, 0.0))
    assert [c.holds for c in claims] == [True, True, True, True]
    assert "2.5 % of samples fail" in claims[1].evidence


def test_claims_fail_the_other_way():
    claims = flows.claims(_numbers(1.0, 0.0, 0.5, bpds=(3.0, 4.0, 3.1)))
    assert [c.holds for c in claims] == [False, False, False, False]


def test_claim_undecided_on_nan():
    claims = flows.claims(_numbers(math.nan, 1.0, 0.0))
    assert claims[0].holds is None and claims[1].holds is True
