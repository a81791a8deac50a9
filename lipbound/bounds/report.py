"""Reports of a :class:`~lipbound.bounds.compose.NetworkBound`: text, markdown, LaTeX and JSON.

One row per block (kind, scope, forward and inverse bound, cumulative values), then the network's
bounds, the paper's products beside them, the Remark 3 lower bounds and the Remark 4 bi-Lipschitz
constant (a lower bound of 0 is marked vacuous, with the reason: ``*_lower_vacuous`` in JSON,
``null`` when the bound says something). Printed upper bounds are rounded *up* to six significant
digits and lower bounds down, so a printed number is still a bound. Where a bound is not numeric
the expression is printed; where it is refused, the reason. JSON numbers are floats
(``"inf"``/``"nan"`` as strings), the sympy expressions strings beside them.
"""

from __future__ import annotations

import json
import math
from typing import Any

import sympy as sp

from ..errors import InputError
from ..jsonio import jsonable
from .compose import NetworkBound
from .rounding import format_bound
from .table import Bound, expr_latex, expr_str

__all__ = ["FORMATS", "format_report", "to_json"]

FORMATS = ("text", "markdown", "latex", "json")
#: Longest network expression printed in text formats (JSON always has it).
_MAX_EXPR = 400


def _cell(bound: Bound, latex: bool = False) -> str:
    if bound.refused:
        return "refused"
    if bound.value is not None:
        return format_bound(bound.value)
    expr = bound.substituted()
    return f"${expr_latex(expr)}$" if latex else expr_str(expr)


def _rows(net: NetworkBound, latex: bool = False) -> list[list[str]]:
    out = []
    for k, row in enumerate(net.blocks):
        out.append([str(k), row.kind, row.scope, _cell(row.forward, latex),
                    _cell(row.inverse, latex), format_bound(net.cumulative_forward[k]),
                    format_bound(net.cumulative_inverse[k])])
    return out


_HEADER = ["#", "block", "scope", "Lip(F)", "Lip(F^-1)", "cumulative Lip(F)",
           "cumulative Lip(F^-1)"]


def _vacuous(lower: float | None, upper: float | None, of: str) -> str | None:
    """Why a Remark 3 lower bound of 0 says nothing, or ``None`` when it says something."""
    if lower != 0:
        return None
    if upper is not None and math.isinf(upper):
        return f"vacuous: the upper bound on {of} is infinite"
    return f"vacuous: 1 / (the upper bound on {of}) is below the float range"


def _lower_cell(lower: float | None, upper: float | None, of: str) -> str:
    reason = _vacuous(lower, upper, of)
    text = format_bound(lower, upward=False)
    return text if reason is None else f"{text} ({reason})"


def _network_lines(net: NetworkBound) -> list[tuple[str, str]]:
    lines = [
        ("Lip(F) <=", format_bound(net.forward)),
        ("Lip(F^-1) <=", format_bound(net.inverse)),
        ("paper's product, Lip(F) <=", format_bound(net.forward_paper)),
        ("paper's product, Lip(F^-1) <=", format_bound(net.inverse_paper)),
        ("Remark 3: Lip(F) >=", _lower_cell(net.forward_lower, net.inverse, "Lip(F^-1)")),
        ("Remark 3: Lip(F^-1) >=", _lower_cell(net.inverse_lower, net.forward, "Lip(F)")),
        ("Remark 4: biLip(F) <=", format_bound(net.bilipschitz)),
    ]
    for name, expr in (("Lip(F) <=", net.forward_expr), ("Lip(F^-1) <=", net.inverse_expr)):
        text = expr_str(expr)
        if len(text) <= _MAX_EXPR:
            lines.append((f"symbolic {name}", text))
    return lines


def _text(net: NetworkBound) -> str:
    rows = [_HEADER] + _rows(net)
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    body.insert(1, "  ".join("-" * w for w in widths))
    body += ["", "network:"] + [f"  {k} {v}" for k, v in _network_lines(net)]
    body += _refusal_lines(net, "  ")
    return "\n".join(body)


def _refusal_lines(net: NetworkBound, indent: str) -> list[str]:
    reasons = net.refusals()
    return ["", "refused:"] + [f"{indent}{r}" for r in reasons] if reasons else []


def _markdown(net: NetworkBound) -> str:
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in _rows(net)]
    lines += ["", "| network | value |", "|---|---|"]
    lines += [f"| {k} | {v.replace('|', chr(92) + '|')} |" for k, v in _network_lines(net)]
    lines += [f"- {r}" for r in _refusal_lines(net, "")[1:]]
    return "\n".join(lines)


def _latex(net: NetworkBound) -> str:
    def tex(s: str) -> str:
        return s if s.startswith("$") else s.replace("_", r"\_").replace("^", r"\^{}")

    lines = [r"\begin{tabular}{rlllrrr}", r"\hline",
             r"\# & block & scope & $\mathrm{Lip}(F)$ & $\mathrm{Lip}(F^{-1})$ & "
             r"cum.\ $\mathrm{Lip}(F)$ & cum.\ $\mathrm{Lip}(F^{-1})$ \\", r"\hline"]
    lines += [" & ".join(tex(c) for c in r) + r" \\" for r in _rows(net, latex=True)]
    lines += [r"\hline", r"\end{tabular}", ""]
    for name, value in _network_lines(net):
        if name.startswith("symbolic"):
            expr = net.forward_expr if "F^-1" not in name else net.inverse_expr
            value = f"${expr_latex(expr)}$"
        lines.append(f"{tex(name)} {value}\\\\")
    lines += [f"% refused: {r}" for r in net.refusals()]
    return "\n".join(lines)


def _bound_json(bound: Bound, prefix: str) -> dict[str, Any]:
    return {
        prefix: jsonable(bound.value),
        f"{prefix}_expr": expr_str(bound.tight),
        f"{prefix}_paper": jsonable(bound.paper_value),
        f"{prefix}_paper_expr": expr_str(bound.paper),
        f"{prefix}_refused": bound.refused,
    }


def to_json(net: NetworkBound) -> dict[str, Any]:
    """The report as a JSON-ready dict: ``{"blocks": [...], "network": {...}}``."""
    blocks = []
    for k, row in enumerate(net.blocks):
        entry: dict[str, Any] = {"index": k, "label": row.label, "kind": row.kind,
                                 "scope": row.scope}
        entry.update(_bound_json(row.forward, "forward"))
        entry.update(_bound_json(row.inverse, "inverse"))
        entry["cumulative_forward"] = jsonable(net.cumulative_forward[k])
        entry["cumulative_inverse"] = jsonable(net.cumulative_inverse[k])
        entry["values"] = {str(s): jsonable(v) for s, v in
                           {**row.forward.values, **row.inverse.values}.items()}
        entry["assumptions"] = list(row.assumptions)
        blocks.append(entry)
    network = {
        "forward": jsonable(net.forward), "inverse": jsonable(net.inverse),
        "forward_lower": jsonable(net.forward_lower),
        "inverse_lower": jsonable(net.inverse_lower),
        "forward_lower_vacuous": _vacuous(net.forward_lower, net.inverse, "Lip(F^-1)"),
        "inverse_lower_vacuous": _vacuous(net.inverse_lower, net.forward, "Lip(F)"),
        "bilipschitz": jsonable(net.bilipschitz),
        "forward_paper": jsonable(net.forward_paper),
        "inverse_paper": jsonable(net.inverse_paper),
        "forward_expr": expr_str(net.forward_expr), "inverse_expr": expr_str(net.inverse_expr),
        "forward_lower_expr": expr_str(sp.Pow(net.inverse_expr, -1, evaluate=False)),
        "inverse_lower_expr": expr_str(sp.Pow(net.forward_expr, -1, evaluate=False)),
        "refused": net.refusals(),
    }
    return {"blocks": blocks, "network": network}


def format_report(net: NetworkBound, fmt: str = "text") -> str:
    """The report in ``fmt``: one of :data:`FORMATS`."""
    if fmt == "text":
        return _text(net)
    if fmt == "markdown":
        return _markdown(net)
    if fmt == "latex":
        return _latex(net)
    if fmt == "json":
        return json.dumps(to_json(net), indent=2)
    raise InputError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
