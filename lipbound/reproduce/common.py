"""What every reproduction of a figure or table of the paper shares: the result record, claims
computed from numbers, output files (JSON, CSV, PNG and optionally PDF), the printed table, and
the command-line entry of the thin scripts in ``paper_figures/``.

An experiment is a function ``run(settings: Settings) -> ExperimentResult``. It measures at one
of three scales (:attr:`Settings.scale`): ``"smoke"`` (tiny sizes, a few steps: the test suite),
``"cpu"`` (the default: minutes on two cores) or ``"full"`` (the paper's sizes, a GPU). It writes
its files into :attr:`Settings.out` through :func:`write_csv` and :func:`save_figure`, and returns
the paper's numbers beside ours and the claims checked from ours (:class:`Claim`), so that
``python -m paper_figures all`` can write ``RESULTS.md`` without any text written by hand.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import check_output_folder
from ..jsonio import dump_json, jsonable

__all__ = ["SCALES", "Claim", "ExperimentResult", "Settings", "add_run_options", "claim_at_least",
           "claim_less_than", "format_value", "main", "markdown_table", "print_result",
           "run_experiment", "save_figure", "settings_from_args", "write_csv"]

SCALES = ("smoke", "cpu", "full")


@dataclass(frozen=True)
class Settings:
    """Where and at what scale an experiment runs.

    Attributes:
        out: folder for the experiment's files (created).
        scale: ``"smoke"``, ``"cpu"`` or ``"full"`` (see the module docstring).
        seed: random seed of data, initialisation and noise.
        pdf: also write each figure as PDF.
        device: ``"cpu"`` or ``"cuda"`` (``"full"`` runs expect a GPU).
        progress: show progress bars on stderr.
    """

    out: Path
    scale: str = "cpu"
    seed: int = 0
    pdf: bool = False
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise InputError(f"scale must be one of {list(SCALES)}, got {self.scale!r}")
        object.__setattr__(self, "out", check_output_folder(self.out, "--out"))

    def pick(self, smoke: Any, cpu: Any, full: Any) -> Any:
        """The value for this scale."""
        return {"smoke": smoke, "cpu": cpu, "full": full}[self.scale]


@dataclass
class Claim:
    """A qualitative claim of the paper, checked from our numbers.

    Attributes:
        statement: the claim in words, as the paper makes it.
        holds: whether our numbers support it (``None``: the numbers cannot decide, e.g. NaN).
        evidence: the numbers that decided it, in words (e.g. ``"1.2e-3 < 0.5 * 4.0e-2"``).
    """

    statement: str
    holds: bool | None
    evidence: str


@dataclass
class ExperimentResult:
    """What one experiment returns and writes as ``result.json``.

    Attributes:
        name: the script's name (``"figure2_checkerboard"``).
        title: the paper's figure or table it reproduces (``"Figures 2, 3, 8 (appendix C)"``).
        scale: the :attr:`Settings.scale` it ran at, and ``scale_note``: the sizes in words.
        paper: the paper's numbers, keyed like ``ours`` where they compare.
        ours: our numbers (floats may be NaN or Inf: they are results).
        claims: the paper's qualitative claims checked from ``ours``.
        rows: the table printed and written as CSV (a list of dicts with the same keys).
        files: files written, relative to the output folder.
        seconds: wall time of the run.
        notes: anything a reader needs (deviations from the paper, what was left out).
    """

    name: str
    title: str
    scale: str
    scale_note: str = ""
    paper: dict[str, Any] = field(default_factory=dict)
    ours: dict[str, Any] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ExperimentResult:
        """The result that :func:`main` wrote as ``result.json`` (numbers as written: non-finite
        floats stay the strings ``"nan"``/``"inf"``)."""
        claims = [Claim(**c) for c in values.get("claims", [])]
        return cls(**{**values, "claims": claims})


def format_value(value: Any, digits: int = 3) -> str:
    """A number as a short string (``1.2e-05``, ``0.25``, ``inf``, ``nan``); other values as
    ``str``."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value != 0 and not 1e-3 <= abs(value) < 1e4:
            return f"{value:.{max(digits - 1, 0)}e}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """``rows`` as a markdown table (columns: ``columns`` or the first row's keys)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Write ``rows`` (dicts with the same keys) as CSV; non-finite floats as ``nan``/``inf``."""
    if not rows:
        raise InputError(f"no rows to write to {str(path)!r}")
    columns = list(rows[0].keys())
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: jsonable(row.get(k)) for k in columns})
    return path


def save_figure(fig: Any, settings: Settings, stem: str) -> list[str]:
    """Save a matplotlib figure as ``stem.png`` (and ``stem.pdf`` with ``settings.pdf``) in the
    output folder, close it, and return the file names."""
    import matplotlib.pyplot as plt

    names = [f"{stem}.png"] + ([f"{stem}.pdf"] if settings.pdf else [])
    for name in names:
        fig.savefig(settings.out / name, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return names


def _decide(statement: str, a: float, b: float, factor: float, smaller: bool) -> Claim:
    relation = "<" if smaller else ">="
    evidence = f"{format_value(a)} {relation} {format_value(factor)} x {format_value(b)}"
    if any(math.isnan(v) for v in (a, b, factor)):
        return Claim(statement, None, evidence + " (NaN: undecided)")
    holds = a < factor * b if smaller else a >= factor * b
    return Claim(statement, bool(holds), evidence)


def claim_less_than(statement: str, a: float, b: float, factor: float = 1.0) -> Claim:
    """The claim ``a < factor * b`` (e.g. "the regularized error is 4 orders of magnitude
    smaller": ``factor = 1e-4``); undecided (``holds = None``) when a number is NaN."""
    return _decide(statement, float(a), float(b), float(factor), smaller=True)


def claim_at_least(statement: str, a: float, b: float, factor: float = 1.0) -> Claim:
    """The claim ``a >= factor * b``; undecided (``holds = None``) when a number is NaN."""
    return _decide(statement, float(a), float(b), float(factor), smaller=False)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of every experiment run: ``--full``/``--smoke``, ``--pdf``, ``--seed``,
    ``--device``, ``--no-progress`` (read back by :func:`settings_from_args`)."""
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--full", action="store_true",
                       help="the paper's sizes (expects a GPU; default: CPU scale, minutes)")
    scale.add_argument("--smoke", action="store_true",
                       help="tiny sizes and a few steps, to check the script runs (default: off)")
    p.add_argument("--pdf", action="store_true", help="also write the figures as PDF")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default=None,
                   help="cpu or cuda (default: cuda with --full when available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def settings_from_args(args: argparse.Namespace, out: Path) -> Settings:
    """The :class:`Settings` of the options of :func:`add_run_options`, writing into ``out``."""
    scale = "full" if args.full else "smoke" if args.smoke else "cpu"
    return Settings(out=out, scale=scale, seed=args.seed, pdf=args.pdf,
                    device=args.device or _default_device(args.full),
                    progress=not args.no_progress)


def _parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python paper_figures/{name}.py", description=description)
    p.add_argument("--out", default=None,
                   help=f"output folder (default: paper_figures/output/{name})")
    add_run_options(p)
    return p


def _default_device(full: bool) -> str:
    if full:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    return "cpu"


def run_experiment(run: Callable[[Settings], ExperimentResult], settings: Settings
                   ) -> ExperimentResult:
    """Run one experiment: time it, write ``result.json`` and ``table.csv`` (its rows) into
    ``settings.out``, and return the result."""
    settings.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = run(settings)
    result.seconds = time.perf_counter() - start
    if result.rows:
        write_csv(result.rows, settings.out / "table.csv")
        if "table.csv" not in result.files:
            result.files.append("table.csv")
    if "result.json" not in result.files:
        result.files.append("result.json")
    dump_json(result, settings.out / "result.json")
    return result


def print_result(result: ExperimentResult, file: Any = None) -> None:
    """The short printed form: title, table, claims."""
    file = file or sys.stdout
    print(f"{result.title} [{result.scale}{': ' + result.scale_note if result.scale_note else ''}]"
          f" in {result.seconds:.1f} s", file=file)
    if result.rows:
        print(markdown_table(result.rows), file=file)
    for claim in result.claims:
        mark = {True: "holds", False: "does not hold", None: "undecided"}[claim.holds]
        print(f"- {claim.statement}: {mark} ({claim.evidence})", file=file)


def main(name: str, description: str, run: Callable[[Settings], ExperimentResult],
         argv: Sequence[str] | None = None) -> int:
    """Entry point of a thin script ``paper_figures/<name>.py``: parse the options, run, write
    the files and print the table. Bad options print one line and return 2."""
    args = _parser(name, description).parse_args(argv)
    try:
        settings = settings_from_args(args, Path(args.out or Path("paper_figures/output") / name))
        result = run_experiment(run, settings)
    except InputError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    print_result(result)
    print(f"files in {settings.out}: {', '.join(result.files)}")
    return 0
