r"""The whole-network interval Jacobian of :mod:`.jacobian` on a batch of boxes in one pass.

Input splitting (:mod:`.split`) bounds thousands of small sub-boxes of a low-dimensional input;
one at a time, each costs hundreds of tiny torch operations. Here ``B`` boxes go through the same
rules together: every box (:class:`.interval.Box` has a leading batch dimension), interval matrix
(:class:`.intervalmatrix.IntervalMatrix`), product (:class:`.jacobian.ChainProduct`) and linear
relaxation (:func:`.relax.relaxed_box`) carries a leading dimension of ``B``, and the block rules
of :mod:`.jacobian` and :mod:`.blocks` run unchanged on them. The math is that of
:func:`.jacobian.jacobian_bounds`, per box:

* the boxes ``X_k subseteq F_{1..k}(c) + spread`` (centred form) intersected with the interval
  image of ``X_{k-1}`` and with the boxes of the zonotope pass (:mod:`.zonotope`, run on the
  whole batch, each box packing its own generators), and the same centred form and zonotope
  ranges inside the coupling sub-networks;
* the telescoped product ``P_L`` of the block Jacobians; forward bound
  ``min(||[P_L]||, ||Pi_L|| + eps_L)`` with certified spectral norms per box
  (:func:`.norms.spectral_norm_upper_each`: the squarings go on until every box's bound is within
  ``1e-4`` of its float SVD estimate, so no box is left looser for the sake of another);
* inverse bound: the smaller of the certified inverse of ``P_L``
  (:func:`.norms.certified_inverse_each`) and the product of the blocks' inverse Jacobians.

Two differences, neither looser by more than rounding: the scale functions ``g``, ``g'`` of
affine couplings are enclosed in float interval arithmetic on batches (``float_boxes`` of
:mod:`.scales`, a few ulps from the ``arb`` ends), and a box whose prefix bound passes
:data:`.jacobian.GIVE_UP` leaves the batch with the bound ``inf`` (one box alone gets no number
there and the composed bound). A batch in which a rule refuses a box (a scale interval reaching
0) is bounded box by box by :func:`.jacobian.jacobian_bounds`.

Supported (:func:`batch_reason`): additive and affine couplings whose sub-networks are
``nn.Sequential`` chains of ``nn.Linear`` and elementwise ReLU, LeakyReLU, Tanh, Sigmoid or
Identity (or constants), ActNorm, DiagonalScaling, invertible 1x1 convolutions (dense channel
mixing) and permutations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..blocks.base import InvertibleBlock
from ..blocks.coupling import AdditiveCoupling, AffineCoupling
from ..blocks.linear import ActNorm, DiagonalScaling, Invertible1x1Conv
from ..blocks.reshape import Permutation
from ..blocks.subnets import Constant
from ..errors import InputError
from .blocks import block_rule, shared_propagation
from .interval import Box
from .intervalmatrix import IntervalMatrix
from .jacobian import (
    GIVE_UP,
    Centred,
    ChainProduct,
    Unsupported,
    _rule,
    jacobian_bounds,
    using_ranges,
)
from .rounding import widen
from .zonotope import Ranges, zonotope_ranges

__all__ = ["BATCH_BLOCKS", "batch_jacobian_bounds", "batch_reason"]

Shape = tuple[int, ...]

#: Block types bounded in batches (exact types: a subclass may change the math).
BATCH_BLOCKS = (AdditiveCoupling, AffineCoupling, ActNorm, DiagonalScaling, Invertible1x1Conv,
                Permutation)
#: Sub-network layers bounded in batches.
_LAYERS = (nn.Linear, nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Identity)


def _subnet_reason(net: nn.Module) -> str | None:
    if type(net) is Constant:
        return None
    if type(net) is not nn.Sequential or len(net) % 2 == 0:
        return f"sub-network {type(net).__name__} is not a chain of linear layers and activations"
    for i, layer in enumerate(net):
        if type(layer) not in _LAYERS or (type(layer) is nn.Linear) != (i % 2 == 0):
            return f"sub-network layer {type(layer).__name__} at position {i}"
    return None


def batch_reason(blocks: Sequence[InvertibleBlock]) -> str | None:
    """Why ``blocks`` cannot be bounded in batches (``None``: they can; module docstring)."""
    for k, block in enumerate(blocks):
        if type(block) not in BATCH_BLOCKS:
            return f"block {k} ({type(block).__name__}) has no batched rule"
        for name in ("s", "t"):
            net = getattr(block, name, None) if isinstance(block, AffineCoupling) or \
                name == "t" else None
            reason = None if net is None else _subnet_reason(net)
            if reason is not None:
                return f"block {k}: {reason}"
    return None


def _select(box: Box, keep: Tensor) -> Box:
    return Box(box.lo[keep], box.hi[keep])


def _select_form(form: Centred, keep: Tensor) -> Centred:
    return Centred(_select(form.point, keep), form.jac.select(keep), form.radius[keep])


def _forward(blocks: Sequence[InvertibleBlock], shapes: Sequence[Shape], box: Box,
             ranges: Ranges) -> tuple[ChainProduct, list[Box], list[Centred], Tensor]:
    """The forward pass of :func:`.jacobian._chain` on a batch: the product, the boxes ``X_k``
    and centred forms after each block of the boxes still in the batch, and their indices (a box
    leaves when a block Jacobian or the prefix bound passes :data:`.jacobian.GIVE_UP`); the
    boxes and the sub-network ranges intersected with the zonotope pass's ``ranges``."""
    c, r = box.center_radius()
    point = Box.point(c)
    chain = ChainProduct(c[0].numel())
    boxes, forms = [box], []
    alive = torch.arange(len(c))
    for k, (block, shape) in enumerate(zip(blocks, shapes, strict=False)):
        image = block_rule(block).forward_box
        current = boxes[-1]
        nxt = image(block, current)
        with using_ranges(ranges.select(alive)):
            jac = _rule(block).forward(block, current, shape, Centred(point, chain.best, r))
        for step in range(2):
            keep = ((jac.cheap_norm_upper_each() if step == 0 else chain.beta) <= GIVE_UP
                    ).expand(len(alive))
            if not bool(keep.all()):
                alive, chain, jac, point, r, nxt = (
                    alive[keep], chain.select(keep), jac.select(keep), _select(point, keep),
                    r[keep], _select(nxt, keep))
                boxes = [_select(b, keep) for b in boxes]
                forms = [_select_form(f, keep) for f in forms]
                if not len(alive):
                    return chain, boxes, forms, alive
            if step == 0:
                chain.push(jac)
        point = image(block, point)
        forms.append(Centred(point, chain.best, r))
        spread = chain.spread(r).reshape(point.lo.shape)
        centred = Box(*widen(point.lo - spread, point.hi + spread, 0.0))
        nxt = centred.intersect(nxt)
        known = ranges.boxes[k + 1]
        boxes.append(nxt if known is None else nxt.intersect(Box(known.lo[alive],
                                                                  known.hi[alive])))
    return chain, boxes, forms, alive


def _jacobians(rule: Callable[[Tensor], IntervalMatrix], index: Tensor
               ) -> tuple[IntervalMatrix | None, Tensor]:
    """``rule`` (a block rule on the boxes ``index`` of a batch) on all of them, or where it
    refuses one (a scale interval reaching 0), on halves down to single boxes: the Jacobians of
    the boxes it takes, concatenated, and their indices (``None`` and none if it takes none)."""
    try:
        return rule(index), index
    except (Unsupported, ValueError):
        if len(index) == 1:
            return None, index[:0]
    half = len(index) // 2
    parts = [_jacobians(rule, part) for part in (index[:half], index[half:])]
    parts = [(jac, idx) for jac, idx in parts if jac is not None]
    if not parts:
        return None, index[:0]
    n = parts[0][0].mid.shape[-2:]
    mats = [(jac.mid.expand(len(idx), *n), jac.rad.expand(len(idx), *n)) for jac, idx in parts]
    return (IntervalMatrix(torch.cat([m for m, _ in mats]), torch.cat([r for _, r in mats])),
            torch.cat([idx for _, idx in parts]))


def _inverse_product(blocks: Sequence[InvertibleBlock], shapes: Sequence[Shape],
                     boxes: Sequence[Box], forms: Sequence[Centred], ranges: Ranges) -> Tensor:
    """``||[J_1^-1] ... [J_L^-1]||`` per box (:func:`.jacobian._inverse_product`; ``inf`` for a
    box whose factor a rule refuses or whose factor or prefix bound passes
    :data:`.jacobian.GIVE_UP`), the sub-networks on the zonotope ranges ``ranges`` of the
    boxes."""
    out = torch.full((len(boxes[0].lo),), math.inf, dtype=torch.float64)
    alive = torch.arange(len(out))
    chain = ChainProduct(math.prod(shapes[0]))
    for k in reversed(range(len(blocks))):
        def rule(i: Tensor, block: InvertibleBlock = blocks[k], y: Box = boxes[k + 1],
                 shape: Shape = shapes[k + 1], form: Centred = forms[k],
                 live: Tensor = alive) -> IntervalMatrix:
            if len(i) < len(y.lo):
                y, form = _select(y, i), _select_form(form, i)
            with using_ranges(ranges.select(live[i])):
                return _rule(block).inverse(block, y, shape, form)

        jac, taken = _jacobians(rule, torch.arange(len(alive)))
        if jac is None:
            return out
        if len(taken) < len(alive):
            alive, chain = alive[taken], chain.select(taken)
            boxes = [_select(b, taken) for b in boxes]
            forms = [_select_form(f, taken) for f in forms]
        for step in range(2):
            keep = ((jac.cheap_norm_upper_each() if step == 0 else chain.beta) <= GIVE_UP
                    ).expand(len(alive))
            if not bool(keep.all()):
                alive, chain, jac = alive[keep], chain.select(keep), jac.select(keep)
                boxes = [_select(b, keep) for b in boxes]
                forms = [_select_form(f, keep) for f in forms]
                if not len(alive):
                    return out
            if step == 0:
                chain.push(jac)
    out[alive] = chain.norm_upper_each().expand(len(alive))
    return out


def _bisect(fn: Callable[[Tensor], tuple[Tensor, ...]], index: Tensor,
            alone: Callable[[int], tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
    """``fn(index)``, or where a rule refuses a box of the batch (a scale interval reaching 0),
    ``fn`` on each half, down to ``alone(i)`` for a single box."""
    try:
        return fn(index)
    except (Unsupported, ValueError):
        if len(index) == 1:
            return alone(int(index[0]))
    half = len(index) // 2
    parts = [_bisect(fn, part, alone) for part in (index[:half], index[half:])]
    return tuple(torch.cat(pieces) for pieces in zip(*parts, strict=True))


def _bounds(blocks: Sequence[InvertibleBlock], shapes: Sequence[Shape], box: Box
            ) -> tuple[Tensor, Tensor]:
    """Forward and inverse bounds of every box of a batch (``inf`` where none)."""
    forward = torch.full((len(box.lo),), math.inf, dtype=torch.float64)
    inverse = forward.clone()
    ranges = zonotope_ranges(blocks, shapes, box)
    chain, boxes, forms, alive = _forward(blocks, shapes, box, ranges)
    if not len(alive):
        return forward, inverse
    forward[alive] = chain.norm_upper_each().expand(len(alive))
    inverse[alive] = torch.minimum(chain.inverse_norm_upper_each().expand(len(alive)),
                                   _inverse_product(blocks, shapes, boxes, forms,
                                                    ranges.select(alive)))
    return forward, inverse


def batch_jacobian_bounds(blocks: Sequence[InvertibleBlock], shapes: Sequence[Shape],
                          lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Upper bounds on ``||J_F||_2`` over each box ``[lo[i], hi[i]]`` and on ``||J_{F^-1}||_2``
    over its forward image (shapes ``(B,)``; ``inf`` where the method gives no number) for
    ``blocks`` with per-sample shapes ``shapes`` (one more than blocks) that
    :func:`batch_reason` takes; ``lo``, ``hi`` of shape ``(B, *shapes[0])``, ``B >= 1``
    (converted to float64)."""
    want = ", ".join(map(str, shapes[0]))
    for name, t in (("lo", lo), ("hi", hi)):
        if not isinstance(t, Tensor) or tuple(t.shape[1:]) != tuple(shapes[0]) or not len(t):
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise InputError(f"{name} must be a tensor of shape (B, {want}) with B >= 1 boxes, "
                             f"got {got}")
    lo, hi = (t.detach().to("cpu", torch.float64) for t in (lo, hi))

    def alone(i: int) -> tuple[Tensor, Tensor]:
        one = jacobian_bounds(blocks, shapes, Box(lo[i:i + 1], hi[i:i + 1]))
        return tuple(torch.tensor([math.inf if v is None else v], dtype=torch.float64)
                     for v in (one.forward, one.inverse))

    with torch.no_grad(), shared_propagation():
        return _bisect(lambda i: _bounds(blocks, shapes, Box(lo[i], hi[i])),
                       torch.arange(len(lo)), alone)
