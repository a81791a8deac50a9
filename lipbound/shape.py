"""The per-sample input shape of a model, read from its blocks (for saved models, which do not
store it). Used by ``lipbound bounds`` and ``lipbound check``."""

from __future__ import annotations

from torch import nn

from .blocks import require_block
from .blocks.coupling import AdditiveCoupling, AffineCoupling
from .blocks.linear import ActNorm, DiagonalScaling, Invertible1x1Conv
from .blocks.ode import NeuralODE
from .blocks.partition import ChannelPartition, MaskPartition
from .blocks.reshape import Permutation, Squeeze
from .blocks.residual import InvertibleResidual, SpectralNormConv2d, SpectralNormLinear
from .errors import InputError

__all__ = ["infer_shape"]


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
