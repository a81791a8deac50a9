r"""The normalizing-flow objective as a loss or regularizer (paper section 3.3.2, eq. 7).

By the change of variables, for an invertible ``F`` and a standard normal base density ``p_Z``,

    log p(x) = log p_Z(F(x)) + log|det J_F(x)|,                                       (eq. 7)
    log p_Z(z) = -||z||^2 / 2 - (D / 2) log(2 pi),

with ``D`` the number of entries per sample. :func:`nf_loss` returns ``coeff * NLL`` with
``NLL = -mean_i log p(x_i)`` in nats per sample: with ``coeff = 1`` it is the maximum-likelihood
loss of a flow; added to a task loss with a small ``coeff`` (the authors used 1e-5 for classifiers)
it is the NF regularizer.

**Bits per dimension.** For image data quantised to ``n_bins`` levels and dequantised uniformly,
``x = offset + data_range * (k + u) / n_bins`` with ``u ~ U[0, 1)^D``, each cell has volume
``(data_range / n_bins)^D``, and the usual figure is

    bpd = (NLL + D log(n_bins / data_range)) / (D log 2)

(``n_bins = 256`` and ``data_range = 1`` for 8-bit images scaled to [0, 1]; ``data_range = 2`` for
[-1, 1]). Without ``n_bins`` the continuous ``NLL / (D log 2)`` is given (no dequantisation
constant), which is what 2D toy densities report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from ..blocks import InvertibleBlock
from ..blocks.base import sum_per_sample
from ..errors import InputError, InputTypeError
from .ddp import call, unwrap

__all__ = ["NFLoss", "nf_loss", "standard_normal_log_prob"]


@dataclass(frozen=True)
class NFLoss:
    """The terms of :func:`nf_loss`.

    Attributes:
        loss: ``coeff * nll``, a scalar with its graph (add it to a task loss).
        nll: mean negative log-likelihood in nats per sample (with its graph).
        bits_per_dim: ``nll`` in bits per dimension (see the module docstring; detached).
        z: ``F(x)`` (with its graph, for a task loss on the same pass).
        log_det: ``log|det J_F(x)|`` per sample.
    """

    loss: Tensor
    nll: Tensor
    bits_per_dim: Tensor
    z: Tensor
    log_det: Tensor


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` per sample, ``-||z_i||^2 / 2 - (D / 2) log(2 pi)``."""
    d = z[0].numel()
    return -0.5 * sum_per_sample(z * z) - 0.5 * d * math.log(2 * math.pi)


def nf_loss(model: InvertibleBlock, x: Tensor, coeff: float = 1.0, n_bins: int | None = None,
            data_range: float = 1.0, *, z: Tensor | None = None,
            log_det: Tensor | None = None) -> NFLoss:
    """``coeff * NLL`` of ``x`` under ``model`` with a standard normal base (eq. 7).

    Args:
        model: the flow ``F`` (a block, a :func:`~lipbound.training.memory_saving` wrapper, or
            either inside ``DistributedDataParallel``, called through it so that the gradients
            are averaged across processes).
        x: a batch ``(B, ...)``.
        coeff: the factor on the NLL.
        n_bins: quantisation levels of the data for bits per dimension (256 for 8-bit images),
            or ``None`` for the continuous figure.
        data_range: width of the interval the quantised data were scaled to.
        z, log_det: ``F(x)`` and its log-determinant when already computed (for example by
            :func:`~lipbound.training.fd_regularizer` with ``with_log_det=True``); both or neither.
    """
    if not isinstance(x, Tensor):
        raise InputTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if n_bins is not None and (isinstance(n_bins, bool) or not isinstance(n_bins, int)
                               or n_bins < 1):
        raise InputError(f"n_bins must be a positive integer or None, got {n_bins!r}")
    if not data_range > 0:
        raise InputError(f"data_range must be positive, got {data_range!r}")
    if (z is None) != (log_det is None):
        raise InputError("give both z and log_det (a pass already made) or neither")
    unwrap(model)
    if z is None:
        z, log_det = call(model, x, with_log_det=True)
    elif z.shape[0] != x.shape[0] or log_det.shape != (x.shape[0],):
        raise InputError(
            f"z and log_det must hold one entry per sample of x ({x.shape[0]}), got shapes "
            f"{tuple(z.shape)} and {tuple(log_det.shape)}"
        )
    nll = -(standard_normal_log_prob(z) + log_det).mean()
    d = x[0].numel()
    shift = d * math.log(n_bins / data_range) if n_bins is not None else 0.0
    bpd = (nll.detach() + shift) / (d * math.log(2))
    return NFLoss(coeff * nll, nll, bpd, z, log_det)
