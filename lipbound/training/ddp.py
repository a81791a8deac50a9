"""Calling a model through :class:`torch.nn.parallel.DistributedDataParallel` (or a
``torch.compile`` wrapper).

DDP averages the gradients of what runs through its ``__call__`` (it hooks ``forward``):
``ddp.module.forward_and_log_det(x)`` or ``ddp.module.inverse(y)`` would bypass it, and each rank
would step with its own gradient; likewise a compiled model runs compiled only through its call.
Every block's call takes the direction and the log-determinant as keywords
(``block(x, inverse=False, with_log_det=False)``), so :func:`call` reaches all four maps through
the wrapper; :func:`~lipbound.training.nf_loss` and :func:`~lipbound.training.fd_regularizer` use
it and accept a wrapped model.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..blocks import InvertibleBlock, require_block

__all__ = ["call", "unwrap"]


def _inner(model: nn.Module) -> nn.Module | None:
    """The module a DDP or ``torch.compile`` wrapper holds (``None`` for other modules)."""
    if isinstance(model, DistributedDataParallel):
        return model.module
    return getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule


def unwrap(model: nn.Module) -> InvertibleBlock:
    """The invertible block inside DDP and ``torch.compile`` wrappers (or ``model`` itself),
    checked to be one."""
    block = model
    while (inner := _inner(block)) is not None:
        block = inner
    require_block(block)
    return block


def call(model: nn.Module, x: Tensor, *, inverse: bool = False, with_log_det: bool = False
         ) -> Tensor | tuple[Tensor, Tensor]:
    """``F(x)``, or ``F^-1(x)`` with ``inverse``, and with ``with_log_det`` the pair (output,
    log-determinant per sample), through the wrapper's ``__call__`` when ``model`` is wrapped in
    DDP or compiled."""
    if _inner(model) is not None:
        return model(x, inverse=inverse, with_log_det=with_log_det)
    if with_log_det:
        return model.inverse_and_log_det(x) if inverse else model.forward_and_log_det(x)
    return model.inverse(x) if inverse else model(x)
