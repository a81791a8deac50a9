r"""Reconstruction statistics over a dataset, and where each sample's reconstruction breaks.

For a model ``F = F_L o ... o F_1`` run at a float precision ``p`` (parameters and input rounded to
``p``, so the rounding of the input itself is not counted), the round trip ``x -> z -> x`` is

.. math:: h_0 = x,\quad h_i = F_i(h_{i-1}),\qquad r_L = h_L,\quad r_{i-1} = F_i^{-1}(r_i),

with per-sample error ``||x - r_0||_2`` (the quantity of the paper's OOD tables, section 4.1 and
appendix D). The direction ``z -> x -> z`` is the same on ``F^-1`` (:class:`~.views.Inverted`).

**Accounting.** A sample's error is NaN when its reconstruction holds a NaN, else Inf when it
holds an Inf (or its norm overflows). Counts and percentages of NaN and of Inf are kept apart, and
mean, median and max are taken over the finite errors only (the authors' code counted only Inf,
so NaN leaked into their mean).

**Where it breaks.** The round trip runs the steps ``F_1, ..., F_L`` then ``F_L^-1, ..., F_1^-1``
(the traces :meth:`~lipbound.blocks.InvertibleBlock.trace_forward` and
:meth:`~lipbound.blocks.InvertibleBlock.trace_inverse`); a sample *fails* at the first of these
steps whose output is non-finite, or, on the way back, whose reconstruction ``r_{i-1}`` of the
block input ``h_{i-1}`` is off by more than ``tol (1 + ||h_{i-1}||_2)``. That step names the block
(forward order index, 0-based) and the stage (``"forward"`` or ``"inverse"``), written
``"7:inverse"``. A sample whose input already holds NaN or Inf fails at ``"input"``, before any
block. Over a dataset, :attr:`ReconstructionStats.first_failure` is the earliest step in this
execution order at which any sample fails (what "the first failing block" means to a reader of
the report), and :attr:`ReconstructionStats.lowest_failing_block` the smallest block index at which
any sample fails, whichever stage (in ``x -> z -> x`` an inverse failure at block 6 comes after
one at block 7).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..blocks import InvertibleBlock, require_block
from ..errors import InputError
from ..precision import torch_dtype
from .views import (
    Inverted,
    at_precision,
    default_tol,
    mark_non_finite,
    per_sample_norm,
)

__all__ = [
    "DIRECTIONS",
    "Failure",
    "ReconstructionStats",
    "error_summary",
    "execution_step",
    "reconstruction_stats",
    "round_trip_trace",
]

#: Round-trip directions: data -> latent -> data, and latent -> data -> latent.
DIRECTIONS = ("x->z->x", "z->x->z")


@dataclass(frozen=True)
class Failure:
    """Where a sample's round trip first failed: a leaf block (0-based, forward order), its class
    name and the stage (``"forward"`` or ``"inverse"``); or ``stage == "input"`` (``block`` and
    ``kind`` ``None``) for a sample whose input holds NaN or Inf."""

    block: int | None
    kind: str | None
    stage: str

    @property
    def key(self) -> str:
        """``"<block>:<stage>"``, e.g. ``"7:inverse"``, or ``"input"``."""
        return self.stage if self.block is None else f"{self.block}:{self.stage}"


def execution_step(f: Failure, n_blocks: int, direction: str = "x->z->x") -> int:
    """Position of the step ``f`` in the order the round trip runs it: ``-1`` for the input, then
    ``F_1 .. F_L, F_L^-1 .. F_1^-1`` for ``"x->z->x"``, ``F_L^-1 .. F_1^-1, F_1 .. F_L`` for
    ``"z->x->z"`` (blocks 0-based in forward order, as in :class:`Failure`)."""
    if f.block is None:
        return -1
    forward = f.stage == "forward"
    if direction == "z->x->z":
        return n_blocks + f.block if forward else n_blocks - 1 - f.block
    return f.block if forward else 2 * n_blocks - 1 - f.block


def error_summary(errors: Tensor) -> dict[str, float | int | None]:
    """Counts of finite, Inf and NaN errors (and percentages), and mean, median and max of the
    finite ones (``None`` when there are none)."""
    errors = errors.to(torch.float64)
    n = errors.numel()
    nan = torch.isnan(errors)
    inf = torch.isinf(errors)
    finite = errors[~(nan | inf)]
    some = finite.numel() > 0
    return {
        "n": n,
        "n_finite": int(finite.numel()),
        "n_inf": int(inf.sum()),
        "n_nan": int(nan.sum()),
        "pct_inf": 100.0 * int(inf.sum()) / n if n else 0.0,
        "pct_nan": 100.0 * int(nan.sum()) / n if n else 0.0,
        "mean": float(finite.mean()) if some else None,
        "median": float(finite.median()) if some else None,
        "max": float(finite.max()) if some else None,
    }


def _errors(x: Tensor, x_rec: Tensor) -> Tensor:
    """Per-sample ``||x - x_rec||_2`` in float64, NaN or Inf as :func:`~.views.mark_non_finite`
    says (an input holding NaN or Inf counts as that, else the reconstruction's NaN or Inf)."""
    return mark_non_finite(per_sample_norm(x.to(torch.float64) - x_rec.to(torch.float64)), x_rec,
                           x)


def _non_finite(v: Tensor) -> Tensor:
    return ~torch.isfinite(v.reshape(v.shape[0], -1)).all(dim=1)


@torch.no_grad()
def round_trip_trace(model: InvertibleBlock, x: Tensor, tol: float
                     ) -> tuple[Tensor, list[Failure | None]]:
    """The round trip ``x -> F(x) -> F^-1(F(x))`` block by block, in the dtype of ``model``/``x``.

    Runs ``model.trace_forward(x)`` and ``model.trace_inverse`` of its end, and returns the
    reconstruction and, per sample, the first :class:`Failure` (``None`` if none); see the module
    docstring. Block indices refer to ``model.flat_blocks()``.
    """
    blocks = require_block(model).flat_blocks()
    n = len(blocks)
    h = model.trace_forward(x)  # h_0 .. h_L
    r = model.trace_inverse(h[-1])  # r_L .. r_0: r[n - i] reconstructs h_i
    none = 2 * n  # beyond the last step
    first = torch.full((x.shape[0],), none, dtype=torch.long, device=x.device)

    def mark(bad: Tensor, step: int) -> None:
        first.copy_(torch.where(bad & (first == none), step, first))

    mark(_non_finite(x), -1)
    for i in range(n):
        mark(_non_finite(h[i + 1]), i)
    for i in reversed(range(n)):
        rec = r[n - i]
        err = per_sample_norm(rec - h[i])
        mark(_non_finite(rec) | ~(err <= tol * (1 + per_sample_norm(h[i]))), 2 * n - 1 - i)
    failed: list[Failure | None] = [None] * x.shape[0]
    for b in torch.nonzero(first != none).flatten().tolist():
        step = int(first[b])
        if step < 0:
            failed[b] = Failure(None, None, "input")
        else:
            i, stage = (step, "forward") if step < n else (2 * n - 1 - step, "inverse")
            failed[b] = Failure(i, type(blocks[i]).__name__, stage)
    return r[-1], failed


@dataclass
class ReconstructionStats:
    """Reconstruction errors of one direction at one precision (see the module docstring).

    Attributes:
        direction: ``"x->z->x"`` or ``"z->x->z"``.
        precision: the float precision of the run.
        tol: the tolerance of the failure test.
        errors: per-sample ``||x - F^-1(F(x))||_2`` (float64, with NaN and Inf), shape ``(n,)``.
        relative_errors: ``errors / ||x||_2``.
        failures: per sample, the first :class:`Failure` or ``None``.
        n_blocks: number of leaf blocks.
        block_kinds: class name of every leaf block, forward order.
    """

    direction: str
    precision: str
    tol: float
    errors: Tensor
    relative_errors: Tensor
    failures: list[Failure | None]
    n_blocks: int
    block_kinds: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float | int | None]:
        """:func:`error_summary` of the absolute errors."""
        return error_summary(self.errors)

    def _step(self, f: Failure) -> int:
        return execution_step(f, self.n_blocks, self.direction)

    def failure_counts(self) -> dict[str, int]:
        """How many samples first failed at each step (``"7:inverse"``, ``"input"``), in the
        order the round trip runs the steps (:func:`execution_step`)."""
        counts: dict[str, int] = {}
        for f in sorted((f for f in self.failures if f is not None), key=self._step):
            counts[f.key] = counts.get(f.key, 0) + 1
        return counts

    @property
    def first_failure(self) -> str | None:
        """The earliest step in execution order at which any sample first failed
        (``"7:inverse"``, ``"input"``; ``None`` if none failed)."""
        return next(iter(self.failure_counts()), None)

    @property
    def lowest_failing_block(self) -> int | None:
        """The smallest block index at which any sample first failed, whichever the stage
        (``None`` if none failed at a block). Not the first failure in execution order: see
        :attr:`first_failure`."""
        blocks = [f.block for f in self.failures if f is not None and f.block is not None]
        return min(blocks) if blocks else None


def reconstruction_stats(model: InvertibleBlock, x: Tensor, precision: str = "float32",
                         direction: str = "x->z->x", tol: float | None = None,
                         batch_size: int = 1024, progress: bool = False,
                         desc: str | None = None) -> ReconstructionStats:
    """Round-trip errors of ``model`` on the dataset ``x`` at ``precision``.

    Args:
        model: an invertible model (a copy rounded to ``precision`` is run).
        x: the dataset, batch first; for ``"z->x->z"`` these are latent points.
        precision: a float precision name (:mod:`lipbound.precision`).
        direction: one of :data:`DIRECTIONS`.
        tol: relative tolerance of the failure test; ``None`` means ``sqrt(eps)`` of ``precision``.
        batch_size: samples per batch.
        progress: show a tqdm bar over batches.
        desc: the bar's label (default ``"reconstruction <direction> <precision>"``).
    """
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0:
        raise InputError(
            f"x must be a non-empty batch (B, ...) tensor, got {getattr(x, 'shape', type(x))}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if tol is not None and not tol > 0:
        raise InputError(f"tol must be > 0, got {tol}")
    tol = default_tol(precision) if tol is None else float(tol)
    run = at_precision(require_block(model), precision)
    if direction == "z->x->z":
        run = Inverted(run)
    kinds = [type(b).__name__ for b in model.flat_blocks()]
    xp = x.detach().to(torch_dtype(precision))
    starts = range(0, x.shape[0], batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc or f"reconstruction {direction} {precision}",
                      unit="batch")
    errors, failures = [], []
    for s in starts:
        xb = xp[s:s + batch_size]
        rec, failed = round_trip_trace(run, xb, tol)
        errors.append(_errors(xb, rec))
        failures += (failed if direction == "x->z->x"
                     else [_in_model_terms(f, kinds) for f in failed])
    err = torch.cat(errors)
    rel = err / per_sample_norm(xp).clamp_min(torch.finfo(torch.float64).tiny)
    return ReconstructionStats(direction, precision, tol, err, rel, failures, len(kinds), kinds)


def _in_model_terms(f: Failure | None, kinds: list[str]) -> Failure | None:
    """A failure of ``Inverted(F)``'s leaf ``j`` is one of ``F``'s leaf ``L - 1 - j`` with the
    stages swapped (``Inverted(F_i)``'s forward is ``F_i``'s inverse)."""
    if f is None or f.block is None:
        return f
    i = len(kinds) - 1 - f.block
    return Failure(i, kinds[i], "inverse" if f.stage == "forward" else "forward")
