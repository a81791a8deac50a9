"""The sups of the scale functions (Lemma 6's constants) against dense sampling with autograd."""

from __future__ import annotations

import math

import pytest
import torch

from lipbound.blocks import ExpScale, IdentityScale, SigmoidScale, SoftClampScale

SCALES = {
    "sigmoid": SigmoidScale(),
    "modified": SigmoidScale(0.5, 1.0),
    "range_0.2_3": SigmoidScale(0.2, 3.0, shift=0.5),
    "exp": ExpScale(),
    "softclamp": SoftClampScale(2.0),
}
INTERVALS = [(-6.0, 4.0), (-1.0, 0.5), (1.0, 3.0), (-5.0, -2.5), (-2.0, -2.0)]


def _sampled(scale, lo, hi):
    h = torch.linspace(lo, hi, 200_001).requires_grad_(True)
    g = scale(h)
    (dg,) = torch.autograd.grad(g.sum(), h, retain_graph=True)
    (dinv,) = torch.autograd.grad((1 / g).sum(), h)
    g = g.detach()
    return (g.abs().max(), dg.abs().max(), (1 / g).abs().max(), dinv.abs().max())


@pytest.mark.parametrize("name", sorted(SCALES))
@pytest.mark.parametrize("lo, hi", INTERVALS)
def test_sups_are_sound_and_tight(name, lo, hi):
    scale = SCALES[name]
    sampled = _sampled(scale, lo, hi)
    sups = (scale.sup_g(lo, hi), scale.sup_dg(lo, hi), scale.sup_inv_g(lo, hi),
            scale.sup_d_inv_g(lo, hi))
    for what, s, b in zip(("g", "g'", "1/g", "(1/g)'"), sampled, sups):
        assert float(s) <= b, f"{name} sup {what} on [{lo}, {hi}]: sampled {float(s)} > bound {b}"
        # The closed forms are exact (up to rounding) except the soft clamp's derivative bounds,
        # which bound a product piecewise by products of sups (64 pieces: within 10%).
        loose = name == "softclamp" and what in ("g'", "(1/g)'")
        assert b <= float(s) * (1.1 if loose else 1.0 + 1e-6)


def test_known_values():
    s = SigmoidScale()
    assert s.sup_dg(-10, 10) == pytest.approx(0.25, rel=1e-15)
    assert s.sup_inv_g(-2, 5) == pytest.approx(2.0, rel=1e-15)  # 1 / sigmoid(0)
    m = SigmoidScale(0.5, 1.0)
    assert m.sup_inv_g(-1e3, 1e3) == pytest.approx(2.0, rel=1e-12)  # g > 0.5 everywhere
    assert m.sup_d_inv_g(-1e3, 1e3) == pytest.approx(0.5 * (1 / 3) * (2 / 3) / (0.5 + 0.5 / 3) ** 2)
    # the standard sigmoid's 1/g is unbounded as h -> -inf: Theorem 2's exploding inverse
    assert s.sup_inv_g(-50, 0) == pytest.approx(1 + math.exp(48), rel=1e-14)


def test_identity_scale_refuses_zero():
    ident = IdentityScale()
    assert ident.sup_inv_g(0.1, 0.1) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="contains 0"):
        ident.sup_inv_g(-1.0, 1.0)


def test_bad_intervals():
    with pytest.raises(ValueError, match="lo <= hi"):
        SigmoidScale().sup_g(1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        ExpScale().sup_g(0.0, float("inf"))


def test_overflowing_sups_are_infinite_not_errors():
    assert SigmoidScale().sup_inv_g(-800.0, 0.0) == math.inf
    assert SigmoidScale().sup_d_inv_g(-800.0, 0.0) == math.inf
    assert ExpScale().sup_g(0.0, 800.0) == math.inf
    assert ExpScale().sup_inv_g(-800.0, 0.0) == math.inf
    assert SigmoidScale().sup_g(0.0, 800.0) == pytest.approx(1.0)
