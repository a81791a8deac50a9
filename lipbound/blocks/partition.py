"""Partitions ``I_1, I_2`` of a sample's coordinates for coupling blocks (paper eqs. 3 and 4).

``I_1`` is the conditioning part, passed unchanged and fed to the sub-networks ``t`` and ``s``;
``I_2`` is the active part that is shifted (and scaled). Two kinds cover every layout:

* :class:`ChannelPartition`: index sets along dimension 1, the features of a vector ``(B, d)`` or
  the channels of an image ``(B, C, H, W)``. The sub-networks see ``x[:, I_1]`` and return a
  tensor shaped like ``x[:, I_2]``. :func:`halves` and explicit index sets build one.
* :class:`MaskPartition`: a boolean mask of the per-sample shape (``True`` on ``I_1``), e.g. the
  RealNVP spatial :func:`checkerboard`. The sub-networks see ``x * mask`` (full shape) and return a
  full-shaped tensor, of which only the ``I_2`` entries are used.

Both offer ``cond(x)``, ``active(x)``, ``combine(x, y2)`` and ``sum_active(v)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError
from .base import sum_per_sample

__all__ = ["ChannelPartition", "MaskPartition", "Partition", "checkerboard", "halves"]


class Partition(nn.Module):
    """Splits a batch into the conditioning part ``x_{I_1}`` and the active part ``x_{I_2}``."""

    def cond(self, x: Tensor) -> Tensor:
        """The input of the sub-networks, ``x_{I_1}``."""
        raise NotImplementedError

    def active(self, x: Tensor) -> Tensor:
        """The active part ``x_{I_2}``, in the layout of the sub-networks' output."""
        raise NotImplementedError

    def combine(self, x: Tensor, y2: Tensor) -> Tensor:
        """``x`` with its active part replaced by ``y2``."""
        raise NotImplementedError

    def sum_active(self, v: Tensor) -> Tensor:
        """Per-sample sum of ``v`` (shaped like :meth:`active`) over the active entries."""
        raise NotImplementedError

    def swapped(self) -> Partition:
        """The partition with ``I_1`` and ``I_2`` exchanged."""
        raise NotImplementedError


def _as_index(idx: Sequence[int] | Tensor, name: str) -> Tensor:
    t = torch.as_tensor(idx)
    if t.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    if t.dim() != 1 or t.dtype not in (torch.int32, torch.int64):
        raise InputError(f"{name} must be a 1-D sequence of integer indices, got {idx!r}")
    return t.to(torch.int64)


class ChannelPartition(Partition):
    """Index sets ``I_1`` (conditioning) and ``I_2`` (active) along dimension 1.

    Args:
        cond_index: ``I_1``, indices into dimension 1.
        active_index: ``I_2``; together with ``I_1`` a partition of ``range(size)``.
        size: the size of dimension 1.
    """

    def __init__(self, cond_index: Sequence[int] | Tensor, active_index: Sequence[int] | Tensor,
                 size: int) -> None:
        super().__init__()
        i1, i2 = _as_index(cond_index, "cond_index"), _as_index(active_index, "active_index")
        if len(i1) == 0 or len(i2) == 0:
            raise InputError("cond_index and active_index must both be non-empty (paper, Lemma 5)")
        both = torch.cat([i1, i2])
        if sorted(both.tolist()) != list(range(size)):
            raise InputError(
                f"cond_index {i1.tolist()} and active_index {i2.tolist()} must be disjoint and "
                f"together cover range({size})"
            )
        self.size = size
        self.register_buffer("cond_index", i1, persistent=False)
        self.register_buffer("active_index", i2, persistent=False)

    def extra_repr(self) -> str:
        return f"I1={self.cond_index.tolist()}, I2={self.active_index.tolist()}"

    def _check(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.size:
            raise InputError(
                f"input must have {self.size} features/channels in dimension 1, "
                f"got shape {tuple(x.shape)}"
            )

    def cond(self, x: Tensor) -> Tensor:
        self._check(x)
        return x.index_select(1, self.cond_index)

    def active(self, x: Tensor) -> Tensor:
        self._check(x)
        return x.index_select(1, self.active_index)

    def combine(self, x: Tensor, y2: Tensor) -> Tensor:
        return x.index_copy(1, self.active_index, y2)

    def sum_active(self, v: Tensor) -> Tensor:
        return sum_per_sample(v)

    def swapped(self) -> ChannelPartition:
        return ChannelPartition(self.active_index, self.cond_index, self.size)


def halves(size: int, flip: bool = False) -> ChannelPartition:
    """``I_1`` = the first half of dimension 1, ``I_2`` = the second (exchanged with ``flip``).

    Raises ``ValueError`` for an odd ``size``: pass explicit index sets to split unevenly.
    """
    if size < 2 or size % 2:
        raise InputError(
            f"halves needs an even size >= 2, got {size}; give explicit index sets "
            "(ChannelPartition(cond_index, active_index, size)) for an uneven split"
        )
    first, second = list(range(size // 2)), list(range(size // 2, size))
    return ChannelPartition(second, first, size) if flip else ChannelPartition(first, second, size)


class MaskPartition(Partition):
    """``I_1`` given by a boolean ``mask`` of the per-sample shape (``True`` = conditioning)."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool:
            raise InputError(f"mask must be a boolean tensor, got dtype {mask.dtype}")
        if bool(mask.all()) or not bool(mask.any()):
            raise InputError("mask must mark a non-empty, proper subset of coordinates as I1")
        self.register_buffer("mask", mask, persistent=False)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mask.shape)}, |I1|={int(self.mask.sum())}"

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != tuple(self.mask.shape):
            raise InputError(
                f"input must have per-sample shape {tuple(self.mask.shape)} to match the mask, "
                f"got {tuple(x.shape[1:])}"
            )

    def cond(self, x: Tensor) -> Tensor:
        self._check(x)
        return x * self.mask

    def active(self, x: Tensor) -> Tensor:
        self._check(x)
        return x

    def combine(self, x: Tensor, y2: Tensor) -> Tensor:
        return torch.where(self.mask, x, y2)

    def sum_active(self, v: Tensor) -> Tensor:
        return sum_per_sample(torch.where(self.mask, torch.zeros_like(v), v))

    def swapped(self) -> MaskPartition:
        return MaskPartition(~self.mask)


def checkerboard(shape: Sequence[int], parity: int = 0) -> MaskPartition:
    """RealNVP checkerboard: for images ``(C, H, W)`` the spatial positions with
    ``(i + j) % 2 == parity`` condition (all channels alike); for vectors ``(d,)`` the indices
    with ``i % 2 == parity``."""
    shape = tuple(int(s) for s in shape)
    if parity not in (0, 1):
        raise InputError(f"parity must be 0 or 1, got {parity}")
    if len(shape) == 1:
        mask = torch.arange(shape[0]) % 2 == parity
    elif len(shape) == 3:
        c, h, w = shape
        grid = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == parity
        mask = grid.expand(c, h, w).clone()
    else:
        raise InputError(f"shape must be (d,) or (C, H, W), got {shape}")
    return MaskPartition(mask)
