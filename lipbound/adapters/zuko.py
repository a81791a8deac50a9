"""zuko (Rozet et al.): flows (``zuko.lazy.Flow``) and lazy transforms.

A zuko ``Flow`` holds a lazy transform that, called with a context, builds a
``torch.distributions``-style transform from data to the base space: the lipbound direction.
Unconditional use only (context ``None``). A flow whose transform is a
``LazyComposedTransform`` becomes an :class:`~.base.AdaptedSequence` of its lazy transforms.
Plain (non-lazy) zuko transforms are refused: they are not modules, so ``.to(dtype)`` would not
reach their tensors; wrap them in ``zuko.lazy.UnconditionalTransform``.
"""

from __future__ import annotations

import sys

from torch import Tensor

from ..blocks import InvertibleBlock
from ..errors import InputTypeError
from .base import AdaptedSequence, ForeignBlock, nested_leaves, per_sample_log_det

__all__ = ["ZukoBlock", "adapt_zuko", "matches"]


def matches(obj: object) -> bool:
    """Whether ``obj`` is a zuko flow, lazy transform or transform."""
    lazy = sys.modules.get("zuko.lazy")
    return lazy is not None and isinstance(obj, (lazy.Flow, lazy.LazyTransform, lazy.Transform))


class ZukoBlock(ForeignBlock):
    """One unconditional zuko lazy transform, rebuilt at every call (so it sees current
    parameters)."""

    def _map(self, v: Tensor, inverse: bool, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        transform = self.module()
        if inverse:
            transform = transform.inv
        if not with_log_det:
            return transform(v), None
        y, ladj = transform.call_and_ladj(v)
        return y, per_sample_log_det(ladj, v, type(self.module).__name__)


def adapt_zuko(model: object) -> InvertibleBlock:
    """Adapt a zuko ``Flow`` or lazy transform (composed ones step by step)."""
    from zuko.lazy import Flow, LazyComposedTransform, LazyTransform

    source = f"zuko.{type(model).__name__}"
    if isinstance(model, Flow):
        model = model.transform
    if not isinstance(model, LazyTransform):
        raise InputTypeError(
            f"{source} is a plain transform, not a module: .to(dtype) would not reach its "
            "tensors; wrap it in zuko.lazy.UnconditionalTransform (or pass the flow)"
        )
    leaves = nested_leaves(model, LazyComposedTransform, "transforms")
    if len(leaves) == 1:
        return ZukoBlock(leaves[0])
    return AdaptedSequence(*(ZukoBlock(t) for t in leaves), source=source)
