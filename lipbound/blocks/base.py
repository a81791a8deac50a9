"""The one contract every invertible block obeys.

A block is a :class:`torch.nn.Module` mapping a batch ``x`` to ``y = F(x)`` with

* ``forward(x) -> y`` and ``inverse(y) -> x``;
* ``forward_and_log_det(x) -> (y, log|det J_F(x)|)`` and
  ``inverse_and_log_det(y) -> (x, log|det J_{F^-1}(y)|)``, the log-abs-determinant given per sample,
  shape ``(batch,)``, computed in the same pass as the map;
* all four through the module's call, ``block(x, inverse=False, with_log_det=False)``, for
  wrappers that route only ``__call__`` (``torch.nn.parallel.DistributedDataParallel``).

Vectors are ``(batch, d)``; images are ``(batch, C, H, W)``. Subclasses implement
:meth:`InvertibleBlock._forward` and :meth:`InvertibleBlock._inverse`, which receive
``with_log_det`` so that blocks whose log-determinant is costly (i-ResNet, neural ODE) skip it when
only the map is asked for.

Blocks with iterative inverses (fixed point, ODE solves) take a tolerance and an iteration cap and
record a :class:`ConvergenceInfo` in :attr:`InvertibleBlock.last_convergence` after every inverse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import InputError, InputTypeError

__all__ = [
    "ConvergenceInfo",
    "InvertibleBlock",
    "check_dim1",
    "check_finite_parameters",
    "require_block",
    "check_input",
    "sum_per_sample",
]


@dataclass(frozen=True)
class ConvergenceInfo:
    """Outcome of an iterative inverse: of a torch block (:attr:`InvertibleBlock.last_convergence`)
    or of its reference (``reference.RefBlock.last_convergence``), one type for both.

    Attributes:
        converged: whether every sample met the tolerance within the iteration cap.
        iterations: iterations run.
        residual: the largest per-sample residual ``||F(x_k) - y||_2`` (or the last step size,
            as the block documents: the reference fixed point records its last step
            ``||x_k - x_{k-1}||_2`` of the midpoints) when the iteration stopped; ``nan`` when it
            went non-finite.
        tol: the tolerance that was asked for (relative, see the block; the reference's
            converged fixed point uses ``2^-prec``, its ``as_float`` mode 0: a fixed count).
    """

    converged: bool
    iterations: int
    residual: float
    tol: float


def sum_per_sample(v: Tensor) -> Tensor:
    """Sum every dimension but the batch one: ``(B, ...) -> (B,)``."""
    return v.reshape(v.shape[0], -1).sum(dim=1)


def check_input(x: Tensor, name: str, feature_shape: tuple[int, ...] | None = None,
                ndims: tuple[int, ...] = (2, 4)) -> None:
    """Raise a clear error when ``x`` is not a batch of the expected shape.

    Args:
        x: the tensor to check.
        name: the argument name reported in the error.
        feature_shape: the expected per-sample shape, or ``None`` to accept any.
        ndims: accepted numbers of dimensions (batch dimension included).
    """
    if not isinstance(x, Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise InputError(f"{name} must be {want} (batch first), got shape {tuple(x.shape)}")
    if feature_shape is not None and tuple(x.shape[1:]) != tuple(feature_shape):
        raise InputError(
            f"{name} must have per-sample shape {tuple(feature_shape)}, got {tuple(x.shape[1:])}"
        )


def check_dim1(x: Tensor, name: str, size: int, unit: str = "channels") -> None:
    """:func:`check_input`, and raise a clear error unless dimension 1 (features or channels) of
    ``x`` has ``size`` entries; ``unit`` names them in the message."""
    check_input(x, name)
    if x.shape[1] != size:
        raise InputError(f"{name} must have {size} {unit} in dimension 1, got {x.shape[1]}")


def check_finite_parameters(module: nn.Module) -> None:
    """Raise ``ValueError`` naming the first parameter or buffer that holds NaN or Inf."""
    label = type(module).__name__
    named_tensors = (("parameter", module.named_parameters()), ("buffer", module.named_buffers()))
    for kind, named in named_tensors:
        for pname, p in named:
            if p.is_floating_point() and not bool(torch.isfinite(p).all()):
                n_nan = int(torch.isnan(p).sum())
                n_inf = int(torch.isinf(p).sum())
                raise InputError(
                    f"{label}: {kind} {pname!r} must be finite, found {n_nan} NaN and {n_inf} Inf"
                )


class InvertibleBlock(nn.Module):
    """Base class of all invertible blocks (see the module docstring for the contract)."""

    #: Set by blocks with iterative inverses after each call to an inverse.
    last_convergence: ConvergenceInfo | None = None

    def _forward(self, x: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def forward(self, x: Tensor, *, inverse: bool = False,
                with_log_det: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Return ``F(x)``, or ``F^-1(x)`` with ``inverse``; with ``with_log_det`` the pair
        (output, log-abs-determinant of that direction per sample)."""
        out, ld = (self._inverse if inverse else self._forward)(x, with_log_det)
        return (out, ld) if with_log_det else out

    def inverse(self, y: Tensor) -> Tensor:
        """Return ``F^-1(y)``."""
        return self._inverse(y, False)[0]

    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``F(x)`` and ``log|det J_F(x)|`` per sample, shape ``(batch,)``."""
        y, ld = self._forward(x, True)
        assert ld is not None
        return y, ld

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``F^-1(y)`` and ``log|det J_{F^-1}(y)|`` per sample, shape ``(batch,)``."""
        x, ld = self._inverse(y, True)
        assert ld is not None
        return x, ld

    def log_abs_det(self, x: Tensor) -> Tensor:
        """``log|det J_F(x)|`` per sample."""
        return self.forward_and_log_det(x)[1]

    def validate(self) -> None:
        """Raise ``ValueError`` when the block's parameters make it non-invertible or non-finite."""
        check_finite_parameters(self)

    def flat_blocks(self) -> list[InvertibleBlock]:
        """The leaf blocks in forward order: ``[self]`` here; containers expand themselves."""
        return [self]

    def trace_forward(self, x: Tensor) -> list[Tensor]:
        """``[h_0, h_1, ..., h_L]`` with ``h_0 = x`` and ``h_i = F_i(h_{i-1})`` over the leaf blocks
        ``F_1, ..., F_L`` of :meth:`flat_blocks` (``[x, F(x)]`` for a leaf): the one per-block
        trace every tool that asks where error enters and grows steps through."""
        out = [x]
        for b in self.flat_blocks():
            out.append(b(out[-1]))
        return out

    def trace_inverse(self, y: Tensor) -> list[Tensor]:
        """``[r_L, r_{L-1}, ..., r_0]`` with ``r_L = y`` and ``r_{i-1} = F_i^{-1}(r_i)``, last leaf
        block first: ``r_{i-1}`` is the inverse's value for the input ``h_{i-1}`` of ``F_i``."""
        out = [y]
        for b in reversed(self.flat_blocks()):
            out.append(b.inverse(out[-1]))
        return out

    @property
    def is_iterative(self) -> bool:
        """Whether the inverse is computed iteratively (and records :attr:`last_convergence`)."""
        return False


def zeros_log_det(x: Tensor) -> Tensor:
    """A zero log-determinant per sample, for volume-preserving blocks."""
    return x.new_zeros(x.shape[0])


def spatial_size(x: Tensor) -> int:
    """Number of spatial positions of an image batch, 1 for vectors."""
    return math.prod(x.shape[2:]) if x.dim() > 2 else 1


def require_block(model: object, name: str = "model") -> InvertibleBlock:
    """``model`` itself; :class:`~lipbound.errors.InputTypeError` naming ``name`` unless it is an
    :class:`InvertibleBlock` (whose leaf blocks are ``model.flat_blocks()``)."""
    if not isinstance(model, InvertibleBlock):
        raise InputTypeError(
            f"{name} must be an InvertibleBlock, got {type(model).__name__} (build models from "
            "lipbound.blocks; wrap models of other libraries with lipbound.adapters.adapt)"
        )
    return model
