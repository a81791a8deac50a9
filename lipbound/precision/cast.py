"""The network at a precision: the same stored parameters, cast (DESIGN.md, "The same network").

One implementation for the whole package: :mod:`.run`, :mod:`.decompose`, :mod:`.sweep` and
:mod:`lipbound.diagnostics` all run a model at a float precision through :func:`cast_model`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .names import torch_dtype

__all__ = ["cast_model"]


def cast_model(model: nn.Module, precision: str | torch.dtype) -> nn.Module:
    """A copy of ``model`` in evaluation mode with every floating parameter and buffer rounded to
    ``precision`` (a float precision name such as ``"float32"``, or a torch dtype); the model
    itself is not modified."""
    dtype = precision if isinstance(precision, torch.dtype) else torch_dtype(precision)
    return copy.deepcopy(model).to(dtype).eval()
