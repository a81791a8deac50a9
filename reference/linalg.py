r"""Singular values of the exact Jacobian, certified in the backend's own arithmetic.

For one sample ``x`` the Jacobian ``J = dF(x)/dx`` comes from forward mode in the reference
arithmetic (:meth:`reference.model.ReferenceModel.jacobian`). Nothing below goes through float64:
values, radii and the acceptance test are arb balls or mpmath numbers, so a singular value such as
``0.1^400`` (far below float64's ``1e-308``) comes with a correct, nonzero error bound.

**arb (a proof).** ``J`` is a matrix of balls. A ``2 x 2`` matrix gets the closed form

.. math:: f = \|J\|_F^2, \quad \sigma_{\max} = \sqrt{(f + \sqrt{f^2 - 4 \det^2}) / 2}, \quad
          \sigma_{\min} = |\det| / \sigma_{\max}

in ball arithmetic (no cancellation in ``sigma_min``, so its radius is relative to its size). A
larger one: mpmath's SVD of the midpoints, ``mid J ~ U diag(s) V^T``, converted exactly to balls;
with :math:`E = U^\top J V - \operatorname{diag}(s)`, :math:`f = \|U^\top U - I\|_F` and
:math:`g = \|V^\top V - I\|_F` evaluated in ball arithmetic (``J``'s radii included), Weyl's
inequality and :math:`\sigma_{\min}(U)\,\sigma_i(J)\,\sigma_{\min}(V) \le \sigma_i(U^\top J V)
\le \|U\|\,\sigma_i(J)\,\|V\|` give

.. math:: \frac{\max(0, s_i - \|E\|_F)}{\sqrt{(1 + f)(1 + g)}} \le \sigma_i(J) \le
          \frac{s_i + \|E\|_F}{\sqrt{(1 - f)(1 - g)}}.

The enclosures are proofs when the Jacobian's balls are (no iterative block: the fixed points and
ODE flows widen their balls by an a-posteriori *estimate*, see :mod:`reference.certify`).

**mpmath (an estimate).** No radii: the Jacobian is recomputed
:data:`~reference.certify.MP_CONFIRM_BITS` bits higher and the change of each singular value
between the two precisions is its error estimate, not a proof (``certified=False``).

Each value must be within ``rtol`` of itself (``error_i <= rtol sigma_i``, ``sigma_i`` separated
from 0); otherwise the whole computation is repeated at twice the precision (``sigma_min`` of an
ill-conditioned ``J`` needs about ``log2 cond`` extra bits), up to ``max_prec`` bits; then
:class:`~reference.certify.CertificationError` says why it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import flint
import mpmath

from lipbound.errors import InputError

from .backends import ArbBackend, Backend, MpBackend, Scalar
from .certify import MP_CONFIRM_BITS, CertificationError
from .model import ReferenceModel

__all__ = ["SingularValues", "certified_singular_values", "singular_values", "to_mpf"]

Matrix = list[list[Scalar]]

#: The closed form's arithmetic (it works at the precision of the caller's active context).
_ARB, _MP = ArbBackend(53), MpBackend(53)


def to_mpf(value: Any) -> mpmath.mpf:
    """The midpoint of an arb ball (or an mpf) as an exact mpmath number (created at as many
    bits as its mantissa has, whatever mpmath's working precision)."""
    if isinstance(value, mpmath.mpf):
        return value
    man, exp = value.mid().man_exp()
    man = int(man)
    with mpmath.workprec(max(53, man.bit_length() + 1)):
        return mpmath.mpf((man, int(exp)))


def _to_arb(value: mpmath.mpf) -> flint.arb:
    """An mpf as an exact arb (no rounding to the context precision)."""
    sign, man, exp, _ = value._mpf_
    if not man and exp:
        raise InputError(f"cannot convert the non-finite value {value} to an arb ball")
    return flint.arb((-int(man) if sign else int(man), int(exp)))


@dataclass(frozen=True)
class SingularValues:
    """Singular values of a Jacobian, largest first, each with its error bound.

    Attributes:
        exact: the values (midpoints) as mpmath numbers (no underflow, e.g. ``0.1^400``).
        errors: per value, an absolute bound on ``|sigma_i - exact[i]|`` as an mpmath number
            (rounded up, never flushed to 0).
        prec: the reference precision (bits) that met the tolerance.
        backend: ``"arb"`` or ``"mp"``.
        certified: ``True`` when ``errors`` is a proof: arb ball arithmetic on a model without
            iterative blocks. ``False`` for mpmath (the change between two precisions) and for
            iterative blocks (a-posteriori estimates): estimates, not proofs.
    """

    exact: tuple[mpmath.mpf, ...]
    errors: tuple[mpmath.mpf, ...]
    prec: int
    backend: str
    certified: bool

    @property
    def error_bound(self) -> mpmath.mpf:
        """The largest of :attr:`errors`."""
        return max(self.errors)

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

    def contains(self, i: int, value: mpmath.mpf) -> bool:
        """Whether ``value`` lies within the error bound of the ``i``-th singular value."""
        return abs(mpmath.fsub(value, self.exact[i], exact=True)) <= self.errors[i]


def _closed_form_2x2(rows: Matrix, backend: Backend) -> list[Scalar]:
    r"""``[sigma_max, sigma_min]`` of a 2x2 matrix in the backend's arithmetic (the module
    docstring's closed form)."""
    (a, b), (c, d) = rows
    f = a * a + b * b + c * c + d * d
    det = a * d - b * c
    det2 = det * det
    disc = backend.nonnegative(f * f - 4 * det2)  # f^2 >= 4 det^2: clip rounding
    smax = backend.sqrt((f + backend.sqrt(disc)) / 2)
    return [smax, backend.sqrt(det2) / smax]


def _svd_midpoints(rows: Matrix, prec: int) -> tuple[Any, list[mpmath.mpf], Any]:
    """mpmath's SVD of the midpoints at ``prec`` bits, values sorted largest first:
    ``(U, s, Vt)`` with ``mid J ~ U diag(s) Vt``."""
    with mpmath.workprec(prec):
        u, s, vt = mpmath.svd_r(mpmath.matrix([[to_mpf(v) for v in row] for row in rows]))
        order = sorted(range(len(s)), key=lambda i: -s[i])
        n = len(order)
        u_sorted = [[u[r, i] for i in order] for r in range(n)]
        vt_sorted = [[vt[i, c] for c in range(n)] for i in order]
        return u_sorted, [+s[i] for i in order], vt_sorted


def _frobenius_upper(m: flint.arb_mat) -> flint.arb:
    """An upper bound on ``||m||_F`` (exact arb), from each entry's largest magnitude."""
    total = flint.arb(0)
    for v in m.entries():
        a = v.abs_upper()
        total += a * a
    return total.sqrt().upper()


def _enclose_arb(rows: Matrix, prec: int) -> list[flint.arb] | None:
    """Balls holding the singular values of the ball matrix ``rows`` (module docstring); ``None``
    when the approximate SVD is too far from orthogonal to bound (more bits needed)."""
    n = len(rows)
    if n == 2:
        return _closed_form_2x2(rows, _ARB)
    u, s, vt = _svd_midpoints(rows, prec + 32)
    j = flint.arb_mat(rows)
    um = flint.arb_mat([[_to_arb(v) for v in row] for row in u])
    vm = flint.arb_mat([[_to_arb(v) for v in row] for row in vt]).transpose()
    s_arb = [_to_arb(v) for v in s]
    eye = flint.arb_mat(n, n, [1 if i == k else 0 for i in range(n) for k in range(n)])
    diag = flint.arb_mat(n, n, [s_arb[i] if i == k else 0 for i in range(n) for k in range(n)])
    e = _frobenius_upper(um.transpose() * j * vm - diag)
    f = _frobenius_upper(um.transpose() * um - eye)
    g = _frobenius_upper(vm.transpose() * vm - eye)
    if not (f < 1 and g < 1):
        return None
    shrink, grow = ((1 + f) * (1 + g)).sqrt(), ((1 - f) * (1 - g)).sqrt()
    return [((si - e).nonnegative_part() / shrink).union((si + e) / grow) for si in s_arb]


def _mp_values(rows: Matrix, prec: int) -> list[mpmath.mpf]:
    """Singular values of a point matrix in mpmath at ``prec`` bits, largest first."""
    if len(rows) == 2:
        with mpmath.workprec(prec):
            return list(_closed_form_2x2(rows, _MP))
    return _svd_midpoints(rows, prec)[1]


def _from_balls(balls: Sequence[flint.arb]) -> tuple[tuple[mpmath.mpf, ...],
                                                     tuple[mpmath.mpf, ...]] | None:
    """Midpoints and radii as exact mpf; ``None`` if a ball is not finite."""
    if not all(b.is_finite() for b in balls):
        return None
    return tuple(to_mpf(b) for b in balls), tuple(to_mpf(b.rad()) for b in balls)


def _accurate(values: Sequence[mpmath.mpf], errors: Sequence[mpmath.mpf], rtol: float) -> bool:
    """Every value separated from 0 and within ``rtol`` of itself (in mpmath: no underflow)."""
    tol = mpmath.mpf(rtol)
    return all(e < v and e <= mpmath.fmul(tol, v, exact=True)
               for v, e in zip(values, errors, strict=True))


def certified_singular_values(ref: ReferenceModel,
                              jacobians: Callable[[ReferenceModel], list[Matrix]],
                              rtol: float = 1e-30, max_prec: int = 16384
                              ) -> list[SingularValues]:
    """The singular values of every matrix ``jacobians(r)`` returns for the reference ``r`` (the
    same list at every precision), each within ``rtol`` of itself; the precision doubles from
    ``ref``'s until all of them are, up to ``max_prec`` bits (module docstring).

    Args:
        ref: the reference model (its precision is the starting precision).
        jacobians: square Jacobians computed by ``r`` in ``r``'s arithmetic (e.g.
            ``lambda r: [r.jacobian(x)]``).
        rtol: the required error of each value relative to itself.
        max_prec: the largest precision tried before refusing.
    """
    if not (isinstance(rtol, (int, float)) and rtol > 0 and math.isfinite(rtol)):
        raise InputError(f"rtol must be a positive finite number, got {rtol!r}")
    worst = "no precision tried"
    for current in ref.doubling(max_prec):
        prec, kind = current.backend.prec, current.backend.kind
        matrices = jacobians(current)
        for rows in matrices:
            if not rows or len(rows) != len(rows[0]):
                raise InputError(f"the Jacobian is {len(rows)} x {len(rows[0]) if rows else 0}: "
                                 "F must map R^d to R^d")
        results: list[SingularValues] = []
        if kind == "arb":
            with current.backend.active():
                enclosed = [_enclose_arb(rows, prec) for rows in matrices]
            certified = not current.root.iterative
            for balls in enclosed:
                pair = _from_balls(balls) if balls is not None else None
                if pair is None:
                    break
                results.append(SingularValues(*pair, prec, kind, certified))
        else:  # mpmath: no radii, confirm at a second precision
            high = current.at(prec + MP_CONFIRM_BITS)
            for low_rows, high_rows in zip(matrices, jacobians(high), strict=True):
                low = _mp_values(low_rows, prec + 32)
                values = _mp_values(high_rows, prec + MP_CONFIRM_BITS + 32)
                errors = tuple(abs(mpmath.fsub(a, b, exact=True))
                               for a, b in zip(low, values, strict=True))
                results.append(SingularValues(tuple(values), errors, high.backend.prec, kind,
                                              False))
        if len(results) == len(matrices) and all(
                _accurate(r.exact, r.errors, rtol) for r in results):
            return results
        worst = _worst_message(results, len(matrices))
    raise CertificationError(
        f"singular values not certified to rtol={rtol:g} at {prec} bits ({worst}); raise "
        f"max_prec={max_prec} or rtol"
    )


def _worst_message(results: list[SingularValues], expected: int) -> str:
    if len(results) < expected:
        return "an enclosure was not finite or the approximate SVD not orthogonal enough"
    r = min(results, key=lambda r: r.sigma_min)
    text = (f"sigma_min {mpmath.nstr(r.sigma_min, 6)} with error bound "
            f"{mpmath.nstr(r.errors[-1], 6)}")
    if not r.errors[-1] < r.sigma_min:
        text += ": not separated from 0, the Jacobian may be singular"
    return text


def singular_values(ref: ReferenceModel, x: Any, rtol: float = 1e-30,
                    max_prec: int = 16384) -> SingularValues:
    """The singular values of ``dF(x)/dx`` for one sample, each within ``rtol`` of itself.

    Args:
        ref: the reference model (its precision is the starting precision).
        x: one sample, batch size 1 (torch tensor, numpy array or RTensor).
        rtol: the required error of each value relative to itself.
        max_prec: the largest precision tried before refusing.
    """
    return certified_singular_values(ref, lambda r: [r.jacobian(x)], rtol, max_prec)[0]

