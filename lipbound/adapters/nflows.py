"""nflows (Durkan et al.): any ``Transform``; a ``CompositeTransform`` step by step.

nflows transforms map data to noise in ``forward(inputs, context)``, returning ``(outputs,
logabsdet)``, and back in ``inverse``: the lipbound direction. Unconditional use only (``context``
is ``None``). Transforms without an analytic inverse raise nflows' ``InverseNotAvailable`` when a
diagnostic needs the inverse.
"""

from __future__ import annotations

import sys

from torch import Tensor, nn

from ..blocks import InvertibleBlock
from .base import AdaptedSequence, ForeignBlock, nested_leaves, per_sample_log_det

__all__ = ["NflowsBlock", "adapt_nflows", "matches"]


def matches(obj: object) -> bool:
    """Whether ``obj`` is an nflows ``Transform``."""
    base = sys.modules.get("nflows.transforms.base")
    return base is not None and isinstance(obj, base.Transform)


class NflowsBlock(ForeignBlock):
    """One nflows ``Transform``."""

    def _map(self, v: Tensor, inverse: bool, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        y, log_det = (self.module.inverse if inverse else self.module)(v)
        return y, per_sample_log_det(log_det, v, type(self.module).__name__) if with_log_det \
            else None


def adapt_nflows(transform: nn.Module) -> InvertibleBlock:
    """Adapt an nflows transform; a ``CompositeTransform`` (nested ones expanded) step by step."""
    from nflows.transforms.base import CompositeTransform

    if isinstance(transform, CompositeTransform):
        steps = nested_leaves(transform, CompositeTransform, "_transforms")
        return AdaptedSequence(*(NflowsBlock(t) for t in steps),
                               source=f"nflows.{type(transform).__name__}")
    return NflowsBlock(transform)
