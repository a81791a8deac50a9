"""Rigorous numeric evaluation of sympy bound expressions with python-flint ball arithmetic.

:func:`upper` substitutes numbers for the symbols of an expression and evaluates it in ``arb``
balls (interval arithmetic with ``PREC`` bits), so the float it returns is a true upper bound of the
expression's exact value at those numbers. The bound expressions of Table 3 are non-decreasing in
every symbol that stands for a sup or a Lipschitz constant, so substituting upper bounds for those
gives an upper bound of the bound.

Supported: numbers, symbols, ``+``, ``*``, powers (integer, rational, real), ``exp``, ``log``,
``Abs``, ``Max``, ``Min``. ``sqrt`` of a ball reaching below zero takes its non-negative part (every
square root in Table 3 has a non-negative argument).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import sympy as sp
from flint import arb, ctx, fmpq

from ..errors import InputTypeError
from .rounding import down, up

__all__ = ["PREC", "ball_lower", "ball_upper", "exact_float", "lower", "to_arb", "upper",
           "working_precision"]

#: Working precision of the ball evaluation, in bits.
PREC = 128


def _pow(base: arb, exponent: sp.Expr, values: Mapping[sp.Symbol, float]) -> arb:
    if exponent.is_Integer:
        return base ** int(exponent)
    if exponent == sp.Rational(1, 2):
        return base.nonnegative_part().sqrt()
    if exponent == sp.Rational(-1, 2):
        return 1 / base.nonnegative_part().sqrt()
    return (to_arb(exponent, values) * base.log()).exp()


def _fold(op, args: list[arb]) -> arb:
    out = args[0]
    for a in args[1:]:
        out = op(out, a)
    return out


def to_arb(expr: sp.Expr, values: Mapping[sp.Symbol, float]) -> arb:
    """The ball enclosing ``expr`` with ``values`` substituted (floats taken exactly)."""
    if expr.is_Symbol:
        if expr not in values:
            raise KeyError(expr)
        return arb(float(values[expr]))
    if expr.is_Integer:
        return arb(int(expr))
    if expr.is_Rational:
        return arb(fmpq(int(expr.p), int(expr.q)))
    if expr.is_Float:
        return arb(str(expr))
    if expr is sp.E:
        return arb(1).exp()
    if expr is sp.pi:
        return arb.pi()
    if isinstance(expr, sp.Pow):
        return _pow(to_arb(expr.base, values), expr.exp, values)
    args = [to_arb(a, values) for a in expr.args]
    if isinstance(expr, sp.Add):
        return _fold(lambda x, y: x + y, args)
    if isinstance(expr, sp.Mul):
        return _fold(lambda x, y: x * y, args)
    if isinstance(expr, sp.exp):
        return args[0].exp()
    if isinstance(expr, sp.log):
        return args[0].log()
    if isinstance(expr, sp.Abs):
        return abs(args[0])
    if isinstance(expr, sp.Max):
        return _fold(lambda x, y: x.max(y), args)
    if isinstance(expr, sp.Min):
        return _fold(lambda x, y: x.min(y), args)
    raise InputTypeError(f"cannot evaluate {type(expr).__name__} in a bound expression: {expr}")


@contextmanager
def working_precision(bits: int = PREC) -> Iterator[None]:
    """Run ``arb`` arithmetic at ``bits`` bits inside the block (python-flint's precision is
    global), restoring the previous precision after."""
    old = ctx.prec
    ctx.prec = bits
    try:
        yield
    finally:
        ctx.prec = old


def _evaluate(expr: sp.Expr, values: Mapping[sp.Symbol, float]) -> arb | None:
    free = expr.free_symbols - set(values)
    if free:
        return None
    with working_precision():
        return to_arb(expr, values)


def exact_float(ball: arb) -> float | None:
    """The ball's value when it is exact and a float64 (no rounding needed), else ``None``."""
    if ball.is_exact():
        v = float(ball.mid())
        if arb(v) == ball:
            return v
    return None


def ball_upper(ball: arb) -> float:
    """A float ``>=`` every point of ``ball`` (its value when exact); ``inf`` when the ball is
    unbounded or not a number."""
    if not ball.is_finite():
        return math.inf
    exact = exact_float(ball)
    return exact if exact is not None else up(float(ball.upper()))


def ball_lower(ball: arb) -> float:
    """A float ``<=`` every point of ``ball`` (its value when exact); ``-inf`` when the ball is
    unbounded or not a number."""
    if not ball.is_finite():
        return -math.inf
    exact = exact_float(ball)
    return exact if exact is not None else down(float(ball.lower()))


def upper(expr: sp.Expr, values: Mapping[sp.Symbol, float]) -> float | None:
    """A float ``>=`` the exact value of ``expr`` at ``values``; ``None`` when symbols are left
    free; ``inf`` when the ball is unbounded or not a number (a division by a ball holding 0)."""
    ball = _evaluate(expr, values)
    return None if ball is None else ball_upper(ball)


def lower(expr: sp.Expr, values: Mapping[sp.Symbol, float]) -> float | None:
    """A float ``<=`` the exact value of ``expr`` at ``values`` (see :func:`upper`)."""
    ball = _evaluate(expr, values)
    return None if ball is None else ball_lower(ball)
