r"""Boxes and outward-rounded interval arithmetic on torch tensors.

A :class:`Box` is a per-coordinate interval ``[lo, hi]`` of one sample, stored with a batch
dimension of one (shape ``(1, *per_sample_shape)``) so that blocks and partitions apply to its
endpoints directly. Every operation here returns a box that encloses the exact result for every
point of its argument boxes: float64 endpoints are widened by the rounding error of the operation
(:func:`~lipbound.bounds.rounding.widen`), library functions by :data:`~.rounding.LIB_ULPS` ulps.

Linear maps use the centre-radius form (interval bound propagation): for ``x`` in
``c +- r``, ``W x + b`` lies in ``(W c + b) +- |W| r``; the floating-point error of both products is
at most ``gamma(n) (|W| |c| + |b|)`` and ``gamma(n) |W| r`` (Higham, eq. 3.5), added to the radius.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError
from .rounding import LIB_ULPS, U, gamma, up, up_tensor, widen

__all__ = ["Box", "affine_map", "monotone_map"]


@dataclass(frozen=True)
class Box:
    """The interval ``[lo, hi]`` per coordinate of one sample (shape ``(1, *shape)``, float64)."""

    lo: Tensor
    hi: Tensor

    def __post_init__(self) -> None:
        if self.lo.shape != self.hi.shape:
            raise InputError(f"box lo and hi shapes differ: {tuple(self.lo.shape)} and "
                             f"{tuple(self.hi.shape)}")
        if not bool((self.lo <= self.hi).all()):  # one check for both (False where NaN)
            if bool(torch.isnan(self.lo).any() | torch.isnan(self.hi).any()):
                raise InputError("box bounds must not be NaN")
            raise InputError("box needs lo <= hi in every coordinate")

    @classmethod
    def uniform(cls, a: float, b: float, shape: tuple[int, ...]) -> Box:
        """The box ``[a, b]^d`` for per-sample shape ``shape``."""
        if not (math.isfinite(a) and math.isfinite(b)) or a > b:
            raise InputError(f"box needs finite a <= b, got [{a}, {b}]")
        full = torch.ones((1, *shape), dtype=torch.float64)
        return cls(full * a, full * b)

    @classmethod
    def everything(cls, shape: tuple[int, ...]) -> Box:
        """The box ``[-inf, inf]^d``: what is known when an enclosure overflowed."""
        full = torch.full((1, *shape), math.inf, dtype=torch.float64)
        return cls(-full, full)

    @classmethod
    def scalar(cls, lo: float, hi: float) -> Box:
        """The interval ``[lo, hi]`` as a ``(1, 1)`` box, broadcasting against any box."""
        return cls(torch.tensor([[lo]], dtype=torch.float64),
                   torch.tensor([[hi]], dtype=torch.float64))

    @classmethod
    def point(cls, x: Tensor) -> Box:
        """The degenerate box holding one value (exact)."""
        x = x.detach().to(torch.float64)
        return cls(x, x)

    @property
    def shape(self) -> tuple[int, ...]:
        """The per-sample shape."""
        return tuple(self.lo.shape[1:])

    def is_finite(self) -> bool:
        """Whether both ends are finite everywhere."""
        return bool(torch.isfinite(self.lo).all() & torch.isfinite(self.hi).all())

    def abs_max(self) -> Tensor:
        """``max(|lo|, |hi|)`` per coordinate, the largest magnitude in the box (exact)."""
        return torch.maximum(self.lo.abs(), self.hi.abs())

    def center_radius(self) -> tuple[Tensor, Tensor]:
        """A centre ``c`` and radius ``r`` with ``[lo, hi]`` inside ``c +- r``."""
        c = (self.lo + self.hi) / 2
        r = torch.maximum(up_tensor(self.hi - c), up_tensor(c - self.lo))
        return c, r

    def l2_radius(self) -> tuple[Tensor, float]:
        """A centre ``c`` and ``rho`` with ``||x - c||_2 <= rho`` for every ``x`` in the box."""
        c, r = self.center_radius()
        n = r.numel()
        return c, up(float(torch.linalg.vector_norm(r)) * (1 + 2 * gamma(n + 2)))

    def norm_upper(self) -> float:
        """An upper bound on ``||x||_2`` over the box."""
        n = self.lo.numel()
        return up(float(torch.linalg.vector_norm(self.abs_max())) * (1 + 2 * gamma(n + 2)))

    def apply(self, fn: Callable[[Tensor], Tensor]) -> Box:
        """Apply a coordinate selection or rearrangement (index, reshape, mask) to both ends."""
        return Box(fn(self.lo), fn(self.hi))

    def expand_as(self, shape: tuple[int, ...]) -> Box:
        """Broadcast to the batch shape ``shape`` (for constant sub-network outputs)."""
        return Box(self.lo.expand(shape), self.hi.expand(shape))

    def __add__(self, other: Box) -> Box:
        return Box(*widen(self.lo + other.lo, self.hi + other.hi, 0.0))

    def __sub__(self, other: Box) -> Box:
        return Box(*widen(self.lo - other.hi, self.hi - other.lo, 0.0))

    def __mul__(self, other: Box) -> Box:
        products = torch.stack([self.lo * other.lo, self.lo * other.hi,
                                self.hi * other.lo, self.hi * other.hi])
        return Box(*widen(products.min(0).values, products.max(0).values, 0.0))

    def divide(self, other: Box, name: str = "divisor") -> Box:
        """``self / other``; ``other`` must not contain 0 (a ``ValueError`` names ``name``)."""
        if bool(((other.lo <= 0) & (other.hi >= 0)).any()):
            raise InputError(f"{name} interval contains 0: division is unbounded on the box")
        inv = Box(*widen(1.0 / other.hi, 1.0 / other.lo, 0.0))
        return self * inv

    def intersect(self, other: Box) -> Box:
        """The intersection of two enclosures of the same set (exact: no rounding).

        Raises ``RuntimeError`` when they are disjoint somewhere, which two true enclosures of
        one value cannot be: that is a bug in the rule that produced one of them.
        """
        lo, hi = torch.maximum(self.lo, other.lo), torch.minimum(self.hi, other.hi)
        if bool((lo > hi).any()):
            raise RuntimeError("two enclosures of the same values are disjoint: an interval "
                               "rule is unsound")
        return Box(lo, hi)

    def hull(self) -> tuple[float, float]:
        """``(min lo, max hi)`` over all coordinates: the paper's ``[a, b]``."""
        return float(self.lo.min()), float(self.hi.max())


def affine_map(box: Box, op: Callable[[Tensor, Tensor, Tensor | None], Tensor], weight: Tensor,
               bias: Tensor | None, fan_in: int) -> Box:
    """The box of ``op(x, weight, bias)`` for a linear operator ``op`` (``F.linear``,
    ``F.conv2d`` with fixed settings) of inner-product length ``fan_in``."""
    w = weight.detach().to(torch.float64)
    b = None if bias is None else bias.detach().to(torch.float64)
    c, r = box.center_radius()
    center = op(c, w, b)
    g = gamma(fan_in + 1)
    rounding = op(c.abs(), w.abs(), None if b is None else b.abs())
    radius = op(r, w.abs(), None) * (1 + 2 * g) + rounding * up(2 * g)
    return Box(*widen(center - radius, center + radius, 2 * g))


#: Absolute error allowed to library functions besides their relative error: below the smallest
#: normal float a result may underflow early (torch's sigmoid is 0 below z = -709.8, where the true
#: value is a subnormal up to 2.2e-308).
UNDERFLOW = 2.0 ** -1021


def monotone_map(box: Box, fn: Callable[[Tensor], Tensor], ulps: int = LIB_ULPS,
                 absolute: float = 0.0) -> Box:
    """The box of an increasing elementwise ``fn``, its values widened by ``ulps`` ulps (and
    ``absolute``, at least :data:`UNDERFLOW`) to cover the library function's error."""
    lo, hi = fn(box.lo.to(torch.float64)), fn(box.hi.to(torch.float64))
    return Box(*widen(lo, hi, ulps * U, max(absolute, UNDERFLOW)))
