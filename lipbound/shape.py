"""The per-sample input shape of a model, read from its blocks (for saved models, which do not
store it), and the checks that a given shape or batch fits a model, with messages that name what
the command's user typed. Used by ``lipbound bounds``, ``check``, ``diagnose`` and ``verify``."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .adapters.base import ForeignBlock
from .blocks import require_block
from .blocks.coupling import AdditiveCoupling, AffineCoupling
from .blocks.linear import ActNorm, DiagonalScaling, Invertible1x1Conv
from .blocks.ode import NeuralODE
from .blocks.partition import ChannelPartition, MaskPartition
from .blocks.reshape import Permutation, Squeeze
from .blocks.residual import InvertibleResidual, SpectralNormConv2d, SpectralNormLinear
from .errors import InputError, LipboundError
from .precision.cast import cast_model

__all__ = ["check_batch", "infer_shape", "model_shape", "output_shape"]


def _first_dim(block: nn.Module) -> int | None:
    """The feature dimension a vector block reads, when it says."""
    if isinstance(block, (AdditiveCoupling, AffineCoupling)) and isinstance(block.partition,
                                                                           ChannelPartition):
        return block.partition.size
    if isinstance(block, ActNorm):
        return block.num_features
    if isinstance(block, Invertible1x1Conv):
        return block.num_channels
    if isinstance(block, Permutation):
        return block.size
    if isinstance(block, DiagonalScaling) and block.diag.dim() == 1:
        return block.diag.shape[0]
    if isinstance(block, InvertibleResidual):
        first = next((m for m in block.g.modules() if isinstance(m, SpectralNormLinear)), None)
        return None if first is None else first.weight.shape[1]
    if isinstance(block, NeuralODE):
        return getattr(block.f, "d", None)
    return None


def infer_shape(model: nn.Module) -> tuple[int, ...]:
    """The per-sample input shape of a model, when the model determines it.

    Raises :class:`~lipbound.errors.InputError` (asking for ``--shape``) for image models, which
    do not store their spatial size.
    """
    require_block(model)
    blocks = model.flat_blocks()
    for block in blocks:  # a mask or a stored conv input shape fixes the shape until a squeeze
        if isinstance(block, Squeeze):
            break
        partition = getattr(block, "partition", None)
        if isinstance(partition, MaskPartition):
            return tuple(partition.mask.shape)
        convs = [m for m in block.modules() if isinstance(m, SpectralNormConv2d)]
        if convs and convs[0].input_shape:
            return tuple(convs[0].input_shape)
    images = any(isinstance(m, (nn.Conv2d, SpectralNormConv2d, Squeeze)) for m in model.modules())
    dim = next((d for d in map(_first_dim, blocks) if d is not None), None)
    if images or dim is None:
        raise InputError("cannot read the per-sample input shape from this model (image models "
                         "do not store their spatial size): pass --shape, e.g. --shape 3 32 32")
    return (dim,)


def check_batch(x: Tensor, name: str = "x") -> None:
    """:class:`InputError` naming ``name`` unless ``x`` is a tensor ``(B, ...)`` with at least one
    sample and at least one dimension per sample."""
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"{name} must be a batch of at least one sample, samples along the "
                         f"first dimension ((B, d) or (B, C, H, W)), got {got}")


def _refusals(model: nn.Module) -> tuple[type[Exception], ...]:
    """What ``model`` raises on an input it cannot take: lipbound's errors, and for models of
    other libraries also torch's ``RuntimeError`` (a ``RuntimeError`` in a lipbound block is a bug
    and propagates)."""
    if any(isinstance(b, ForeignBlock) for b in model.flat_blocks()):
        return (LipboundError, RuntimeError)
    return (LipboundError,)


def _reason(err: Exception) -> str:
    """The model's message; a lipbound block's ``x``/``input`` (its own argument) becomes "the
    model's input", so that the command's message names no internal argument."""
    if not isinstance(err, LipboundError):
        return f"{type(err).__name__}: {err}"
    return re.sub(r"^(x|input) ", "the model's input ", str(err))


def output_shape(model: nn.Module, x: Tensor, name: str = "x") -> tuple[int, ...]:
    """The per-sample shape of ``F(x)``, from the float64 model on the first sample of the batch
    ``x``; an :class:`InputError` that names ``name`` and the batch shape when the model refuses
    ``x``."""
    check_batch(x, name)
    run = cast_model(model, torch.float64)
    refusals = _refusals(run)
    try:
        with torch.no_grad():
            return tuple(run(x[:1].to(torch.float64)).shape[1:])
    except refusals:
        pass
    try:  # again on the whole batch, so that the model's own message names its shape
        with torch.no_grad():
            run(x.to(torch.float64))
    except refusals as err:
        raise InputError(f"{name} of shape {tuple(x.shape)} does not fit the model: "
                         f"{_reason(err)}") from None
    raise InputError(f"{name} of shape {tuple(x.shape)} does not fit the model: it refuses a "
                     "single sample")


def model_shape(model: nn.Module, shape: Sequence[int] | None,
                option: str = "--shape") -> tuple[int, ...]:
    """The per-sample input shape of ``model``: ``shape`` when given (an :class:`InputError`
    naming ``option`` unless its sizes are positive and the model runs on it), else
    :func:`infer_shape`."""
    if not shape:
        return infer_shape(model)
    shape = tuple(int(n) for n in shape)
    given = " ".join(map(str, shape))
    if min(shape) < 1:
        raise InputError(f"{option} must be positive integers, got {given}")
    run = cast_model(model, torch.float64)
    try:
        with torch.no_grad():
            run(torch.zeros((1, *shape), dtype=torch.float64))
    except (LipboundError, RuntimeError) as err:  # as before: any refusal names --shape
        # the model's message names the one-sample test batch; the user gave a per-sample shape
        reason = _reason(err).replace(f"shape {(1, *shape)}", f"per-sample shape {shape}")
        raise InputError(f"{option} {given}: the model cannot run on inputs of per-sample shape "
                         f"{shape} ({reason})") from None
    return shape
