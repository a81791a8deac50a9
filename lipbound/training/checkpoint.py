"""Checkpoints that survive a crash mid-write and resume a run exactly.

A checkpoint is one ``torch.save`` file written atomically: to a temporary file in the same
folder, flushed to disk, then moved over the old one with :func:`os.replace` (atomic on POSIX and
Windows), so a crash leaves either the old checkpoint or the new one, never half of one.

Everything in it loads with ``torch.load(..., weights_only=True)`` (tensors, numbers, strings,
lists, dicts): the random states of numpy and Python are stored as plain lists, so a checkpoint
can be read without unpickling arbitrary objects.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError

__all__ = ["load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file beside it, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise InputError(f"checkpoint {str(path)!r} must hold a dict, got {type(state).__name__}")
    return state


def rng_state(device: str | torch.device | None = None) -> dict[str, Any]:
    """The global random states of torch (CPU, and the CUDA generator of ``device``), numpy
    and Python.

    Only the trainer's own device is saved (``"cuda_device"``): in a multi-GPU run every rank
    draws from its own device's default generator, seeded alike, and rank 0 writes the
    checkpoint, so its device's state is the one every rank restores (:func:`set_rng_state`).
    ``"cuda"`` (every device of the saving process) is what older lipbound wrote; it stays
    empty.
    """
    device = None if device is None else torch.device(device)
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global state is what we save
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [],
        "cuda_device": (torch.cuda.get_rng_state(device)
                        if device is not None and device.type == "cuda" else None),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [py_version, list(py_internal), py_gauss],
    }


def set_rng_state(state: dict[str, Any], device: str | torch.device | None = None) -> None:
    """Restore the random states saved by :func:`rng_state`; the saved CUDA generator state
    goes into ``device``'s generator (on every rank alike). A checkpoint of older lipbound
    (``"cuda"``: the states of every device of the saving process) restores them all, as
    before."""
    device = None if device is None else torch.device(device)
    torch.set_rng_state(state["torch"])
    if state.get("cuda_device") is not None:
        if device is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_device"], device)
    elif state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name,  # noqa: NPY002
                         keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
