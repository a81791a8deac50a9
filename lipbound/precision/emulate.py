"""Emulated half precision: compute each torch operation in float32, round its result.

Some CPU kernels have no float16/bfloat16 version. :class:`RoundEachOp` is a torch dispatch mode
that, for every operation touching tensors of the emulated dtype, casts them to float32, runs the
operation, and rounds every floating result back to the emulated dtype. For ``+ - * /`` and
``sqrt`` this equals the IEEE result in that dtype (float32 has more than ``2p + 2`` bits for
``p = 11`` and ``p = 8``, so double rounding is innocuous); for reductions and matrix products it
rounds once per operation, not per addition, as most native half kernels also do. Results
computed this way are marked as emulated.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from ..errors import InputError

__all__ = ["RoundEachOp", "is_missing_kernel"]


class RoundEachOp(TorchDispatchMode):
    """Within the mode, every operation on ``dtype`` tensors runs in float32 and is rounded."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        if dtype not in (torch.float16, torch.bfloat16):
            raise InputError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
        self.dtype = dtype

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        kwargs = kwargs or {}

        def up(t: Any) -> Any:
            return t.float() if isinstance(t, torch.Tensor) and t.dtype == self.dtype else t

        def down(t: Any) -> Any:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                return t.to(self.dtype)
            return t

        out = tree_map(down, func(*tree_map(up, args), **tree_map(up, kwargs)))
        if func._schema.name.endswith("_") and args and isinstance(args[0], torch.Tensor):
            args[0].copy_(out if isinstance(out, torch.Tensor) else out[0])  # in place
            return args[0]
        return out


def is_missing_kernel(err: BaseException) -> bool:
    """Whether ``err`` is torch's "not implemented for 'Half'/'BFloat16'" error."""
    text = str(err)
    return "not implemented for" in text and ("Half" in text or "BFloat16" in text)
