"""``paper_figures/RESULTS.md``: the paper's numbers beside ours, per figure and table, with each
of the paper's qualitative claims checked from our numbers.

The page is rendered from :class:`~.common.ExperimentResult` records only (no text written by
hand about the outcome): the claims' verdicts come from :attr:`~.common.Claim.holds`. Each
experiment's ``result.json`` (written by :func:`~.common.run_experiment`) can be read back with
:func:`load_results`, so the page can be rebuilt without rerunning anything
(``python -m paper_figures results``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError
from .common import ExperimentResult, format_value, markdown_table

__all__ = ["VERDICTS", "flatten", "load_result", "load_results", "missing_text",
           "render_results", "write_results"]

#: How a claim's :attr:`~.common.Claim.holds` reads on the page.
VERDICTS = {True: "holds", False: "does not hold", None: "undecided"}

#: Why the paper's appendix H has no experiment here.
FLOW_GAN_NOTE = (
    "Appendix H of the paper (bi-directional training in the Flow-GAN setting) is an outlook, "
    "not one of its claims about exploding inverses, and is left out of this reproduction.")


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level, keys joined with ``" / "`` (``{"a": {"b": 1}}`` ->
    ``{"a / b": 1}``)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix} / {key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return format_value(value)


def load_result(path: str | Path) -> ExperimentResult:
    """The :class:`ExperimentResult` written as ``result.json`` at ``path``."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"result file {str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(values, dict) or "name" not in values:
        raise InputError(f"result file {str(path)!r} holds no experiment result (no 'name')")
    try:
        return ExperimentResult.from_json(values)
    except TypeError as err:
        raise InputError(f"result file {str(path)!r} is not an experiment result: {err}") from err


def load_results(root: str | Path, names: Iterable[str]) -> dict[str, ExperimentResult | None]:
    """``root/<name>/result.json`` for every name (``None`` where there is none)."""
    root = Path(root)
    return {name: (load_result(root / name / "result.json")
                   if (root / name / "result.json").is_file() else None) for name in names}


def _claims_count(result: ExperimentResult) -> str:
    held = sum(c.holds is True for c in result.claims)
    failed = sum(c.holds is False for c in result.claims)
    undecided = sum(c.holds is None for c in result.claims)
    text = f"{held} of {len(result.claims)} hold"
    if failed:
        text += f", {failed} do not"
    if undecided:
        text += f", {undecided} undecided"
    return text


def _comparison(result: ExperimentResult) -> str:
    paper, ours = flatten(result.paper), flatten(result.ours)
    keys = list(paper) + [k for k in ours if k not in paper]
    rows = [{"quantity": k, "paper": _show(paper.get(k)), "ours": _show(ours.get(k))}
            for k in keys]
    return markdown_table(rows, ["quantity", "paper", "ours"])


def _section(name: str, result: ExperimentResult | str) -> list[str]:
    if isinstance(result, str):
        return [f"## `{name}`", "", result, ""]
    lines = [f"## {result.title} (`{name}`)", "",
             f"Scale: **{result.scale}**" + (f" ({result.scale_note})" if result.scale_note
                                              else "")
             + f"; run time {result.seconds:.0f} s. Command: `python paper_figures/{name}.py"
             + {"smoke": " --smoke", "cpu": "", "full": " --full"}.get(result.scale, "") + "`.",
             ""]
    if result.claims:
        lines += ["The paper's claims, checked from our numbers:", "",
                  markdown_table([{"claim": c.statement, "in our run": VERDICTS[c.holds],
                                   "evidence": c.evidence} for c in result.claims]), ""]
    if result.paper or result.ours:
        lines += ["The paper's numbers beside ours:", "", _comparison(result), ""]
    if result.rows:
        lines += ["Our table:", "", markdown_table(result.rows), ""]
    if result.notes:
        lines += ["Notes:", ""] + [f"- {note}" for note in result.notes] + [""]
    if result.files:
        lines += ["Files: " + ", ".join(f"`{f}`" for f in result.files), ""]
    return lines


def missing_text(name: str, module: str | None = None) -> str:
    """What the page says for an experiment without a result: not run yet, or, given the
    ``module`` of :mod:`lipbound.reproduce` it needs, that this checkout lacks it."""
    if module is not None:
        return f"Not available: this checkout has no module `lipbound.reproduce.{module}`."
    return f"Not run yet: `python -m paper_figures {name}`."


def render_results(results: Mapping[str, ExperimentResult | str | None]) -> str:
    """The markdown page for ``results`` (script name -> its result, or a sentence saying why
    there is none, or ``None``: not run yet), in the mapping's order."""
    lines = ["# The paper's experiments, reproduced", "",
             "Behrmann et al., \"Understanding and Mitigating Exploding Inverses in Invertible "
             "Neural Networks\", AISTATS 2021. Generated by `python -m paper_figures` from each "
             "experiment's `result.json`; every verdict below is computed from our numbers. "
             "Scales: `smoke` (tiny, the test suite), `cpu` (minutes on two cores, digits "
             "instead of CIFAR-10), `full` (the paper's sizes, a GPU).", "",
             "| experiment | scale | run time (s) | claims |", "|---|---|---|---|"]
    results = {name: missing_text(name) if result is None else result
               for name, result in results.items()}
    for name, result in results.items():
        if isinstance(result, str):
            lines.append(f"| `{name}` | - | - | {result} |")
        else:
            lines.append(f"| {result.title} (`{name}`) | {result.scale} | "
                         f"{result.seconds:.0f} | {_claims_count(result)} |")
    lines.append("")
    for name, result in results.items():
        lines += _section(name, result)
    lines += ["## Appendix H (Flow-GAN)", "", FLOW_GAN_NOTE, ""]
    return "\n".join(lines)


def write_results(results: Mapping[str, ExperimentResult | str | None], path: str | Path
                  ) -> Path:
    """Write :func:`render_results` to ``path`` and return it."""
    path = Path(path)
    path.write_text(render_results(results))
    return path
