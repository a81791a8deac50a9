"""``lipbound diagnose MODEL DATA``: reconstruction statistics, where the round trip breaks, the
Jacobian spectrum, the invertibility attack, and maps or histograms as PNG.

MODEL is a file written with ``torch.save(model, path)``: a lipbound block, or a model of FrEIA,
nflows, zuko, normflows or memcnn (seen through :func:`lipbound.adapters.adapt`). DATA is a
``.pt``/``.npy``/``.npz`` array, ``checkerboard`` or ``checkerboard:N`` (the paper's 2D data, N
points, default 2000) or ``digits`` (scikit-learn's 8x8 digits, 17 grey levels: the attack box is
their dequantization cell unless ``--radius`` is given). ``--reference arb:256`` adds the oracle's
decomposition of section 2 (the traced oracle for models of other libraries); with ``--out
FILE.jsonl``, ``--workers N`` or ``--scheduler ADDRESS`` it runs one sample at a time (locally, on
N processes or on a Dask cluster), streams one JSON line per sample, resumes from the file and
summarises the samples (:mod:`lipbound.precision.samples`). MODEL may also be a ``lipbound
train`` run folder or its ``checkpoint.pt``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import Tensor

from ..adapters import adapt
from ..errors import InputError
from ..io import INPUT_SUFFIXES, check_output_path, load_inputs
from ..jsonio import dump_json
from ..precision.names import parse_precision
from ..precision.samples import OracleSample, decompose_samples
from ..precision.verify_cli import (
    add_engine_arguments,
    check_engine_arguments,
    interrupted_message,
    load_network,
    per_sample,
)
from ..runtime import torch_threads
from ..shape import check_batch, output_shape
from .data import checkerboard, load_digits
from .histogram import plot_error_histograms
from .maps import grid_maps, plot_grid_maps
from .reconstruction import DIRECTIONS
from .report import (
    ORACLE_REFUSALS,
    AttackSettings,
    OracleSettings,
    diagnose,
    diagnosis_to_json,
    format_diagnosis,
    nonfinite_data_message,
)

#: Quantisation levels of the named datasets (the attack's dequantization cell).
DATA_LEVELS = {"digits": 17}

#: What DATA may be, for its error messages.
DATA_FORMS = "a .pt, .npy or .npz file, checkerboard, checkerboard:N (N >= 1) or digits"

__all__ = ["DATA_FORMS", "add_arguments", "load_data", "run"]


def load_data(spec: str, seed: int = 0) -> Tensor:
    """The DATA argument: a file, ``checkerboard[:N]`` or ``digits``."""
    gen = torch.Generator().manual_seed(seed)
    if spec == "digits":
        return load_digits(generator=gen)
    if spec == "checkerboard" or spec.startswith("checkerboard:"):
        count = spec.partition(":")[2] or "2000"
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"DATA checkerboard:N needs an integer N >= 1, got {spec!r}")
        return checkerboard(int(count), generator=gen)
    if Path(spec).suffix not in INPUT_SUFFIXES:
        raise InputError(f"DATA must be {DATA_FORMS}, got {spec!r}")
    return load_inputs(spec)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``lipbound diagnose``; every help states the default."""
    p.description = __doc__.split("\n\n")[0].replace("\n", " ").replace("``", "")
    p.add_argument("model", metavar="MODEL",
                   help="torch.save'd lipbound, FrEIA, nflows, zuko, normflows or memcnn model")
    p.add_argument("data", metavar="DATA",
                   help="a .pt/.npy/.npz file (an .npz's array x, or its only array), checkerboard "
                        "or checkerboard:N (the paper's 2D data, N >= 1 points, default 2000), "
                        "or digits")
    p.add_argument("--precision", nargs="+", default=["float32", "float64"],
                   help="float precisions of the round trips; the attack runs at the first "
                        "(default: float32 float64)")
    p.add_argument("--direction", nargs="+", default=list(DIRECTIONS), choices=DIRECTIONS,
                   help="round-trip directions (default: both)")
    p.add_argument("--n", type=int, default=None,
                   help="use the first N samples of DATA (default: all)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="diagnose DATA that holds NaN or Inf (those samples fail at 'input') "
                        "instead of refusing it (default: refuse, exit 2)")
    p.add_argument("--tol", type=float, default=None,
                   help="relative failure tolerance of the per-block trace (default: sqrt(eps) "
                        "of each precision)")
    p.add_argument("--spectrum-samples", type=int, default=8,
                   help="first samples whose Jacobian spectrum is computed, 0 for none "
                        "(default: %(default)s)")
    p.add_argument("--spectrum-method", choices=["auto", "full", "matrix_free"], default="auto",
                   help="full SVD or matrix-free Lanczos (default: %(default)s: full up to "
                        "--max-full-dim)")
    p.add_argument("--max-full-dim", type=int, default=2048,
                   help="auto: full SVD up to this per-sample dimension, matrix-free above "
                        "(default: %(default)s)")
    p.add_argument("--attack-samples", type=int, default=8,
                   help="first samples the invertibility attack starts from, 0 turns it off "
                        "(default: %(default)s)")
    p.add_argument("--attack-steps", "--attack-iterations", dest="attack_steps", type=int,
                   default=AttackSettings.iterations,
                   help="signed-gradient steps (iterations) of the attack (default: "
                        "%(default)s; the paper ran 200)")
    p.add_argument("--attack-step", type=float, default=AttackSettings.step,
                   help="attack step size alpha (default: %(default)s, the paper's)")
    p.add_argument("--bits", type=int, default=None,
                   help="data bits: the attack box is the dequantization cell of each start "
                        "point, half-width 0.5 / 2^bits (default: 8; digits: 17 levels)")
    p.add_argument("--radius", type=float, default=None,
                   help="attack box half-width instead of the dequantization cell (default: the "
                        "cell)")
    p.add_argument("--grid", type=int, default=320,
                   help="grid points per axis of 2D maps (default: %(default)s)")
    p.add_argument("--lim", type=float, default=8.0,
                   help="2D maps cover [-lim, lim]^2 (default: %(default)s)")
    p.add_argument("--reference", metavar="ORACLE", default=None,
                   help="add the oracle decomposition (section 2) at each precision against "
                        "arb:<bits> or mp:<bits>, e.g. arb:256; models of other libraries use "
                        "the traced oracle (default: off; about 35 s per precision at d = 64, "
                        "plus a few seconds of graph capture per foreign model)")
    p.add_argument("--reference-samples", type=int, default=4,
                   help="first samples of DATA the oracle decomposition runs on "
                        "(default: %(default)s)")
    add_engine_arguments(p)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of checkerboard/digits, latent samples and the attack's random "
                        "directions (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON (default: none)")
    p.add_argument("--plot", metavar="FILE",
                   help="PNG (or PDF): maps over a grid for 2D models, else error histograms "
                        "(default: none)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (default: a tqdm bar per stage on stderr)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default: %(default)s: the diagnostics run many "
                        "small operations, where threads cost more than they give, and on a busy "
                        "2-core machine two threads ran the README examples 5x slower; raise it "
                        "for large image models on an idle machine)")


def run(args: argparse.Namespace) -> int:
    """Run ``lipbound diagnose`` with ``--threads`` torch threads (restored afterwards)."""
    with torch_threads(args.threads):
        return _run(args)


def _check_options(args: argparse.Namespace) -> None:
    """Refuse option values the diagnostics cannot use, naming the option."""
    for name in args.precision:
        parse_precision(name, ("torch",), "--precision")
    if args.reference is not None:
        parse_precision(args.reference, ("mp", "arb"), "--reference")
    positive = {"--attack-step": args.attack_step, "--lim": args.lim, "--radius": args.radius,
                "--tol": args.tol}
    for option, value in positive.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise InputError(f"{option} must be a finite number > 0, got {value}")
    at_least = {"--attack-steps": (args.attack_steps, 0), "--grid": (args.grid, 2),
                "--spectrum-samples": (args.spectrum_samples, 0),
                "--attack-samples": (args.attack_samples, 0),
                "--reference-samples": (args.reference_samples, 1),
                "--bits": (args.bits, 1), "--max-full-dim": (args.max_full_dim, 1),
                "--n": (args.n, 1)}
    for option, (value, low) in at_least.items():
        if value is not None and value < low:
            raise InputError(f"{option} must be >= {low}, got {value}")
    check_engine_arguments(args)
    if per_sample(args) and args.reference is None:
        raise InputError("--out, --workers and --scheduler run the oracle decomposition one "
                         "sample at a time: add --reference (e.g. --reference arb:256)")
    if args.json:
        check_output_path(args.json, "--json")
    if args.plot:
        check_output_path(args.plot, "--plot", (".png", ".pdf"))


def _run(args: argparse.Namespace) -> int:
    _check_options(args)
    model = adapt(load_network(args.model))
    x = load_data(args.data, args.seed)
    if args.n is not None:
        x = x[:args.n]
    name = f"DATA {args.data!r}"
    check_batch(x, name)
    message = nonfinite_data_message(x, name, "--allow-nonfinite")
    if message and not args.allow_nonfinite:
        raise InputError(message)
    output_shape(model, x, name)
    progress = not args.no_progress
    levels = DATA_LEVELS.get(args.data) if args.bits is None else None
    attack = AttackSettings(args.attack_samples, args.attack_steps, args.attack_step,
                            8 if args.bits is None else args.bits, args.radius, levels=levels)
    oracle = (None if args.reference is None or per_sample(args)
              else OracleSettings(args.reference, args.reference_samples))
    decomposition, note = [], None
    if per_sample(args):  # first: a --out file of another run is refused before any work
        try:
            decomposition = decompose_samples(
                model, x[:args.reference_samples], OracleSample(tuple(args.precision),
                                                               args.reference),
                workers=args.workers, scheduler=args.scheduler, out=args.out,
                info={"command": "diagnose", "model": args.model, "data": args.data},
                progress=progress, connect_timeout=args.scheduler_timeout)
        except ORACLE_REFUSALS as err:
            note = f"no oracle decomposition: {err}"
        except KeyboardInterrupt:
            print(interrupted_message("diagnose", args.out), file=sys.stderr)
            return 130
    result = diagnose(model, x, tuple(args.precision), tuple(args.direction), args.tol,
                      args.spectrum_samples, args.spectrum_method, args.max_full_dim, attack,
                      args.seed, progress, oracle, allow_nonfinite=args.allow_nonfinite)
    if per_sample(args):
        result.decomposition, result.oracle_note = decomposition, note
    print(f"lipbound diagnose: {args.model} on {args.data}")
    print(format_diagnosis(result))
    if args.json:
        dump_json(diagnosis_to_json(result), args.json)
    if args.plot:  # checked by _check_options
        if tuple(x.shape[1:]) == (2,):
            maps = grid_maps(model, args.grid, args.lim, args.precision[0], progress=progress)
            plot_grid_maps(maps, args.plot, data=x)
        else:
            plot_error_histograms(result.reconstruction, args.plot)
    return 0
