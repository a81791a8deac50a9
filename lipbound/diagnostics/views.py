"""Views of a model that the diagnostics share: the check that it is a block, its inverse as a
model, a copy at a precision, the float tolerance used to call a reconstruction failed, per-sample
errors, and the samples that hold NaN or Inf.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..blocks import InvertibleBlock, require_block
from ..blocks.numerics import per_sample_norm  # the one scaled norm, float64
from ..precision import cast_model, torch_dtype

__all__ = ["Inverted", "at_precision", "default_tol", "mark_non_finite", "non_finite_rows",
           "per_sample_norm"]



class Inverted(InvertibleBlock):
    """``F^-1`` seen as a model: ``forward = F.inverse`` and ``inverse = F.forward``.

    Its leaf blocks are the inverses of ``F``'s leaf blocks in reverse order, so every diagnostic
    that runs on ``F`` in the direction ``x -> z -> x`` runs on ``Inverted(F)`` in the direction
    ``z -> x -> z``.
    """

    def __init__(self, model: InvertibleBlock) -> None:
        super().__init__()
        self.model = require_block(model)

    def _forward(self, x: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        return self.model._inverse(x, with_log_det)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        return self.model._forward(y, with_log_det)

    def flat_blocks(self) -> list[InvertibleBlock]:
        """``[F_L^-1, ..., F_1^-1]`` for ``F = F_L o ... o F_1``."""
        blocks = self.model.flat_blocks()
        if len(blocks) == 1:
            return [self]
        return [Inverted(b) for b in reversed(blocks)]

    @property
    def is_iterative(self) -> bool:
        return self.model.is_iterative


def at_precision(model: InvertibleBlock, precision: str) -> InvertibleBlock:
    """A copy of ``model`` in evaluation mode with its parameters rounded to ``precision``.

    ``precision`` is a float precision name of :mod:`lipbound.precision` (``"float32"``, ...).
    """
    return cast_model(model, precision)


def default_tol(precision: str) -> float:
    """``sqrt(eps)`` of the precision: an error above it has lost half the digits."""
    return math.sqrt(torch.finfo(torch_dtype(precision)).eps)


def mark_non_finite(errors: Tensor, rec: Tensor, x: Tensor) -> Tensor:
    """Per-sample round-trip ``errors`` of inputs ``x`` with reconstructions ``rec``, set to NaN or
    Inf so that the two are counted apart: a sample whose input holds a NaN gets NaN, one whose
    input holds an Inf (and no NaN) Inf -- whatever the network made of it, often NaN, as
    ``inf - inf`` is; a finite input gets NaN where ``rec`` holds a NaN, else Inf where it holds
    an Inf."""
    def rows(test, v: Tensor) -> Tensor:
        return test(v.reshape(v.shape[0], -1)).any(dim=1)

    x_nan, x_inf = rows(torch.isnan, x), rows(torch.isinf, x)
    nan = x_nan | (rows(torch.isnan, rec) & ~x_inf)
    inf = ~nan & (x_inf | rows(torch.isinf, rec))
    errors = torch.where(inf, torch.full_like(errors, math.inf), errors)
    return torch.where(nan, torch.full_like(errors, math.nan), errors)


def non_finite_rows(x: Tensor) -> Tensor:
    """Indices of the samples (rows of the batch ``x``) that hold a NaN or an Inf."""
    return torch.nonzero(~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)).flatten()
