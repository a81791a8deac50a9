"""Readable reports: numbers folded into the expressions, repeated blocks grouped, symbolic-only
bounds as results (exit 0, the reason once), exit 1 only for a refused bound."""

from __future__ import annotations

import json
import re
from pathlib import Path

import sympy as sp

from lipbound.bounds import table
from lipbound.bounds.compose import compact_indices
from lipbound.bounds.evaluate import upper
from lipbound.bounds.report import format_report
from lipbound.bounds.spec import spec_bounds
from lipbound.cli import main

GLOW = Path(__file__).parent.parent / "examples" / "architectures" / "glow_cifar_affine.json"


def test_numbers_are_folded_exactly():
    values = {"Lip(s)": 1.0, "Lip(t)": 0.5, "c_g'": 0.25, "a": -4.0, "b": 4.0}
    row = table.affine(table.Symbols(), values)
    text = table.expr_str(row.forward.folded())
    assert "Max" not in text and "Abs" not in text and "1.0*" not in text
    assert "c_g" in text  # the one symbol left free
    # folding changes nothing: at any c_g the folded and the original expressions agree
    c_g = sp.Symbol("c_g", nonnegative=True)
    for c in (0.0, 0.3, 1.0, 2.5):
        folded = upper(row.forward.folded(), {c_g: c})
        direct = upper(row.forward.tight, {**row.forward.values, c_g: c})
        assert abs(folded - direct) <= 1e-14 * direct
    full = table.affine(table.Symbols(), {**values, "c_g": 2.0})
    assert table.expr_str(full.forward.folded()) == "sqrt(3.625 + 0.375*sqrt(65))"
    with sp.evaluate(False):
        one_minus = 1 - 1 * c_g
    assert table.expr_str(table.Bound(one_minus, one_minus).folded()) == "1 - c_g"


def test_compact_indices():
    assert compact_indices([3]) == "3"
    assert compact_indices([0, 49, 98]) == "0, 49, 98"
    runs = list(range(1, 47, 3)) + [50, 53, 56, 59]
    assert compact_indices(runs) == "1, 4, ..., 46, 50, 53, ..., 59"
    many = [0, 10, 11, 30, 31, 50, 61, 77, 90]
    assert compact_indices(many).endswith("... (9 in all)")


def test_glow_spec_groups_repeated_steps_and_succeeds(capsys):
    assert main(["bounds", str(GLOW)]) == 0
    out = capsys.readouterr().out
    table_rows = out.split("\n\n")[0].splitlines()[2:]
    assert len(table_rows) == 4  # squeeze, ActNorm, 1x1 conv, affine coupling
    counts = sorted(re.search(r"\bx(\d+)\b", r).group(1) for r in table_rows)
    assert counts == ["3", "48", "48", "48"]
    assert out.count("Theorem 2") == 1 and "refused" not in out
    assert main(["bounds", str(GLOW), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["blocks"]) == 147  # JSON keeps every block
    assert data["network"]["forward"] is None and data["network"]["refused"] == []
    assert len(data["network"]["symbolic"]) == 1 and "Theorem 2" in data["network"]["symbolic"][0]
    for fmt in ("markdown", "latex"):
        assert main(["bounds", str(GLOW), "--format", fmt]) == 0
        assert "x48" in capsys.readouterr().out


def test_numeric_rows_keep_the_cumulative_columns():
    net = spec_bounds([{"kind": "additive", "lip_t": 1, "tag": 1},
                       {"kind": "additive", "lip_t": 2, "tag": 2},
                       {"kind": "additive", "lip_t": 3, "tag": 3}])
    text = format_report(net, "text")
    assert "cumulative Lip(F)" in text and "count" not in text


def test_exit_1_only_when_a_bound_is_refused(tmp_path, capsys):
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps([{"kind": "residual", "lip_g": 1.5, "tag": 1},
                                {"kind": "residual", "lip_g": 2.0, "tag": 2}]))
    assert main(["bounds", str(spec)]) == 1
    out = capsys.readouterr().out
    assert "refused (no bound)" in out and out.count("not < 1") == 2  # two distinct reasons
    spec.write_text(json.dumps([{"kind": "additive"}, {"kind": "affine"}]))
    assert main(["bounds", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "symbolic only" in out and "refused" not in out
