"""``lipbound bounds SPEC_OR_MODEL``: forward and inverse Lipschitz bounds, block by block.

``SPEC_OR_MODEL`` is a ``.json`` architecture spec (:mod:`lipbound.bounds.spec`) or a model saved
with :func:`lipbound.io.save_model`. For a model, ``--box A B`` gives the input box ``[A, B]^d``
that local bounds (affine couplings, Lemma 6) need, ``--around DATA`` one bound per input on the
L-inf ball of ``--radius`` around it (default the dequantization cell ``0.5 / 2^bits`` of
``--bits``-bit data, 8 by default; the per-sample shape is the data's) and their maximum, and
``--shape`` the per-sample input shape
where it cannot be read from the model (image models). Exit status: 0 when every block has a bound,
numeric or symbolic only (the report says once why a bound has no number), 1 when some bound is
refused (no bound at all, not even a symbolic one; the report says why), 2 on bad input.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import InputError
from ..io import check_output_path, load_inputs, load_model
from ..runtime import torch_threads
from ..shape import infer_shape, model_shape
from .compose import LocalBounds, NetworkBound, bound_model, local_bounds
from .report import FORMATS, format_local, format_report, format_split
from .spec import load_spec, spec_bounds
from .split import SplitBound, split_bounds

__all__ = ["add_arguments", "infer_shape", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lipbound bounds``."""
    parser.add_argument("source", metavar="SPEC_OR_MODEL",
                        help="architecture spec (.json: a list of blocks, or {\"blocks\": [...]}) "
                             "or saved model (lipbound.io.save_model)")
    parser.add_argument("--box", nargs=2, type=float, metavar=("A", "B"),
                        help="model inputs lie in [A, B]^d; local bounds (affine couplings) "
                             "need it (default: no box, so only global bounds are numeric)")
    parser.add_argument("--around", metavar="DATA",
                        help="bound on the L-inf ball around each input in DATA (.pt, .npy or "
                             ".npz, batch first): one bound per input and their maximum "
                             "(default: one box for the whole model)")
    parser.add_argument("--radius", type=float, metavar="R",
                        help="radius of the balls of --around (default: the dequantization "
                             "cell, 0.5 / 2^bits)")
    parser.add_argument("--bits", type=int, default=8, metavar="B",
                        help="bits of the data behind --around, for the default radius "
                             "(default: 8, radius 0.5/256)")
    parser.add_argument("--output-box", nargs=2, type=float, metavar=("A", "B"),
                        help="bound the inverses on outputs in [A, B]^d, carried backward "
                             "(default: on the forward images of --box)")
    parser.add_argument("--split-budget", type=float, metavar="SECONDS",
                        help="with --box, refine the bounds by splitting the input box (branch "
                             "and bound, inputs of at most 16 coordinates) for SECONDS and "
                             "report the bound reached (default: no splitting)")
    parser.add_argument("--shape", nargs="+", type=int, metavar="N",
                        help="per-sample input shape of a model, e.g. 2 or 3 32 32 (default: "
                             "read from the model; image models need it)")
    parser.add_argument("--format", choices=FORMATS, default="text",
                        help=f"report format, one of {', '.join(FORMATS)} (default: text)")
    parser.add_argument("--output", metavar="FILE",
                        help="write the report to FILE (default: print it)")
    parser.add_argument("--progress", action="store_true",
                        help="show progress bars on stderr (default: on; kept for old scripts)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (default: bars on stderr)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default: %(default)s: the bounds run many "
                             "small operations, and on a busy 2-core machine two threads made "
                             "the README's --around example several times slower)")


def bounds_for(source: str, box: Sequence[float] | None = None,
               output_box: Sequence[float] | None = None,
               shape: Sequence[int] | None = None, progress: bool = False) -> NetworkBound:
    """The bounds of a spec file or saved model (see the module docstring)."""
    path = Path(source)
    if path.suffix.lower() == ".json":
        if box is not None or output_box is not None or shape is not None:
            raise InputError("--box, --output-box and --shape apply to saved models; a spec "
                             "gives its boxes in the file (\"box\", \"inverse_box\")")
        return spec_bounds(load_spec(path))
    model = load_model(path)
    return bound_model(model, model_shape(model, shape),
                       None if box is None else tuple(box),
                       None if output_box is None else tuple(output_box), progress)


def _local(args: argparse.Namespace) -> LocalBounds:
    if Path(args.source).suffix.lower() == ".json":
        raise InputError("--around needs a saved model (a spec has no weights to bound around "
                         "inputs with)")
    if args.box is not None or args.output_box is not None:
        raise InputError("--around gives the boxes (balls around the inputs): leave out --box "
                         "and --output-box")
    model = load_model(args.source)
    inputs = load_inputs(args.around).to(torch.float64)
    return local_bounds(model, inputs, args.radius, args.bits, args.shape,
                        not args.no_progress)


def _split(args: argparse.Namespace) -> SplitBound:
    if Path(args.source).suffix.lower() == ".json" or args.box is None:
        raise InputError("--split-budget needs a saved model and --box A B (it splits that box)")
    if args.around is not None or args.output_box is not None:
        raise InputError("--split-budget splits --box: leave out --around and --output-box")
    model = load_model(args.source)
    return split_bounds(model, model_shape(model, args.shape), tuple(args.box), args.split_budget,
                        not args.no_progress)


def run(args: argparse.Namespace) -> int:
    """Print (or write) the report with ``--threads`` torch threads (restored afterwards); 1
    when a bound is refused (not merely symbolic)."""
    with torch_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    for option, box in (("--box", args.box), ("--output-box", args.output_box)):
        if box is not None and not (math.isfinite(box[0]) and math.isfinite(box[1])
                                    and box[0] <= box[1]):
            raise InputError(f"{option} needs finite A <= B, got {box[0]} {box[1]}")
    if args.around is None and args.radius is not None:
        raise InputError("--radius applies to --around DATA")
    if args.output:
        check_output_path(args.output, "--output")
    if args.around is not None:
        local = _local(args)
        text, refused = format_local(local, args.format), local.refusals()
    elif args.split_budget is not None:
        split = _split(args)
        text, refused = format_split(split, args.format), split.start.refusals()
    else:
        net = bounds_for(args.source, args.box, args.output_box, args.shape,
                         not args.no_progress)
        text, refused = format_report(net, args.format), net.refusals()
    if args.output:
        Path(args.output).write_text(text + "\n")
    else:
        print(text)
    return 1 if refused else 0
