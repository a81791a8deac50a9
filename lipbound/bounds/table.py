r"""Table 3 of Behrmann et al. (2021), one function per row, as sympy expressions.

Every row gives the paper's bound and, where one can be proved, a tighter one beside it; both are
:class:`Bound` objects holding the expressions, the numbers known for their symbols and, when a
bound cannot be given, the reason it is refused. ``x in R^d`` is split as in the paper into the
conditioning part ``x_{I1}`` and the active part ``x_{I2}``.

**Coupling blocks: the tighter bound.** The Jacobian of an additive or affine coupling (and of its
inverse) is block lower-triangular, ``J = [[I, 0], [M, D]]`` with ``D`` diagonal. For a unit vector
``v = (v1, v2)`` with ``u = ||v1||``, ``w = ||v2||``, ``u^2 + w^2 = 1``,

.. math:: \|J v\|^2 = \|v_1\|^2 + \|M v_1 + D v_2\|^2 \le u^2 + (m u + c w)^2
          = \left\| \begin{pmatrix} 1 & 0 \\ m & c \end{pmatrix}
                    \begin{pmatrix} u \\ w \end{pmatrix} \right\|^2,

for ``||M|| <= m``, ``||D|| <= c``, so ``||J|| <= sigma(m, c)``, the spectral norm of the ``2 x 2``
matrix ``[[1, 0], [m, c]]``:

.. math:: \sigma(m, c)^2 = \tfrac12\Big(1 + m^2 + c^2
          + \sqrt{((1 - c)^2 + m^2)((1 + c)^2 + m^2)}\Big).

This is the paper's own first inequality in the proofs of Lemmas 5 and 6, evaluated exactly instead
of being relaxed to ``max(1, c) + m``; it is never larger (the relaxed value is the
``(1, inf)``-norm bound of the same matrix), and for ``c = 1`` (additive, Lemma 5) it is
``(m + sqrt(m^2 + 4)) / 2``, the exact norm of ``[[I, 0], [A, I]]`` with ``||A|| = m``.

**Affine blocks (Lemma 6).** Forward, on ``x in [a, b]^d``: ``M(x) = D_{x_{I2}} D_{g'(s)} J_s +
J_t``, so ``m <= max_i sup |x_i g'(s_i)| Lip(s) + Lip(t) <= max(|a|, |b|) c_{g'} Lip(s) + Lip(t)``
and ``c = c_g``. Inverse, on ``y in [a*, b*]^d``:
``M*(y) = D_{y_{I2} - t} D_{(1/g)'(s)} J_s - D_{1/g(s)} J_t``, so ``m* <= max_i sup |y_i - t_i|
|(1/g)'(s_i)| Lip(s) + c_{1/g} Lip(t)``, at most the paper's ``M*`` because
``|y_i - t_i| <= max(|a*|, |b*|) + c_t``, and ``c = c_{1/g}``. The per-coordinate sups ``m_x``
and ``m_y`` are symbols of their own where weights give them; without weights they are replaced by
the paper's products.

**Typo in the paper.** The proof of Lemma 6 writes ``sup ||M(x)||_2^2 <= max(|a|, |b|) c_{g'}
Lip(s) + Lip(t)`` (and the same for ``M*``); the right-hand side bounds ``||M(x)||_2``, not its
square: ``||D_x D_{g'} J_s + J_t|| <= ||D_x|| ||D_{g'}|| ||J_s|| + ||J_t||``. The lemma's statement
(and Table 3) use the unsquared form, as here.

**Neural ODE.** The exact time-``T`` flow has ``Lip <= e^{Lip(f) T}`` both ways (Gronwall). The
blocks compute a *discrete* flow with ``S`` fixed steps ``h = T/S``; one RK4 step has
``Lip <= 1 + hL + (hL)^2/2 + (hL)^3/6 + (hL)^4/24`` (stage ``k_j`` is Lipschitz with the partial
sums of ``L e^{hL}``), one Euler step ``1 + hL``; the ``S``-th power is the tighter bound of the
discrete map (forward and backward solve alike), and never exceeds ``e^{LT}``. The block's
inverse is the backward solve, which is not the exact inverse of the discrete forward map: the
inverse row bounds the backward solve (tight) and the exact flow's inverse (paper), not the exact
inverse of the discrete forward map (for Euler with ``hL >= 1`` that may not even exist).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache, wraps
from typing import TypeVar

import sympy as sp
from sympy.printing.str import StrPrinter

from ..errors import InputError
from .evaluate import upper

__all__ = [
    "BlockBound",
    "Bound",
    "Symbols",
    "actnorm",
    "additive",
    "affine",
    "diagonal",
    "expr_latex",
    "expr_str",
    "invertible_1x1_conv",
    "neural_ode",
    "residual",
    "sigma2",
    "volume_preserving_reshape",
]

#: Base symbol names and their LaTeX forms.
NAMES: dict[str, str] = {
    "Lip(t)": r"\mathrm{Lip}(t)",
    "Lip(s)": r"\mathrm{Lip}(s)",
    "Lip(g)": r"\mathrm{Lip}(g)",
    "Lip(f)": r"\mathrm{Lip}(f)",
    "T": "T",
    "c_g": "c_{g}",
    "c_g'": "c_{g'}",
    "c_1/g": "c_{1/g}",
    "c_(1/g)'": "c_{(1/g)'}",
    "c_t": "c_{t}",
    "m_x": r"m_{x g'}",
    "m_y": r"m_{(y - t)(1/g)'}",
    "a": "a",
    "b": "b",
    "a*": "a^{*}",
    "b*": "b^{*}",
    "max|D|": r"\max_i |D_{ii}|",
    "max|1/D|": r"\max_i |D_{ii}|^{-1}",
    "||W||": r"\|W\|_2",
    "||W^-1||": r"\|W^{-1}\|_2",
}
_REAL = {"a", "b", "a*", "b*"}


class Symbols:
    """Symbols of one block's row: base names, suffixed ``[k]`` for block ``k`` of a model."""

    def __init__(self, index: int | str | None = None) -> None:
        self.index = index

    def __call__(self, name: str) -> sp.Symbol:
        if name not in NAMES:
            raise KeyError(f"unknown bound symbol {name!r}; known: {sorted(NAMES)}")
        full = name if self.index is None else f"{name}[{self.index}]"
        if name in _REAL:
            return sp.Symbol(full, real=True)
        return sp.Symbol(full, nonnegative=True)


class _Printer(StrPrinter):
    """sympy's text printer with floats as Python writes them (the shortest text that gives
    the float back, exact for the float)."""

    def _print_Float(self, expr: sp.Float) -> str:
        return repr(float(expr))


def expr_str(expr: sp.Expr) -> str:
    """The expression as text, terms in construction order (sympy's default ordering queries
    assumptions and takes seconds on a product over hundreds of blocks)."""
    return _Printer({"order": "none"}).doprint(expr)


@lru_cache(maxsize=1024)
def _fold(expr: sp.Expr, values: tuple[tuple[sp.Symbol, float], ...]) -> sp.Expr:
    """``expr`` with exact rationals for the symbols in ``values``, evaluated, and rationals that
    are floats shown as those floats (exact; cached: repeated blocks share their rows)."""
    with sp.evaluate(True):
        folded = expr.xreplace({k: sp.Rational(v) for k, v in values if math.isfinite(v)})
    exponents = {p.exp for p in folded.atoms(sp.Pow)}  # sqrt stays sqrt
    floats = {r: sp.Float(float(r), 17) for r in folded.atoms(sp.Rational) - exponents
              if not r.is_Integer and math.isfinite(float(r)) and sp.Rational(float(r)) == r}
    with sp.evaluate(False):
        return folded.xreplace(floats)


def expr_latex(expr: sp.Expr) -> str:
    """The expression as LaTeX with the symbols' LaTeX names, terms in construction order."""
    return sp.latex(expr, order="none", symbol_names=latex_names(expr))


def latex_names(expr: sp.Expr) -> dict[sp.Symbol, str]:
    """LaTeX names for the symbols of ``expr`` (``[k]`` suffixes become superscripts)."""
    out = {}
    for sym in expr.free_symbols:
        base, _, index = sym.name.partition("[")
        tex = NAMES.get(base, sym.name)
        out[sym] = tex if not index else f"{tex}^{{[{index.rstrip(']')}]}}"
    return out


@dataclass(frozen=True, eq=False)
class Bound:
    """One direction of a row: the paper's expression, the tighter one, and numbers.

    Attributes:
        paper: the bound as Table 3 states it.
        tight: a bound at most ``paper`` (the same expression where nothing better is proved).
        values: numbers for symbols: upper bounds of sups and Lipschitz constants, exact data for
            the box ends ``a, b, a*, b*``.
        refused: why no bound can be given (then ``value`` is ``None``), or ``None``.
        symbolic: why the bound stays symbolic (no number, e.g. no box was given: its symbols
            are left free), or ``None``. A symbolic bound is a result, a refused one is not.
    """

    paper: sp.Expr
    tight: sp.Expr
    values: Mapping[sp.Symbol, float] = field(default_factory=dict)
    refused: str | None = None
    symbolic: str | None = None

    @cached_property
    def value(self) -> float | None:
        """The tight bound as a float rounded up; ``None`` when refused or symbols are free."""
        return None if self.refused else upper(self.tight, self.values)

    @cached_property
    def paper_value(self) -> float | None:
        """The paper's bound as a float rounded up; ``None`` when refused or symbolic."""
        return None if self.refused else upper(self.paper, self.values)

    def substituted(self, which: str = "tight") -> sp.Expr:
        """The expression with the known numbers put in as they are (17 significant digits, which
        give the floats back exactly), without evaluating: nothing is rounded."""
        expr = self.tight if which == "tight" else self.paper
        with sp.evaluate(False):
            return expr.xreplace({k: sp.Float(v, 17) for k, v in self.values.items()})

    def folded(self, which: str = "tight") -> sp.Expr:
        """The expression with the known numbers put in and folded: each float enters as the
        exact rational it is, and sympy evaluates, so ``Max(Abs(-4.0), Abs(4.0))`` becomes
        ``4`` and ``1*c`` becomes ``c`` with nothing rounded (print with :func:`expr_str`)."""
        expr = self.tight if which == "tight" else self.paper
        return _fold(expr, tuple(sorted(((k, float(v)) for k, v in self.values.items()
                                         if k in expr.free_symbols), key=lambda kv: kv[0].name)))


@dataclass(frozen=True, eq=False)
class BlockBound:
    """A block's row: kind, scope (``"global"`` or ``"local ..."``), both directions."""

    kind: str
    scope: str
    forward: Bound
    inverse: Bound
    assumptions: tuple[str, ...] = ()
    label: str = ""


_F = TypeVar("_F", bound=Callable)


def _unevaluated(fn: _F) -> _F:
    """Build the row's expressions as written, without sympy's automatic evaluation (whose
    assumption queries on ``Max`` and ``sqrt`` cost milliseconds per row)."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        with sp.evaluate(False):
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


@_unevaluated
def sigma2(m: sp.Expr, c: sp.Expr) -> sp.Expr:
    """The spectral norm of ``[[1, 0], [m, c]]`` for ``m, c >= 0`` (module docstring)."""
    inner = sp.sqrt(((1 - c) ** 2 + m**2) * ((1 + c) ** 2 + m**2))
    return sp.sqrt((1 + m**2 + c**2 + inner) / 2)


def _numbers(sym: Symbols, **named: float | None) -> dict[sp.Symbol, float]:
    return {sym(k): float(v) for k, v in named.items() if v is not None}


@_unevaluated
def additive(sym: Symbols, values: Mapping[str, float] | None = None) -> BlockBound:
    """Additive coupling (eq. 3), Lemma 5: ``Lip(F), Lip(F^-1) <= 1 + Lip(t)``, global; tight
    ``(L + sqrt(L^2 + 4)) / 2``."""
    lip_t = sym("Lip(t)")
    paper = 1 + lip_t
    tight = (lip_t + sp.sqrt(lip_t**2 + 4)) / 2
    nums = _numbers(sym, **(values or {}))
    return BlockBound("additive coupling", "global", Bound(paper, tight, nums),
                      Bound(paper, tight, nums), ("t Lipschitz",))


@_unevaluated
def affine(sym: Symbols, values: Mapping[str, float] | None = None,
           per_coordinate: bool = False, refused_forward: str | None = None,
           refused_inverse: str | None = None, symbolic_forward: str | None = None,
           symbolic_inverse: str | None = None) -> BlockBound:
    """Affine coupling (eq. 4), Lemma 6, local: forward on ``[a, b]^d``, inverse on
    ``[a*, b*]^d`` (module docstring).

    ``per_coordinate`` uses the symbols ``m_x``, ``m_y`` for the per-coordinate sups in the tight
    bounds; otherwise they are replaced by the paper's products. ``refused_*`` and
    ``symbolic_*`` give the reasons of :class:`Bound` (no bound; no number).
    """
    s = sym
    lip_s, lip_t = s("Lip(s)"), s("Lip(t)")
    big_a = sp.Max(sp.Abs(s("a")), sp.Abs(s("b")))
    big_a_star = sp.Max(sp.Abs(s("a*")), sp.Abs(s("b*")))
    m_fwd = big_a * s("c_g'") * lip_s + lip_t
    m_inv = (big_a_star * s("c_(1/g)'") * lip_s + s("c_(1/g)'") * lip_s * s("c_t")
             + s("c_1/g") * lip_t)
    if per_coordinate:
        m_fwd_tight = s("m_x") * lip_s + lip_t
        m_inv_tight = s("m_y") * lip_s + s("c_1/g") * lip_t
    else:
        m_fwd_tight = m_fwd
        m_inv_tight = (big_a_star + s("c_t")) * s("c_(1/g)'") * lip_s + s("c_1/g") * lip_t
    nums = _numbers(sym, **(values or {}))
    forward = Bound(sp.Max(1, s("c_g")) + m_fwd, sigma2(m_fwd_tight, s("c_g")), nums,
                    refused_forward, symbolic_forward)
    inverse = Bound(sp.Max(1, s("c_1/g")) + m_inv, sigma2(m_inv_tight, s("c_1/g")), nums,
                    refused_inverse, symbolic_inverse)
    return BlockBound("affine coupling", "local: x in [a, b]^d, y in [a*, b*]^d", forward, inverse,
                      ("s, t Lipschitz", "g continuously differentiable, g != 0 on the box",
                       "bounds hold only on the boxes (Theorem 2 (ii))"))


@_unevaluated
def residual(sym: Symbols, values: Mapping[str, float] | None = None) -> BlockBound:
    """i-ResNet ``F(x) = x + g(x)``: ``1 + Lip(g)`` and ``1 / (1 - Lip(g))``, needing
    ``Lip(g) < 1``; the inverse is refused when a number ``>= 1`` is given for ``Lip(g)``."""
    lip_g = sym("Lip(g)")
    nums = _numbers(sym, **(values or {}))
    refused = None
    if lip_g in nums and not nums[lip_g] < 1:
        refused = (f"Lip(g) <= {nums[lip_g]:.6g} is not < 1: the inverse bound 1/(1 - Lip(g)) "
                   "of Table 3 needs a contraction, and without one the inverse may not exist")
    forward = Bound(1 + lip_g, 1 + lip_g, nums)
    inverse = Bound(1 / (1 - lip_g), 1 / (1 - lip_g), nums, refused)
    return BlockBound("invertible residual", "global", forward, inverse, ("Lip(g) < 1",))


def _discrete_flow(lip_h: sp.Expr, method: str, steps: int) -> sp.Expr:
    if method == "rk4":
        per_step = sp.Add(1, lip_h, *(lip_h**k / math.factorial(k) for k in range(2, 5)))
    elif method == "euler":
        per_step = 1 + lip_h
    else:
        raise InputError(f"method must be 'rk4' or 'euler', got {method!r}")
    return per_step**steps


@_unevaluated
def neural_ode(sym: Symbols, values: Mapping[str, float] | None = None,
               method: str | None = None, steps: int | None = None) -> BlockBound:
    """Neural ODE: ``e^{Lip(f) T}`` both ways (Lip(f) uniform in ``t``); with a fixed-step
    ``method`` and ``steps`` the discrete flow's tighter bound (module docstring)."""
    lip_f, t_end = sym("Lip(f)"), sym("T")
    paper = sp.exp(lip_f * t_end)
    tight = paper if method is None or steps is None else _discrete_flow(
        lip_f * t_end / steps, method, steps)
    nums = _numbers(sym, **(values or {}))
    kind = "neural ODE" if method is None else f"neural ODE ({method}, {steps} steps)"
    return BlockBound(kind, "global", Bound(paper, tight, nums), Bound(paper, tight, nums),
                      ("Lip(f) holds for all t in [0, T]",))


@_unevaluated
def diagonal(sym: Symbols, values: Mapping[str, float] | None = None,
             kind: str = "diagonal scaling") -> BlockBound:
    """Diagonal scaling ``y = D x``: ``max |D_ii|`` and ``max |D_ii|^-1`` (exact)."""
    nums = _numbers(sym, **(values or {}))
    forward = Bound(sym("max|D|"), sym("max|D|"), nums)
    inverse = Bound(sym("max|1/D|"), sym("max|1/D|"), nums)
    return BlockBound(kind, "global", forward, inverse, ("D_ii != 0",))


def actnorm(sym: Symbols, values: Mapping[str, float] | None = None) -> BlockBound:
    """ActNorm ``y = (x + b) e^l``: a diagonal scaling with ``D = e^l`` (Table 3)."""
    return diagonal(sym, values, "ActNorm")


@_unevaluated
def invertible_1x1_conv(sym: Symbols, values: Mapping[str, float] | None = None) -> BlockBound:
    """Invertible 1x1 convolution: ``||W||_2`` and ``||W^-1||_2``, for the whole spatial map
    (it applies ``W`` at every pixel: a block-diagonal operator with the same norms)."""
    nums = _numbers(sym, **(values or {}))
    forward = Bound(sym("||W||"), sym("||W||"), nums)
    inverse = Bound(sym("||W^-1||"), sym("||W^-1||"), nums)
    return BlockBound("invertible 1x1 conv", "global", forward, inverse, ("W invertible",))


@_unevaluated
def volume_preserving_reshape(kind: str) -> BlockBound:
    """Permutations and squeeze: orthogonal maps, ``1`` both ways (beyond Table 3)."""
    one = Bound(sp.Integer(1), sp.Integer(1))
    return BlockBound(kind, "global", one, one, ())
