"""memcnn (van de Leemput et al.): ``AdditiveCoupling``, ``AffineCoupling`` and
``InvertibleModuleWrapper``; lists and ``nn.Sequential`` of them step by step.

memcnn couplings split the channels (dimension 1) in halves and provide ``forward`` and
``inverse``, the forward taken as lipbound's forward. ``InvertibleModuleWrapper`` changes how
activations are stored for backpropagation (recomputing them from the inverse), not the function,
so the adapter unwraps it to the module it wraps: its custom autograd function cannot run under
:mod:`torch.func`, which the diagnostics use. memcnn gives no log-determinant; the adapter takes
``log|det J|`` from the autograd Jacobian (:func:`~.base.autograd_log_det`).
"""

from __future__ import annotations

import sys

from torch import Tensor, nn

from ..blocks import InvertibleBlock
from ..errors import InputTypeError
from .base import ForeignBlock, autograd_log_det

__all__ = ["MemcnnBlock", "adapt_memcnn", "matches"]

_CLASSES = ("AdditiveCoupling", "AffineCoupling", "InvertibleModuleWrapper")


def matches(obj: object) -> bool:
    """Whether ``obj`` is a memcnn coupling or invertible wrapper."""
    memcnn = sys.modules.get("memcnn")
    return memcnn is not None and isinstance(obj, tuple(getattr(memcnn, c) for c in _CLASSES))


class MemcnnBlock(ForeignBlock):
    """One memcnn invertible module (``forward`` and ``inverse``)."""

    def _map(self, v: Tensor, inverse: bool, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        fn = self.module.inverse if inverse else self.module.forward
        return fn(v), autograd_log_det(fn, v) if with_log_det else None


def adapt_memcnn(module: nn.Module) -> InvertibleBlock:
    """Adapt a memcnn coupling, unwrapping an ``InvertibleModuleWrapper``."""
    from memcnn import InvertibleModuleWrapper

    while isinstance(module, InvertibleModuleWrapper):
        module = module._fn
    if not callable(getattr(module, "inverse", None)):
        raise InputTypeError(f"memcnn module {type(module).__name__} has no inverse method")
    return MemcnnBlock(module)
