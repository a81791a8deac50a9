"""Composition of invertible blocks, with per-block tracing.

``F = F_L o ... o F_1``: the forward runs the blocks in order and adds their log-determinants;
the inverse runs the inverses in reverse order. Its leaf blocks (:meth:`flat_blocks`, nested
sequentials expanded) are what :meth:`InvertibleBlock.trace_forward` and
:meth:`InvertibleBlock.trace_inverse` step through, for tools that ask where error enters and grows.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn

from ..errors import InputTypeError
from .base import ConvergenceInfo, InvertibleBlock, zeros_log_det

__all__ = ["InvertibleSequential"]


class InvertibleSequential(InvertibleBlock):
    """Compose blocks: ``InvertibleSequential(b1, b2, ...)(x) = ... b2(b1(x))``."""

    def __init__(self, *blocks: InvertibleBlock) -> None:
        super().__init__()
        for i, b in enumerate(blocks):
            if not isinstance(b, InvertibleBlock):
                raise InputTypeError(
                    f"block {i} must be an InvertibleBlock, got {type(b).__name__}; wrap other "
                    "models with an adapter"
                )
        self.blocks = nn.ModuleList(blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> InvertibleBlock:
        return self.blocks[i]

    def __iter__(self) -> Iterator[InvertibleBlock]:
        return iter(self.blocks)

    def flat_blocks(self) -> list[InvertibleBlock]:
        """The leaf blocks in forward order, nested sequentials expanded."""
        out: list[InvertibleBlock] = []
        for b in self.blocks:
            out.extend(b.flat_blocks())
        return out

    def _forward(self, x: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        total = zeros_log_det(x) if with_log_det else None
        for b in self.blocks:
            x, ld = b._forward(x, with_log_det)
            if total is not None:
                total = total + ld
        return x, total

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        total = zeros_log_det(y) if with_log_det else None
        for b in reversed(self.blocks):
            y, ld = b._inverse(y, with_log_det)
            if total is not None:
                total = total + ld
        return y, total

    @property
    def is_iterative(self) -> bool:
        return any(b.is_iterative for b in self.flat_blocks())

    def convergence(self) -> list[tuple[int, ConvergenceInfo]]:
        """``(leaf index, last ConvergenceInfo)`` for every iterative leaf block that has one."""
        return [(i, b.last_convergence) for i, b in enumerate(self.flat_blocks())
                if b.last_convergence is not None]
