"""Models of other libraries seen through the lipbound contract (data to latent forward, inverse,
log-determinant per sample), so every diagnostic runs on them.

:func:`adapt` recognises FrEIA, nflows, zuko, normflows and memcnn models by their base classes
(no library is imported unless the object comes from it), passes lipbound blocks through, and
adapts lists and ``nn.Sequential`` step by step. Register other libraries with
:func:`register_adapter`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..blocks import InvertibleBlock
from ..errors import InputTypeError
from . import freia, memcnn, nflows, normflows, zuko
from .base import AdaptedSequence, ForeignBlock, autograd_log_det, per_sample_log_det

__all__ = [
    "ADAPTERS",
    "AdaptedSequence",
    "ForeignBlock",
    "adapt",
    "autograd_log_det",
    "per_sample_log_det",
    "register_adapter",
]

#: name -> (matches(obj) -> bool, adapt(obj) -> InvertibleBlock), tried in order.
ADAPTERS: dict[str, tuple[Callable[[object], bool], Callable[[object], InvertibleBlock]]] = {
    "FrEIA": (freia.matches, freia.adapt_freia),
    "nflows": (nflows.matches, nflows.adapt_nflows),
    "zuko": (zuko.matches, zuko.adapt_zuko),
    "normflows": (normflows.matches, normflows.adapt_normflows),
    "memcnn": (memcnn.matches, memcnn.adapt_memcnn),
}


def register_adapter(name: str, matches: Callable[[object], bool],
                     adapter: Callable[[object], InvertibleBlock]) -> None:
    """Teach :func:`adapt` another library: ``adapter(obj)`` applies where ``matches(obj)``."""
    ADAPTERS[name] = (matches, adapter)


def adapt(model: object) -> InvertibleBlock:
    """``model`` as an :class:`~lipbound.blocks.InvertibleBlock` whose forward maps data to latent.

    Lipbound blocks are returned as they are; lists, tuples and ``nn.Sequential`` become an
    :class:`AdaptedSequence` of their adapted items; anything else goes to the first matching
    adapter of :data:`ADAPTERS`.
    """
    if isinstance(model, InvertibleBlock):
        return model
    for matches, adapter in ADAPTERS.values():
        if matches(model):
            return adapter(model)
    if isinstance(model, (list, tuple, nn.Sequential)) and len(model) > 0:
        return AdaptedSequence(*(adapt(m) for m in model), source=type(model).__name__)
    raise InputTypeError(
        f"no adapter for {type(model).__module__}.{type(model).__name__}: supported are lipbound "
        f"blocks and models of {', '.join(ADAPTERS)} (and lists or nn.Sequential of them); "
        "register others with lipbound.adapters.register_adapter"
    )
