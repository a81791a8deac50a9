r"""Scale functions ``g`` of affine couplings (paper eq. 4, Table 3, appendix C).

An affine coupling multiplies the active half by ``g(s(x_{I_1}))``. These modules compute ``g``
in torch; the certified sups Lemma 6 needs (``sup |g|``, ``sup |g'|``, ``sup |1/g|``,
``sup |(1/g)'|`` on an interval of ``h``) and the interval image of ``g`` are computed from the same
parameters in ball arithmetic by :mod:`lipbound.bounds.scales`.

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
]


class ScaleFunction(nn.Module):
    """Elementwise, increasing, non-vanishing scale ``g`` (its certified sups:
    :mod:`lipbound.bounds.scales`)."""

    def forward(self, h: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_abs(self, h: Tensor) -> Tensor:
        """``log|g(h)|``; subclasses override with a form that does not underflow."""
        return torch.log(torch.abs(self(h)))

    def range(self) -> tuple[float, float]:
        """The (open) range of ``g`` over the real line."""
        raise NotImplementedError


class SigmoidScale(ScaleFunction):
    r"""``g(h) = low + (high - low) * sigmoid(h + shift)``, range ``(low, high)``.

    With ``u = sigmoid(h + shift)`` and ``k = high - low``: ``g' = k u (1 - u)`` and
    ``|(1/g)'| = k u (1 - u) / (low + k u)^2``.
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

    def range(self) -> tuple[float, float]:
        return self.low, self.high


class ExpScale(ScaleFunction):
    """``g(h) = exp(h)`` (RealNVP); ``g' = g``, ``1/g = exp(-h)``, ``|(1/g)'| = exp(-h)``."""

    def forward(self, h: Tensor) -> Tensor:
        return torch.exp(h)

    def log_abs(self, h: Tensor) -> Tensor:
        return h

    def range(self) -> tuple[float, float]:
        return 0.0, math.inf


class SoftClampScale(ScaleFunction):
    r"""``g(h) = exp(c(h))`` with the soft clamp ``c(h) = alpha * (2/pi) * atan(h / alpha)``.

    The range is ``(exp(-alpha), exp(alpha))``. ``g' = g c'`` and ``(1/g)' = -c' / g`` with
    ``c'(h) = (2/pi) / (1 + (h/alpha)^2)``.
    """

    def __init__(self, alpha: float = 2.0) -> None:
        super().__init__()
        if not (math.isfinite(alpha) and alpha > 0):
            raise InputError(f"alpha must be a positive finite float, got {alpha}")
        self.alpha = float(alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"

    def log_abs(self, h: Tensor) -> Tensor:
        return self.alpha * (2.0 / math.pi) * torch.atan(h / self.alpha)

    def forward(self, h: Tensor) -> Tensor:
        return torch.exp(self.log_abs(h))

    def range(self) -> tuple[float, float]:
        return math.exp(-self.alpha), math.exp(self.alpha)


class IdentityScale(ScaleFunction):
    """``g(h) = h``: the scale is the raw output of ``s``, which must stay away from 0.

    Used with a constant ``s`` for a constant scale (the Figure 1 toy, ``g = 0.1``). On an interval
    that contains 0 the sups of ``1/g`` and ``(1/g)' = -1/h^2`` are infinite, and the bounds say
    so.
    """

    def forward(self, h: Tensor) -> Tensor:
        return h

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
