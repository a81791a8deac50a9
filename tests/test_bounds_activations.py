"""Interval images of the activations (IBP, :mod:`lipbound.bounds.layers`) against 60-digit mpmath
values of the exact maps, near 0 (where a relative widening of ``exp(x) - 1`` fails) and far out
(where rounding ``beta x`` shifts a sigmoid by hundreds of ulps), and the SiLU constant against an
independent maximisation of its derivative."""

from __future__ import annotations

import mpmath as mp
import pytest
import torch
from torch import nn

from lipbound.blocks.residual import LipSwish
from lipbound.bounds import Box
from lipbound.bounds.layers import SILU_LIP, ibp, lipschitz

INTERVALS = [(-1e-20, -1e-300), (-5e-324, 0.0), (0.0, 5e-324), (-1e-8, 1e-8), (-1e-17, 1e-16),
             (-3e-310, -1e-320), (-700.3, -690.7), (-37.3, -12.1), (-1.3, -1.2), (3.5, 7.25),
             (-2.0, 30.0)]


def _softplus(x, beta=1.0, threshold=20.0):  # torch's: linear above the threshold
    return x if beta * x > threshold else mp.log1p(mp.exp(beta * x)) / beta


def _lipswish(raw_beta):
    beta = _softplus(mp.mpf(raw_beta))
    return lambda x: x / (1 + mp.exp(-beta * x)) / mp.mpf(1.1)


def _mp_map(layer):
    if isinstance(layer, nn.ELU):
        alpha = mp.mpf(layer.alpha)
        return lambda x: x if x >= 0 else alpha * mp.expm1(x)
    if isinstance(layer, nn.LeakyReLU):
        return lambda x: x if x >= 0 else mp.mpf(layer.negative_slope) * x
    if isinstance(layer, nn.Softplus):
        return _softplus
    if isinstance(layer, LipSwish):
        return _lipswish(float(layer.raw_beta.detach()))
    return {nn.Tanh: mp.tanh, nn.Sigmoid: lambda x: 1 / (1 + mp.exp(-x)),
            nn.SiLU: lambda x: x / (1 + mp.exp(-x))}[type(layer)]


def _lipswish_with(raw: float) -> LipSwish:
    layer = LipSwish()
    with torch.no_grad():
        layer.raw_beta.fill_(raw)
    return layer


LAYERS = [nn.ELU(), nn.ELU(2.0), nn.ELU(0.3), nn.Tanh(), nn.Sigmoid(), nn.SiLU(), nn.Softplus(),
          nn.LeakyReLU(0.1), LipSwish(), _lipswish_with(0.1), _lipswish_with(-3.7)]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda m: f"{type(m).__name__}")
def test_interval_images_contain_the_exact_image(layer):
    lo = torch.tensor([[a for a, _ in INTERVALS]])
    hi = torch.tensor([[b for _, b in INTERVALS]])
    out = ibp(layer, Box(lo, hi))
    f = _mp_map(layer)
    with mp.workdps(60):
        for i, (a, b) in enumerate(INTERVALS):
            # the ends, and points between them (SiLU and LipSwish are not monotone)
            ends = mp.mpf(a), mp.mpf(b)
            points = [min(max(ends[0] + (ends[1] - ends[0]) * k / 64, ends[0]), ends[1])
                      for k in range(1, 64)] + list(ends)
            values = [f(x) for x in points]
            low, high = mp.mpf(float(out.lo[0, i])), mp.mpf(float(out.hi[0, i]))
            assert low <= min(values) and max(values) <= high, (layer, a, b, low, high)


def test_silu_constant_bounds_the_maximal_derivative():
    """``sup_x d/dx [x sigmoid(x)]`` from mpmath: the root of the second derivative, found from a
    bracket, and the first derivative evaluated there (both by ``mp.diff``, not a closed form)."""
    with mp.workdps(40):
        def silu(x):
            return x / (1 + mp.exp(-x))

        peak = mp.findroot(lambda x: mp.diff(silu, x, 2), (mp.mpf(2), mp.mpf(3)), solver="anderson")
        top = mp.diff(silu, peak)
        assert mp.diff(silu, peak - mp.mpf("0.01")) < top > mp.diff(silu, peak + mp.mpf("0.01"))
        assert abs(peak - mp.mpf("2.3994")) < mp.mpf("1e-4")
        assert top <= SILU_LIP <= top * mp.mpf("1.001")  # a true bound, and not vacuous
    assert lipschitz(nn.SiLU(), (3,))[0] == SILU_LIP
