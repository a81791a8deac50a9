"""Per-sample Jacobians of a batched map through :mod:`torch.func` (``jacrev`` under ``vmap``).

A leaf module (it imports nothing of lipbound), so blocks and diagnostics can both use it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .errors import InputError

__all__ = ["batch_jacobian", "flat_sample_map"]


def flat_sample_map(fn: Callable[[Tensor], Tensor], shape: tuple[int, ...]
                    ) -> Callable[[Tensor], Tensor]:
    """``fn`` on one flattened sample, ``R^d -> R^m``: the sample is reshaped to a batch of one of
    per-sample ``shape``, and the output flattened."""

    def single(v: Tensor) -> Tensor:
        return fn(v.reshape((1, *shape))).reshape(-1)

    return single


def batch_jacobian(fn: Callable[[Tensor], Tensor], x: Tensor, chunk_size: int | None = None
                   ) -> Tensor:
    """Return ``J[b] = d fn(x)[b] / d x[b]`` for every sample, shape ``(B, d_out, d_in)``.

    ``fn`` maps a batch to a batch sample by sample (no cross-sample coupling; modules in training
    mode with batch statistics, such as an uninitialised ActNorm, violate this). Inputs of any
    per-sample shape are flattened. ``chunk_size`` bounds how many Jacobian rows are computed at
    once (memory), as in :func:`torch.func.jacrev`.
    """
    if x.dim() < 2:
        raise InputError(f"x must be batched (B, ...), got shape {tuple(x.shape)}")
    single = flat_sample_map(fn, tuple(x.shape[1:]))
    jac = torch.func.vmap(torch.func.jacrev(single, chunk_size=chunk_size))
    return jac(x.reshape(x.shape[0], -1))
