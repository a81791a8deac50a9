"""Numerical helpers shared by the blocks: linear algebra in half precision, batched log-abs-det,
and the Hutchinson probes of stochastic trace estimates (i-ResNet series, CNF trace)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["PROBES", "check_probe", "hutchinson_probes", "linalg_dtype", "probe_products",
           "slogabsdet"]

#: Kinds of Hutchinson probe: ``+-1`` entries, or standard normal ones.
PROBES = ("rademacher", "gaussian")


def linalg_dtype(t: Tensor) -> Tensor:
    """``t`` in float32 when it is float16 or bfloat16 (torch's ``linalg`` has no half-precision
    kernels), else ``t`` itself; round the result back to the caller's dtype."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def slogabsdet(matrices: Tensor) -> Tensor:
    """``log|det|`` of a batch of matrices; float16 and bfloat16 are computed in float32 (torch
    has no low-precision kernel) and returned in the input's dtype."""
    return torch.linalg.slogdet(linalg_dtype(matrices)).logabsdet.to(matrices.dtype)


def check_probe(kind: str) -> None:
    """Raise ``ValueError`` unless ``kind`` is one of :data:`PROBES`."""
    if kind not in PROBES:
        raise InputError(f"probe must be 'rademacher' or 'gaussian', got {kind!r}")


def hutchinson_probes(n_probes: int, like: Tensor, kind: str = "rademacher") -> Tensor:
    """``n_probes`` probe batches shaped like ``like``, shape ``(n_probes, *like.shape)``, with
    ``E[eps eps^T] = I``: Rademacher (``+-1``) or Gaussian. Drawn from torch's global generator."""
    check_probe(kind)
    shape = (n_probes, *like.shape)
    if kind == "rademacher":
        return torch.randint(0, 2, shape, device=like.device).to(like.dtype) * 2 - 1
    return torch.randn(shape, dtype=like.dtype, device=like.device)


def probe_products(w: Tensor, probes: Tensor) -> Tensor:
    """``w_p . eps_p`` per probe and sample, shape ``(n_probes, batch)``, for ``w`` and ``probes``
    of shape ``(n_probes, batch, ...)``: with ``w = eps^T A`` the Hutchinson terms of ``tr A``."""
    return (w * probes).reshape(probes.shape[0], probes.shape[1], -1).sum(-1)
