"""Directed rounding for bounds: every float reported as a bound is rounded up.

IEEE 754 arithmetic rounds each ``+ - * / sqrt`` correctly (to nearest), so the exact result of one
operation lies within half an ulp of the float result; moving that float up by one ulp
(:func:`up`) gives an upper bound. Library functions such as ``exp`` or ``tanh`` are only faithful
to a few ulps; where they enter a bound, the value is moved up by several ulps (:data:`LIB_ULPS`).

The error of a floating-point inner product of length ``n`` (any summation order, with or without
FMA) is at most ``gamma(n) |x|^T |y|`` with ``gamma(n) = n u / (1 - n u)`` and ``u = 2^-53``
(Higham, *Accuracy and Stability of Numerical Algorithms*, eq. 3.5); :func:`gamma` returns that
constant, rounded up.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["LIB_ULPS", "U", "down", "exp_up", "format_bound", "gamma", "up", "up_tensor", "widen"]

#: Significant digits of printed bounds.
_DIGITS = 6

#: Unit roundoff of float64.
U = 2.0 ** -53
#: Ulps added to results of library functions (exp, tanh, sigmoid, ...) that are not correctly
#: rounded; glibc and SLEEF are accurate to better than 4 ulps.
LIB_ULPS = 8
#: Smallest positive subnormal float64: the absolute error of an operation that underflows.
ETA = 2.0 ** -1074


def up(v: float, ulps: int = 1) -> float:
    """``v`` moved up by ``ulps`` ulps (``inf`` stays ``inf``); NaN is refused."""
    if math.isnan(v):
        raise InputError("cannot round NaN up to a bound")
    for _ in range(ulps):
        v = math.nextafter(v, math.inf)
    return v


def down(v: float, ulps: int = 1) -> float:
    """``v`` moved down by ``ulps`` ulps; NaN is refused."""
    if math.isnan(v):
        raise InputError("cannot round NaN down to a bound")
    for _ in range(ulps):
        v = math.nextafter(v, -math.inf)
    return v


def exp_up(v: float) -> float:
    """An upper bound on ``e^v``: ``math.exp`` moved up by :data:`LIB_ULPS` ulps, ``inf`` where
    it overflows."""
    try:
        return up(math.exp(v), LIB_ULPS)
    except OverflowError:
        return math.inf


def gamma(n: int) -> float:
    """``gamma(n) = n u / (1 - n u)`` rounded up: the relative error bound of a length-``n`` sum."""
    nu = n * U
    if nu >= 0.5:
        raise InputError(f"inner products of length {n} are too long for float64 error bounds")
    return up(up(nu) / down(1.0 - nu))


def up_tensor(t: Tensor, ulps: int = 1) -> Tensor:
    """Every entry of ``t`` moved up by ``ulps`` ulps."""
    inf = torch.full_like(t, math.inf)
    for _ in range(ulps):
        t = torch.nextafter(t, inf)
    return t


def widen(lo: Tensor, hi: Tensor, rel: float, absolute: float = 0.0) -> tuple[Tensor, Tensor]:
    """The interval ``[lo, hi]`` widened by ``rel |.| + absolute`` on each side, the result rounded
    outward: encloses every value within that error of the float endpoints.

    ``4 u`` relative and ``4 ETA`` absolute are added to cover the rounding of the widening itself.
    A NaN end (from ``inf - inf`` or ``0 * inf`` after an overflow) becomes ``-inf`` (``lo``) or
    ``inf`` (``hi``): an enclosure that knows nothing there, never a NaN.
    """
    rel, absolute = rel + 4 * U, absolute + 4 * ETA
    lo_out = lo - (lo.abs() * rel + absolute)
    hi_out = hi + (hi.abs() * rel + absolute)
    inf = torch.full_like(hi_out, math.inf)
    lo_out = torch.where(torch.isnan(lo_out), -inf, torch.nextafter(lo_out, -inf))
    hi_out = torch.where(torch.isnan(hi_out), inf, torch.nextafter(hi_out, inf))
    return lo_out, hi_out


def format_bound(v: float | None, upward: bool = True) -> str:
    """``v`` to six significant digits, rounded up (``upward``) or down; ``-`` for ``None``."""
    if v is None:
        return "-"
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    d = Decimal(v)
    exponent = d.adjusted() - (_DIGITS - 1)
    q = d.quantize(Decimal(1).scaleb(exponent), rounding=ROUND_CEILING if upward else ROUND_FLOOR)
    return f"{q:.{_DIGITS - 1}e}" if abs(d.adjusted()) >= 5 else f"{float(q):.{_DIGITS}g}"
