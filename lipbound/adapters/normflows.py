"""normflows (Stimper et al.): ``NormalizingFlow`` models and single ``Flow`` layers.

normflows runs its layers from latent to data: ``flow.forward(z)`` maps towards the target
(data) and ``flow.inverse(x)`` towards the base distribution, each returning ``(value,
log_det)``; ``NormalizingFlow.forward`` goes from latent to data through ``flows[0], flows[1],
...``. lipbound's forward is the other way, data to latent, so an adapted layer's forward is the
normflows ``inverse``, and an adapted ``NormalizingFlow`` is the sequence of its layers in reverse.
"""

from __future__ import annotations

import sys

from torch import Tensor, nn

from ..blocks import InvertibleBlock
from .base import AdaptedSequence, ForeignBlock, per_sample_log_det

__all__ = ["NormflowsBlock", "adapt_normflows", "matches"]


def matches(obj: object) -> bool:
    """Whether ``obj`` is a normflows ``NormalizingFlow`` or ``Flow``."""
    core, flows = sys.modules.get("normflows.core"), sys.modules.get("normflows.flows.base")
    return ((core is not None and isinstance(obj, core.NormalizingFlow))
            or (flows is not None and isinstance(obj, flows.Flow)))


class NormflowsBlock(ForeignBlock):
    """One normflows ``Flow``, data to latent: lipbound forward = normflows ``inverse``."""

    def _map(self, v: Tensor, inverse: bool, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        y, log_det = (self.module.forward if inverse else self.module.inverse)(v)
        return y, per_sample_log_det(log_det, v, type(self.module).__name__) if with_log_det \
            else None


def adapt_normflows(model: nn.Module) -> InvertibleBlock:
    """Adapt a ``NormalizingFlow`` (its ``flows`` reversed: data to latent) or a ``Flow``."""
    from normflows.core import NormalizingFlow

    if isinstance(model, NormalizingFlow):
        return AdaptedSequence(*(NormflowsBlock(f) for f in reversed(model.flows)),
                               source=f"normflows.{type(model).__name__}")
    return NormflowsBlock(model)
