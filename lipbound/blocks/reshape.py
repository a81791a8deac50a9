"""Volume-preserving reshapes: permutations of dimension 1 and the squeeze (space to depth).

Both are orthogonal maps: ``Lip(F) = Lip(F^-1) = 1`` and ``log|det J| = 0``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import InputError, InputTypeError
from .base import InvertibleBlock, check_dim1, check_input, zeros_log_det

__all__ = ["Permutation", "Squeeze"]


class Permutation(InvertibleBlock):
    """Permute dimension 1 (features or channels): ``y[:, i] = x[:, perm[i]]``.

    Args:
        size: the size of dimension 1.
        kind: ``"reverse"``, ``"random"`` (a fixed shuffle drawn from ``seed``), or an explicit
            permutation of ``range(size)``.
        seed: seed of the random shuffle.
    """

    def __init__(self, size: int, kind: str | Sequence[int] = "reverse", seed: int = 0) -> None:
        super().__init__()
        if not isinstance(size, numbers.Integral) or isinstance(size, bool):
            raise InputTypeError(f"size must be an integer (the size of dimension 1), got "
                                 f"{type(size).__name__}")
        if size < 1:
            raise InputError(f"size must be >= 1, got {size}")
        if isinstance(kind, str):
            if kind == "reverse":
                perm = torch.arange(size - 1, -1, -1)
            elif kind == "random":
                perm = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
            else:
                raise InputError(f"kind must be 'reverse', 'random' or a permutation, got {kind!r}")
        else:
            perm = torch.as_tensor(list(kind), dtype=torch.int64)
            if sorted(perm.tolist()) != list(range(size)):
                raise InputError(f"kind must be a permutation of range({size}), got {list(kind)}")
        self.size = size
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))

    def extra_repr(self) -> str:
        return f"{self.size}"

    def _forward(self, x: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        check_dim1(x, "x", self.size, "entries")
        return x.index_select(1, self.perm), zeros_log_det(x) if with_log_det else None

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        check_dim1(y, "y", self.size, "entries")
        return y.index_select(1, self.inverse_perm), zeros_log_det(y) if with_log_det else None


class Squeeze(InvertibleBlock):
    """Space to depth: ``(B, C, H, W) -> (B, C f^2, H/f, W/f)`` (RealNVP, Glow).

    Output channel ``c f^2 + i f + j`` holds input channel ``c`` at offsets ``(i, j)`` of each
    ``f x f`` patch.
    """

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        if factor < 1:
            raise InputError(f"factor must be >= 1, got {factor}")
        self.factor = factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"

    def _forward(self, x: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        check_input(x, "x", ndims=(4,))
        b, c, h, w = x.shape
        f = self.factor
        if h % f or w % f:
            raise InputError(f"x spatial size {(h, w)} must be divisible by factor {f}")
        y = x.reshape(b, c, h // f, f, w // f, f).permute(0, 1, 3, 5, 2, 4)
        y = y.reshape(b, c * f * f, h // f, w // f)
        return y, zeros_log_det(x) if with_log_det else None

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        check_input(y, "y", ndims=(4,))
        b, cf, h, w = y.shape
        f = self.factor
        if cf % (f * f):
            raise InputError(f"y channels {cf} must be divisible by factor^2 = {f * f}")
        x = y.reshape(b, cf // (f * f), f, f, h, w).permute(0, 1, 4, 2, 5, 3)
        x = x.reshape(b, cf // (f * f), h * f, w * f)
        return x, zeros_log_det(y) if with_log_det else None
