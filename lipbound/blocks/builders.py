"""Architecture builders: Glow-like, Residual-Flow-like, MLP couplings for 2D data, Figure 1 toy.

Every builder returns an :class:`~lipbound.blocks.sequential.InvertibleSequential` of leaf blocks
in the default dtype; call ``.to(dtype)`` for another precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from ..errors import InputError, InputTypeError
from .base import InvertibleBlock
from .coupling import AdditiveCoupling, AffineCoupling
from .linear import ActNorm, Invertible1x1Conv
from .partition import ChannelPartition, Partition, halves
from .reshape import Permutation, Squeeze
from .residual import InvertibleResidual, residual_conv, residual_mlp
from .scale import IdentityScale, ScaleFunction, make_scale
from .sequential import InvertibleSequential
from .spectral import refresh_spectral_norm
from .subnets import conv_subnet, mlp

__all__ = [
    "check_figure1_constants",
    "coupling_block",
    "coupling_mlp",
    "figure1_chain",
    "glow_like",
    "randomize_parameters",
    "residual_flow",
]

COUPLINGS = ("additive", "affine")
MIXINGS = ("1x1conv", "lu", "reverse", "random", "none")


def _check_choice(value: str, choices: Sequence[str], name: str) -> None:
    if value not in choices:
        raise InputError(f"{name} must be one of {list(choices)}, got {value!r}")


def coupling_block(partition: Partition, make_net: Callable[[], nn.Module], coupling: str,
                   scale: str | ScaleFunction = "sigmoid") -> InvertibleBlock:
    """An additive or affine coupling with sub-networks from ``make_net()`` (one call each)."""
    _check_choice(coupling, COUPLINGS, "coupling")
    if coupling == "additive":
        return AdditiveCoupling(partition, make_net())
    return AffineCoupling(partition, make_net(), make_net(), make_scale(scale))


def _mixing(kind: str, channels: int, seed: int) -> list[InvertibleBlock]:
    _check_choice(kind, MIXINGS, "mixing")
    if kind == "none":
        return []
    if kind in ("reverse", "random"):
        return [Permutation(channels, kind, seed=seed)]
    gen = torch.Generator().manual_seed(seed)
    return [Invertible1x1Conv(channels, lu=kind == "lu", generator=gen)]


def glow_like(in_shape: Sequence[int] = (3, 32, 32), levels: int = 3, steps: int = 16,
              hidden: int = 128, coupling: str = "additive", mixing: str = "1x1conv",
              scale: str | ScaleFunction = "sigmoid", actnorm: bool = True,
              seed: int = 0, activation: str = "relu") -> InvertibleSequential:
    """A Glow-like network without factoring out (Kingma and Dhariwal, 2018; paper appendix G).

    Each level is a :class:`Squeeze` followed by ``steps`` steps of ActNorm, a channel mixing
    (1x1 conv, LU 1x1 conv, or a permutation) and a coupling on channel halves with
    :func:`~lipbound.blocks.subnets.conv_subnet` sub-networks of width ``hidden`` and
    ``activation`` (ReLU in appendix G, ELU in the affine CelebA64 models of appendix E).
    """
    if len(in_shape) != 3:
        raise InputError(f"in_shape must be (C, H, W), got {tuple(in_shape)}")
    c, h, w = (int(v) for v in in_shape)
    if levels < 1 or steps < 1:
        raise InputError(f"levels and steps must be >= 1, got {levels} and {steps}")
    if h % 2**levels or w % 2**levels:
        raise InputError(f"H and W ({h}, {w}) must be divisible by 2**levels = {2**levels}")
    blocks: list[InvertibleBlock] = []
    for level in range(levels):
        blocks.append(Squeeze(2))
        c = 4 * c
        for step in range(steps):
            if actnorm:
                blocks.append(ActNorm(c))
            blocks += _mixing(mixing, c, seed + 1000 * level + step)
            part = halves(c, flip=mixing == "none" and step % 2 == 1)
            net = partial(conv_subnet, c // 2, c // 2, hidden, activation)
            blocks.append(coupling_block(part, net, coupling, scale))
    return InvertibleSequential(*blocks)


def _alternating_partitions(d: int, n: int) -> list[ChannelPartition]:
    if d < 2:
        raise InputError(f"d must be >= 2 for a coupling, got {d}")
    first = ChannelPartition(range(d // 2), range(d // 2, d), d)
    return [first if i % 2 == 0 else first.swapped() for i in range(n)]


def coupling_mlp(d: int = 2, n_blocks: int = 8, hidden: int = 64, coupling: str = "affine",
                 scale: str | ScaleFunction = "sigmoid", n_hidden: int = 2,
                 activation: str = "relu", actnorm: bool = False) -> InvertibleSequential:
    """Couplings with MLP sub-networks for vectors (the 2D checkerboard models, section 4.1).

    The partition alternates: ``I_1`` = the first ``d // 2`` coordinates, then the rest.
    ``scale="modified"`` gives the paper's ``0.5 * sigmoid(h + 2) + 0.5``.
    """
    blocks: list[InvertibleBlock] = []
    for part in _alternating_partitions(d, n_blocks):
        if actnorm:
            blocks.append(ActNorm(d))
        n1, n2 = len(part.cond_index), len(part.active_index)
        net = partial(mlp, n1, n2, hidden, n_hidden, activation)
        blocks.append(coupling_block(part, net, coupling, scale))
    return InvertibleSequential(*blocks)


def residual_flow(in_shape: Sequence[int] = (2,), n_blocks: int = 8, hidden: int = 64,
                  coeff: float = 0.8, actnorm: bool = False,
                  **residual_kwargs) -> InvertibleSequential:
    """A Residual-Flow-like stack of i-ResNet blocks (Behrmann et al., 2019; Chen et al., 2019).

    ``in_shape = (d,)`` gives MLP residual branches, ``(C, H, W)`` convolutional ones, all
    spectrally normalised with coefficient ``coeff`` (0.8 for the 2D toys, 0.98 on images).
    Extra keyword arguments go to :class:`~lipbound.blocks.residual.InvertibleResidual`.
    """
    shape = tuple(int(v) for v in in_shape)
    if len(shape) not in (1, 3):
        raise InputError(f"in_shape must be (d,) or (C, H, W), got {shape}")
    blocks: list[InvertibleBlock] = []
    for _ in range(n_blocks):
        if actnorm:
            blocks.append(ActNorm(shape[0]))
        g = (residual_mlp(shape[0], hidden, coeff=coeff) if len(shape) == 1
             else residual_conv(shape[0], hidden, coeff=coeff, input_shape=shape))
        blocks.append(InvertibleResidual(g, **residual_kwargs))
    return InvertibleSequential(*blocks)


def check_figure1_constants(t: float, g: float, t_name: str = "t", g_name: str = "g"
                            ) -> tuple[float, float]:
    """``(t, g)`` as floats: :class:`InputError` naming ``t_name`` / ``g_name`` (an argument or
    a command-line option) unless ``t`` is a finite number and ``g`` a finite nonzero one (the
    affine chain with ``g = 0`` is singular, its inverse divides by 0)."""
    for value, name in ((t, t_name), (g, g_name)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputTypeError(f"{name} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise InputError(f"{name} must be finite, got {value!r}")
    if g == 0:
        raise InputError(f"{g_name} must be nonzero (g = 0 makes the affine chain singular: its "
                         f"inverse divides by g), got {g!r}")
    return float(t), float(g)


def figure1_chain(depth: int, coupling: str = "affine", t: float = 0.123456789,
                  g: float = 0.1, alternate: bool = False) -> InvertibleSequential:
    """The paper's Figure 1 toy (end of section 2): ``depth`` couplings on ``R^2``.

    Every block has ``I_1 = {1}``, ``I_2 = {2}`` (0-based ``[0]`` and ``[1]``; ``alternate``
    swaps them every other block), the constant translation ``t(x_1) = t`` and, for affine
    chains, the constant scale ``g(s(x_1)) = g``. For the affine chain the singular values of the
    Jacobian are ``1`` and ``g^depth``. ``t`` must be finite and ``g`` finite and nonzero (see
    :func:`check_figure1_constants`).
    """
    if depth < 1:
        raise InputError(f"depth must be >= 1, got {depth}")
    _check_choice(coupling, COUPLINGS, "coupling")
    t, g = check_figure1_constants(t, g)
    first = ChannelPartition([0], [1], 2)
    blocks: list[InvertibleBlock] = []
    for i in range(depth):
        part = first.swapped() if alternate and i % 2 else first
        blocks.append(AdditiveCoupling(part, t) if coupling == "additive"
                      else AffineCoupling(part, t, g, IdentityScale()))
    return InvertibleSequential(*blocks)


@torch.no_grad()
def randomize_parameters(model: nn.Module, std: float = 0.1,
                         generator: torch.Generator | None = None) -> nn.Module:
    """Add ``N(0, std^2)`` noise to every floating parameter, mark ActNorm layers initialised and
    recompute the power-iteration vectors of spectrally normalised layers for the new weights
    (:func:`~lipbound.blocks.spectral.refresh_spectral_norm`), so the model is consistent.

    Gives non-trivial parameters (no identity initialisation) for tests and ``lipbound check``.
    """
    for p in model.parameters():
        if p.is_floating_point():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            p.add_(std * noise.to(p.dtype))
    for m in model.modules():
        if isinstance(m, ActNorm):
            m.initialized.fill_(True)
    return refresh_spectral_norm(model)
