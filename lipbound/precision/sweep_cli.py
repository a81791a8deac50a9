"""``lipbound sweep``: the Figure 1 depth sweep (see :mod:`lipbound.precision.sweep`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..io import check_output_path
from .names import describe_precisions
from .sweep import (
    CHAINS,
    FLOAT_KINDS,
    PRECISIONS,
    REFERENCE_KINDS,
    check_sweep_arguments,
    figure1_sweep,
)
from .sweep_plot import plot_sweep, sweep_table, write_csv, write_json

__all__ = ["OPTION_NAMES", "add_arguments", "run"]

#: The option of each :func:`figure1_sweep` argument, for the error messages.
OPTION_NAMES = {"depths": "--depth", "chains": "--chains", "precisions": "--precision",
                "t": "--t", "g": "--g", "x": "--x", "reference_name": "--reference"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--depth", type=int, default=100,
                        help="largest depth, an integer >= 1 (default 100)")
    parser.add_argument("--chains", nargs="+", default=list(CHAINS), metavar="CHAIN",
                        help=f"one or more of {', '.join(CHAINS)} (default: both)")
    parser.add_argument("--precision", nargs="+", default=list(PRECISIONS), metavar="NAME",
                        help=f"one or more precisions, each "
                             f"{describe_precisions(FLOAT_KINDS, also=('exact',))} (default: "
                             f"all of them)")
    parser.add_argument("--t", type=float, default=0.123456789,
                        help="translation t(x1), finite (default 0.123456789)")
    parser.add_argument("--g", type=float, default=0.1,
                        help="scale g(s(x1)) of the affine chain: finite, and nonzero and "
                             "finite after rounding to every swept float precision "
                             "(default 0.1)")
    parser.add_argument("--x", type=float, nargs=2, default=[1.0, 1.0], metavar=("X1", "X2"),
                        help="the input, two finite numbers (default 1 1)")
    parser.add_argument("--alternate", action="store_true",
                        help="swap I1 and I2 every other block (default: the same partition)")
    parser.add_argument("--reference", default="arb:256",
                        help=f"the oracle, {describe_precisions(REFERENCE_KINDS)}: the sweep "
                             "certifies its exact values by ball arithmetic, so mp:<bits> is "
                             "not accepted; the 'exact' rows are certified below 2^-bits, at "
                             "bits + log2(cond) + 32 bits (default arb:256)")
    parser.add_argument("--out", default="out/figure1_depth_sweep",
                        help="output stem: writes STEM.png and STEM.csv (default "
                             "out/figure1_depth_sweep)")
    parser.add_argument("--pdf", action="store_true", help="also write STEM.pdf (default: no)")
    parser.add_argument("--json", metavar="FILE",
                        help="write the records as JSON to FILE (default: no JSON)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (default: show progress on stderr)")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    check_sweep_arguments(args.depth, args.chains, args.precision, args.t, args.g, args.x,
                          args.reference, names=OPTION_NAMES)
    stem = Path(args.out)
    outputs = [stem.with_suffix(s) for s in (".png", ".csv") + ((".pdf",) if args.pdf else ())]
    for path in outputs:
        check_output_path(path, "--out", create_parents=True)
    if args.json:
        check_output_path(args.json, "--json")
    records = figure1_sweep(args.depth, args.chains, args.precision, args.t, args.g,
                            args.alternate, args.x, args.reference,
                            progress=not args.no_progress)
    if stem.parent != Path("."):
        stem.parent.mkdir(parents=True, exist_ok=True)
    png, csv_path = stem.with_suffix(".png"), stem.with_suffix(".csv")
    subtitle = (f"t = {args.t!r}, g = {args.g!r}, x = ({args.x[0]!r}, {args.x[1]!r})"
                + (", alternating partition" if args.alternate else ""))
    plot_sweep(records, png, subtitle=subtitle)
    if args.pdf:
        plot_sweep(records, stem.with_suffix(".pdf"), subtitle=subtitle)
    write_csv(records, csv_path)
    if args.json:
        write_json(records, args.json)
    print(sweep_table(records))
    print(f"wrote {png}, {csv_path}" + (f", {args.json}" if args.json else "")
          + f" ({len(records)} records, {time.perf_counter() - start:.1f} s)")
    return 0
