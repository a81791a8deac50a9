"""Table 3 rows against hand-computed values, the tighter bounds against exact 2x2 norms,
composition, Remarks 3 and 4, and Theorem 2 on real blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch

from lipbound.blocks import AdditiveCoupling, AffineCoupling, ChannelPartition, mlp
from lipbound.bounds import bound_model, table
from lipbound.bounds.compose import NetworkBound
from lipbound.bounds.evaluate import lower, upper

SYM = table.Symbols()


def _values(**kw: float) -> dict:
    names = {"lip_t": "Lip(t)", "lip_s": "Lip(s)", "lip_g": "Lip(g)", "lip_f": "Lip(f)",
             "c_g": "c_g", "c_dg": "c_g'", "c_ig": "c_1/g", "c_dig": "c_(1/g)'", "c_t": "c_t",
             "a": "a", "b": "b", "a_s": "a*", "b_s": "b*", "T": "T"}
    return {names[k]: v for k, v in kw.items()}


def test_additive_row_hand_values():
    row = table.additive(SYM, _values(lip_t=3.0))
    assert row.scope == "global"
    assert row.forward.paper_value == pytest.approx(4.0, abs=1e-15)
    assert row.inverse.paper_value == row.forward.paper_value
    exact = (3 + math.sqrt(13)) / 2  # norm of [[1, 0], [3, 1]]
    assert exact <= row.forward.value <= exact * (1 + 1e-14)
    assert np.linalg.norm(np.array([[1.0, 0.0], [3.0, 1.0]]), 2) == pytest.approx(exact, rel=1e-15)


@pytest.mark.parametrize("m", [0.0, 0.3, 1.0, 7.5])
@pytest.mark.parametrize("c", [0.05, 0.5, 1.0, 3.0])
def test_sigma2_is_the_exact_norm_and_beats_the_paper(m, c):
    m_, c_ = sp.Symbol("m", nonnegative=True), sp.Symbol("c", nonnegative=True)
    vals = {m_: m, c_: c}
    tight = upper(table.sigma2(m_, c_), vals)
    exact = np.linalg.norm(np.array([[1.0, 0.0], [m, c]]), 2)
    assert exact <= tight <= exact * (1 + 1e-13)
    assert lower(table.sigma2(m_, c_), vals) <= exact
    assert tight <= max(1.0, c) + m + 1e-15


def test_sigma2_with_unit_scale_is_the_additive_bound():
    lip = sp.Symbol("L", nonnegative=True)
    diff = table.sigma2(lip, sp.Integer(1)) - (lip + sp.sqrt(lip**2 + 4)) / 2
    for v in (0.0, 0.5, 2.0, 40.0):
        assert abs(float(diff.subs(lip, v))) < 1e-12


def test_affine_row_hand_values():
    vals = _values(a=-2.0, b=3.0, c_g=0.9, c_dg=0.25, lip_s=2.0, lip_t=1.0, a_s=-1.0, b_s=4.0,
                   c_ig=5.0, c_dig=4.0, c_t=0.5)
    row = table.affine(SYM, vals)
    assert row.scope.startswith("local")
    # max(1, 0.9) + max(2, 3) * 0.25 * 2 + 1
    assert row.forward.paper_value == pytest.approx(3.5, rel=1e-15)
    # max(1, 5) + 4 * 4 * 2 + 4 * 2 * 0.5 + 5 * 1
    assert row.inverse.paper_value == pytest.approx(46.0, rel=1e-15)
    assert row.forward.value == pytest.approx(np.linalg.norm([[1, 0], [2.5, 0.9]], 2), rel=1e-14)
    assert row.inverse.value == pytest.approx(np.linalg.norm([[1, 0], [41, 5]], 2), rel=1e-14)
    assert row.forward.value <= row.forward.paper_value
    assert row.inverse.value <= row.inverse.paper_value


def test_affine_row_refusal_keeps_the_expression():
    row = table.affine(SYM, {}, refused_forward="needs a box")
    assert row.forward.value is None and row.forward.refused == "needs a box"
    assert sp.Symbol("a", real=True) in row.forward.paper.free_symbols


def test_residual_row_and_refusal():
    row = table.residual(SYM, _values(lip_g=0.5))
    assert row.forward.value == 1.5 and row.inverse.value == 2.0
    bad = table.residual(SYM, _values(lip_g=1.2))
    assert bad.forward.value == pytest.approx(2.2)
    assert bad.inverse.value is None
    assert "not < 1" in bad.inverse.refused and "contraction" in bad.inverse.refused


def test_neural_ode_rows():
    row = table.neural_ode(SYM, _values(lip_f=2.0, T=0.5))
    assert row.forward.value == pytest.approx(math.e, rel=1e-15)
    assert row.forward.value >= math.e
    rk4 = table.neural_ode(SYM, _values(lip_f=2.0, T=0.5), method="rk4", steps=4)
    hl = 0.25
    per_step = 1 + hl + hl**2 / 2 + hl**3 / 6 + hl**4 / 24
    assert rk4.forward.value == pytest.approx(per_step**4, rel=1e-14)
    assert rk4.forward.value <= rk4.forward.paper_value
    euler = table.neural_ode(SYM, _values(lip_f=2.0, T=0.5), method="euler", steps=4)
    assert euler.inverse.value == pytest.approx((1 + hl) ** 4, rel=1e-14)
    with pytest.raises(ValueError, match="method"):
        table.neural_ode(SYM, {}, method="heun", steps=2)


def test_linear_and_reshape_rows():
    d = table.diagonal(SYM, {"max|D|": 3.0, "max|1/D|": 4.0})
    assert (d.forward.value, d.inverse.value) == (3.0, 4.0)
    w = table.invertible_1x1_conv(SYM, {"||W||": 2.0, "||W^-1||": 0.75})
    assert (w.forward.value, w.inverse.value) == (2.0, 0.75)
    r = table.volume_preserving_reshape("squeeze")
    assert (r.forward.value, r.inverse.value) == (1.0, 1.0)


def test_upper_rounds_up_and_refuses_nothing_silently():
    x = sp.Symbol("x", positive=True)
    third = upper(x / 3, {x: 1.0})
    assert third > 1 / 3 and third - 1 / 3 < 1e-15
    assert upper(x / 3, {}) is None
    assert upper(1 / (1 - x), {x: 1.0}) == math.inf
    assert upper(sp.Integer(1), {}) == 1.0


def test_composition_remarks_3_and_4():
    rows = (table.additive(SYM, _values(lip_t=0.0)),
            table.diagonal(table.Symbols(1), {"max|D|": 2.0, "max|1/D|": 4.0}),
            table.diagonal(table.Symbols(2), {"max|D|": 0.5, "max|1/D|": 3.0}))
    net = NetworkBound(rows)
    assert net.forward == pytest.approx(1.0, abs=1e-15) and net.forward >= 1.0
    assert net.inverse == pytest.approx(12.0, rel=1e-15) and net.inverse >= 12.0
    assert net.cumulative_forward == pytest.approx([1.0, 2.0, 1.0])
    assert net.cumulative_inverse == pytest.approx([1.0, 4.0, 12.0])
    assert net.forward_lower <= 1 / 12 and net.forward_lower == pytest.approx(1 / 12)
    assert net.inverse_lower <= 1.0 and net.inverse_lower == pytest.approx(1.0)
    assert net.bilipschitz == net.inverse


def test_shared_symbols_compose_into_powers():
    net = NetworkBound(tuple(table.additive(SYM) for _ in range(5)))
    lip = SYM("Lip(t)")
    assert sp.simplify(net.forward_expr - ((lip + sp.sqrt(lip**2 + 4)) / 2) ** 5) == 0
    assert net.forward is None and net.forward_paper is None


def _coupling(kind: str, d: int = 2) -> torch.nn.Module:
    torch.manual_seed(1)
    part = ChannelPartition([0], [1], d)
    if kind == "additive":
        return AdditiveCoupling(part, mlp(1, 1, 8, 1, "tanh"))
    return AffineCoupling(part, mlp(1, 1, 8, 1, "tanh"), mlp(1, 1, 8, 1, "tanh"))


def test_theorem2_affine_grows_without_limit_additive_does_not():
    radii = [1.0, 10.0, 100.0, 1000.0]
    affine = [bound_model(_coupling("affine"), (2,), box=(-r, r)).blocks[0] for r in radii]
    forward = [row.forward.value for row in affine]
    assert all(b > a for a, b in zip(forward, forward[1:], strict=False))
    assert forward[-1] > 50 * forward[0]
    additive_global = bound_model(_coupling("additive"), (2,)).forward
    for r in radii:  # the rows are global; the whole-network Jacobian bound is never looser
        net = bound_model(_coupling("additive"), (2,), box=(-r, r))
        assert net.forward_composed == additive_global and net.forward <= additive_global
    no_box = bound_model(_coupling("affine"), (2,))
    assert no_box.forward is None and "Theorem 2" in no_box.blocks[0].forward.symbolic
