"""Precision names, the same in the API and on the command line (see DESIGN.md).

``float16``, ``bfloat16``, ``float32``, ``float64`` run the torch model natively.
"""

from __future__ import annotations

import torch

__all__ = ["TORCH_DTYPES", "torch_dtype"]

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a float precision name; ``ValueError`` for anything else."""
    if name not in TORCH_DTYPES:
        raise ValueError(f"precision must be one of {sorted(TORCH_DTYPES)}, got {name!r}")
    return TORCH_DTYPES[name]
