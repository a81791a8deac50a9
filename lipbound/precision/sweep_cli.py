"""``lipbound sweep``: the Figure 1 depth sweep (see :mod:`lipbound.precision.sweep`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .sweep import PRECISIONS, figure1_sweep
from .sweep_plot import plot_sweep, sweep_table, write_csv, write_json

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--depth", type=int, default=100, help="largest depth (default 100)")
    parser.add_argument("--chains", nargs="+", default=["additive", "affine"],
                        choices=["additive", "affine"])
    parser.add_argument("--precision", nargs="+", default=list(PRECISIONS),
                        help="float names and/or 'exact' (default: all four floats and exact)")
    parser.add_argument("--t", type=float, default=0.123456789, help="translation t(x1)")
    parser.add_argument("--g", type=float, default=0.1, help="scale g(s(x1))")
    parser.add_argument("--x", type=float, nargs=2, default=[1.0, 1.0], help="the input")
    parser.add_argument("--alternate", action="store_true",
                        help="swap I1 and I2 every other block (default: the same partition)")
    parser.add_argument("--reference", default="arb:256",
                        help="the oracle, arb:<bits> or mp:<bits> (default arb:256); the 'exact' "
                             "rows are certified below 2^-bits, at bits + log2(cond) + 32 bits")
    parser.add_argument("--out", default="out/figure1_depth_sweep",
                        help="output stem: writes STEM.png and STEM.csv (default "
                             "out/figure1_depth_sweep)")
    parser.add_argument("--pdf", action="store_true", help="also write STEM.pdf")
    parser.add_argument("--json", metavar="FILE", help="write the records as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    records = figure1_sweep(args.depth, args.chains, args.precision, args.t, args.g,
                            args.alternate, args.x, args.reference,
                            progress=not args.no_progress)
    stem = Path(args.out)
    if stem.parent != Path("."):
        stem.parent.mkdir(parents=True, exist_ok=True)
    png, csv_path = stem.with_suffix(".png"), stem.with_suffix(".csv")
    plot_sweep(records, png)
    if args.pdf:
        plot_sweep(records, stem.with_suffix(".pdf"))
    write_csv(records, csv_path)
    if args.json:
        write_json(records, args.json)
    print(sweep_table(records))
    print(f"wrote {png}, {csv_path}" + (f", {args.json}" if args.json else "")
          + f" ({len(records)} records, {time.perf_counter() - start:.1f} s)")
    return 0
