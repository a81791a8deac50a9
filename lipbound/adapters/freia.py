"""FrEIA (Ardizzone et al.): ``SequenceINN``, ``GraphINN`` and single ``InvertibleModule``s.

FrEIA modules take and return lists of tensors and are called as ``module(xs, rev=..., jac=...)``
returning ``(outputs, log_jac_det)``; ``rev=False`` is the normalizing direction (data to latent),
as in lipbound. A ``SequenceINN`` becomes an :class:`~.base.AdaptedSequence` of its modules; a
``GraphINN`` with one input and one output node is one block (its graph need not be a chain).
Conditional models (modules with conditions) are refused.

For ``lipbound diagnose`` the model must survive ``torch.save`` of the whole module, and lambdas
cannot be pickled. FrEIA's coupling blocks (``GLOWCouplingBlock``, ``RNVPCouplingBlock``, ...)
store their default ``clamp_activation="ATAN"`` as a lambda: build them with
``clamp_activation="TANH"`` (or a module-level function). ``AllInOneBlock`` stores its global
affine activation as a lambda for every ``global_affine_type`` and never pickles: save its
``state_dict()``, rebuild the model with the same code and ``load_state_dict``, adapt it in Python
and call :func:`lipbound.diagnostics.diagnose`.
"""

from __future__ import annotations

import sys

from torch import Tensor, nn

from ..blocks import InvertibleBlock
from ..errors import InputError
from .base import AdaptedSequence, ForeignBlock, per_sample_log_det

__all__ = ["FrEIABlock", "adapt_freia", "matches"]


def matches(obj: object) -> bool:
    """Whether ``obj`` is a FrEIA invertible module (FrEIA must already be imported to have one)."""
    base = sys.modules.get("FrEIA.modules.base")
    return base is not None and isinstance(obj, base.InvertibleModule)


def _first(out: Tensor | tuple | list) -> Tensor:
    return out if isinstance(out, Tensor) else out[0]


class FrEIABlock(ForeignBlock):
    """One FrEIA ``InvertibleModule`` (or a whole ``GraphINN``) with one input and one output."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.takes_list = not _is_inn(module)  # plain modules take lists, INNs a tensor

    def _map(self, v: Tensor, inverse: bool, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        out, jac = self.module([v] if self.takes_list else v, rev=inverse, jac=True)
        y = _first(out)
        return y, per_sample_log_det(jac, v, type(self.module).__name__) if with_log_det else None


def _is_inn(module: nn.Module) -> bool:
    framework = sys.modules.get("FrEIA.framework")
    return framework is not None and isinstance(module, (framework.SequenceINN,
                                                         framework.GraphINN))


def adapt_freia(model: nn.Module) -> InvertibleBlock:
    """Adapt a FrEIA ``SequenceINN`` (step by step), ``GraphINN`` or single module."""
    import FrEIA.framework as ff

    if isinstance(model, ff.SequenceINN):
        if any(c is not None for c in model.conditions):
            raise InputError("SequenceINN: conditional modules are not supported by the adapter")
        return AdaptedSequence(*(FrEIABlock(m) for m in model.module_list),
                               source="FrEIA.SequenceINN")
    if isinstance(model, ff.GraphINN):
        if len(model.in_nodes) != 1 or len(model.out_nodes) != 1:
            raise InputError(
                f"GraphINN: the adapter needs one input and one output node, got "
                f"{len(model.in_nodes)} and {len(model.out_nodes)}"
            )
        if model.condition_nodes:
            raise InputError("GraphINN: conditional graphs are not supported by the adapter")
    return FrEIABlock(model)
