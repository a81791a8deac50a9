"""Elementwise functions of the reference, each with its derivative (for exact Jacobians).

Each follows torch's definition of the same function, including its branch rules:

=============================  ==============================================================
function                       definition (torch)
=============================  ==============================================================
``relu``                       ``x`` if ``x > 0`` else ``0``
``leaky_relu(slope)``          ``x`` if ``x > 0`` else ``slope * x``
``elu(alpha)``                 ``x`` if ``x > 0`` else ``alpha * (exp(x) - 1)``
``tanh``                       ``tanh(x)``
``sigmoid``                    ``1 / (1 + exp(-x))``
``silu``                       ``x * sigmoid(x)``
``softplus(beta, threshold)``  ``x`` if ``beta x > threshold`` else ``log1p(exp(beta x)) / beta``
``exp``, ``atan``              as named
=============================  ==============================================================

Where an arb ball straddles a branch point, the result encloses both branches
(:meth:`~reference.backends.Backend.piecewise`).
"""

from __future__ import annotations

from functools import cache

from .backends import Backend, Scalar
from .tensor import Elementwise

__all__ = ["ATAN", "EXP", "RELU", "SIGMOID", "SILU", "TANH", "elu", "leaky_relu", "softplus"]


def _sigmoid(bk: Backend, x: Scalar) -> Scalar:
    return 1 / (1 + bk.exp(-x))


def _dsigmoid(bk: Backend, x: Scalar) -> Scalar:
    s = _sigmoid(bk, x)
    return s * (1 - s)


RELU = Elementwise("relu", lambda bk, x: bk.positive_part(x),
                   lambda bk, x: bk.piecewise(x, lambda v: bk.one(), lambda v: bk.zero()),
                   method="positive_part")
TANH = Elementwise("tanh", lambda bk, x: bk.tanh(x), lambda bk, x: 1 - bk.tanh(x) ** 2,
                   method="tanh")
SIGMOID = Elementwise("sigmoid", _sigmoid, _dsigmoid)
SILU = Elementwise("silu", lambda bk, x: x * _sigmoid(bk, x),
                   lambda bk, x: _sigmoid(bk, x) + x * _dsigmoid(bk, x))
EXP = Elementwise("exp", lambda bk, x: bk.exp(x), lambda bk, x: bk.exp(x), method="exp")
ATAN = Elementwise("atan", lambda bk, x: bk.atan(x), lambda bk, x: 1 / (1 + x * x),
                   method="atan")


@cache
def leaky_relu(slope: float) -> Elementwise:
    """``x`` if ``x > 0`` else ``slope * x`` (``slope`` a float, used exactly)."""
    return Elementwise(
        f"leaky_relu({slope})",
        lambda bk, x: bk.piecewise(x, lambda v: v, lambda v: v * bk.from_floats([slope])[0]),
        lambda bk, x: bk.piecewise(x, lambda v: bk.one(), lambda v: bk.from_floats([slope])[0]))


@cache
def elu(alpha: float) -> Elementwise:
    """``x`` if ``x > 0`` else ``alpha * (exp(x) - 1)``."""
    def a(bk: Backend) -> Scalar:
        return bk.from_floats([alpha])[0]
    return Elementwise(
        f"elu({alpha})",
        lambda bk, x: bk.piecewise(x, lambda v: v, lambda v: a(bk) * (bk.exp(v) - 1)),
        lambda bk, x: bk.piecewise(x, lambda v: bk.one(), lambda v: a(bk) * bk.exp(v)))


@cache
def softplus(beta: float, threshold: float) -> Elementwise:
    """torch's ``Softplus``: ``x`` if ``beta x > threshold`` else ``log1p(exp(beta x)) / beta``."""
    def f(bk: Backend, x: Scalar) -> Scalar:
        b, t = bk.from_floats([beta, threshold])
        return bk.greater(b * x, t, lambda _: x, lambda bx: bk.log1p(bk.exp(bx)) / b)

    def df(bk: Backend, x: Scalar) -> Scalar:
        b, t = bk.from_floats([beta, threshold])
        return bk.greater(b * x, t, lambda _: bk.one(), lambda bx: _sigmoid(bk, bx))

    return Elementwise(f"softplus({beta}, {threshold})", f, df)
