"""Numerical helpers shared by the blocks and the rest of lipbound: linear algebra in half
precision, batched log-abs-det, the Hutchinson probes of stochastic trace estimates (i-ResNet
series, CNF trace), and the one overflow-safe per-sample norm."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["PROBES", "check_probe", "hutchinson_probes", "linalg_dtype", "per_sample_norm",
           "probe_products", "row_norms", "slogabsdet"]

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


def per_sample_norm(v: Tensor, dtype: torch.dtype | None = torch.float64) -> Tensor:
    """``||v_b||_2`` over each flattened sample, shape ``(B,)``, computed in ``dtype`` (float64 by
    default; ``None``: the input's dtype).

    Scaled by each sample's largest magnitude before squaring, so that neither squares of large
    entries (``1e200``, or ``300`` in float16) overflow nor squares of tiny ones underflow. A sample
    holding NaN gives NaN; one holding Inf and no NaN gives Inf; an empty sample gives 0."""
    flat = v.reshape(v.shape[0], -1)
    if dtype is not None:
        flat = flat.to(dtype)
    if flat.shape[1] == 0:
        return flat.new_zeros(flat.shape[0])
    peak = flat.abs().amax(dim=1)  # NaN where a NaN is present
    safe = torch.where(torch.isfinite(peak) & (peak > 0), peak, torch.ones_like(peak))
    return safe * torch.linalg.vector_norm(flat / safe[:, None], dim=1)


def row_norms(v: np.ndarray) -> np.ndarray:
    """:func:`per_sample_norm` of a numpy array, in float64 (numpy in, numpy out)."""
    arr = np.asarray(v, dtype=np.float64)
    return per_sample_norm(torch.from_numpy(np.ascontiguousarray(arr))).numpy()
