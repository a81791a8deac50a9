r"""Input splitting (branch and bound) for low-dimensional inputs, within a time budget.

Every point of the box lies in one of the sub-boxes, and the forward image of the box is the union
of their images, so

.. math:: \sup_{x \in X} \|J_F(x)\| \le \max_i L_i, \qquad
          \sup_{y \in F(X)} \|J_{F^{-1}}(y)\| \le \max_i L^*_i

for the bounds ``L_i``, ``L*_i`` on the sub-boxes ``X_i`` (the inverse on ``F(X_i)``): the
whole-network Jacobian bounds of :mod:`.jacobian`, evaluated on many sub-boxes at once by
:mod:`.batched` where it takes the network, else one box at a time (where the Jacobian method
gives no number there, those of :func:`.compose.bound_model`). A bound on a box also holds on its
sub-boxes, so each sub-box keeps the smaller of its own and its parent's bound, and the whole
box's bound (the tightest method of :func:`.compose.bound_model`) caps the result.

Smaller boxes give tighter local bounds (the centred forms shrink with the radius), so the loop
refines where the maximum is: each round takes the sub-boxes with the largest bounds (up to
:data:`BATCH` / 2 of them, ranked by ``max(L_i / max L, L*_i / max L*)``, so both directions
are worked on), halves each along its widest coordinate relative to the input box, and bounds
the halves in one batch; it stops when the time budget is spent. The bound reached is reported:
any stopping point is sound.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from ..blocks.base import InvertibleBlock
from ..errors import InputError
from .batched import batch_jacobian_bounds, batch_reason
from .blocks import block_rule, shared_propagation
from .compose import BoxLike, NetworkBound, as_box, bound_model
from .interval import Box
from .jacobian import jacobian_bounds

__all__ = ["BATCH", "MAX_SPLIT_DIM", "SplitBound", "split_bounds"]

#: Largest input dimension that is split (2^d sub-boxes halve every width once).
MAX_SPLIT_DIM = 16
#: Sub-boxes bounded per round by the batched method (half as many are split).
BATCH = 512

Leaves = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class SplitBound:
    """The bounds reached by input splitting.

    Attributes:
        forward, inverse: the maxima over the sub-boxes, never above the whole box's bound
            (``None`` if neither is numeric).
        start: the bounds on the whole box before splitting.
        boxes: how many sub-boxes cover the box.
        seconds: the time spent.
        batched: whether the sub-boxes were bounded in batches (:mod:`.batched`).
        reason: why not, where not.
        rounds: how many rounds of splitting ran.
    """

    forward: float | None
    inverse: float | None
    start: NetworkBound
    boxes: int
    seconds: float
    batched: bool = False
    reason: str | None = None
    rounds: int = 0


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _cut(lo: Tensor, hi: Tensor, full: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For boxes ``(K, ...)``: flattened ends, the coordinate to cut (the widest relative to
    ``full``'s widths, ``(K, 1)``) and its midpoint."""
    k = len(lo)
    lo2, hi2 = lo.reshape(k, -1), hi.reshape(k, -1)
    rel = (hi2 - lo2) / full.reshape(1, -1).clamp_min(1e-300)
    i = rel.argmax(dim=1, keepdim=True)
    return lo2, hi2, i, (lo2.gather(1, i) + hi2.gather(1, i)) / 2


def _splittable(lo: Tensor, hi: Tensor, full: Tensor) -> Tensor:
    """Whether halving each box makes two smaller ones (not so for a point, or once the widest
    coordinate is one ulp wide)."""
    lo2, hi2, i, mid = _cut(lo, hi, full)
    return ((mid > lo2.gather(1, i)) & (mid < hi2.gather(1, i))).reshape(-1)


def _halves(lo: Tensor, hi: Tensor, full: Tensor) -> tuple[Tensor, Tensor]:
    """The boxes ``[lo[i], hi[i]]`` (shape ``(K, ...)``) cut in two along their widest coordinate
    relative to ``full``'s widths: ``(lo, hi)`` of the ``2K`` halves (first halves first)."""
    k = len(lo)
    lo2, hi2, i, mid = _cut(lo, hi, full)
    first_hi, second_lo = hi2.clone(), lo2.clone()
    first_hi.scatter_(1, i, mid)
    second_lo.scatter_(1, i, mid)
    return (torch.cat([lo2, second_lo]).reshape(2 * k, *lo.shape[1:]),
            torch.cat([first_hi, hi2]).reshape(2 * k, *lo.shape[1:]))


def _one_by_one(model: InvertibleBlock, shape: tuple[int, ...],
                blocks: Sequence[InvertibleBlock], shapes: Sequence[tuple[int, ...]]) -> Leaves:
    """Sub-box bounds one box at a time: the whole-network Jacobian alone where it gives both
    (the per-block rows cost time and are looser on small boxes), else :func:`bound_model`."""
    def leaves(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        out = torch.full((2, len(lo)), math.inf, dtype=torch.float64)
        for i in range(len(lo)):
            sub = Box(lo[i:i + 1], hi[i:i + 1])
            jac = jacobian_bounds(blocks, shapes, sub)
            if jac.forward is None or jac.inverse is None:
                net = bound_model(model, shape, sub)
                jac = net if net.forward is not None and net.inverse is not None else jac
            for j, v in enumerate((jac.forward, jac.inverse)):
                out[j, i] = math.inf if v is None else v
        return out[0], out[1]
    return leaves


def split_bounds(model: InvertibleBlock, shape: Sequence[int], box: BoxLike,
                 budget: float, progress: bool = False) -> SplitBound:
    """Bounds on ``box`` refined by splitting it for ``budget`` seconds (module docstring).

    Args:
        model: the model (:func:`.compose.bound_model`).
        shape: the per-sample input shape, at most :data:`MAX_SPLIT_DIM` entries.
        box: the input box, in any form :func:`.compose.as_box` takes.
        budget: seconds to spend splitting (``0``: the whole box only; any ``budget > 0``
            splits at least once, unless no sub-box can be halved: a point, or widths of one
            ulp, which also ends the splitting early).
        progress: show a progress bar (seconds of the budget, sub-boxes, bounds) on stderr.
    """
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget >= 0):
        raise InputError(f"split budget (--split-budget) must be a finite number of seconds "
                         f">= 0, got {budget!r}")
    shape = tuple(int(s) for s in shape)
    d = math.prod(shape)
    if d > MAX_SPLIT_DIM:
        raise InputError(f"input splitting is for low dimensions: the input has {d} "
                         f"coordinates, at most {MAX_SPLIT_DIM} are split")
    start = time.perf_counter()
    whole = as_box(box, shape, "box")
    blocks = model.flat_blocks()
    shapes = [shape]
    for block in blocks:
        shapes.append(tuple(block_rule(block).out_shape(block, shapes[-1])))
    with shared_propagation():
        first = bound_model(model, shape, whole)
    reason = batch_reason(blocks)
    if reason is None:
        leaves: Leaves = lambda lo, hi: batch_jacobian_bounds(blocks, shapes, lo, hi)  # noqa: E731
        per_round = BATCH // 2
    else:
        leaves, per_round = _one_by_one(model, shape, blocks, shapes), 1
    lo, hi = whole.lo, whole.hi
    full = (hi - lo).reshape(-1)
    bounds = torch.tensor([[math.inf if v is None else v] for v in (first.forward, first.inverse)],
                          dtype=torch.float64)
    rounds = 0
    # one box at a time: share the sub-network boxes and block constants over all of them; a
    # batch shares within itself (a scope over all batches would keep every batch's boxes)
    scope = nullcontext() if reason is None else shared_propagation()
    with scope, tqdm(total=round(budget, 1), desc="splitting", unit="s", disable=not progress,
                     leave=False) as bar:
        while budget > 0 and (rounds == 0 or time.perf_counter() - start < budget):
            top = bounds.max(dim=1, keepdim=True).values
            score = torch.where(torch.isinf(top), (bounds == top).double(),
                                bounds / top.clamp_min(1e-300)).max(dim=0).values
            score = torch.where(_splittable(lo, hi, full), score, -math.inf)
            pick = score.topk(min(per_round, len(score))).indices
            pick = pick[torch.isfinite(score[pick])]
            if not len(pick):
                break  # nothing left to halve
            keep = torch.ones(len(score), dtype=torch.bool)
            keep[pick] = False
            lo_new, hi_new = _halves(lo[pick], hi[pick], full)
            fwd, inv = leaves(lo_new, hi_new)
            parent = bounds[:, pick].repeat(1, 2)
            new = torch.minimum(torch.stack([fwd, inv]), parent)  # a box's bound holds inside
            lo, hi = torch.cat([lo[keep], lo_new]), torch.cat([hi[keep], hi_new])
            bounds = torch.cat([bounds[:, keep], new], dim=1)
            rounds += 1
            bar.n = round(min(time.perf_counter() - start, budget), 1)
            bar.set_postfix_str(f"{len(lo)} boxes, Lip(F) <= {float(bounds[0].max()):.4g}, "
                                f"Lip(F^-1) <= {float(bounds[1].max()):.4g}")
    forward, inverse = (_finite_or_none(float(b.max())) for b in bounds)
    return SplitBound(forward, inverse, first, len(lo), time.perf_counter() - start,
                      reason is None, reason, rounds)
