"""Saved models and input arrays on disk.

A MODEL file is a whole :class:`~lipbound.blocks.InvertibleBlock` written with
``torch.save(model, path)``. Loading it unpickles Python objects: load only files you trust.
INPUTS files are ``.pt`` (a tensor) or ``.npz``/``.npy`` (the array, or the first array).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .blocks import InvertibleBlock
from .errors import InputError, InputTypeError

__all__ = ["load_inputs", "load_model", "load_saved", "save_model"]


def save_model(model: InvertibleBlock, path: str | Path) -> None:
    """Write ``model`` so that :func:`load_model` and the ``lipbound`` commands can read it."""
    if not isinstance(model, InvertibleBlock):
        raise InputTypeError(f"model must be an InvertibleBlock, got {type(model).__name__}")
    torch.save(model, Path(path))


def load_saved(path: str | Path) -> object:
    """Unpickle whatever ``torch.save`` wrote to the MODEL file ``path`` (onto the CPU), for
    models of other libraries too; :func:`load_model` also checks that it is a lipbound block."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    return torch.load(path, map_location="cpu", weights_only=False)


def load_model(path: str | Path) -> InvertibleBlock:
    """Read a model written by :func:`save_model` (``torch.save`` of a whole module)."""
    model = load_saved(path)
    if not isinstance(model, InvertibleBlock):
        raise InputTypeError(
            f"{str(path)!r} holds a {type(model).__name__}, expected a lipbound InvertibleBlock "
            "saved with torch.save(model, path)"
        )
    return model


def load_inputs(path: str | Path) -> Tensor:
    """Read a batch of inputs from ``.pt``, ``.npy`` or ``.npz``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"inputs file {str(path)!r} does not exist")
    if path.suffix == ".pt":
        x = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(x, Tensor):
            raise InputTypeError(f"{str(path)!r} must hold a tensor, got {type(x).__name__}")
        return x
    if path.suffix in (".npy", ".npz"):
        data = np.load(path)
        arr = data[data.files[0]] if isinstance(data, np.lib.npyio.NpzFile) else data
        return torch.from_numpy(np.asarray(arr))
    raise InputError(f"inputs must be a .pt, .npy or .npz file, got {str(path)!r}")
