"""Table 3 reproduction: rendered from the sympy rows, the proved forms checked against the
paper's in ball arithmetic, the claim decided both ways."""

from __future__ import annotations

import csv
import json

import numpy as np

from lipbound.bounds import table as rows_of
from lipbound.bounds.evaluate import upper
from lipbound.reproduce.common import main
from lipbound.reproduce.table3 import (
    MAX_LIP_T,
    ROWS,
    compact,
    compare_forms,
    named_subexpressions,
    random_values,
    run,
    tight_claim,
)


def test_smoke_run_writes_markdown_latex_and_holds(tmp_path):
    out = tmp_path / "t3"
    assert main("table3", "Table 3", run, ["--out", str(out), "--smoke"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["claims"][0]["holds"] is True
    md = (out / "table3.md").read_text()
    tex = (out / "table3.tex").read_text()
    # two rows per block, each block's paper form printed from its sympy row
    assert md.count("| forward |") == len(ROWS) and md.count("| inverse |") == len(ROWS)
    assert f"`{rows_of.expr_str(rows_of.residual(rows_of.Symbols()).inverse.paper)}`" in md
    assert tex.startswith(r"\begin{tabular}") and tex.count(r"\\") == 2 * len(ROWS) + 1
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert len(rows) == 2 * len(ROWS)
    for row in rows:
        assert float(row["max_tight_over_paper"]) <= 1 + 1e-12
    # the ratio figure, a real PNG, listed among the files
    assert "table3_ratios.png" in result["files"]
    assert (out / "table3_ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_forms_finds_a_form_above_the_paper():
    """A 'proved' form that exceeds the paper's somewhere is reported as a violation."""
    lip = rows_of.Symbols()("Lip(t)")
    wrong = rows_of.Bound(1 + lip, 1 + 2 * lip)
    check = compare_forms(wrong, 50, np.random.default_rng(0))
    assert check["violations"] == 50 and check["max_ratio"] > 1
    right = rows_of.additive(rows_of.Symbols()).forward
    assert compare_forms(right, 50, np.random.default_rng(0))["violations"] == 0


def test_compact_names_repeats_and_keeps_the_value():
    bound = rows_of.affine(rows_of.Symbols()).forward
    defs, reduced = named_subexpressions(bound.tight)
    assert [k.name for k, _ in defs] == ["m0"]
    values = {s: 0.7 for s in bound.tight.free_symbols}
    m0 = upper(defs[0][1], values)
    assert abs(upper(reduced, {**values, defs[0][0]: m0}) - upper(bound.tight, values)) < 1e-9
    text, tex = compact(bound.tight)
    assert "  where m0 = " in text and ", \\quad m0 = " in tex


def test_tight_claim_both_ways():
    assert tight_claim(0, 100).holds is True
    assert tight_claim(3, 100).holds is False
    assert tight_claim(0, 0).holds is None


def test_neural_ode_points_stay_finite_so_no_ratio_is_an_overflow():
    """exp(Lip(f) T) overflowed at Lip(f) T ~ 1e4 and gave ratios of 0; sampled Lip(f) T stays
    <= MAX_LIP_T, every end is finite and the proved RK4 form is tighter but never 0 x."""
    bound = rows_of.neural_ode(rows_of.Symbols(), method="rk4", steps=8).forward
    symbols = bound.paper.free_symbols | bound.tight.free_symbols
    rng = np.random.default_rng(0)
    for _ in range(300):
        values = random_values(symbols, rng)
        assert float(np.prod(list(values.values()))) <= MAX_LIP_T
        assert np.isfinite(upper(bound.paper, values)) and np.isfinite(upper(bound.tight, values))
    check = compare_forms(bound, 300, np.random.default_rng(0))
    assert check["overflowed"] == 0 and check["violations"] == 0
    assert 0 < check["min_ratio"] <= check["max_ratio"] <= 1 + 1e-12
