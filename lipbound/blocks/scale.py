r"""Scale functions ``g`` of affine couplings (paper eq. 4, Table 3, appendix C).

An affine coupling multiplies the active half by ``g(s(x_{I_1}))``. The bounds of Lemma 6 need,
over the interval ``[lo, hi]`` that the raw scale ``h = s(x_{I_1})`` takes on the input box,

* ``c_g      = sup |g(h)|``,
* ``c_g'     = sup |g'(h)|``,
* ``c_{1/g}  = sup |1/g(h)|``,
* ``c_{(1/g)'} = sup |(1/g)'(h)|``.

Every scale function here gives these four numbers as floats that are true upper bounds: each is
computed in float64 from a closed form and then rounded up by a few ulps (:func:`round_up`).

Available functions:

=========================  ==========================================  ===============
class                      g(h)                                        range
=========================  ==========================================  ===============
:class:`SigmoidScale`      ``low + (high - low) * sigmoid(h + shift)``  (low, high)
:class:`ExpScale`          ``exp(h)``                                  (0, inf)
:class:`SoftClampScale`    ``exp(alpha * 2/pi * atan(h / alpha))``       (e^-a, e^a)
:class:`IdentityScale`     ``h``                                       h itself
=========================  ==========================================  ===============

``SigmoidScale()`` is the standard RealNVP/Glow choice ``sigmoid(h + 2)``; ``SigmoidScale(0.5, 1)``
is the paper's modified scaling ``0.5 * sigmoid(h + 2) + 0.5`` in (0.5, 1) (section 3.2);
``IdentityScale`` with a constant ``s`` gives a constant scale, as in the Figure 1 toy (g = 0.1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import InputError

__all__ = [
    "ExpScale",
    "IdentityScale",
    "ScaleFunction",
    "SigmoidScale",
    "SoftClampScale",
    "make_scale",
    "round_up",
]


def round_up(v: float, ulps: int = 4) -> float:
    """Move ``v`` up by ``ulps`` units in the last place, so a float64 closed form becomes an upper
    bound of the exact value (each closed form here has far less than 4 ulps of rounding error)."""
    if math.isnan(v):
        raise InputError("cannot round NaN up to a bound")
    for _ in range(ulps):
        v = math.nextafter(v, math.inf)
    return v


def _exp(v: float) -> float:
    """``exp(v)``, ``inf`` where it overflows (an infinite sup is still a true upper bound)."""
    try:
        return math.exp(v)
    except OverflowError:
        return math.inf


def _sigmoid(h: float) -> float:
    if h >= 0:
        return 1.0 / (1.0 + math.exp(-h))
    e = math.exp(h)
    return e / (1.0 + e)


def _check_interval(lo: float, hi: float) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"interval [lo, hi] must be finite, got [{lo}, {hi}]")
    if lo > hi:
        raise InputError(f"interval needs lo <= hi, got [{lo}, {hi}]")


def _clip(v: float, lo: float, hi: float) -> float:
    return min(max(v, lo), hi)


class ScaleFunction(nn.Module):
    """Elementwise, non-vanishing scale ``g``, with the sups Lemma 6 needs on intervals of ``h``."""

    def forward(self, h: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_abs(self, h: Tensor) -> Tensor:
        """``log|g(h)|``; subclasses override with a form that does not underflow."""
        return torch.log(torch.abs(self(h)))

    def sup_g(self, lo: float, hi: float) -> float:
        """Upper bound on ``sup |g(h)|`` for ``h`` in ``[lo, hi]``."""
        raise NotImplementedError

    def sup_dg(self, lo: float, hi: float) -> float:
        """Upper bound on ``sup |g'(h)|`` for ``h`` in ``[lo, hi]``."""
        raise NotImplementedError

    def sup_inv_g(self, lo: float, hi: float) -> float:
        """Upper bound on ``sup |1/g(h)|`` for ``h`` in ``[lo, hi]``."""
        raise NotImplementedError

    def sup_d_inv_g(self, lo: float, hi: float) -> float:
        """Upper bound on ``sup |(1/g)'(h)|`` for ``h`` in ``[lo, hi]``."""
        raise NotImplementedError

    def range(self) -> tuple[float, float]:
        """The (open) range of ``g`` over the real line."""
        raise NotImplementedError


class SigmoidScale(ScaleFunction):
    r"""``g(h) = low + (high - low) * sigmoid(h + shift)``, range ``(low, high)``.

    With ``u = sigmoid(h + shift)`` and ``k = high - low``: ``g' = k u (1 - u)`` (largest at
    ``u = 1/2``) and ``|(1/g)'| = k u (1 - u) / (low + k u)^2``, whose only critical point in
    ``u`` is ``u* = low / (low + high)``; both are unimodal in ``u``, and ``u`` is increasing in
    ``h``, so the sup over an interval is taken at the critical point clipped to the interval.
    """

    def __init__(self, low: float = 0.0, high: float = 1.0, shift: float = 2.0) -> None:
        super().__init__()
        if not (math.isfinite(low) and math.isfinite(high) and math.isfinite(shift)):
            raise InputError(f"low, high and shift must be finite, got {low}, {high}, {shift}")
        if not 0.0 <= low < high:
            raise InputError(f"SigmoidScale needs 0 <= low < high, got low={low}, high={high}")
        self.low, self.high, self.shift = float(low), float(high), float(shift)

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}, shift={self.shift}"

    def forward(self, h: Tensor) -> Tensor:
        u = torch.sigmoid(h + self.shift)
        return u if self.low == 0.0 and self.high == 1.0 else self.low + (self.high - self.low) * u

    def log_abs(self, h: Tensor) -> Tensor:
        if self.low == 0.0:
            return torch.nn.functional.logsigmoid(h + self.shift) + math.log(self.high)
        return torch.log(self(h))

    def _u(self, lo: float, hi: float) -> tuple[float, float]:
        _check_interval(lo, hi)
        return _sigmoid(lo + self.shift), _sigmoid(hi + self.shift)

    def sup_g(self, lo: float, hi: float) -> float:
        _, u2 = self._u(lo, hi)
        return round_up(self.low + (self.high - self.low) * u2)

    def sup_dg(self, lo: float, hi: float) -> float:
        u = _clip(0.5, *self._u(lo, hi))
        return round_up((self.high - self.low) * u * (1.0 - u))

    def sup_inv_g(self, lo: float, hi: float) -> float:
        u1, _ = self._u(lo, hi)
        if self.low == 0.0:  # 1/g = (1 + exp(-(h + shift))) / high, exact without cancellation
            return round_up((1.0 + _exp(-(lo + self.shift))) / self.high)
        return round_up(1.0 / (self.low + (self.high - self.low) * u1))

    def sup_d_inv_g(self, lo: float, hi: float) -> float:
        k = self.high - self.low
        if self.low == 0.0:  # |(1/g)'| = exp(-(h + shift)) / high, decreasing in h
            _check_interval(lo, hi)
            return round_up(_exp(-(lo + self.shift)) / self.high)
        u = _clip(self.low / (self.low + self.high), *self._u(lo, hi))
        return round_up(k * u * (1.0 - u) / (self.low + k * u) ** 2)

    def range(self) -> tuple[float, float]:
        return self.low, self.high


class ExpScale(ScaleFunction):
    """``g(h) = exp(h)`` (RealNVP); ``g' = g``, ``1/g = exp(-h)``, ``|(1/g)'| = exp(-h)``."""

    def forward(self, h: Tensor) -> Tensor:
        return torch.exp(h)

    def log_abs(self, h: Tensor) -> Tensor:
        return h

    def sup_g(self, lo: float, hi: float) -> float:
        _check_interval(lo, hi)
        return round_up(_exp(hi))

    sup_dg = sup_g

    def sup_inv_g(self, lo: float, hi: float) -> float:
        _check_interval(lo, hi)
        return round_up(_exp(-lo))

    sup_d_inv_g = sup_inv_g

    def range(self) -> tuple[float, float]:
        return 0.0, math.inf


class SoftClampScale(ScaleFunction):
    r"""``g(h) = exp(c(h))`` with the soft clamp ``c(h) = alpha * (2/pi) * atan(h / alpha)``.

    The range is ``(exp(-alpha), exp(alpha))``. ``g' = g c'`` and ``(1/g)' = -c' / g`` with
    ``c'(h) = (2/pi) / (1 + (h/alpha)^2)``. Their sups are bounded piecewise: the interval is cut
    into ``pieces`` parts, on each the product is bounded by the product of sups (``g`` monotone,
    ``c'`` largest at the point nearest 0), and the largest piece bound is returned. It tends to
    the exact sup as ``pieces`` grows.
    """

    pieces = 64

    def __init__(self, alpha: float = 2.0) -> None:
        super().__init__()
        if not (math.isfinite(alpha) and alpha > 0):
            raise InputError(f"alpha must be a positive finite float, got {alpha}")
        self.alpha = float(alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"

    def _c(self, h: float) -> float:
        return self.alpha * (2.0 / math.pi) * math.atan(h / self.alpha)

    def _sup_dc(self, lo: float, hi: float) -> float:
        h = _clip(0.0, lo, hi)
        return (2.0 / math.pi) / (1.0 + (h / self.alpha) ** 2)

    def log_abs(self, h: Tensor) -> Tensor:
        return self.alpha * (2.0 / math.pi) * torch.atan(h / self.alpha)

    def forward(self, h: Tensor) -> Tensor:
        return torch.exp(self.log_abs(h))

    def sup_g(self, lo: float, hi: float) -> float:
        _check_interval(lo, hi)
        return round_up(_exp(self._c(hi)))

    def _piecewise(self, lo: float, hi: float, sup_factor) -> float:
        _check_interval(lo, hi)
        cuts = [lo + (hi - lo) * i / self.pieces for i in range(self.pieces)] + [hi]
        return max(round_up(sup_factor(a, b) * self._sup_dc(a, b)) for a, b in zip(cuts, cuts[1:]))

    def sup_dg(self, lo: float, hi: float) -> float:
        if lo == hi:
            return round_up(self.sup_g(lo, hi) * self._sup_dc(lo, hi))
        return self._piecewise(lo, hi, self.sup_g)

    def sup_inv_g(self, lo: float, hi: float) -> float:
        _check_interval(lo, hi)
        return round_up(_exp(-self._c(lo)))

    def sup_d_inv_g(self, lo: float, hi: float) -> float:
        if lo == hi:
            return round_up(self.sup_inv_g(lo, hi) * self._sup_dc(lo, hi))
        return self._piecewise(lo, hi, self.sup_inv_g)

    def range(self) -> tuple[float, float]:
        return math.exp(-self.alpha), math.exp(self.alpha)


class IdentityScale(ScaleFunction):
    """``g(h) = h``: the scale is the raw output of ``s``, which must stay away from 0.

    Used with a constant ``s`` for a constant scale (the Figure 1 toy, ``g = 0.1``). On an interval
    that contains 0 the sups of ``1/g`` and ``(1/g)' = -1/h^2`` are infinite, and a ``ValueError``
    says so.
    """

    def forward(self, h: Tensor) -> Tensor:
        return h

    def _min_abs(self, lo: float, hi: float) -> float:
        _check_interval(lo, hi)
        if lo <= 0.0 <= hi:
            raise InputError(f"IdentityScale: interval [{lo}, {hi}] of h contains 0, where g = 0")
        return min(abs(lo), abs(hi))

    def sup_g(self, lo: float, hi: float) -> float:
        _check_interval(lo, hi)
        return round_up(max(abs(lo), abs(hi)))

    def sup_dg(self, lo: float, hi: float) -> float:
        _check_interval(lo, hi)
        return 1.0

    def sup_inv_g(self, lo: float, hi: float) -> float:
        return round_up(1.0 / self._min_abs(lo, hi))

    def sup_d_inv_g(self, lo: float, hi: float) -> float:
        return round_up(1.0 / self._min_abs(lo, hi) ** 2)

    def range(self) -> tuple[float, float]:
        return -math.inf, math.inf


_NAMED = {
    "sigmoid": lambda: SigmoidScale(),
    "modified": lambda: SigmoidScale(0.5, 1.0),
    "exp": ExpScale,
    "softclamp": SoftClampScale,
    "identity": IdentityScale,
}


def make_scale(scale: str | ScaleFunction) -> ScaleFunction:
    """Return a scale function from a name (``sigmoid``, ``modified``, ``exp``, ``softclamp``,
    ``identity``) or pass a :class:`ScaleFunction` through."""
    if isinstance(scale, ScaleFunction):
        return scale
    if isinstance(scale, str) and scale in _NAMED:
        return _NAMED[scale]()
    raise InputError(f"scale must be a ScaleFunction or one of {sorted(_NAMED)}, got {scale!r}")
