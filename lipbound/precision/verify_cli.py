"""``lipbound verify MODEL INPUTS``: the rounding-versus-instability decomposition.

MODEL is a whole module saved with :func:`lipbound.io.save_model` or ``torch.save`` (load only
files you trust): a lipbound block or any model :func:`lipbound.adapters.adapt` accepts (FrEIA,
nflows, zuko, normflows, memcnn), whose oracle is then the traced one; or what ``lipbound
train`` wrote: its run folder, ``checkpoint.pt`` or ``model.pt`` (:func:`load_network`). INPUTS
a ``.pt`` tensor or an ``.npy``/``.npz`` array, batch first.

By default the whole batch is decomposed at once in this process. ``--out FILE.jsonl``,
``--workers N`` or ``--scheduler ADDRESS`` decompose one sample at a time instead (locally, on
N processes, or on a Dask cluster), write one JSON line per sample as it finishes, resume from
the file, and summarise all samples (:mod:`lipbound.precision.samples`).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

from lipbound.adapters import adapt
from lipbound.io import check_output_path, load_inputs, load_saved

from ..errors import InputError, InputTypeError
from ..jsonio import dump_json
from ..parallel import check_engine
from ..shape import check_batch, output_shape
from .decompose import check_inputs, decompose, format_decomposition
from .names import describe_precisions, parse_precision
from .samples import OracleSample, decompose_samples

__all__ = ["add_arguments", "add_engine_arguments", "check_engine_arguments", "load_network",
           "per_sample", "run"]

#: The kinds of names ``--precision`` and ``--reference`` take.
PRECISION_KINDS, REFERENCE_KINDS = ("torch",), ("mp", "arb")

#: The files of a ``lipbound train`` run folder that hold the network, the first found is read.
RUN_FILES = ("checkpoint.pt", "model.pt")


def _network_from_checkpoint(state: dict[str, Any], path: Path) -> torch.nn.Module:
    """The network of a ``lipbound train`` checkpoint: rebuilt from the stored config and input
    shape (on the CPU, in the run's dtype; checkpoints of older lipbound without the shape build
    the run's task, which reads its data), then its stored parameters and buffers loaded."""
    from ..training.tasks import TASKS, build_network
    from ..training.trainers import TrainConfig
    from .names import torch_dtype

    source = f"checkpoint {str(path)!r}"
    if not isinstance(state["config"], dict) or not isinstance(state["flow"], dict):
        raise InputError(f"{source}: 'config' and 'flow' must be dicts (a config and a state "
                         "dict), as lipbound train writes them")
    config = TrainConfig.from_dict(state["config"], source=source)
    dtype = torch_dtype(config.dtype)
    if state.get("input_shape") is not None:
        flow = build_network(config, tuple(state["input_shape"])).to(dtype=dtype)
    else:
        flow = TASKS[config.task](config, torch.device("cpu"), dtype).build_flow().to(dtype=dtype)
    try:
        flow.load_state_dict(state["flow"])
    except RuntimeError as err:
        raise InputError(f"{source}: its stored network does not fit the architecture its "
                         f"config builds ({' '.join(str(err).split())})") from err
    return flow.eval()


def load_network(path: str | Path) -> Any:
    """The model of the MODEL argument: a model file (:func:`lipbound.io.load_saved`), or what
    ``lipbound train`` wrote: its ``checkpoint.pt`` (the network rebuilt from the stored config
    and state), ``model.pt``, or the run folder (its ``checkpoint.pt``, the latest state, else
    its ``model.pt``).

    Raises:
        InputError, InputTypeError: a folder that holds neither, or a file that is neither a
            model nor a ``lipbound train`` checkpoint (the message names the file).
    """
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in RUN_FILES if (path / name).is_file()]
        if not found:
            raise InputError(f"model file {str(path)!r} is not a file, nor a run folder of "
                             f"lipbound train (holding {' or '.join(RUN_FILES)})")
        path = found[0]
    try:
        return load_saved(path)
    except InputTypeError as err:  # a dict or a tensor: a checkpoint is a dict
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and {"config", "flow"} <= set(state):
            return _network_from_checkpoint(state, path)
        raise InputTypeError(f"{err} (nor is it a checkpoint of lipbound train, which holds "
                             "'config' and 'flow')") from err


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out``, ``--workers``, ``--scheduler`` and ``--scheduler-timeout``: the per-sample
    oracle (:mod:`lipbound.precision.samples`)."""
    parser.add_argument("--out", metavar="FILE.jsonl",
                        help="decompose one sample at a time and append one JSON line per "
                             "sample to FILE.jsonl as each finishes; a rerun skips the samples "
                             "already there (default: no file)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="decompose one sample at a time on N local processes (default: "
                             "in this process)")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="decompose one sample at a time on the Dask cluster whose "
                             "scheduler is at ADDRESS, e.g. tcp://host:8786 (needs pip install "
                             "'lipbound[cluster]'; default: none)")
    parser.add_argument("--scheduler-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="seconds to wait for the Dask scheduler (default: %(default)s)")


def per_sample(args: argparse.Namespace) -> bool:
    """Whether the options ask for the per-sample oracle."""
    return args.out is not None or args.workers is not None or args.scheduler is not None


def check_engine_arguments(args: argparse.Namespace) -> None:
    """:class:`InputError` for engine options that cannot be used, naming the option."""
    check_engine(args.workers, args.scheduler)
    if not (math.isfinite(args.scheduler_timeout) and args.scheduler_timeout > 0):
        raise InputError(f"--scheduler-timeout must be a finite number > 0, got "
                         f"{args.scheduler_timeout}")
    if args.out is not None:
        check_output_path(args.out, "--out", (".jsonl",))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="saved model (lipbound.io.save_model, or torch.save of a "
                                      "FrEIA, nflows, zuko, normflows or memcnn model), or a "
                                      "lipbound train run folder, its checkpoint.pt or "
                                      "model.pt; required")
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
    add_engine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    parse_precision(args.precision, PRECISION_KINDS, "--precision")
    parse_precision(args.reference, REFERENCE_KINDS, "--reference")
    check_engine_arguments(args)
    if args.json:
        check_output_path(args.json, "--json")
    model = adapt(load_network(args.model))
    x = load_inputs(args.inputs)
    name = f"INPUTS {args.inputs!r}"
    check_batch(x, name)
    check_inputs(x, name)
    output_shape(model, x, name)
    if not per_sample(args):
        d = decompose(model, x, args.precision, args.reference,
                      parameter_rounding=args.parameter_rounding, trace=not args.no_trace,
                      progress=not args.no_progress)
    else:
        task = OracleSample((args.precision,), args.reference, args.parameter_rounding,
                            not args.no_trace)
        try:
            [d] = decompose_samples(model, x, task, workers=args.workers,
                                    scheduler=args.scheduler, out=args.out,
                                    info={"command": "verify", "model": args.model,
                                          "inputs": args.inputs},
                                    progress=not args.no_progress,
                                    connect_timeout=args.scheduler_timeout)
        except KeyboardInterrupt:
            print(interrupted_message("verify", args.out), file=sys.stderr)
            return 130
    print(format_decomposition(d))
    if args.json:
        dump_json(d.to_dict(), args.json)
    return 0


def interrupted_message(command: str, out: str | None) -> str:
    """What an interrupted per-sample run tells the user."""
    if out is None:
        return f"lipbound {command}: interrupted (no --out file: nothing was kept)"
    return (f"lipbound {command}: interrupted; the finished samples are in {out!r}: rerun the "
            "same command to compute the others")
