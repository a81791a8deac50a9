r"""Table 3 (appendix A): the Lipschitz bounds of every block, the paper's form beside the tighter
proved form, rendered from the sympy rows of :mod:`lipbound.bounds.table` as markdown
(``table3.md``) and LaTeX (``table3.tex``).

Nothing here is written by hand: each row's expressions come from its function in
:mod:`lipbound.bounds.table` (``additive``, ``affine``, ``residual``, ``neural_ode``,
``diagonal``, ``actnorm``, ``invertible_1x1_conv``), printed with
:func:`~lipbound.bounds.table.expr_str` and :func:`~lipbound.bounds.table.expr_latex`; a proved
form's repeated sub-expressions are named ``m0, ...`` and defined after it (:func:`compact`).

**The claim checked.** Every proved form is at most the paper's form. Rows whose two forms are
the same expression hold by construction. For the others, both forms are evaluated in ball
arithmetic (:func:`lipbound.bounds.evaluate.lower`, :func:`~lipbound.bounds.evaluate.upper`) at
random points of their symbols (sups and Lipschitz constants log-uniform in ``[1e-3, 1e2]``,
``Lip(g)`` uniform in ``[0, 0.999]``, box ends ``a, a* <= 0 <= b, b*`` of magnitude log-uniform in
``[1e-3, 10]``; the neural ODE's ``Lip(f) T`` is kept at most :data:`MAX_LIP_T` by redrawing
``T``, so that the paper's ``exp(Lip(f) T)`` stays a finite float): a point *violates* the
claim when the proved form's lower end exceeds the paper's upper end there (a certain
``tight > paper``). The claim holds when no point violates it; the table reports the largest
ratio ``tight / paper`` seen (``<= 1``) and the smallest (how much tighter the proved form
gets), over the points where all four ends are finite; points where an end overflowed are
counted apart (``overflowed``) and give no ratio.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import sympy as sp

from ..bounds import table as rows_of
from ..bounds.evaluate import lower, upper
from .common import Claim, ExperimentResult, Settings, claim_less_than, save_figure

__all__ = ["MAX_LIP_T", "ROWS", "compact", "compare_forms", "named_subexpressions", "random_values",
           "render_latex", "render_markdown", "run", "tight_claim"]

#: (building block, forward operation, the row's function of :mod:`lipbound.bounds.table`).
ROWS: list[tuple[str, str, Callable[[rows_of.Symbols], rows_of.BlockBound]]] = [
    ("Additive coupling (Dinh et al., 2014)", "x_I2 + t(x_I1)", rows_of.additive),
    ("Affine coupling (Dinh et al., 2017)", "x_I2 * g(s(x_I1)) + t(x_I1)", rows_of.affine),
    ("Invertible residual layer (Behrmann et al., 2019)", "x + g(x)", rows_of.residual),
    ("Neural ODE (Chen et al., 2018), RK4 with 8 steps", "dx/dt = f(x(t), t), t in [0, T]",
     lambda s: rows_of.neural_ode(s, method="rk4", steps=8)),
    ("Diagonal scaling (Dinh et al., 2014)", "D x", rows_of.diagonal),
    ("ActNorm (Kingma and Dhariwal, 2018)", "(x + b) e^l", rows_of.actnorm),
    ("Invertible 1x1 convolution (Kingma and Dhariwal, 2018)", "W x, W = PL(U + diag(s))",
     rows_of.invertible_1x1_conv),
]


#: Largest sampled ``Lip(f) T`` of the neural ODE row: ``exp(700) ~ 1e304`` is a finite float.
MAX_LIP_T = 700.0


def random_values(symbols: set[sp.Symbol], rng: np.random.Generator) -> dict[sp.Symbol, float]:
    """One random point of ``symbols`` (the ranges of the module docstring)."""
    out = {}
    for sym in symbols:
        name = sym.name
        if name == "Lip(g)":
            out[sym] = float(rng.uniform(0.0, 0.999))
        elif name in ("a", "a*", "b", "b*"):
            magnitude = float(10 ** rng.uniform(-3, 1))
            out[sym] = -magnitude if name.startswith("a") else magnitude
        else:
            out[sym] = float(10 ** rng.uniform(-3, 2))
    lip_t = [sym for sym in symbols if sym.name in ("Lip(f)", "T")]
    if len(lip_t) == 2:
        while out[lip_t[0]] * out[lip_t[1]] > MAX_LIP_T:
            t = next(sym for sym in lip_t if sym.name == "T")
            out[t] = float(10 ** rng.uniform(-3, 2))
    return out


def compare_forms(bound: rows_of.Bound, n_points: int, rng: np.random.Generator
                  ) -> dict[str, float | int | bool]:
    """The proved form of ``bound`` held against the paper's at ``n_points`` random points:
    ``same`` (one expression), ``violations`` (points with ``lower(tight) > upper(paper)``),
    ``overflowed`` (points where an end is not finite: no ratio) and the largest and smallest
    ``tight / paper`` (midpoints of the two balls' ends) over the other points (NaN if none)."""
    if bound.tight == bound.paper:
        return {"same": True, "points": 0, "violations": 0, "overflowed": 0, "max_ratio": 1.0,
                "min_ratio": 1.0}
    symbols = bound.paper.free_symbols | bound.tight.free_symbols
    violations, overflowed, ratios = 0, 0, []
    for _ in range(n_points):
        values = random_values(symbols, rng)
        tight_lo, tight_hi = lower(bound.tight, values), upper(bound.tight, values)
        paper_lo, paper_hi = lower(bound.paper, values), upper(bound.paper, values)
        if tight_lo > paper_hi:
            violations += 1
        if not all(math.isfinite(v) for v in (tight_lo, tight_hi, paper_lo, paper_hi)):
            overflowed += 1
            continue
        ratios.append(0.5 * (tight_lo + tight_hi) / (0.5 * (paper_lo + paper_hi)))
    return {"same": False, "points": n_points, "violations": violations,
            "overflowed": overflowed, "max_ratio": max(ratios, default=math.nan),
            "min_ratio": min(ratios, default=math.nan)}


def tight_claim(violations: int, checked_points: int) -> Claim:
    """"Every proved form is at most the paper's form": holds when no checked point has a proved
    form certainly above the paper's (undecided when no point was checked)."""
    statement = "every proved (tighter) form is <= the paper's form of Table 3"
    if checked_points == 0:
        return Claim(statement, None, "no point checked")
    claim = claim_less_than(statement, violations, 1)
    claim.evidence = (f"{violations} of {checked_points} random points with tight > paper "
                      f"(ball arithmetic)")
    return claim


def named_subexpressions(expr: sp.Expr) -> tuple[list[tuple[sp.Symbol, sp.Expr]], sp.Expr]:
    """``expr``'s repeated sub-expressions named ``m0, m1, ...`` (sympy's common-subexpression
    elimination): the definitions, in order, and the reduced expression."""
    defs, (reduced,) = sp.cse(expr, symbols=sp.numbered_symbols("m"), order="none")
    return defs, reduced


def compact(expr: sp.Expr) -> tuple[str, str]:
    """``expr`` as text and LaTeX with its repeated sub-expressions named
    (:func:`named_subexpressions`), followed by ``where m0 = ...``."""
    defs, reduced = named_subexpressions(expr)
    text, tex = rows_of.expr_str(reduced), rows_of.expr_latex(reduced)
    if defs:
        text += "  where " + ", ".join(f"{k} = {rows_of.expr_str(v)}" for k, v in defs)
        tex += r", \quad " + ", ".join(f"{k.name} = {rows_of.expr_latex(v)}"
                                         for k, v in defs)
    return text, tex


def _cells(block: rows_of.BlockBound) -> dict[str, rows_of.Bound]:
    return {"forward": block.forward, "inverse": block.inverse}


def render_markdown(entries: list[dict]) -> str:
    """The table as markdown: block, operation, direction, scope, paper form, proved form."""
    lines = ["| building block | forward operation | direction | scope | paper | proved (tight) |",
             "|---|---|---|---|---|---|"]
    for e in entries:
        tight = "same" if e["same"] else f"`{e['tight']}`"
        lines.append(f"| {e['block']} | `{e['operation']}` | {e['direction']} | {e['scope']} | "
                     f"`{e['paper']}` | {tight} |")
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    return text.replace("&", r"\&").replace("_", r"\_").replace("%", r"\%")


def render_latex(entries: list[dict]) -> str:
    """The table as a LaTeX ``tabular`` (forms in math mode)."""
    lines = [r"\begin{tabular}{llll}", r"\hline",
             r"Building block & Direction & Paper & Proved (tight) \\", r"\hline"]
    for e in entries:
        tight = "same" if e["same"] else f"${e['tight_latex']}$"
        lines.append(f"{_tex_escape(e['block'])} & {e['direction']} & ${e['paper_latex']}$ & "
                     f"{tight} \\\\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _figure(rows: list[dict], settings: Settings) -> list[str]:
    """The range of proved / paper bound over the sampled points, one bar per block and
    direction whose forms differ (1 is the paper's bound; a log axis for the ratios that span
    decades)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if not r["same"] and r["points"] > 0
             and not math.isnan(r["min_tight_over_paper"])]
    # ratios near 1 on a linear axis, ratios over many decades (the ODE's exp) on a log axis
    panels = [("linear", [r for r in shown if r["min_tight_over_paper"] >= 1e-3]),
              ("log", [r for r in shown if r["min_tight_over_paper"] < 1e-3])]
    panels = [(scale, part) for scale, part in panels if part]
    fig, axes = plt.subplots(1, max(len(panels), 1), squeeze=False,
                             figsize=(5.5 * max(len(panels), 1), 0.8 + 0.45 * max(
                                 (len(part) for _, part in panels), default=1)))
    for ax, (scale, part) in zip(axes[0], panels):
        for i, r in enumerate(part):
            ax.plot([r["min_tight_over_paper"], r["max_tight_over_paper"]], [i, i], lw=6,
                    solid_capstyle="butt", color="tab:blue")
        ax.axvline(1.0, color="black", lw=1, ls="--", label="the paper's bound")
        ax.set_yticks(range(len(part)), [f"{r['block'].split(' (')[0]}, {r['direction']}"
                                         for r in part])
        ax.set_xscale(scale)
        if scale == "linear":
            ax.set_xlim(0, 1.05)
        ax.set_xlabel("proved bound / paper's bound (sampled points)")
        ax.legend(loc="lower left")
    fig.suptitle("Table 3: the proved forms against the paper's")
    fig.tight_layout()
    return save_figure(fig, settings, "table3_ratios")


def run(settings: Settings) -> ExperimentResult:
    """Render Table 3 and check every proved form against the paper's."""
    n_points = settings.pick(20, 300, 2000)
    rng = np.random.default_rng(settings.seed)
    entries, rows = [], []
    for name, operation, build in ROWS:
        block = build(rows_of.Symbols())
        for direction, bound in _cells(block).items():
            check = compare_forms(bound, n_points, rng)
            tight, tight_latex = compact(bound.tight)
            entries.append({
                "block": name, "operation": operation, "direction": direction,
                "scope": block.scope, "paper": rows_of.expr_str(bound.paper),
                "tight": tight,
                "paper_latex": rows_of.expr_latex(bound.paper),
                "tight_latex": tight_latex, **check})
            rows.append({"block": name, "direction": direction, "same": check["same"],
                         "points": check["points"], "violations": check["violations"],
                         "overflowed": check["overflowed"],
                         "max_tight_over_paper": check["max_ratio"],
                         "min_tight_over_paper": check["min_ratio"]})
    (settings.out / "table3.md").write_text(render_markdown(entries))
    (settings.out / "table3.tex").write_text(render_latex(entries))
    checked = sum(r["points"] for r in rows)
    violations = sum(r["violations"] for r in rows)
    tighter = min((r["min_tight_over_paper"] for r in rows
                   if not r["same"] and not math.isnan(r["min_tight_over_paper"])),
                  default=math.nan)
    overflowed = sum(r["overflowed"] for r in rows)
    figures = _figure(rows, settings)
    return ExperimentResult(
        name="table3", title="Table 3 (appendix A): Lipschitz bounds of the building blocks",
        scale=settings.scale, scale_note=f"{n_points} random points per differing form",
        paper={"rows": len(ROWS)},
        ours={"rows": len(ROWS), "checked_points": checked, "violations": violations,
              "overflowed_points": overflowed, "smallest_tight_over_paper": tighter},
        claims=[tight_claim(violations, checked)], rows=rows,
        files=["table3.md", "table3.tex", *figures],
        notes=["The proved forms of the couplings are the exact spectral norm of the 2 x 2 bound "
               "matrix of the paper's own proofs (lipbound.bounds.table); the neural ODE row is "
               "shown for a fixed-step RK4 solve with 8 steps, whose discrete flow has the "
               "tighter bound; the other rows have no tighter form.",
               f"Sampled Lip(f) T <= {MAX_LIP_T:g} so that exp(Lip(f) T) is finite; "
               f"{overflowed} point(s) with a non-finite end gave no ratio."])
