"""Tables 2, 9, 10 reproduction: the smoke run writes its files with finite numbers, and the
claims are decided from the numbers both ways."""

from __future__ import annotations

import math

from reproduce_helpers import finite, run_smoke

from lipbound.reproduce import classifiers
from lipbound.reproduce.common import Settings


def test_smoke_run_writes_files_with_finite_numbers(tmp_path):
    result, back, rows = run_smoke(classifiers.run, tmp_path)
    main = [f"{c} {m} {r}" for c in classifiers.COUPLINGS for m in classifiers.MIXINGS
            for r in ("none", "fd", "nf")]
    assert set(main) <= set(back.ours)
    for key in main:
        ours = back.ours[key]
        for column in ("test_acc", "recon_err", "cond", "min_sv", "max_sv"):
            assert finite(ours[column]), (key, column, ours[column])
        assert 0 <= ours["test_acc"] <= 100
        assert ours["min_sv"] <= ours["max_sv"] and ours["cond"] >= 1
        # four steps from a near-identity initialisation: still invertible
        assert ours["inv"] is True
    by_model = {r["model"]: r for r in rows}
    assert by_model["affine conv fd"]["memory_saving"] == "True"
    assert by_model["affine conv none"]["memory_saving"] == "False"
    # paper, footnote 3: only FD trained memory-efficiently, NF with standard backprop
    assert by_model["affine conv nf"]["memory_saving"] == "False"
    assert by_model["additive shuffle nf"]["memory_saving"] == "False"
    assert "table2_classifiers.png" in result.files
    assert len(back.claims) == len(result.claims) == 7
    assert back.claims[6].holds is None  # no coefficient sweep at smoke scale


def test_coeff_name():
    assert classifiers.coeff_name(1e-3) == "1e-3"
    assert classifiers.coeff_name(5e-5) == "5e-5"


def _table(affine_none_inv=False, affine_none_cond=1e12, affine_none_sv=1e-10, reg_cond=1e2,
           reg_sv=1e-1, reg_acc=89.0, reg_inv=True, sweep=(1e2, 1e3)) -> dict:
    ours = {}
    for c in classifiers.COUPLINGS:
        for m in classifiers.MIXINGS:
            none = {"inv": True, "cond": 1e3, "min_sv": 1e-2, "test_acc": 89.5}
            if c == "affine":
                none = {"inv": affine_none_inv, "cond": affine_none_cond,
                        "min_sv": affine_none_sv, "test_acc": 89.5}
            ours[f"{c} {m} none"] = none
            for r in ("fd", "nf"):
                ours[f"{c} {m} {r}"] = {"inv": reg_inv, "cond": reg_cond, "min_sv": reg_sv,
                                        "test_acc": reg_acc}
    # Table 9 sweep: coefficient 1e-3 and 1e-4 for FD
    ours["affine conv fd 1e-3"] = {"cond": sweep[0]}
    ours["affine conv fd 1e-4"] = {"cond": sweep[1]}
    return ours


def test_claims_hold_on_the_papers_pattern():
    claims = classifiers.claims(_table())
    assert [c.holds for c in claims] == [True] * 7, [c.evidence for c in claims]


def test_claims_fail_the_other_way():
    claims = classifiers.claims(_table(affine_none_inv=True, affine_none_cond=1e3,
                                       affine_none_sv=1e-2, reg_acc=80.0, reg_inv=False,
                                       sweep=(1e3, 1e2)))
    assert [c.holds for c in claims] == [False, False, True, False, False, False, False]
    assert "largest drop" in claims[5].evidence


def test_nan_condition_counts_as_infinite_and_no_sweep_is_undecided():
    ours = _table(affine_none_cond=math.nan)
    claims = classifiers.claims(ours)
    assert claims[3].holds is True  # a non-finite Jacobian: the regularized ratio is 0
    del ours["affine conv fd 1e-3"], ours["affine conv fd 1e-4"]
    assert classifiers.claims(ours)[6].holds is None


def test_nan_ratio_or_accuracy_leaves_the_claim_undecided():
    ours = _table()
    # conv: both condition numbers non-finite, the ratio inf/inf is NaN; shuffle: 1e-10
    ours["affine conv none"]["cond"] = ours["affine conv fd"]["cond"] = math.nan
    assert classifiers.claims(ours)[3].holds is None
    ours = _table()
    ours["affine conv nf"]["test_acc"] = math.nan
    claim = classifiers.claims(ours)[5]
    assert claim.holds is None and "affine conv nf" in claim.evidence
    ours = _table()
    ours["affine conv nf"]["min_sv"] = math.nan
    assert classifiers.claims(ours)[4].holds is None


def test_accuracy_drop_is_reported_positive():
    claim = classifiers.claims(_table(reg_acc=80.0))[5]
    assert claim.holds is False
    assert claim.evidence.startswith("largest drop unregularized - regularized (points): 9.5")


def test_table9_claim_is_fd_only_as_the_papers_nf_sweep_grows():
    ours = _table()
    for name, values in classifiers.PAPER_SWEEP.items():  # the paper's own Table 9 rows
        ours[name] = {"cond": values["cond"]}
    claim = classifiers.claims(ours)[6]
    assert claim.holds is True and "nf" not in claim.evidence
    ours["affine conv fd 1e-3"] = {"cond": 1e3}  # FD: larger coefficient, larger condition
    assert classifiers.claims(ours)[6].holds is False


def test_full_scale_uses_the_papers_coefficient_per_row(tmp_path):
    """Appendix G: FD 1e-4 every 10 steps, but 5e-5 for additive with 1x1 convolutions (the
    paper's row it is compared with); NF 1e-5 every step."""
    full = Settings(out=tmp_path / "full", scale="full")
    assert classifiers.model_coefficient(full, "additive", "conv", "fd") == (5e-5, 10)
    assert classifiers.model_coefficient(full, "additive", "shuffle", "fd") == (1e-4, 10)
    assert classifiers.model_coefficient(full, "affine", "conv", "fd") == (1e-4, 10)
    assert classifiers.model_coefficient(full, "additive", "conv", "nf") == (1e-5, 1)
    cpu = Settings(out=tmp_path / "cpu", scale="cpu")
    assert classifiers.model_coefficient(cpu, "additive", "conv", "fd") == (1e-4, 10)
