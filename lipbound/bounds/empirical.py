r"""The largest Jacobian spectral norm that can be found on a box: the measured end that every
bound is held against (``||J_F(x)||_2 <= Lip(F)`` at every ``x`` where ``F`` is differentiable).

Two searches, both in float64 with :func:`lipbound.autodiff.batch_jacobian`:

* sampling: ``||J(x)||_2`` (``torch.linalg.matrix_norm(ord=2)``) at uniform points of the box;
* gradient ascent on ``||J(x) v||_2``: from the best samples, alternate a power-iteration step for
  the unit vector ``v`` (``v <- J^T J v`` normalised) and a signed-gradient step on ``x``, projected
  onto the box.

With ``invert=True`` the matrix is ``J(x)^-1`` (norm ``1 / sigma_min``): the Jacobian of the inverse
at ``F(x)``, for blocks whose inverse is iterative and not differentiated through.
:func:`max_block_norms` searches both directions of one block, on the boxes its bounds hold on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..autodiff import batch_jacobian
from .interval import Box

__all__ = ["jacobian_norms", "max_block_norms", "max_jacobian_norm"]


def _matrices(fn: Callable[[Tensor], Tensor], x: Tensor, invert: bool) -> Tensor:
    """Jacobians, or their inverses (``inf`` entries where a Jacobian is singular in float)."""
    jac = batch_jacobian(fn, x)
    if not invert:
        return jac
    inv, info = torch.linalg.inv_ex(jac)
    singular = (info != 0).reshape(-1, 1, 1)
    return torch.where(singular, torch.full_like(inv, torch.inf), inv)


def jacobian_norms(fn: Callable[[Tensor], Tensor], x: Tensor, invert: bool = False) -> Tensor:
    """``||J_fn(x_b)||_2`` per sample (or ``||J_fn(x_b)^-1||_2`` with ``invert``); ``inf`` where
    the float Jacobian holds Inf or NaN (overflow in the map's own arithmetic)."""
    with torch.no_grad():
        mats = _matrices(fn, x, invert)
        finite = torch.isfinite(mats).flatten(1).all(dim=1)
        norms = torch.full((len(x),), torch.inf, dtype=torch.float64)
        if bool(finite.any()):
            norms[finite] = torch.linalg.matrix_norm(mats[finite], ord=2).to(torch.float64)
        return norms


def _uniform(box: Box, n: int, generator: torch.Generator) -> Tensor:
    u = torch.rand((n, *box.shape), generator=generator, dtype=torch.float64)
    return box.lo + u * (box.hi - box.lo)


def max_jacobian_norm(fn: Callable[[Tensor], Tensor], box: Box, n_samples: int = 64,
                      n_starts: int = 4, n_steps: int = 30, invert: bool = False,
                      seed: int = 0) -> float:
    """The largest ``||J||_2`` found on ``box`` by sampling and projected gradient ascent.

    Args:
        fn: a batched map acting sample by sample, differentiable in float64.
        box: where to search.
        n_samples: uniform samples.
        n_starts: best samples to start gradient ascent from.
        n_steps: ascent steps.
        invert: use ``J^-1`` instead of ``J``.
        seed: seed of the samples.
    """
    gen = torch.Generator().manual_seed(seed)
    x = _uniform(box, n_samples, gen)
    norms = jacobian_norms(fn, x, invert)
    best = float(norms.max())
    starts = x[torch.argsort(norms, descending=True)[:n_starts]].clone()
    step = 0.05 * (box.hi - box.lo)
    v = torch.randn((len(starts), starts[0].numel()), generator=gen, dtype=torch.float64)
    for _ in range(n_steps):
        starts.requires_grad_(True)
        mats = _matrices(fn, starts, invert)
        with torch.no_grad():
            v = torch.einsum("bij,bi->bj", mats, torch.einsum("bij,bj->bi", mats, v))
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
        gain = torch.einsum("bij,bj->bi", mats, v).norm(dim=1)
        best = max(best, float(gain.detach().max()))
        grad = (torch.autograd.grad(gain.sum(), starts, allow_unused=True)[0]
                if gain.requires_grad else None)
        if grad is None or not bool(torch.isfinite(grad).all()):
            break  # a constant Jacobian, or the map overflows: nothing to ascend
        with torch.no_grad():
            starts = torch.clamp(starts + step * torch.sign(grad), box.lo, box.hi)
            step = step * 0.9
    return max(best, float(jacobian_norms(fn, starts.detach(), invert).max()))


def max_block_norms(block: Callable[[Tensor], Tensor], box: Box, inverse_box: Box | None,
                    invert_jacobian: bool = False, **search: int) -> tuple[float, float]:
    """The largest forward and inverse ``||J||_2`` found for one block: the forward on ``box``;
    the inverse through ``block.inverse`` on ``inverse_box``, or with ``invert_jacobian`` as
    ``J(x)^-1`` on ``box`` (the inverse on the forward image, for iterative inverses).
    ``search``: the keyword arguments of :func:`max_jacobian_norm`."""
    forward = max_jacobian_norm(block, box, **search)
    if invert_jacobian:
        return forward, max_jacobian_norm(block, box, invert=True, **search)
    return forward, max_jacobian_norm(block.inverse, inverse_box, **search)
