"""``lipbound verify MODEL INPUTS``: the rounding-versus-instability decomposition.

MODEL is a whole module saved with :func:`lipbound.io.save_model` (``torch.save``; load only
files you trust); INPUTS a ``.pt`` tensor or an ``.npy``/``.npz`` array, batch first.
"""

from __future__ import annotations

import argparse

from lipbound.io import load_inputs, load_model

from ..jsonio import dump_json
from .decompose import decompose, format_decomposition

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="saved model (lipbound.io.save_model)")
    parser.add_argument("inputs", help="inputs, .pt or .npy/.npz, batch first")
    parser.add_argument("--precision", default="float32",
                        choices=["float16", "bfloat16", "float32", "float64"])
    parser.add_argument("--reference", default="arb:256",
                        help="the oracle, arb:<bits> or mp:<bits> (default arb:256)")
    parser.add_argument("--parameter-rounding", action="store_true",
                        help="also measure float64 master weights against the cast ones")
    parser.add_argument("--no-trace", action="store_true", help="skip the per-block trace")
    parser.add_argument("--json", metavar="FILE", help="write the decomposition as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    x = load_inputs(args.inputs)
    d = decompose(model, x, args.precision, args.reference,
                  parameter_rounding=args.parameter_rounding, trace=not args.no_trace,
                  progress=not args.no_progress)
    print(format_decomposition(d))
    if args.json:
        dump_json(d.to_dict(), args.json)
    return 0
