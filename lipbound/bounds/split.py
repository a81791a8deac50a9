r"""Input splitting (branch and bound) for low-dimensional inputs, within a time budget.

Every point of the box lies in one of the sub-boxes, and the forward image of the box is the union
of their images, so

.. math:: \sup_{x \in X} \|J_F(x)\| \le \max_i L_i, \qquad
          \sup_{y \in F(X)} \|J_{F^{-1}}(y)\| \le \max_i L^*_i

for the bounds ``L_i``, ``L*_i`` on the sub-boxes ``X_i`` (the inverse on ``F(X_i)``): the
whole-network Jacobian bounds of :mod:`.jacobian` where they exist, else those of
:func:`.compose.bound_model`; the whole box's own bound holds as well, so the smaller is
reported. Smaller boxes give tighter local bounds, so the sub-box holding the current
maximum is halved along its widest coordinate (relative to the input box), alternating between the
forward and the inverse maximum, until the time budget is spent. The bound reached is reported:
any stopping point is sound.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..blocks.base import InvertibleBlock
from ..errors import InputError
from .blocks import block_rule, shared_propagation
from .compose import BoxLike, NetworkBound, as_box, bound_model
from .interval import Box
from .jacobian import jacobian_bounds

__all__ = ["MAX_SPLIT_DIM", "SplitBound", "split_bounds"]

#: Largest input dimension that is split (2^d sub-boxes halve every width once).
MAX_SPLIT_DIM = 16


@dataclass(frozen=True)
class SplitBound:
    """The bounds reached by input splitting.

    Attributes:
        forward, inverse: the maxima over the sub-boxes (``None`` if one is not numeric).
        start: the bounds on the whole box before splitting.
        boxes: how many sub-boxes cover the box.
        seconds: the time spent.
    """

    forward: float | None
    inverse: float | None
    start: NetworkBound
    boxes: int
    seconds: float


def _max(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else max(values)


def _halves(box: Box, scale: Box) -> tuple[Box, Box]:
    """``box`` cut in two along its widest coordinate relative to ``scale``'s widths."""
    width = (box.hi - box.lo).reshape(-1)
    full = (scale.hi - scale.lo).reshape(-1)
    rel = width / full.clamp_min(1e-300)
    i = int(rel.argmax())
    mid = float((box.lo.reshape(-1)[i] + box.hi.reshape(-1)[i]) / 2)
    lo_hi, hi_lo = box.hi.clone(), box.lo.clone()
    lo_hi.view(-1)[i] = mid
    hi_lo.view(-1)[i] = mid
    return Box(box.lo, lo_hi), Box(hi_lo, box.hi)


def split_bounds(model: InvertibleBlock, shape: Sequence[int], box: BoxLike,
                 budget: float) -> SplitBound:
    """Bounds on ``box`` refined by splitting it for ``budget`` seconds (module docstring).

    Args:
        model: the model (:func:`.compose.bound_model`).
        shape: the per-sample input shape, at most :data:`MAX_SPLIT_DIM` entries.
        box: the input box, in any form :func:`.compose.as_box` takes.
        budget: seconds to spend splitting (``0``: the whole box only; any ``budget > 0``
            splits at least once).
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

    def leaf(sub: Box) -> tuple[float | None, float | None]:
        """The sub-box's bounds: the whole-network Jacobian alone where it gives both (the
        per-block rows cost time and are looser on small boxes), else :func:`bound_model`."""
        jac = jacobian_bounds(blocks, shapes, sub)
        if jac.forward is not None and jac.inverse is not None:
            return jac.forward, jac.inverse
        net = bound_model(model, shape, sub)
        return net.forward, net.inverse

    with shared_propagation():
        first = bound_model(model, shape, whole)
        leaves: list[tuple[Box, tuple[float | None, float | None]]] = [
            (whole, (first.forward, first.inverse))]
        turn = 0
        while budget > 0 and (turn == 0 or time.perf_counter() - start < budget):
            which = turn % 2
            turn += 1
            values = [v[which] for _, v in leaves]
            if any(v is None for v in values):
                break
            k = max(range(len(leaves)), key=lambda i: values[i])
            sub, _ = leaves.pop(k)
            for half in _halves(sub, whole):
                leaves.append((half, leaf(half)))
    forward = _max([v[0] for _, v in leaves])
    inverse = _max([v[1] for _, v in leaves])
    # the whole box's bound holds too: never report more than it
    if forward is not None and first.forward is not None:
        forward = min(forward, first.forward)
    if inverse is not None and first.inverse is not None:
        inverse = min(inverse, first.inverse)
    return SplitBound(forward, inverse, first, len(leaves), time.perf_counter() - start)
