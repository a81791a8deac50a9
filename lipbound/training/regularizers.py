r"""The bi-directional finite-differences regularizer (paper section 3.3.1, eq. 6, appendix G).

Eq. 6 approximates the local Lipschitz constant ``sup_{||v|| = 1} ||J_F(x) v||`` by a finite
difference along a random unit direction ``v`` (``v ~ N(0, I)``, normalised, which samples the unit
sphere uniformly; Muller, 1959). As in the authors' code, the penalty is the squared difference
over ``eps``, applied to both directions:

    forward term  R_F(x)    = mean_i ||F(x_i) - F(x_i + eps v_i)||^2 / eps,
    inverse term  R_{F^-1}(x) = mean_i ||x_i - F^-1(F(x_i) + eps w_i)||^2 / eps,

with independent directions ``v_i, w_i`` each normalised to unit norm **per sample** (the
authors normalised per coordinate across the batch: a bug, corrected here), ``eps = 0.1`` (to stay
clear of catastrophic cancellation, appendix G), and ``loss = coeff * (R_F + R_{F^-1})``; the
authors used ``coeff = 1e-4``. ``direction="forward"`` or ``"inverse"`` keeps one term.

The clean pass ``F(x)`` is part of the computation, so :func:`fd_regularizer` returns it (``z``,
and the log-determinant with ``with_log_det=True``) for the task loss; with ``batched=True`` the
clean and perturbed inputs go through ``F`` as one batch of ``2B``. Sub-networks with BatchNorm in
training mode then see that joint batch's statistics, and an ActNorm not yet initialised would
initialise on it: pass ``batched=False`` to keep them apart (or initialise with a plain forward).

Apply it every ``K`` iterations (the paper: ``K = 5`` or ``10`` stabilise like ``K = 1`` at a
fraction of the cost, Table 11)::

    if step % K == 0:
        fd = fd_regularizer(model, x, coeff=1e-4)
        loss = task_loss(fd.z, y) + fd.loss
    else:
        loss = task_loss(model(x), y)

Both terms reach the parameters under :func:`~lipbound.training.memory_saving` as well: the
forward term through the memory-saving forward, the inverse term through the memory-saving inverse
(which reconstructs through the forward maps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..blocks import InvertibleBlock
from ..blocks.base import sum_per_sample
from ..errors import InputError
from .ddp import call, unwrap

__all__ = ["DIRECTIONS", "FDResult", "fd_regularizer", "unit_directions"]

DIRECTIONS = ("both", "forward", "inverse")


@dataclass(frozen=True)
class FDResult:
    """The terms of :func:`fd_regularizer`.

    Attributes:
        loss: ``coeff * (forward_term + inverse_term)`` (the terms asked for), with its graph.
        forward_term: ``R_F`` (unscaled), or ``None``.
        inverse_term: ``R_{F^-1}`` (unscaled), or ``None``.
        z: the clean ``F(x)``, with its graph, for the task loss.
        log_det: ``log|det J_F(x)|`` per sample when ``with_log_det``, else ``None``.
        v, w: the unit directions used by the forward and inverse terms (or ``None``).
    """

    loss: Tensor
    forward_term: Tensor | None
    inverse_term: Tensor | None
    z: Tensor
    log_det: Tensor | None
    v: Tensor | None
    w: Tensor | None


def unit_directions(like: Tensor, generator: torch.Generator | None = None,
                    shard: tuple[int, int] | None = None) -> Tensor:
    """``v_i / ||v_i||`` with ``v ~ N(0, I)`` of the shape of ``like``: one uniformly random unit
    vector per sample. With ``shard = (r, n)`` the directions of a batch ``n`` times as large
    are drawn and rows ``r B .. (r + 1) B - 1`` kept: ``n`` data-parallel processes, each holding
    its part of the global batch, then use the directions one process would."""
    b = like.shape[0]
    shape = like.shape if shard is None else (b * shard[1], *like.shape[1:])
    v = torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
    if shard is not None:
        v = v[shard[0] * b:(shard[0] + 1) * b]
    norms = torch.linalg.vector_norm(v.flatten(1), dim=1)
    return v / norms.reshape((-1,) + (1,) * (v.dim() - 1))


def _squared_distance(a: Tensor, b: Tensor, eps: float) -> Tensor:
    return (sum_per_sample((a - b) ** 2) / eps).mean()


def _run(model: InvertibleBlock, x: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
    return call(model, x, with_log_det=True) if with_log_det else (call(model, x), None)


def fd_regularizer(model: InvertibleBlock, x: Tensor, eps: float = 0.1, coeff: float = 1.0,
                   direction: str = "both", *, with_log_det: bool = False, batched: bool = True,
                   generator: torch.Generator | None = None,
                   shard: tuple[int, int] | None = None) -> FDResult:
    """The bi-directional finite-differences regularizer of ``model`` at ``x`` (eq. 6).

    Args:
        model: the invertible network (a block or a :func:`~lipbound.training.memory_saving`
            wrapper, or either inside ``DistributedDataParallel``: every pass then runs through
            its call, so the gradients are averaged across processes).
        x: a batch ``(B, ...)``.
        eps: the finite-difference step (0.1 in the paper).
        coeff: the factor on the sum of the terms.
        direction: ``"both"``, ``"forward"`` or ``"inverse"``.
        with_log_det: also return ``log|det J_F(x)|`` of the clean pass (for :func:`nf_loss`).
        batched: pass clean and perturbed inputs through ``F`` as one batch.
        generator: random generator for the directions (on ``x``'s device).
        shard: ``(rank, world size)`` when ``x`` is rank's equal part of a global batch
            (DistributedDataParallel): the directions are those of the global batch
            (:func:`unit_directions`), so the run follows a single process's.
    """
    unwrap(model)
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise InputError("x must be a floating-point tensor of shape (batch, ...)")
    if not eps > 0:
        raise InputError(f"eps must be positive, got {eps!r}")
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    forward = direction in ("both", "forward")
    inverse = direction in ("both", "inverse")
    v = unit_directions(x, generator, shard) if forward else None
    forward_term = inverse_term = None
    if forward and batched:
        both, ld_both = _run(model, torch.cat([x, x + eps * v]), with_log_det)
        z, z_perturbed = both.split(x.shape[0])
        log_det = ld_both[: x.shape[0]] if ld_both is not None else None
    else:
        z, log_det = _run(model, x, with_log_det)
        z_perturbed = call(model, x + eps * v) if forward else None
    if forward:
        forward_term = _squared_distance(z, z_perturbed, eps)
    w = unit_directions(z, generator, shard) if inverse else None  # in the output space of F
    if inverse:
        inverse_term = _squared_distance(x, call(model, z + eps * w, inverse=True), eps)
    loss = coeff * sum(t for t in (forward_term, inverse_term) if t is not None)
    return FDResult(loss, forward_term, inverse_term, z, log_det, v, w)
