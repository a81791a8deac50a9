"""``python -m paper_figures``: run the paper's experiments in
:data:`~lipbound.reproduce.EXPERIMENTS` order (all, or the ones named) and write ``RESULTS.md``
from every experiment's ``result.json``.

Usage::

    python -m paper_figures all [--full | --smoke]     # every experiment, then RESULTS.md
    python -m paper_figures table1_flows [...]          # the ones named, then RESULTS.md
    python -m paper_figures results                     # RESULTS.md from the result.json files

An experiment whose module this checkout lacks is reported as not available (the page says so)
instead of stopping the others; one that fails on bad input (e.g. ``--full`` without the
full-size presets) is reported in one line, and the command ends with status 2 after the rest.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from ..errors import InputError
from . import EXPERIMENTS
from .common import (
    ExperimentResult,
    Settings,
    add_run_options,
    print_result,
    run_experiment,
    settings_from_args,
)
from .results import load_results, missing_text, write_results

__all__ = ["experiment_module", "main", "run_suite"]


def experiment_module(name: str) -> ModuleType | None:
    """The :mod:`lipbound.reproduce` module of the experiment ``name`` (a key of
    :data:`EXPERIMENTS`), or ``None`` when this checkout lacks it."""
    if name not in EXPERIMENTS:
        raise InputError(f"experiment must be one of {list(EXPERIMENTS)}, 'all' or 'results', "
                         f"got {name!r}")
    full = f"{__package__}.{EXPERIMENTS[name]}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as err:
        if err.name == full:
            return None
        raise


def run_suite(names: Sequence[str], root: Path, results_path: Path,
              settings_for: Callable[[Path], Settings]
              ) -> dict[str, ExperimentResult | str | None]:
    """Run the experiments ``names`` into ``root/<name>/`` (``settings_for(folder)`` gives each
    run's :class:`Settings`) and write ``results_path`` from the ``result.json`` of every
    experiment of :data:`EXPERIMENTS` found under ``root`` (so the page also shows earlier runs
    of the others). Returns what the page was rendered from: per experiment its result, or a
    sentence why there is none."""
    page: dict[str, ExperimentResult | str | None] = dict(load_results(root, EXPERIMENTS))
    for name in names:
        module = experiment_module(name)
        if module is None:
            print(f"{name}: not available in this checkout", file=sys.stderr)
            page[name] = missing_text(name, EXPERIMENTS[name])
            continue
        settings = settings_for(root / name)
        try:
            result = run_experiment(module.run, settings)
        except InputError as err:
            print(f"{name}: error: {err}", file=sys.stderr)
            page[name] = f"Failed at scale {settings.scale}: {err}"
            continue
        print_result(result)
        page[name] = result
    for name in EXPERIMENTS:
        if page[name] is None and experiment_module(name) is None:
            page[name] = missing_text(name, EXPERIMENTS[name])
    results_path.parent.mkdir(parents=True, exist_ok=True)
    write_results(page, results_path)
    print(f"wrote {results_path}")
    return page


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m paper_figures",
                                description="Run the paper's experiments and write RESULTS.md.")
    p.add_argument("what", nargs="+",
                   help=f"'all', 'results' (only rewrite RESULTS.md), or experiment names: "
                        f"{', '.join(EXPERIMENTS)}")
    p.add_argument("--out", default="paper_figures/output",
                   help="folder of the experiments' folders (default: paper_figures/output)")
    p.add_argument("--results", default="paper_figures/RESULTS.md",
                   help="the results page (default: paper_figures/RESULTS.md)")
    add_run_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (module docstring); bad input prints one line and returns 2."""
    args = _parser().parse_args(argv)
    what = list(args.what)
    try:
        if what == ["results"]:
            names: list[str] = []
        elif what == ["all"]:
            names = list(EXPERIMENTS)
        else:
            for name in what:
                experiment_module(name)  # checks the name
            names = what
        page = run_suite(names, Path(args.out), Path(args.results),
                         lambda folder: settings_from_args(args, folder))
    except InputError as err:
        print(f"paper_figures: error: {err}", file=sys.stderr)
        return 2
    failed = [n for n in names if isinstance(page[n], str) and page[n].startswith("Failed")]
    return 2 if failed else 0
