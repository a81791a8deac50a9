r"""``lipbound check``: per-block round-trip and log-determinant errors of a model.

For each leaf block ``F_i`` with input ``x_i`` (the float64 forward trace of the model on ``x``,
:meth:`~lipbound.blocks.InvertibleBlock.trace_forward`):

* round trip at precision ``p``: ``max_b ||x_i - F_i^-1(F_i(x_i))||_2 / ||x_i||_2``, the block run
  with its parameters and input ``x_i`` cast to ``p`` (so the rounding of the input itself is not
  counted), the error measured in float64;
* log-det error: ``max_b |log|det J_{F_i}(x_i)| - slogdet(J)|`` in float64, ``J`` the autograd
  Jacobian (``torch.func``).

Then the same for the whole model. Non-finite errors are reported as ``inf``/``nan``, not hidden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .autodiff import batch_jacobian
from .blocks import InvertibleBlock, glow_like, randomize_parameters
from .errors import InputError
from .io import check_output_path, load_model
from .jsonio import dump_json, jsonable
from .precision import cast_model, torch_dtype
from .shape import model_shape

__all__ = ["CheckRow", "add_arguments", "check_model", "format_rows", "rows_to_json", "run"]


@dataclass
class CheckRow:
    """One row of the check table: a block (or ``"model"``) and its errors."""

    index: int | str
    kind: str
    dim: int
    round_trip: dict[str, float]
    log_det_error: float | None
    #: precisions at which an iterative inverse (i-ResNet fixed point) did not converge
    not_converged: list[str] = field(default_factory=list)


def _max_rel_error(x: Tensor, x_rec: Tensor) -> float:
    x, x_rec = x.to(torch.float64), x_rec.to(torch.float64)
    err = (x - x_rec).reshape(x.shape[0], -1).norm(dim=1)
    ref = x.reshape(x.shape[0], -1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
    rel = err / ref
    if bool(torch.isnan(rel).any()):
        return math.nan
    return float(rel.max())


def _converged(block: InvertibleBlock) -> bool:
    """Whether every iterative inverse in ``block`` converged on its last call."""
    return all(b.last_convergence.converged for b in block.flat_blocks()
               if b.last_convergence is not None)


def _round_trip(block: InvertibleBlock, x: Tensor, precision: str) -> tuple[float, bool]:
    """The relative round-trip error at ``precision`` and whether iterative inverses converged."""
    dtype = torch_dtype(precision)
    b = block if dtype == x.dtype else cast_model(block, dtype)
    xp = x.to(dtype)
    with torch.no_grad():
        err = _max_rel_error(xp, b.inverse(b(xp)))
    return err, _converged(b)


def _log_det_error(block: InvertibleBlock, x: Tensor, max_dim: int) -> float | None:
    d = x[0].numel()
    if d > max_dim:
        return None
    jac = batch_jacobian(block, x).detach()
    with torch.no_grad():
        ld = block.log_abs_det(x)
        return float((ld - torch.linalg.slogdet(jac)[1]).abs().max())


def check_model(model: InvertibleBlock, x: Tensor, precisions: tuple[str, ...] = ("float32",
                "float64"), max_jacobian_dim: int = 4096, include_model: bool = True,
                progress: bool = False) -> list[CheckRow]:
    """Check every leaf block of ``model`` on the float64 trace of ``x``, then the whole model.

    Args:
        model: an invertible block or :class:`InvertibleSequential`; converted to float64 on a copy.
        x: a batch of inputs.
        precisions: float precision names for the round trips.
        max_jacobian_dim: skip the log-det check (``None``) for per-sample dimensions above this.
        include_model: add a last row for the whole model.
        progress: show a tqdm progress bar.
    """
    for p in precisions:
        torch_dtype(p)
    model = cast_model(model, torch.float64)
    x = x.to(torch.float64)
    blocks = model.flat_blocks()
    with torch.no_grad():
        trace = model.trace_forward(x)  # block i's input is trace[i]
    items: list[tuple[int | str, InvertibleBlock, Tensor]] = list(zip(range(len(blocks)), blocks,
                                                                      trace))
    if include_model and len(blocks) > 1:
        items.append(("model", model, x))
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="check", unit="block")
    rows = []
    for idx, block, xi in items:
        trips = {p: _round_trip(block, xi, p) for p in precisions}
        rows.append(CheckRow(
            index=idx,
            kind=type(block).__name__,
            dim=xi[0].numel(),
            round_trip={p: err for p, (err, _) in trips.items()},
            log_det_error=_log_det_error(block, xi, max_jacobian_dim),
            not_converged=[p for p, (_, ok) in trips.items() if not ok],
        ))
    return rows


def format_rows(rows: list[CheckRow]) -> str:
    """A plain-text table of :func:`check_model` rows."""
    precisions = list(rows[0].round_trip) if rows else []
    head = ["block", "kind", "dim"] + [f"round trip {p}" for p in precisions] + ["log-det error"]
    body = []
    for r in rows:
        ld = "skipped" if r.log_det_error is None else f"{r.log_det_error:.3e}"
        trips = [f"{r.round_trip[p]:.3e}" + ("*" if p in r.not_converged else "")
                 for p in precisions]
        body.append([str(r.index), r.kind, str(r.dim)] + trips + [ld])
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [head] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if any(r.not_converged for r in rows):
        lines.append("* an iterative inverse did not converge (tolerance or iteration cap)")
    return "\n".join(lines)


def rows_to_json(rows: list[CheckRow]) -> list[dict]:
    """JSON-ready rows; non-finite floats become the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    return [jsonable(r) for r in rows]


#: The per-sample input shape of the model that ``lipbound check`` builds without ``--model``.
DEFAULT_SHAPE = (3, 8, 8)


def add_arguments(p) -> None:
    """Arguments of ``lipbound check``; every help states its default."""
    p.description = ("Build a Glow-like model with random, non-trivial parameters (or load MODEL) "
                     "and print, per block, the round-trip error at each precision and the log-det "
                     "error against the autograd Jacobian (float64).")
    p.add_argument("--model", metavar="FILE",
                   help="check this model, saved with lipbound.io.save_model (torch.save of the "
                        "whole module; load only files you trust) instead of building one "
                        "(default: build a Glow-like model)")
    p.add_argument("--shape", type=int, nargs="+", default=None, metavar="N",
                   help="per-sample input shape, e.g. 2 or 3 32 32 (default: "
                        f"{' '.join(map(str, DEFAULT_SHAPE))} for the built model; with --model, "
                        "read from the model where it determines it (vector models, checkerboard "
                        "masks), else required)")
    p.add_argument("--coupling", choices=["additive", "affine"], default="affine",
                   help="coupling of the built model (default: affine)")
    p.add_argument("--levels", type=int, default=2, metavar="L",
                   help="squeeze levels of the built model (default: 2)")
    p.add_argument("--steps", type=int, default=2, metavar="K",
                   help="steps (ActNorm, 1x1 conv, coupling) per level of the built model "
                        "(default: 2)")
    p.add_argument("--hidden", type=int, default=32, metavar="N",
                   help="channels of the built model's coupling sub-networks (default: 32)")
    p.add_argument("--batch", type=int, default=4, metavar="B",
                   help="number of random N(0, I) inputs (default: 4)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of the inputs and of the built model's parameters (default: 0)")
    p.add_argument("--precision", nargs="+", default=["float32", "float64"], metavar="P",
                   help="float precisions of the round trips (default: float32 float64)")
    p.add_argument("--max-jacobian-dim", type=int, default=4096, metavar="D",
                   help="skip the log-det check above this per-sample dimension, an integer >= 0 "
                        "(0 skips it always) (default: 4096)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON (default: no JSON)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: a tqdm bar over the blocks on stderr)")


def _check_options(args) -> None:
    """Refuse option values ``lipbound check`` cannot use before any work, naming the option."""
    at_least = {"--batch": args.batch, "--levels": args.levels, "--steps": args.steps,
                "--hidden": args.hidden}
    for option, value in at_least.items():
        if value < 1:
            raise InputError(f"{option} must be >= 1, got {value}")
    if args.max_jacobian_dim < 0:
        raise InputError(f"--max-jacobian-dim must be >= 0, got {args.max_jacobian_dim}")
    for name in args.precision:
        torch_dtype(name, "--precision")
    if args.shape is not None and any(n < 1 for n in args.shape):
        raise InputError(f"--shape must be positive integers, got {' '.join(map(str, args.shape))}")
    if args.json:
        check_output_path(args.json, "--json")
    if args.model:
        return
    shape = tuple(args.shape or DEFAULT_SHAPE)
    if len(shape) != 3:
        raise InputError(f"--shape must be C H W for the built Glow-like model (or give --model), "
                         f"got {' '.join(map(str, shape))}")
    if shape[1] % 2**args.levels or shape[2] % 2**args.levels:
        raise InputError(f"--shape {' '.join(map(str, shape))}: H and W must be divisible by "
                         f"2**--levels = {2**args.levels}")


def run(args) -> int:
    """Run ``lipbound check``."""
    _check_options(args)
    torch.manual_seed(args.seed)
    if args.model:
        model = load_model(args.model)
        shape = model_shape(model, args.shape)
        desc = args.model
    else:
        shape = tuple(args.shape or DEFAULT_SHAPE)
        model = glow_like(shape, levels=args.levels, steps=args.steps,
                          hidden=args.hidden, coupling=args.coupling, seed=args.seed)
        randomize_parameters(model, std=0.05, generator=torch.Generator().manual_seed(args.seed))
        desc = (f"Glow-like {args.coupling}, {args.levels} levels x {args.steps} steps, "
                f"hidden {args.hidden}, input {shape}")
    x = torch.randn((args.batch, *shape), dtype=torch.float64)
    rows = check_model(model, x, tuple(args.precision), args.max_jacobian_dim,
                       progress=not args.no_progress)
    print(f"lipbound check: {desc}; batch {args.batch}, seed {args.seed}")
    print("round trip = max over the batch of ||x - F^-1(F(x))|| / ||x||; log-det error = max "
          "|log|det J| - slogdet(autograd J)| in float64")
    print(format_rows(rows))
    if args.json:
        dump_json(rows_to_json(rows), args.json)
    return 0
