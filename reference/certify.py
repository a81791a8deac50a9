"""Self-certification of reference results.

* arb: a result whose largest radius exceeds ``tol * max(||value||_inf, 1)`` (measured in the
  result's units; ``tol`` is relative to the result's scale) is recomputed at twice the
  precision, up to ``max_prec`` bits, and refused with the reason beyond that. The radius is a
  proof for models without iterative blocks; the converged fixed points and ODE flows widen
  their balls by an a-posteriori error *estimate* (:mod:`reference.blocks`,
  :mod:`reference.ode`), so results of models with such blocks are marked not certified.
* mpmath: a result is recomputed :data:`MP_CONFIRM_BITS` bits higher and accepted when the two
  agree to the tolerance; the higher-precision value is returned, with the observed difference
  as its error estimate (a confirmation, not a proof); otherwise the precision doubles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lipbound.errors import InputError, LipboundError

from .model import ReferenceModel
from .tensor import RTensor

__all__ = ["CertificationError", "Certified", "certified_forward", "certified_inverse"]

#: Extra bits of the mpmath confirmation run.
MP_CONFIRM_BITS = 64


class CertificationError(LipboundError, ArithmeticError):
    """A reference result could not be certified to the requested tolerance."""


@dataclass(frozen=True)
class Certified:
    """A reference result with its error.

    Attributes:
        value: the result (at the precision that met the tolerance).
        error: an absolute bound on any entry's error: the largest arb radius (certified), or the
            largest difference between two mpmath precisions (confirmed, an estimate).
        prec: the precision, in bits, of ``value`` (for mpmath the confirming, higher one).
        certified: ``True`` for arb on a model without iterative blocks (a proof); ``False``
            for mpmath (a confirmation) and for iterative blocks (an estimate).
    """

    value: RTensor
    error: float
    prec: int
    certified: bool


def _scale(v: RTensor) -> float:
    arr = np.abs(v.to_numpy())
    return max(float(arr.max()) if arr.size else 0.0, 1.0)


def _certify(ref: ReferenceModel, run: Callable[[ReferenceModel], RTensor], tol: float,
             max_prec: int, what: str) -> Certified:
    if not (tol > 0 and math.isfinite(tol)):
        raise InputError(f"tol must be a positive finite number, got {tol!r}")
    for current in ref.doubling(max_prec):
        prec = current.backend.prec
        value = run(current)
        if current.backend.kind == "arb":
            error = float(value.radii().max()) if value.numel else 0.0
            certified, value_prec = not current.root.iterative, prec
        else:
            value_prec = prec + MP_CONFIRM_BITS
            check = run(current.at(value_prec))
            with check.backend.active():  # the difference in mpmath: no float64 rounding
                diff = np.abs((value - check).to_numpy())
            error = float(diff.max()) if diff.size else 0.0
            value, certified = check, False
        if error <= tol * _scale(value):
            return Certified(value, error, value_prec, certified)
    raise CertificationError(
        f"{what} not certified to tol={tol:g} at {prec} bits ({current.backend.kind}): "
        f"error {error:.3g} on values of size {_scale(value):.3g}; raise max_prec="
        f"{max_prec} or tol"
    )


def certified_forward(ref: ReferenceModel, x: Any, tol: float = 1e-20,
                      max_prec: int = 8192) -> Certified:
    """``F(x)`` to ``tol`` relative to the output's scale (see the module docstring)."""
    return _certify(ref, lambda r: r.forward(x), tol, max_prec, "forward")


def certified_inverse(ref: ReferenceModel, y: Any, tol: float = 1e-20,
                      max_prec: int = 8192) -> Certified:
    """``F^-1(y)`` to ``tol`` relative to the output's scale."""
    return _certify(ref, lambda r: r.inverse(y), tol, max_prec, "inverse")
