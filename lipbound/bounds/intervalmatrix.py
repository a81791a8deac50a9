r"""Interval matrices in midpoint-radius form, outward rounded, and sound norm bounds on them.

An :class:`IntervalMatrix` ``[M +- R]`` (``R >= 0`` entrywise) stands for every real matrix ``A``
with ``|A - M| <= R`` entrywise. Products follow Rump's midpoint-radius rule: for ``A`` in
``[Ma +- Ra]`` and ``B`` in ``[Mb +- Rb]``,

.. math:: |AB - M_a M_b| \le |M_a| R_b + R_a (|M_b| + R_b),

and the float midpoint ``fl(Ma Mb)`` is within ``gamma(n) |Ma| |Mb|`` of ``Ma Mb`` (Higham,
eq. 3.5), so that term joins the radius; the radius itself is a sum of non-negative float
products, each at most ``(1 + 2 gamma(n))`` times below its exact value, and is inflated by that
factor and rounded up (with an absolute term for underflow). Diagonal interval scalings are done on
the end points (four products per entry, each correctly rounded, widened outward).

**Norms** (:meth:`IntervalMatrix.norm_upper`): for every ``A`` in ``[M +- R]``,
``||A||_2 <= ||M||_2 + ||R||_2`` (``|A - M| <= R`` entrywise and ``||E||_2 <= || |E| ||_2 <=
||R||_2`` for non-negative ``R`` by Perron-Frobenius) and ``||A||_2 <= || |M| + R ||_2``
(``|A| <= |M| + R``); both are certified by :func:`.norms.spectral_norm_upper` and the smaller is
taken. Cheaper, looser: the Frobenius norm of ``|M| + R`` or ``sqrt(||.||_1 ||.||_inf)`` of it
(:meth:`IntervalMatrix.cheap_norm_upper`).

**Inverse norms** (:meth:`IntervalMatrix.inverse_norm_upper`): with ``X = fl(M^-1)`` and
``||A - M||_2 <= e = ||R||_2``, ``||A^-1||_2 <= ||X||_2 / (1 - ||I - M X||_2 - e ||X||_2)`` when
the denominator is positive (:func:`.norms.certified_inverse` with ``error=e``, whose residual
``I - M X`` is bounded in outward-rounded arithmetic): finite wherever the interval is narrow
against the distance of ``M`` to singularity.

**Batches.** ``M`` and ``R`` may carry leading batch dimensions (``(..., m, n)``: one interval
matrix per box of a batch, see :mod:`.batched`); products, sums and scalings broadcast, and the
``*_each`` norms give one bound per matrix (the float ones their maximum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .interval import Box
from .norms import certified_inverse_each, frobenius_upper, spectral_norm_upper_each
from .rounding import ETA, U, gamma, up_tensor, widen

__all__ = ["IntervalMatrix", "matvec"]


def matvec(a: Tensor, v: Tensor) -> Tensor:
    """``a v`` for matrices ``a`` ``(..., m, n)`` and vectors ``v`` ``(..., n)`` (broadcast)."""
    return (a @ v.unsqueeze(-1)).squeeze(-1)


def _inflate(t: Tensor, n: int) -> Tensor:
    """A float ``>=`` the exact value of a sum of ``n``-term non-negative float products ``t``."""
    g = gamma(n + 4)
    return up_tensor(t * (1 + 3 * g) + (n + 4) * 4 * ETA)


@dataclass(frozen=True)
class IntervalMatrix:
    """The matrices ``A`` with ``|A - mid| <= rad`` entrywise (float64, ``rad >= 0``);
    ``is_diagonal``: both are zero off the diagonal (products are then row scalings)."""

    mid: Tensor
    rad: Tensor
    is_diagonal: bool = False

    @classmethod
    def point(cls, m: Tensor) -> IntervalMatrix:
        """The exact matrix ``m`` (radius 0)."""
        m = m.detach().to(torch.float64)
        return cls(m, torch.zeros_like(m))

    @classmethod
    def from_ends(cls, lo: Tensor, hi: Tensor) -> IntervalMatrix:
        """The interval matrix holding ``[lo, hi]`` entrywise."""
        c, r = Box(lo.unsqueeze(0), hi.unsqueeze(0)).center_radius()
        return cls(c[0], r[0])

    @classmethod
    def diagonal(cls, lo: Tensor, hi: Tensor) -> IntervalMatrix:
        """``diag([lo_i, hi_i])``."""
        m = cls.from_ends(torch.diag(lo.reshape(-1)), torch.diag(hi.reshape(-1)))
        return cls(m.mid, m.rad, True)

    @classmethod
    def diagonals(cls, lo: Tensor, hi: Tensor) -> IntervalMatrix:
        """``diag([lo_i, hi_i])`` per box of a batch of boxes' ends (shape ``(B, ...)``, as
        :class:`.interval.Box` holds them): ``(B, n, n)``, or ``(n, n)`` for ``B = 1``."""
        if lo.shape[0] == 1:
            return cls.diagonal(lo, hi)
        c, r = Box(lo, hi).center_radius()  # as from_ends does, on the diagonals alone
        return cls(torch.diag_embed(c.reshape(len(c), -1)), torch.diag_embed(r.reshape(len(r), -1)),
                   True)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mid.shape)

    def midpoint(self) -> IntervalMatrix:
        """The exact matrix ``M`` (radius 0; a diagonal one stays marked diagonal)."""
        return IntervalMatrix(self.mid, torch.zeros_like(self.mid), self.is_diagonal)

    def ends(self) -> tuple[Tensor, Tensor]:
        """Entrywise ``[lo, hi]`` holding the interval (outward rounded)."""
        return widen(self.mid - self.rad, self.mid + self.rad, 0.0)

    def intersect(self, other: IntervalMatrix) -> IntervalMatrix:
        """The entrywise intersection of two enclosures of the same matrices (``RuntimeError``
        when disjoint: one of them is unsound)."""
        lo1, hi1 = self.ends()
        lo2, hi2 = other.ends()
        lo, hi = torch.maximum(lo1, lo2), torch.minimum(hi1, hi2)
        if bool((lo > hi).any()):
            raise RuntimeError("two enclosures of the same matrices are disjoint: a Jacobian "
                               "rule is unsound")
        return IntervalMatrix.from_ends(lo, hi)

    def abs_upper(self) -> Tensor:
        """``|M| + R`` rounded up: ``|A| <=`` it entrywise for every ``A`` in the interval."""
        return up_tensor(self.mid.abs() + self.rad)

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.mid).all() & torch.isfinite(self.rad).all())

    def select(self, keep: Tensor) -> IntervalMatrix:
        """The matrices ``keep`` (an index or mask) of a batch; a single matrix stays as is."""
        def rows(t: Tensor) -> Tensor:
            return t[keep] if t.dim() > 2 else t
        return IntervalMatrix(rows(self.mid), rows(self.rad), self.is_diagonal)

    def finite_each(self) -> Tensor:
        """Per matrix of a batch, whether all its entries are finite."""
        mid, rad = torch.broadcast_tensors(self.mid, self.rad)
        return (torch.isfinite(mid) & torch.isfinite(rad)).flatten(-2).all(-1)

    def __matmul__(self, other: IntervalMatrix | Tensor) -> IntervalMatrix:
        if isinstance(other, Tensor):
            other = IntervalMatrix.point(other)
        n = self.mid.shape[-1]
        a_mid, a_rad, product = self.mid, self.rad, torch.matmul
        if self.is_diagonal:
            # each entry is one product (the sum's other terms are exact zeros): the rule with
            # n = 1, the products as row scalings
            n, product = 1, torch.mul
            a_mid, a_rad = (torch.diagonal(t, dim1=-2, dim2=-1).unsqueeze(-1)
                            for t in (self.mid, self.rad))
        mid = product(a_mid, other.mid)
        a_abs, b_abs = a_mid.abs(), other.mid.abs()
        rad = gamma(n) * product(a_abs, b_abs)
        if bool(other.rad.any()):
            rad = rad + product(a_abs, other.rad)
        if bool(a_rad.any()):
            rad = rad + product(a_rad, up_tensor(b_abs + other.rad))
        return IntervalMatrix(mid, _inflate(rad, n))

    def __rmatmul__(self, other: Tensor) -> IntervalMatrix:
        return IntervalMatrix.point(other) @ self

    def __add__(self, other: IntervalMatrix) -> IntervalMatrix:
        mid = self.mid + other.mid  # error <= u |mid|
        rad = up_tensor((self.rad + other.rad) * (1 + 4 * U) + mid.abs() * (2 * U) + 4 * ETA)
        return IntervalMatrix(mid, rad)

    def __neg__(self) -> IntervalMatrix:
        return IntervalMatrix(-self.mid, self.rad, self.is_diagonal)

    def scale_rows(self, lo: Tensor, hi: Tensor) -> IntervalMatrix:
        """``diag([lo, hi]) A`` for every ``A`` in the interval (end-point products)."""
        a_lo, a_hi = self.ends()
        m = self.mid.shape[-2]  # lo, hi: one row per box of a batch (B = 1: unbatched)
        d_lo, d_hi = lo.reshape(-1, m, 1), hi.reshape(-1, m, 1)
        if len(d_lo) == 1:
            d_lo, d_hi = d_lo[0], d_hi[0]
        products = torch.stack([d_lo * a_lo, d_lo * a_hi, d_hi * a_lo, d_hi * a_hi])
        # 0 * inf never arises: the ends are finite where this is used
        return IntervalMatrix.from_ends(*widen(products.min(0).values, products.max(0).values,
                                               0.0))

    def cheap_norm_upper(self) -> float:
        """A cheaper, looser upper bound on ``||A||_2`` over the interval: the smaller of the
        Frobenius norm and ``sqrt(||Q||_1 ||Q||_inf)`` of ``Q = |M| + R`` (the largest over a
        batch)."""
        return float(self.cheap_norm_upper_each().max())

    def cheap_norm_upper_each(self) -> Tensor:
        """:meth:`cheap_norm_upper` per matrix of a batch (``inf`` where not finite)."""
        q = self.abs_upper()
        n = max(q.shape[-2:])
        g = 1 + 2 * gamma(n + 4)
        one = up_tensor(q.sum(-2).amax(-1) * g)
        inf = up_tensor(q.sum(-1).amax(-1) * g)
        frob = frobenius_upper(q)
        out = up_tensor(torch.minimum(frob, up_tensor(torch.sqrt(up_tensor(one * inf)))) + 4 * ETA,
                        2)
        return torch.where(self.finite_each(), out, torch.full_like(out, math.inf))

    def norm_upper(self) -> float:
        """An upper bound on ``||A||_2`` over the interval (module docstring; the largest over a
        batch); ``inf`` when not finite."""
        return float(self.norm_upper_each().max())

    def norm_upper_each(self) -> Tensor:
        """:meth:`norm_upper` per matrix of a batch."""
        split = up_tensor(spectral_norm_upper_each(self.mid) + spectral_norm_upper_each(self.rad))
        out = torch.minimum(split, spectral_norm_upper_each(self.abs_upper()))
        return torch.where(self.finite_each(), out, torch.full_like(out, math.inf))

    def inverse_norm_upper(self) -> float:
        """An upper bound on ``||A^-1||_2`` over the interval (module docstring; the largest over
        a batch); ``inf`` when the interval may hold a singular matrix as far as this test can
        tell."""
        return float(self.inverse_norm_upper_each().max())

    def inverse_norm_upper_each(self) -> Tensor:
        """:meth:`inverse_norm_upper` per matrix of a batch."""
        if self.mid.shape[-1] != self.mid.shape[-2]:
            return torch.full(self.finite_each().shape, math.inf, dtype=torch.float64)
        error = spectral_norm_upper_each(self.rad)
        return certified_inverse_each(self.mid, error=error)[1]
