"""Tensors of backend scalars, and dual tensors for exact forward-mode Jacobians.

:class:`RTensor` is a flat, row-major list of backend scalars with a shape (batch first). Every
layout operation (reshape, permutation, index selection, padding, squeeze, im2col) is one
:meth:`RTensor.take` with an index array computed by numpy, so the reference implements each
layout from its documented rule instead of calling the torch code it checks.

:class:`DualTensor` carries a value and its derivative along ``n`` directions (stacked in front of
the value's shape). It offers the same operations, so running a reference map on a dual tensor
seeded with the identity gives the exact Jacobian (forward mode), to the backend's precision.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lipbound.blocks.numerics import row_norms
from lipbound.errors import InputError

from .backends import Backend, Scalar

__all__ = ["DualTensor", "Elementwise", "RTensor", "Tensorish", "midpoint_norm", "scalar"]


class Elementwise:
    """A scalar function ``f`` with its derivative ``df``, both written against a backend.

    ``method``, when given, names a backend method computing ``f`` directly (a faster path
    for :meth:`RTensor.apply`, same values)."""

    def __init__(self, name: str, f: Callable[[Backend, Scalar], Scalar],
                 df: Callable[[Backend, Scalar], Scalar], method: str | None = None) -> None:
        self.name, self.f, self.df, self.method = name, f, df, method

    def __repr__(self) -> str:
        return f"Elementwise({self.name})"


def _size(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _broadcast_index(shape: tuple[int, ...], out: tuple[int, ...]) -> list[int]:
    return np.broadcast_to(np.arange(_size(shape)).reshape(shape), out).ravel().tolist()


class RTensor:
    """A row-major tensor of backend scalars."""

    __slots__ = ("backend", "data", "shape")

    def __init__(self, data: list[Scalar], shape: Sequence[int], backend: Backend) -> None:
        shape = tuple(int(s) for s in shape)
        if len(data) != _size(shape):
            raise InputError(f"data has {len(data)} entries, shape {shape} needs {_size(shape)}")
        self.data, self.shape, self.backend = data, shape, backend

    # construction and export
    @classmethod
    def from_floats(cls, values: Sequence[float], shape: Sequence[int], backend: Backend
                    ) -> RTensor:
        """Exact conversion of floats (see :meth:`Backend.from_floats`)."""
        return cls(backend.from_floats(values), shape, backend)

    @classmethod
    def from_array(cls, array: Any, backend: Backend) -> RTensor:
        """Exact conversion of a numpy array or torch tensor of any float dtype.

        Every float16/bfloat16/float32 value is a float64 value, so going through float64 is
        exact."""
        if hasattr(array, "detach"):  # torch tensor: read its stored values, nothing else
            array = array.detach().cpu().double().numpy()
        arr = np.asarray(array, dtype=np.float64)
        return cls.from_floats(arr.ravel().tolist(), arr.shape, backend)

    def to_numpy(self) -> np.ndarray:
        """Midpoints as float64 (NaN for a non-finite ball)."""
        to_float = self.backend.to_float
        return np.array([to_float(v) for v in self.data], dtype=np.float64).reshape(self.shape)

    def radii(self) -> np.ndarray:
        """Upper bounds on each entry's error (0 for mpmath)."""
        rad = self.backend.radius
        return np.array([rad(v) for v in self.data], dtype=np.float64).reshape(self.shape)

    def midpoint(self) -> RTensor:
        mid = self.backend.midpoint
        return RTensor([mid(v) for v in self.data], self.shape, self.backend)

    def widen(self, error: float) -> RTensor:
        """Every entry's radius increased by ``error`` (see :meth:`Backend.widen`)."""
        widen = self.backend.widen
        return RTensor([widen(v, error) for v in self.data], self.shape, self.backend)

    #: How many midpoints :meth:`__repr__` shows.
    REPR_VALUES = 6

    def __repr__(self) -> str:
        """``RTensor(shape=(2, 3), arb:128, mid=[0.1, -1.5, ... 6 values], max_radius=3.2e-39)``:
        the first few midpoints to 6 digits (any magnitude) and the largest radius; mpmath
        carries no radius (no error bound), which ``no radius (mpmath)`` says instead of a 0
        that would read as exact."""
        bk, n = self.backend, self.REPR_VALUES
        shown = ", ".join(bk.short(v) for v in self.data[:n])
        more = f", ... {self.numel} values" if self.numel > n else ""
        if bk.kind == "mp":
            radius = "no radius (mpmath)"
        else:
            text = bk.radius_text(max(self.data, key=bk.radius_key)) if self.data else "0"
            radius = f"max_radius={text}"
        return f"RTensor(shape={self.shape}, {bk.name}, mid=[{shown}{more}], {radius})"

    # indexing
    def __getitem__(self, key: Any) -> RTensor:
        """numpy indexing (integers, slices, ``...``, ``None``, integer or boolean arrays), always
        returning an RTensor (0-dim for a single entry); out-of-range indices raise
        ``IndexError``."""
        return self.take(np.asarray(self.index_grid()[key]))

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-dim RTensor")
        return self.shape[0]

    def item(self) -> Scalar:
        """The backend scalar of a one-entry tensor."""
        if self.numel != 1:
            raise InputError(f"item() needs a tensor with one entry, got shape {self.shape}")
        return self.data[0]

    # layout
    @property
    def numel(self) -> int:
        return len(self.data)

    def reshape(self, *shape: int) -> RTensor:
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], tuple) else shape
        if -1 in shape:
            known = _size([s for s in shape if s != -1])
            shape = tuple(self.numel // known if s == -1 else s for s in shape)
        return RTensor(self.data, shape, self.backend)

    def take(self, index: np.ndarray) -> RTensor:
        """Gather flat entries: ``out.flat[k] = self.flat[index.flat[k]]``, ``-1`` giving an
        exact zero (padding). The result has ``index.shape``."""
        index = np.asarray(index)
        data = self.data
        flat = index.ravel().tolist()
        if (index < 0).any():
            zero = self.backend.zero()
            out = [data[i] if i >= 0 else zero for i in flat]
        else:
            out = [data[i] for i in flat]
        return RTensor(out, index.shape, self.backend)

    def index_grid(self) -> np.ndarray:
        """``arange(numel)`` in this tensor's shape, the start of every layout computation."""
        return np.arange(self.numel).reshape(self.shape)

    def stack_with(self, other: RTensor) -> RTensor:
        """The flat concatenation ``[self, other]`` (shape ``(numel,)``), for :meth:`take`."""
        return RTensor(self.data + other.data, (self.numel + other.numel,), self.backend)

    # arithmetic
    def _binary(self, other: Tensorish | float, op: Callable[[Scalar, Scalar], Scalar]
                ) -> RTensor:
        if isinstance(other, DualTensor):
            return NotImplemented
        if not isinstance(other, RTensor):
            other = scalar(float(other), self.backend)
        a, b = self.data, other.data
        if self.shape == other.shape:
            return RTensor(list(map(op, a, b)), self.shape, self.backend)
        out = np.broadcast_shapes(self.shape, other.shape)
        if out == self.shape and other.shape == out[len(out) - len(other.shape):]:
            # other repeats along leading dimensions only (a bias): repeat its list
            return RTensor(list(map(op, a, b * (len(a) // len(b)))), out, self.backend)
        ia, ib = _broadcast_index(self.shape, out), _broadcast_index(other.shape, out)
        return RTensor(list(map(op, [a[i] for i in ia], [b[j] for j in ib])), out, self.backend)

    def __add__(self, other):
        return self._binary(other, operator.add)

    def __radd__(self, other):
        return self._binary(other, lambda x, y: y + x)

    def __sub__(self, other):
        return self._binary(other, operator.sub)

    def __rsub__(self, other):
        return self._binary(other, lambda x, y: y - x)

    def __mul__(self, other):
        return self._binary(other, operator.mul)

    def __rmul__(self, other):
        return self._binary(other, lambda x, y: y * x)

    def __truediv__(self, other):
        return self._binary(other, operator.truediv)

    def __rtruediv__(self, other):
        return self._binary(other, lambda x, y: y / x)

    def __neg__(self) -> RTensor:
        return RTensor([-v for v in self.data], self.shape, self.backend)

    def apply(self, fn: Elementwise) -> RTensor:
        """``fn`` entry by entry."""
        bk = self.backend
        if fn.method is not None:
            method = getattr(bk, fn.method)
            return RTensor([method(v) for v in self.data], self.shape, bk)
        f = fn.f
        return RTensor([f(bk, v) for v in self.data], self.shape, bk)

    def derivative(self, fn: Elementwise) -> RTensor:
        """``fn'`` entry by entry."""
        bk, df = self.backend, fn.df
        return RTensor([df(bk, v) for v in self.data], self.shape, self.backend)

    def matmul(self, prepared: Any, inner: int, cols: int) -> RTensor:
        """``self @ B`` over the last dimension, ``B`` an ``inner x cols`` matrix from
        :meth:`Backend.prepare`."""
        if self.shape[-1] != inner:
            raise InputError(f"last dimension must be {inner}, got shape {self.shape}")
        rows = self.numel // inner
        out = self.backend.matmul(self.data, rows, inner, prepared, cols)
        return RTensor(out, self.shape[:-1] + (cols,), self.backend)



def midpoint_norm(v: Tensorish) -> float:
    """The Euclidean norm of the midpoints (of the value, for a dual tensor), in float64 (scaled:
    no overflow or underflow of the squares): the size of an iteration's step, for its stopping
    rule."""
    return float(row_norms(v.to_numpy().reshape(1, -1))[0])


def scalar(value: float, backend: Backend) -> RTensor:
    """A 0-dim tensor holding a float exactly."""
    return RTensor(backend.from_floats([value]), (), backend)


class DualTensor:
    """``value + sum_k eps_k tangent[k]``: a value of shape ``S`` and its derivatives along
    ``n`` directions, stored as one :class:`RTensor` of shape ``(n, *S)``."""

    __slots__ = ("tangent", "value")

    def __init__(self, value: RTensor, tangent: RTensor) -> None:
        if tangent.shape[1:] != value.shape:
            raise InputError(f"tangent shape {tangent.shape} must be (n, *{value.shape})")
        self.value, self.tangent = value, tangent

    @classmethod
    def seed(cls, value: RTensor) -> DualTensor:
        """``value`` with the identity as tangent: one direction per entry."""
        bk = value.backend
        n = value.numel
        zero, one = bk.zero(), bk.one()
        data = [one if i == j else zero for i in range(n) for j in range(n)]
        return cls(value, RTensor(data, (n,) + value.shape, bk))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    @property
    def backend(self) -> Backend:
        return self.value.backend

    @property
    def numel(self) -> int:
        return self.value.numel

    @property
    def directions(self) -> int:
        return self.tangent.shape[0]

    def jacobian_rows(self) -> list[list[Scalar]]:
        """The Jacobian ``J[i][k] = d value_i / d x_k`` (outputs flattened)."""
        n, m = self.directions, self.numel
        t = self.tangent.data
        return [[t[k * m + i] for k in range(n)] for i in range(m)]

    def reshape(self, *shape: int) -> DualTensor:
        value = self.value.reshape(*shape)
        return DualTensor(value, self.tangent.reshape((self.directions,) + value.shape))

    def take(self, index: np.ndarray) -> DualTensor:
        index = np.asarray(index)
        lifted = np.arange(self.directions).reshape((-1,) + (1,) * index.ndim) * self.numel + index
        return DualTensor(self.value.take(index), self.tangent.take(np.where(index >= 0, lifted,
                                                                             -1)))

    def index_grid(self) -> np.ndarray:
        return self.value.index_grid()

    def stack_with(self, other: Tensorish) -> DualTensor:
        n = self.directions
        if isinstance(other, RTensor):
            zero = other.backend.zero()
            other = DualTensor(other, RTensor([zero] * (n * other.numel), (n,) + other.shape,
                                              other.backend))
        t = self.tangent.stack_with(other.tangent)
        a, b = self.numel, other.numel
        index = np.concatenate([np.arange(n * a).reshape(n, a),
                                n * a + np.arange(n * b).reshape(n, b)], axis=1)
        return DualTensor(self.value.stack_with(other.value), t.take(index))

    def _binary(self, other: Tensorish | float, op: str) -> DualTensor:
        if not isinstance(other, (RTensor, DualTensor)):
            other = scalar(float(other), self.backend)
        o_val = other.value if isinstance(other, DualTensor) else other
        out = np.broadcast_shapes(self.shape, o_val.shape)
        a, b = _lead(self.value, len(out)), _lead(o_val, len(out))
        ta = _lead(self.tangent, len(out) + 1)
        tb = _lead(other.tangent, len(out) + 1) if isinstance(other, DualTensor) else None
        n = self.directions
        if op in ("+", "-"):
            value = a + b if op == "+" else a - b
            tangent = ta if tb is None else (ta + tb if op == "+" else ta - tb)
        elif op == "*":
            value = a * b
            tangent = ta * _lead(b, len(out) + 1)
            if tb is not None:
                tangent = tangent + _lead(a, len(out) + 1) * tb
        else:  # "/"
            value = a / b
            tangent = ta / _lead(b, len(out) + 1)
            if tb is not None:
                tangent = tangent - _lead(value / b, len(out) + 1) * tb
        return DualTensor(value, _broadcast_to(tangent, (n,) + tuple(out)))

    def __add__(self, other):
        return self._binary(other, "+")

    __radd__ = __add__

    def __sub__(self, other):
        return self._binary(other, "-")

    def __rsub__(self, other):
        return (-self)._binary(other, "+")

    def __mul__(self, other):
        return self._binary(other, "*")

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self._binary(other, "/")

    def __rtruediv__(self, other):
        inv = self.apply(_RECIPROCAL)
        return inv._binary(other, "*")

    def __neg__(self) -> DualTensor:
        return DualTensor(-self.value, -self.tangent)

    def apply(self, fn: Elementwise) -> DualTensor:
        d = self.value.derivative(fn)
        return DualTensor(self.value.apply(fn), self.tangent * d.reshape((1,) + d.shape))

    def matmul(self, prepared: Any, inner: int, cols: int) -> DualTensor:
        return DualTensor(self.value.matmul(prepared, inner, cols),
                          self.tangent.matmul(prepared, inner, cols))

    def midpoint(self) -> DualTensor:
        return DualTensor(self.value.midpoint(), self.tangent.midpoint())

    def widen(self, error: float) -> DualTensor:
        """The value's radius increased by ``error``; the tangent as it is."""
        return DualTensor(self.value.widen(error), self.tangent)

    def to_numpy(self) -> np.ndarray:
        return self.value.to_numpy()


def _lead(t: RTensor, ndim: int) -> RTensor:
    """``t`` with leading unit dimensions up to ``ndim`` dimensions."""
    return t.reshape((1,) * (ndim - len(t.shape)) + t.shape)


def _broadcast_to(t: RTensor, shape: tuple[int, ...]) -> RTensor:
    if t.shape == shape:
        return t
    return t.take(np.broadcast_to(t.index_grid(), shape))


_RECIPROCAL = Elementwise("reciprocal", lambda bk, v: 1 / v, lambda bk, v: -1 / (v * v))

#: What the reference maps accept: plain values or dual numbers.
Tensorish = RTensor | DualTensor
