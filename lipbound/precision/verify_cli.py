"""``lipbound verify MODEL INPUTS``: the rounding-versus-instability decomposition.

MODEL is a whole module saved with :func:`lipbound.io.save_model` or ``torch.save`` (load only
files you trust): a lipbound block or any model :func:`lipbound.adapters.adapt` accepts (FrEIA,
nflows, zuko, normflows, memcnn), whose oracle is then the traced one; INPUTS a ``.pt`` tensor
or an ``.npy``/``.npz`` array, batch first.
"""

from __future__ import annotations

import argparse

from lipbound.adapters import adapt
from lipbound.io import check_output_path, load_inputs, load_saved

from ..jsonio import dump_json
from ..shape import check_batch, output_shape
from .decompose import check_inputs, decompose, format_decomposition
from .names import describe_precisions, parse_precision

__all__ = ["add_arguments", "run"]

#: The kinds of names ``--precision`` and ``--reference`` take.
PRECISION_KINDS, REFERENCE_KINDS = ("torch",), ("mp", "arb")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="saved model (lipbound.io.save_model, or torch.save of a "
                                      "FrEIA, nflows, zuko, normflows or memcnn model); required")
    parser.add_argument("inputs", metavar="INPUTS",
                        help="inputs, batch first, of real numbers: .pt, .npy or .npz (its array "
                             "x, or its only array); required")
    parser.add_argument("--precision", default="float32",
                        help=f"the float precision to test, "
                             f"{describe_precisions(PRECISION_KINDS)} (default float32)")
    parser.add_argument("--reference", default="arb:256",
                        help=f"the oracle, {describe_precisions(REFERENCE_KINDS)} "
                             f"(default arb:256)")
    parser.add_argument("--parameter-rounding", action="store_true",
                        help="also measure float64 master weights against the cast ones "
                             "(default: no)")
    parser.add_argument("--no-trace", action="store_true",
                        help="skip the per-block trace (default: trace every block)")
    parser.add_argument("--json", metavar="FILE",
                        help="write the decomposition as JSON to FILE (default: no JSON)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (default: show progress on stderr)")


def run(args: argparse.Namespace) -> int:
    parse_precision(args.precision, PRECISION_KINDS, "--precision")
    parse_precision(args.reference, REFERENCE_KINDS, "--reference")
    if args.json:
        check_output_path(args.json, "--json")
    model = adapt(load_saved(args.model))
    x = load_inputs(args.inputs)
    name = f"INPUTS {args.inputs!r}"
    check_batch(x, name)
    check_inputs(x, name)
    output_shape(model, x, name)
    d = decompose(model, x, args.precision, args.reference,
                  parameter_rounding=args.parameter_rounding, trace=not args.no_trace,
                  progress=not args.no_progress)
    print(format_decomposition(d))
    if args.json:
        dump_json(d.to_dict(), args.json)
    return 0
