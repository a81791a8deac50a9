"""Linear invertible blocks: diagonal scaling, ActNorm, invertible 1x1 convolution (Table 3).

=========================  ===========================  ==============  ================
block                      map                          Lip(F)          Lip(F^-1)
=========================  ===========================  ==============  ================
:class:`DiagonalScaling`   ``y = D x``                  ``max |D_ii|``  ``1/min |D_ii|``
:class:`ActNorm`           ``y = (x + b) * exp(l)``     ``max e^l``     ``1/min e^l``
:class:`Invertible1x1Conv` ``y = W x`` per pixel        ``||W||_2``     ``||W^-1||_2``
=========================  ===========================  ==============  ================

All act on dimension 1 (features of ``(B, d)``, channels of ``(B, C, H, W)``), except
:class:`DiagonalScaling`, whose diagonal may have the full per-sample shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError
from .base import InvertibleBlock, check_dim1, check_finite_parameters, spatial_size
from .numerics import linalg_dtype, slogabsdet

__all__ = ["ActNorm", "DiagonalScaling", "Invertible1x1Conv"]


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a ``(C,)`` vector to broadcast along dimension 1 of ``x``."""
    return v.reshape((1, -1) + (1,) * (x.dim() - 2))


class DiagonalScaling(InvertibleBlock):
    """``y = D x`` with a learnable diagonal ``D`` (Dinh et al., 2014); ``D_ii != 0``.

    Args:
        diag: initial diagonal; its shape is the per-sample shape, or broadcasts to it (for
            example ``(C, 1, 1)`` for one factor per channel). A shape tuple means ones.
    """

    def __init__(self, diag: Tensor | Sequence[int]) -> None:
        super().__init__()
        if not isinstance(diag, Tensor):
            diag = torch.ones(tuple(diag))
        if diag.dim() == 0:
            raise InputError("diag must have at least one dimension (the per-sample shape)")
        self.diag = nn.Parameter(diag.detach().clone())
        self.validate()

    def validate(self) -> None:
        check_finite_parameters(self)
        n_zero = int((self.diag == 0).sum())
        if n_zero:
            raise InputError(
                f"DiagonalScaling: diag has {n_zero} zero entries; D must be invertible"
            )

    def _log_det(self, x: Tensor) -> Tensor:
        per_sample = torch.log(torch.abs(self.diag)).expand(x.shape[1:]).sum()
        return per_sample.expand(x.shape[0])

    def _forward(self, x: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        y = x * self.diag
        return y, self._log_det(x) if with_log_det else None

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        x = y / self.diag
        return x, -self._log_det(y) if with_log_det else None


class ActNorm(InvertibleBlock):
    """Per-channel affine normalisation (Kingma and Dhariwal, 2018): ``y = (x + b) * exp(l)``.

    Data-dependent initialisation: the first forward pass in training mode sets ``b`` and ``l``
    so that that batch's output has zero mean and unit variance per channel. ``log|det J| =
    (spatial positions) * sum(l)``.
    """

    def __init__(self, num_features: int, eps: float = 1e-6) -> None:
        super().__init__()
        if num_features < 1:
            raise InputError(f"num_features must be >= 1, got {num_features}")
        self.num_features, self.eps = num_features, eps
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.log_scale = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.tensor(False))
        # a host copy of the buffer once it is True, so a forward does not read the device
        self._initialized = False

    def extra_repr(self) -> str:
        return f"{self.num_features}"

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._initialized = bool(self.initialized)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent initialisation from the batch ``x`` (at least 2 values per channel)."""
        xc = x.transpose(0, 1).reshape(self.num_features, -1)
        if xc.shape[1] < 2:
            raise InputError("ActNorm initialisation needs at least 2 values per channel")
        self.bias.copy_(-xc.mean(dim=1))
        self.log_scale.copy_(-torch.log(xc.std(dim=1) + self.eps))
        self.initialized.fill_(True)
        self._initialized = True

    def _log_det(self, x: Tensor) -> Tensor:
        return (spatial_size(x) * self.log_scale.sum()).expand(x.shape[0])

    def _forward(self, x: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        check_dim1(x, "x", self.num_features)
        if self.training and not self._initialized:
            # reads the buffer until it is True (set directly, e.g. by randomize_parameters)
            self._initialized = bool(self.initialized)
            if not self._initialized:
                self.initialize(x)
        y = (x + _per_channel(self.bias, x)) * _per_channel(torch.exp(self.log_scale), x)
        return y, self._log_det(x) if with_log_det else None

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        check_dim1(y, "y", self.num_features)
        x = y * _per_channel(torch.exp(-self.log_scale), y) - _per_channel(self.bias, y)
        return x, -self._log_det(y) if with_log_det else None


class Invertible1x1Conv(InvertibleBlock):
    """Invertible 1x1 convolution (Kingma and Dhariwal, 2018): ``y_{:,h,w} = W x_{:,h,w}``.

    Plain: ``W`` is a parameter (random orthogonal by default). LU: ``W = P L (U + diag(s))`` with
    ``P`` a fixed permutation, ``L`` unit lower-triangular, ``U`` strictly upper-triangular and
    ``s = sign * exp(log_s)``, so ``log|det W| = sum(log_s)``. Also acts on vectors ``(B, C)``.
    The inverse applies ``W^-1``; in float16 and bfloat16 it (and ``log|det W|`` of a plain ``W``)
    is computed in float32 and rounded to the model's dtype, as torch has no half-precision
    ``linalg`` kernels.

    Args:
        num_channels: ``C``.
        lu: use the LU parametrisation.
        weight: an initial ``W`` (``C x C``); a singular one is refused.
        generator: random generator for the orthogonal initialisation.
    """

    def __init__(self, num_channels: int, lu: bool = False, weight: Tensor | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if num_channels < 1:
            raise InputError(f"num_channels must be >= 1, got {num_channels}")
        self.num_channels, self.lu = num_channels, lu
        if weight is None:
            q, _ = torch.linalg.qr(torch.randn(num_channels, num_channels, generator=generator,
                                               dtype=torch.float64))
            weight = q.to(torch.get_default_dtype())
        elif tuple(weight.shape) != (num_channels, num_channels):
            raise InputError(
                f"weight must have shape ({num_channels}, {num_channels}), "
                f"got {tuple(weight.shape)}"
            )
        weight = weight.detach().clone()
        self._check_weight(weight)
        if lu:
            p, lower, upper = torch.linalg.lu(weight)
            s = torch.diagonal(upper)
            self.register_buffer("perm", p)
            self.register_buffer("sign_s", torch.sign(s))
            self.lower = nn.Parameter(torch.tril(lower, -1))
            self.upper = nn.Parameter(torch.triu(upper, 1))
            self.log_s = nn.Parameter(torch.log(torch.abs(s)))
        else:
            self.weight = nn.Parameter(weight)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, lu={self.lu}"

    @staticmethod
    def _check_weight(w: Tensor) -> None:
        if not bool(torch.isfinite(w).all()):
            raise InputError("Invertible1x1Conv: weight must be finite (found NaN or Inf)")
        rank = int(torch.linalg.matrix_rank(w.to(torch.float64)))
        if rank < w.shape[0]:
            raise InputError(
                f"Invertible1x1Conv: weight is singular (numerical rank {rank} < {w.shape[0]})"
            )

    def matrix(self) -> Tensor:
        """The ``C x C`` matrix ``W``."""
        if not self.lu:
            return self.weight
        eye = torch.eye(self.num_channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def validate(self) -> None:
        check_finite_parameters(self)
        self._check_weight(self.matrix().detach())

    def _log_abs_det_w(self) -> Tensor:
        if self.lu:
            return self.log_s.sum()
        return slogabsdet(self.weight)

    def _mix_channels(self, w: Tensor, x: Tensor) -> Tensor:
        return torch.einsum("ij,bj...->bi...", w, x)

    def _forward(self, x: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        check_dim1(x, "x", self.num_channels)
        y = self._mix_channels(self.matrix(), x)
        ld = (spatial_size(x) * self._log_abs_det_w()).expand(x.shape[0]) if with_log_det else None
        return y, ld

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        check_dim1(y, "y", self.num_channels)
        w = self.matrix()
        if w.device.type == "cpu":
            try:
                w_inv = torch.linalg.inv(linalg_dtype(w)).to(w.dtype)
            except torch.linalg.LinAlgError as err:
                raise InputError(
                    f"Invertible1x1Conv: weight is singular, no inverse ({err})") from err
        else:
            # no singularity check on a GPU: it would wait for the device on every inverse; there
            # a singular weight gives non-finite outputs (counted by the reconstruction checks)
            w_inv = torch.linalg.inv_ex(linalg_dtype(w))[0].to(w.dtype)
        x = self._mix_channels(w_inv, y)
        ld = (-spatial_size(y) * self._log_abs_det_w()).expand(y.shape[0]) if with_log_det else None
        return x, ld
