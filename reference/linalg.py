r"""Singular values of the exact Jacobian, with self-certification.

For one sample ``x`` the Jacobian ``J = dF(x)/dx`` comes from forward mode in the reference
arithmetic (:meth:`reference.model.ReferenceModel.jacobian`). Its singular values are computed
by mpmath's SVD of the midpoint matrix at a working precision above the Jacobian's, and again 64
bits higher; by Weyl's inequality every singular value is within

.. math:: \|J - \operatorname{mid} J\|_2 + |\sigma_i^{(P)} - \sigma_i^{(P+64)}|
          \le \|\operatorname{rad} J\|_F + |\sigma_i^{(P)} - \sigma_i^{(P+64)}|

of the computed one (the second term the observed change between the two SVD precisions). With
the mpmath backend there are no radii: the Jacobian is recomputed
:data:`~reference.certify.MP_CONFIRM_BITS` bits higher and ``||J_P - J_{P+64}||_F`` takes the place
of the first term (an estimate, not a proof). When that error exceeds ``rtol * sigma_min``
the whole computation is repeated at twice the precision (``sigma_min`` of an ill-conditioned
``J`` needs about ``log2 cond`` extra bits), up to ``max_prec`` bits; then
:class:`~reference.certify.CertificationError` says why it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mpmath

from lipbound.errors import InputError

from .certify import MP_CONFIRM_BITS, CertificationError
from .model import ReferenceModel

__all__ = ["SingularValues", "singular_values", "to_mpf"]


def to_mpf(value: Any) -> mpmath.mpf:
    """The midpoint of an arb ball (or an mpf) as an exact mpmath number (created at as many
    bits as its mantissa has, whatever mpmath's working precision)."""
    if isinstance(value, mpmath.mpf):
        return value
    man, exp = value.mid().man_exp()
    man = int(man)
    with mpmath.workprec(max(53, man.bit_length() + 1)):
        return mpmath.mpf((man, int(exp)))


@dataclass(frozen=True)
class SingularValues:
    """Singular values of a Jacobian, largest first.

    Attributes:
        exact: the values as mpmath numbers (no underflow, e.g. ``0.1^400``).
        error_bound: the absolute error bound of each value (see the module docstring; for
            ``"mp"`` an estimate).
        prec: the reference precision (bits) that met the tolerance.
        backend: ``"arb"`` (radius-certified Jacobian) or ``"mp"`` (Jacobian and SVD confirmed
            at two precisions).
    """

    exact: tuple[mpmath.mpf, ...]
    error_bound: float
    prec: int
    backend: str

    @property
    def values(self) -> list[float]:
        """As float64 (values below 1e-308 underflow to 0 here: use ``exact``)."""
        return [float(v) for v in self.exact]

    @property
    def sigma_max(self) -> mpmath.mpf:
        return self.exact[0]

    @property
    def sigma_min(self) -> mpmath.mpf:
        return self.exact[-1]

    @property
    def cond(self) -> mpmath.mpf:
        """``sigma_max / sigma_min`` (``inf`` for a singular Jacobian)."""
        return self.exact[0] / self.exact[-1] if self.exact[-1] != 0 else mpmath.inf


def _svd(rows: list[list[mpmath.mpf]], prec: int) -> list[mpmath.mpf]:
    with mpmath.workprec(prec):
        s = mpmath.svd_r(mpmath.matrix(rows), compute_uv=False)
        return sorted((+s[i] for i in range(len(s))), reverse=True)


def singular_values(ref: ReferenceModel, x: Any, rtol: float = 1e-30,
                    max_prec: int = 16384) -> SingularValues:
    """The singular values of ``dF(x)/dx`` for one sample, each within ``rtol * sigma_min``.

    Args:
        ref: the reference model (its precision is the starting precision).
        x: one sample, batch size 1 (torch tensor, numpy array or RTensor).
        rtol: the required error relative to ``sigma_min``.
        max_prec: the largest precision tried before refusing.
    """
    if not (rtol > 0 and math.isfinite(rtol)):
        raise InputError(f"rtol must be a positive finite number, got {rtol!r}")
    for current in ref.doubling(max_prec):
        prec = current.backend.prec
        rows = current.jacobian(x)
        mids = [[to_mpf(v) for v in row] for row in rows]
        if len(mids) != len(mids[0]):
            raise InputError(f"the Jacobian is {len(mids)} x {len(mids[0])}: F must map R^d to R^d")
        if current.backend.kind == "arb":
            jacobian_error = current.jacobian_radius(rows)
        else:  # mpmath carries no radius: confirm the Jacobian at a second precision
            check = [[to_mpf(v) for v in row]
                     for row in current.at(prec + MP_CONFIRM_BITS).jacobian(x)]
            with mpmath.workprec(prec + 2 * MP_CONFIRM_BITS):
                jacobian_error = float(mpmath.sqrt(mpmath.fsum(
                    (a - b) ** 2 for ra, rb in zip(mids, check) for a, b in zip(ra, rb))))
            mids = check
        low, high = _svd(mids, prec + 32), _svd(mids, prec + 96)
        change = max(float(abs(a - b)) for a, b in zip(low, high))
        error = jacobian_error + change
        if error <= rtol * float(high[-1]) or (high[-1] == 0 and error == 0):
            return SingularValues(tuple(high), error, prec, current.backend.kind)
    raise CertificationError(
        f"singular values not certified to rtol={rtol:g} at {prec} bits: error bound "
        f"{error:.3g} against sigma_min {float(high[-1]):.3g} (raise max_prec="
        f"{max_prec} or rtol)"
    )
