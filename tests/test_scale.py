"""The certified numbers of the scale functions (Lemma 6's constants, :mod:`lipbound.bounds.scales`)
against an independent computation at 60 digits or more: mpmath evaluates ``g`` from its definition,
differentiates it numerically (``mp.diff``) and maximises over the interval by a grid and a
golden-section refinement, without the peaks the bounds use."""

from __future__ import annotations

import math

import mpmath as mp
import pytest
import torch

from lipbound.blocks import ExpScale, IdentityScale, SigmoidScale, SoftClampScale
from lipbound.bounds import Box
from lipbound.bounds.scales import SUPS, g_box, scale_sup

SCALES = {
    "sigmoid": SigmoidScale(),
    "sigmoid_shift_0.1": SigmoidScale(shift=0.1),  # lo + 0.1 is inexact in float64
    "modified": SigmoidScale(0.5, 1.0),
    "range_0.2_3": SigmoidScale(0.2, 3.0, shift=0.3),
    "exp": ExpScale(),
    "softclamp": SoftClampScale(2.0),
    "softclamp_0.7": SoftClampScale(0.7),
}
INTERVALS = [(-6.0, 4.0), (-1.0, 0.5), (1.0, 3.0), (-5.0, -2.5), (-2.0, -2.0),
             # |lo| > 10: where float64 closed forms of e^{-(lo + shift)} lose hundreds of ulps
             (-37.3, -12.7), (-700.3, -690.1), (11.5, 40.25), (-25.1, 30.7), (-1000.9, 1000.3)]


def _mp_g(scale):
    if isinstance(scale, SigmoidScale):
        low, high, shift = (mp.mpf(v) for v in (scale.low, scale.high, scale.shift))
        return lambda h: low + (high - low) / (1 + mp.exp(-(h + shift)))
    if isinstance(scale, ExpScale):
        return mp.exp
    if isinstance(scale, SoftClampScale):
        alpha = mp.mpf(scale.alpha)
        return lambda h: mp.exp(alpha * 2 / mp.pi * mp.atan(h / alpha))
    return lambda h: h


def _mp_functions(scale):
    g = _mp_g(scale)
    return {"g": lambda h: abs(g(h)), "dg": lambda h: abs(mp.diff(g, h)),
            "inv_g": lambda h: abs(1 / g(h)),
            "d_inv_g": lambda h: abs(mp.diff(lambda t: 1 / g(t), h))}


def _mp_sup(f, lo, hi, points=48, steps=80):
    """Largest value found: a grid, then golden-section search around its best point."""
    lo, hi = mp.mpf(lo), mp.mpf(hi)
    if lo == hi:
        return f(lo)
    grid = [lo + (hi - lo) * i / points for i in range(points + 1)]
    values = [f(x) for x in grid]
    i = max(range(len(grid)), key=lambda j: values[j])
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, points)]
    best = values[i]
    ratio = (mp.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(steps):
        if fc > fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
        best = max(best, fc, fd)
    return best


@pytest.mark.parametrize("name", sorted(SCALES))
@pytest.mark.parametrize("lo, hi", INTERVALS)
def test_sups_bound_the_60_digit_sup_and_are_tight(name, lo, hi):
    scale = SCALES[name]
    # g' near 0 cancels about |h| / ln 10 digits in mp.diff's differences: carry them
    extra = int(max(abs(lo), abs(hi)) / 2) if isinstance(scale, SigmoidScale) else 0
    with mp.workdps(60 + extra):
        for which, f in _mp_functions(scale).items():
            exact = _mp_sup(f, lo, hi)
            bound = scale_sup(scale, which, lo, hi)
            assert mp.mpf(bound) >= exact, f"{name} sup {which} on [{lo}, {hi}]: {bound} < {exact}"
            if exact < mp.mpf(2.0) ** 1023:  # else the bound is inf, as it must be
                assert mp.mpf(bound) <= exact * (1 + mp.mpf(1e-12)), (name, which, lo, hi)
            else:
                assert bound == math.inf


@pytest.mark.parametrize("name", sorted(SCALES))
def test_g_box_encloses_g_at_the_ends(name):
    scale = SCALES[name]
    lo = torch.tensor([[-700.3, -37.3, -2.0, 0.0, 5e-324, 11.5, -1e-300]])
    hi = torch.tensor([[-690.1, -12.7, -2.0, 1e-17, 1e-300, 40.25, 3.0]])
    box = g_box(scale, Box(lo, hi))
    g = _mp_g(scale)
    with mp.workdps(60):
        for i in range(lo.shape[1]):
            assert mp.mpf(float(box.lo[0, i])) <= g(mp.mpf(float(lo[0, i])))
            assert mp.mpf(float(box.hi[0, i])) >= g(mp.mpf(float(hi[0, i])))
            assert float(box.hi[0, i]) <= float(g(mp.mpf(float(hi[0, i])))) * (1 + 1e-14) + 1e-300


def test_known_values():
    s = SigmoidScale()
    assert scale_sup(s, "dg", -10, 10) == pytest.approx(0.25, rel=1e-15)
    assert scale_sup(s, "inv_g", -2, 5) == pytest.approx(2.0, rel=1e-15)  # 1 / sigmoid(0)
    m = SigmoidScale(0.5, 1.0)
    assert scale_sup(m, "inv_g", -1e3, 1e3) == pytest.approx(2.0, rel=1e-12)  # g > 0.5
    assert scale_sup(m, "d_inv_g", -1e3, 1e3) == pytest.approx(
        0.5 * (1 / 3) * (2 / 3) / (0.5 + 0.5 / 3) ** 2, rel=1e-15)
    # the standard sigmoid's 1/g is unbounded as h -> -inf: Theorem 2's exploding inverse
    assert scale_sup(s, "inv_g", -50, 0) == pytest.approx(1 + math.exp(48), rel=1e-14)


def test_identity_scale_refuses_zero():
    ident = IdentityScale()
    assert scale_sup(ident, "inv_g", 0.1, 0.1) >= 10.0
    assert scale_sup(ident, "inv_g", 0.1, 0.1) == pytest.approx(10.0, rel=1e-15)
    with pytest.raises(ValueError, match="contains 0"):
        scale_sup(ident, "inv_g", -1.0, 1.0)


def test_bad_input():
    with pytest.raises(ValueError, match="lo <= hi"):
        scale_sup(SigmoidScale(), "g", 1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        scale_sup(ExpScale(), "g", 0.0, float("inf"))
    with pytest.raises(ValueError, match="which must be one of"):
        scale_sup(ExpScale(), "gg", 0.0, 1.0)

    class Cube(torch.nn.Module):
        pass

    with pytest.raises(TypeError, match="register_scale"):
        scale_sup(Cube(), "g", 0.0, 1.0)
    assert set(SUPS) == {"g", "dg", "inv_g", "d_inv_g"}


def test_overflowing_sups_are_infinite_not_errors():
    assert scale_sup(SigmoidScale(), "inv_g", -800.0, 0.0) == math.inf
    assert scale_sup(SigmoidScale(), "d_inv_g", -800.0, 0.0) == math.inf
    assert scale_sup(ExpScale(), "g", 0.0, 800.0) == math.inf
    assert scale_sup(ExpScale(), "inv_g", -800.0, 0.0) == math.inf
    assert scale_sup(SigmoidScale(), "g", 0.0, 800.0) == pytest.approx(1.0)
