"""Reports of a :class:`~lipbound.bounds.compose.NetworkBound`: text, markdown, LaTeX and JSON.

One row per block (kind, scope, forward and inverse bound, cumulative values), or, where that at
least halves the table (a spec of 48 identical Glow steps), one row per distinct row with the blocks
it stands for and their count (``x48``) and without the cumulative columns; then the network's
bounds, the paper's products beside them, the Remark 3 lower bounds and the Remark 4 bi-Lipschitz
constant (a lower bound of 0 is marked vacuous, with the reason: ``*_lower_vacuous`` in JSON,
``null`` when the bound says something). Printed upper bounds are rounded *up* to six significant
digits and lower bounds down, so a printed number is still a bound. Where a bound is not numeric
the expression is printed with the known numbers folded in (:meth:`.table.Bound.folded`); a
symbolic-only bound is a result, its reason printed once for all the blocks it holds for; where
a bound is refused (no bound at all), the reason, likewise once. JSON numbers are floats
(``"inf"``/``"nan"`` as strings), the sympy expressions strings beside them.
"""

from __future__ import annotations

import json
import math
from typing import Any

import sympy as sp

from ..errors import InputError
from ..jsonio import jsonable
from .compose import LocalBounds, NetworkBound, compact_indices
from .rounding import format_bound
from .split import SplitBound
from .table import Bound, expr_latex, expr_str

__all__ = ["FORMATS", "format_local", "format_report", "local_json", "to_json"]

FORMATS = ("text", "markdown", "latex", "json")
#: Longest network expression printed in text formats (JSON always has it).
_MAX_EXPR = 400


def _cell(bound: Bound, latex: bool = False) -> str:
    if bound.refused:
        return "refused"
    if bound.value is not None:
        return format_bound(bound.value)
    expr = bound.folded()
    return f"${expr_latex(expr)}$" if latex else expr_str(expr)


def _block_cells(net: NetworkBound, latex: bool) -> list[list[str]]:
    return [[row.kind, row.scope, _cell(row.forward, latex), _cell(row.inverse, latex)]
            for row in net.blocks]


def _grouped(cells: list[list[str]]) -> dict[tuple[str, ...], list[int]] | None:
    """Blocks with identical rows, in order of first appearance; ``None`` unless grouping at
    least halves the table."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for k, c in enumerate(cells):
        groups.setdefault(tuple(c), []).append(k)
    return groups if 2 * len(groups) <= len(cells) else None


def _table(net: NetworkBound, latex: bool = False) -> tuple[list[str], list[list[str]]]:
    """The header and rows: one per block, or one per group of identical rows."""
    cells = _block_cells(net, latex)
    groups = _grouped(cells)
    if groups is None:
        return _HEADER, [[str(k), *c, format_bound(net.cumulative_forward[k]),
                          format_bound(net.cumulative_inverse[k])] for k, c in enumerate(cells)]
    return _GROUP_HEADER, [[compact_indices(ks), f"x{len(ks)}", *c] for c, ks in groups.items()]


_HEADER = ["#", "block", "scope", "Lip(F)", "Lip(F^-1)", "cumulative Lip(F)",
           "cumulative Lip(F^-1)"]
_GROUP_HEADER = ["blocks", "count", "block", "scope", "Lip(F)", "Lip(F^-1)"]


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
    ]
    if net.jacobian is not None and net.jacobian.reason != "no box":
        lines += [
            ("Lip(F) method", net.forward_method),
            ("Lip(F^-1) method", net.inverse_method),
            ("product of per-block bounds, Lip(F) <=", format_bound(net.forward_composed)),
            ("product of per-block bounds, Lip(F^-1) <=", format_bound(net.inverse_composed)),
        ]
        if net.jacobian.reason:
            lines.append(("interval Jacobian not used", net.jacobian.reason))
    lines += [
        ("paper's product, Lip(F) <=", format_bound(net.forward_paper)),
        ("paper's product, Lip(F^-1) <=", format_bound(net.inverse_paper)),
        ("Remark 3: Lip(F) >=", _lower_cell(net.forward_lower, net.inverse, "Lip(F^-1)")),
        ("Remark 3: Lip(F^-1) >=", _lower_cell(net.inverse_lower, net.forward, "Lip(F)")),
        ("Remark 4: biLip(F) <=", format_bound(net.bilipschitz)),
    ]
    for name, expr in (("Lip(F) <=", net.forward_folded), ("Lip(F^-1) <=", net.inverse_folded)):
        text = expr_str(expr)
        if len(text) <= _MAX_EXPR:
            lines.append((f"symbolic {name}", text))
    return lines


def _text(net: NetworkBound) -> str:
    header, table = _table(net)
    rows = [header] + table
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    body.insert(1, "  ".join("-" * w for w in widths))
    body += ["", "network:"] + [f"  {k} {v}" for k, v in _network_lines(net)]
    for title, reasons in _reason_sections(net):
        body += ["", f"{title}:"] + [f"  {r}" for r in reasons]
    return "\n".join(body)


def _reason_sections(net: NetworkBound) -> list[tuple[str, list[str]]]:
    """``(title, lines)`` of the symbolic-only and the refused bounds, where there are any."""
    sections = (("symbolic only (a bound without a number)", net.symbolic_reasons()),
                ("refused (no bound)", net.refusals()))
    return [(title, reasons) for title, reasons in sections if reasons]


def _markdown(net: NetworkBound) -> str:
    header, table = _table(net)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in table]
    lines += ["", "| network | value |", "|---|---|"]
    lines += [f"| {k} | {v.replace('|', chr(92) + '|')} |" for k, v in _network_lines(net)]
    for title, reasons in _reason_sections(net):
        lines += ["", f"{title}:", ""] + [f"- {r}" for r in reasons]
    return "\n".join(lines)


def _latex(net: NetworkBound) -> str:
    def tex(s: str) -> str:
        return s if s.startswith("$") else s.replace("_", r"\_").replace("^", r"\^{}")

    header, table = _table(net, latex=True)
    names = {"#": r"\#", "Lip(F)": r"$\mathrm{Lip}(F)$", "Lip(F^-1)": r"$\mathrm{Lip}(F^{-1})$",
             "cumulative Lip(F)": r"cum.\ $\mathrm{Lip}(F)$",
             "cumulative Lip(F^-1)": r"cum.\ $\mathrm{Lip}(F^{-1})$"}
    align = "rlllrrr" if header is _HEADER else "rrllll"
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\hline",
             " & ".join(names.get(h, h) for h in header) + r" \\", r"\hline"]
    lines += [" & ".join(tex(c) for c in r) + r" \\" for r in table]
    lines += [r"\hline", r"\end{tabular}", ""]
    for name, value in _network_lines(net):
        if name.startswith("symbolic"):
            expr = net.forward_folded if "F^-1" not in name else net.inverse_folded
            value = f"${expr_latex(expr)}$"
        lines.append(f"{tex(name)} {value}\\\\")
    for title, reasons in _reason_sections(net):
        lines += [f"% {title}: {r}" for r in reasons]
    return "\n".join(lines)


def _bound_json(bound: Bound, prefix: str) -> dict[str, Any]:
    return {
        prefix: jsonable(bound.value),
        f"{prefix}_expr": expr_str(bound.tight),
        f"{prefix}_paper": jsonable(bound.paper_value),
        f"{prefix}_paper_expr": expr_str(bound.paper),
        f"{prefix}_refused": bound.refused,
        f"{prefix}_symbolic": bound.symbolic,
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
    jac = net.jacobian
    network = {
        "forward": jsonable(net.forward), "inverse": jsonable(net.inverse),
        "forward_method": net.forward_method, "inverse_method": net.inverse_method,
        "forward_composed": jsonable(net.forward_composed),
        "inverse_composed": jsonable(net.inverse_composed),
        "forward_jacobian": None if jac is None else jsonable(jac.forward),
        "inverse_jacobian": None if jac is None else jsonable(jac.inverse),
        "jacobian_not_used": None if jac is None else jac.reason,
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
        "symbolic": net.symbolic_reasons(),
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


def local_json(local: LocalBounds) -> dict[str, Any]:
    """Local bounds as a JSON-ready dict: ``{"radius", "forward", "inverse", "inputs": [{"index",
    "forward", "inverse", "forward_lower", "inverse_lower", "refused", "symbolic"}, ...]}``;
    ``forward`` and ``inverse`` are the maxima over the inputs."""
    inputs = [{"index": i, "forward": jsonable(b.forward), "inverse": jsonable(b.inverse),
               "forward_lower": jsonable(b.forward_lower),
               "inverse_lower": jsonable(b.inverse_lower),
               "refused": b.refusals(), "symbolic": b.symbolic_reasons()}
              for i, b in enumerate(local.bounds)]
    return {"radius": local.radius, "forward": jsonable(local.forward),
            "inverse": jsonable(local.inverse), "inputs": inputs}


def format_local(local: LocalBounds, fmt: str = "text") -> str:
    """Local bounds in ``fmt`` (one of :data:`FORMATS`): one row per input, then the maxima."""
    if fmt == "json":
        return json.dumps(local_json(local), indent=2)
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    rows = [[str(i), format_bound(b.forward), format_bound(b.inverse)]
            for i, b in enumerate(local.bounds)]
    rows.append(["max", format_bound(local.forward), format_bound(local.inverse)])
    title = (f"local bounds on the L-inf balls of radius {local.radius!r} around "
             f"{len(local.bounds)} inputs (each inverse on its ball's forward image)")
    header = ["input", "Lip(F)", "Lip(F^-1)"]
    if fmt == "markdown":
        lines = [title, "", "| " + " | ".join(header) + " |", "|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    elif fmt == "latex":
        lines = [f"% {title}", r"\begin{tabular}{rrr}", r"\hline",
                 r"input & $\mathrm{Lip}(F)$ & $\mathrm{Lip}(F^{-1})$ \\", r"\hline"]
        lines += [" & ".join(r) + r" \\" for r in rows] + [r"\hline", r"\end{tabular}"]
    else:
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(3)]
        lines = [title, ""] + ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                               .rstrip() for r in [header] + rows]
        lines.insert(3, "  ".join("-" * w for w in widths))
    reasons = {r for b in local.bounds for r in b.refusals()}
    if reasons:
        prefix = "% " if fmt == "latex" else ""
        lines += ["", f"{prefix}refused (no bound), for some inputs:"]
        lines += [f"{prefix}  {r}" for r in sorted(reasons)]
    return "\n".join(lines)


def format_split(split: SplitBound, fmt: str = "text") -> str:
    """The report on the whole box (:func:`format_report`) followed by the bounds input
    splitting reached (JSON: a ``"split"`` object ``{"forward", "inverse", "boxes",
    "seconds", "rounds", "batched", "reason"}``; ``reason``: why the sub-boxes were bounded one
    at a time, ``null`` when in batches)."""
    fields = {"forward": jsonable(split.forward), "inverse": jsonable(split.inverse),
              "boxes": split.boxes, "seconds": split.seconds, "rounds": split.rounds,
              "batched": split.batched, "reason": split.reason}
    if fmt == "json":
        return json.dumps({**to_json(split.start), "split": fields}, indent=2)
    prefix = "% " if fmt == "latex" else ""
    how = "in batches" if split.batched else f"one at a time: {split.reason}"
    return "\n".join([
        format_report(split.start, fmt), "",
        f"{prefix}input splitting ({split.boxes} sub-boxes in {split.rounds} rounds, {how}; "
        f"{split.seconds:.3g} s): "
        f"Lip(F) <= {format_bound(split.forward)}, Lip(F^-1) <= {format_bound(split.inverse)} "
        "(the maximum over the sub-boxes; the inverse on the forward image)"])
