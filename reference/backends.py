"""The numerical context of the oracle: one interface, two arbitrary-precision backends.

A :class:`Backend` hides the scalar type, in the spirit of mpmath's context object: the reference
maps in :mod:`reference.layers` and :mod:`reference.blocks` are written once against it.

* :class:`ArbBackend` (python-flint ``arb``): ball arithmetic. Every value is a midpoint and a
  radius that *certifies* the exact result lies in the ball; matrix products go through
  ``arb_mat`` (classical for small products, blocked from about 64 rows on).
* :class:`MpBackend` (mpmath ``mpf``): plain rounded arithmetic in pure Python, the independent
  cross-check; matrix products round each dot product once (``mpmath.fdot``). It carries no
  error bound; results are confirmed by recomputing at a second, higher precision
  (:mod:`reference.certify`).

Conversions from floats are exact at every precision: a float16/bfloat16/float32/float64 number is
a dyadic rational with at most 53 significant bits, and both backends hold it unrounded; only the
arithmetic rounds to ``prec`` bits. Neither backend has an exponent range to speak of, so
``mp:11``, ``mp:8``, ``mp:24`` and ``mp:53`` have the mantissa of float16, bfloat16, float32 and
float64 without their overflow and underflow.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import flint
import mpmath

from lipbound.errors import InputError

__all__ = ["ArbBackend", "Backend", "MpBackend", "make_backend"]

Scalar = Any


class Backend(ABC):
    """Arithmetic at ``prec`` bits. Scalars support ``+ - * /`` and comparisons with Python
    operators; everything else goes through the backend's methods."""

    #: ``"arb"`` or ``"mp"``.
    kind: str

    def __init__(self, prec: int) -> None:
        if not isinstance(prec, int) or isinstance(prec, bool) or prec < 2:
            raise InputError(f"prec must be an integer number of bits >= 2, got {prec!r}")
        self.prec = prec

    @property
    def name(self) -> str:
        """The precision name, ``"arb:<bits>"`` or ``"mp:<bits>"``."""
        return f"{self.kind}:{self.prec}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.prec})"

    def at(self, prec: int) -> Backend:
        """The same backend at another precision."""
        return type(self)(prec)

    @abstractmethod
    @contextmanager
    def active(self) -> Iterator[None]:
        """Set the library's working precision to ``prec`` for the duration of the block."""

    def working(self) -> Backend:
        """This backend at the library's working precision now (that of the innermost
        :meth:`active` block, e.g. with an ODE solver's guard bits)."""
        return self.at(self._working_prec())

    @abstractmethod
    def _working_prec(self) -> int:
        """The library's current working precision in bits."""

    @abstractmethod
    def from_floats(self, values: Sequence[float]) -> list[Scalar]:
        """Exact conversion of Python floats (each a dyadic rational)."""

    @abstractmethod
    def from_decimal(self, text: str) -> Scalar:
        """A decimal string such as ``"0.123456789"``, correctly rounded (arb: enclosed)."""

    @abstractmethod
    def to_float(self, v: Scalar) -> float:
        """The float64 nearest to the value (the midpoint of a ball)."""

    @abstractmethod
    def radius(self, v: Scalar) -> float:
        """An upper bound on the distance from the midpoint to the exact value (0 for mp)."""

    @abstractmethod
    def midpoint(self, v: Scalar) -> Scalar:
        """The value with its error radius dropped."""

    @abstractmethod
    def short(self, v: Scalar, digits: int = 6) -> str:
        """The midpoint to ``digits`` significant digits, at any magnitude (``7.07981e-1506``)."""

    @abstractmethod
    def radius_text(self, v: Scalar) -> str:
        """The radius to 3 digits at any magnitude (``"0"`` for mpmath, ``"inf"`` when not
        finite)."""

    @abstractmethod
    def radius_key(self, v: Scalar) -> Any:
        """The radius as a number that compares exactly (to find the largest)."""

    @abstractmethod
    def sign(self, v: Scalar) -> int | None:
        """``1`` if certainly ``> 0``, ``-1`` if certainly ``< 0`` or exactly 0, ``None`` if the
        value's ball contains 0 and other numbers (undecided)."""

    @abstractmethod
    def union(self, a: Scalar, b: Scalar) -> Scalar:
        """A value enclosing both (for the undecided branch of a piecewise function)."""

    @abstractmethod
    def widen(self, v: Scalar, error: float) -> Scalar:
        """``v`` with its error radius increased by ``error`` (an estimated error of an
        iteration; mpmath carries no radius and returns ``v``)."""

    @abstractmethod
    def positive_part(self, v: Scalar) -> Scalar:
        """``max(v, 0)`` (ReLU), enclosing both branches for a ball around 0."""

    @abstractmethod
    def nonnegative(self, v: Scalar) -> Scalar:
        """The value clipped at 0 from below (for a quantity known to be ``>= 0`` whose ball
        reaches below 0 by rounding)."""

    @abstractmethod
    def exp(self, v: Scalar) -> Scalar: ...

    @abstractmethod
    def log(self, v: Scalar) -> Scalar: ...

    @abstractmethod
    def log1p(self, v: Scalar) -> Scalar: ...

    @abstractmethod
    def tanh(self, v: Scalar) -> Scalar: ...

    @abstractmethod
    def atan(self, v: Scalar) -> Scalar: ...

    @abstractmethod
    def sqrt(self, v: Scalar) -> Scalar: ...

    @abstractmethod
    def pi(self) -> Scalar: ...

    @abstractmethod
    def prepare(self, values: Sequence[Scalar], rows: int, cols: int) -> Any:
        """A row-major ``rows x cols`` matrix in the backend's fast form, for :meth:`matmul`."""

    @abstractmethod
    def matmul(self, a: Sequence[Scalar], rows: int, inner: int, b: Any, cols: int
               ) -> list[Scalar]:
        """Row-major ``(rows x inner) @ (inner x cols)``, ``b`` from :meth:`prepare`."""

    @abstractmethod
    def inverse_matrix(self, values: Sequence[Scalar], n: int) -> list[Scalar]:
        """The inverse of a row-major ``n x n`` matrix (``ValueError`` if singular)."""

    def zero(self) -> Scalar:
        return self.from_floats([0.0])[0]

    def one(self) -> Scalar:
        return self.from_floats([1.0])[0]

    def piecewise(self, v: Scalar, positive: Callable[[Scalar], Scalar],
                  otherwise: Callable[[Scalar], Scalar]) -> Scalar:
        """``positive(v)`` where ``v > 0``, else ``otherwise(v)``; both (united) if undecided."""
        s = self.sign(v)
        if s == 1:
            return positive(v)
        if s == -1:
            return otherwise(v)
        return self.union(positive(v), otherwise(v))

    def greater(self, v: Scalar, threshold: Scalar, above: Callable[[Scalar], Scalar],
                below: Callable[[Scalar], Scalar]) -> Scalar:
        """``above(v)`` where ``v > threshold``, else ``below(v)`` (both united if undecided)."""
        return self.piecewise(v - threshold, lambda _: above(v), lambda _: below(v))


class ArbBackend(Backend):
    """python-flint ``arb`` balls; ``prec`` is ``flint.ctx.prec`` while :meth:`active`."""

    kind = "arb"
    _zero = flint.arb(0)

    @contextmanager
    def active(self) -> Iterator[None]:
        old = flint.ctx.prec
        flint.ctx.prec = self.prec
        try:
            yield
        finally:
            flint.ctx.prec = old

    def _working_prec(self) -> int:
        return int(flint.ctx.prec)

    def from_floats(self, values: Sequence[float]) -> list[Scalar]:
        arb = flint.arb
        out = []
        for v in values:
            if not math.isfinite(v):
                raise InputError(f"cannot convert the non-finite value {v} to an exact number")
            out.append(arb(v))  # arb_set_d: exact
        return out

    def from_decimal(self, text: str) -> Scalar:
        return flint.arb(text)

    def to_float(self, v: Scalar) -> float:
        if not v.is_finite():
            return math.nan
        return float(v.mid())

    def radius(self, v: Scalar) -> float:
        if not v.is_finite():
            return math.inf
        r = v.rad()
        return math.nextafter(float(r), math.inf) if r != 0 else 0.0

    def midpoint(self, v: Scalar) -> Scalar:
        return v.mid()

    def short(self, v: Scalar, digits: int = 6) -> str:
        if v.is_nan():
            return "nan"
        return v.mid().str(digits, radius=False) if v.is_finite() else "inf"

    def radius_text(self, v: Scalar) -> str:
        return v.rad().str(3, radius=False) if v.is_finite() else "inf"

    def radius_key(self, v: Scalar) -> Any:
        return v.rad() if v.is_finite() else flint.arb.pos_inf()

    def sign(self, v: Scalar) -> int | None:
        if v > 0:
            return 1
        if v < 0 or (v.is_exact() and v.is_zero()):
            return -1
        return None

    def union(self, a: Scalar, b: Scalar) -> Scalar:
        return a.union(b)

    def nonnegative(self, v: Scalar) -> Scalar:
        return v.nonnegative_part()

    def widen(self, v: Scalar, error: float) -> Scalar:
        return v + flint.arb(0, error) if error > 0 else v

    def positive_part(self, v: Scalar) -> Scalar:
        zero = self._zero  # comparing with an arb is faster than with the int 0
        if v > zero:
            return v
        if v < zero or (v.is_exact() and v.is_zero()):
            return zero
        return v.union(zero)

    def exp(self, v: Scalar) -> Scalar:
        return v.exp()

    def log(self, v: Scalar) -> Scalar:
        return v.log()

    def log1p(self, v: Scalar) -> Scalar:
        return v.log1p()

    def tanh(self, v: Scalar) -> Scalar:
        return v.tanh()

    def atan(self, v: Scalar) -> Scalar:
        return v.atan()

    def sqrt(self, v: Scalar) -> Scalar:
        return v.sqrt()

    def pi(self) -> Scalar:
        return flint.arb.pi()

    def prepare(self, values: Sequence[Scalar], rows: int, cols: int) -> Any:
        return flint.arb_mat(rows, cols, list(values))

    def matmul(self, a: Sequence[Scalar], rows: int, inner: int, b: Any, cols: int
               ) -> list[Scalar]:
        return (flint.arb_mat(rows, inner, list(a)) * b).entries()

    def inverse_matrix(self, values: Sequence[Scalar], n: int) -> list[Scalar]:
        try:
            return flint.arb_mat(n, n, list(values)).inv().entries()
        except ZeroDivisionError as err:
            raise InputError(f"matrix is singular (or too ill-conditioned at {self.prec} bits to "
                             "certify its inverse)") from err


class MpBackend(Backend):
    """mpmath ``mpf`` numbers; ``prec`` is ``mpmath.mp.prec`` while :meth:`active`."""

    kind = "mp"

    @contextmanager
    def active(self) -> Iterator[None]:
        with mpmath.workprec(self.prec):
            yield

    def _working_prec(self) -> int:
        return int(mpmath.mp.prec)

    def from_floats(self, values: Sequence[float]) -> list[Scalar]:
        out = []
        with mpmath.workprec(53):  # every float fits in 53 bits: exact
            for v in values:
                if not math.isfinite(v):
                    raise InputError(f"cannot convert the non-finite value {v} to an exact number")
                out.append(mpmath.mpf(v))
        return out

    def from_decimal(self, text: str) -> Scalar:
        return mpmath.mpf(text)

    def to_float(self, v: Scalar) -> float:
        return float(v)

    def radius(self, v: Scalar) -> float:
        return 0.0

    def midpoint(self, v: Scalar) -> Scalar:
        return v

    def short(self, v: Scalar, digits: int = 6) -> str:
        return mpmath.nstr(v, digits)

    def radius_text(self, v: Scalar) -> str:
        return "0"

    def radius_key(self, v: Scalar) -> Any:
        return 0

    def sign(self, v: Scalar) -> int | None:
        return 1 if v > 0 else -1

    def union(self, a: Scalar, b: Scalar) -> Scalar:  # pragma: no cover - sign never undecided
        raise AssertionError("mpmath values are points: the sign is always decided")

    def nonnegative(self, v: Scalar) -> Scalar:
        return v if v > 0 else v * 0

    def positive_part(self, v: Scalar) -> Scalar:
        return v if v > 0 else v * 0

    def widen(self, v: Scalar, error: float) -> Scalar:
        return v

    def exp(self, v: Scalar) -> Scalar:
        return mpmath.exp(v)

    def log(self, v: Scalar) -> Scalar:
        return mpmath.log(v)

    def log1p(self, v: Scalar) -> Scalar:
        return mpmath.log1p(v)

    def tanh(self, v: Scalar) -> Scalar:
        return mpmath.tanh(v)

    def atan(self, v: Scalar) -> Scalar:
        return mpmath.atan(v)

    def sqrt(self, v: Scalar) -> Scalar:
        return mpmath.sqrt(v)

    def pi(self) -> Scalar:
        return +mpmath.pi

    def prepare(self, values: Sequence[Scalar], rows: int, cols: int) -> Any:
        vals = list(values)
        return [vals[j::cols] for j in range(cols)]  # columns, for dot products

    def matmul(self, a: Sequence[Scalar], rows: int, inner: int, b: Any, cols: int
               ) -> list[Scalar]:
        fdot = mpmath.fdot
        out = []
        for i in range(rows):
            row = a[i * inner:(i + 1) * inner]
            out.extend(fdot(row, col) for col in b)
        return out

    def inverse_matrix(self, values: Sequence[Scalar], n: int) -> list[Scalar]:
        m = mpmath.matrix(n, n)
        for k, v in enumerate(values):
            m[k // n, k % n] = v
        try:
            inv = mpmath.inverse(m)
        except ZeroDivisionError as err:
            raise InputError("matrix is singular") from err
        return [inv[i, j] for i in range(n) for j in range(n)]


_BACKENDS: dict[str, type[Backend]] = {"arb": ArbBackend, "mp": MpBackend}


def make_backend(name: str) -> Backend:
    """A backend from a precision name ``"arb:<bits>"`` or ``"mp:<bits>"``."""
    if not isinstance(name, str) or name.count(":") != 1:
        raise InputError(f"reference precision must be 'arb:<bits>' or 'mp:<bits>', got {name!r}")
    kind, bits = name.split(":")
    if kind not in _BACKENDS or not bits.isdigit() or int(bits) < 2:
        raise InputError(
            f"reference precision must be 'arb:<bits>' or 'mp:<bits>' with bits >= 2, got {name!r}"
        )
    return _BACKENDS[kind](int(bits))
