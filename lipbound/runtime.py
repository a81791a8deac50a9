"""Process settings a command holds for its duration."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .errors import InputError

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(n: int, option: str = "--threads") -> Iterator[None]:
    """Run the body with ``n`` torch intra-op threads and restore the previous number after it;
    an :class:`InputError` naming ``option`` unless ``n >= 1``."""
    if n < 1:
        raise InputError(f"{option} must be >= 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
