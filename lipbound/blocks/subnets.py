"""Sub-networks for coupling blocks: constants, MLPs and the Glow convolutional net.

The oracle (``reference``) rebuilds these layer by layer from their stored parameters, so they
use only standard layers: ``nn.Linear``, ``nn.Conv2d``, elementwise activations, and
:class:`Constant`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import InputError, InputTypeError

__all__ = ["ACTIVATIONS", "Constant", "as_subnet", "conv_subnet", "make_activation", "mlp"]


class Constant(nn.Module):
    """A constant function: returns ``value`` (a 0-dim tensor, broadcast by the coupling).

    The value is a buffer, so ``model.to(dtype)`` rounds it like every other stored number.
    """

    def __init__(self, value: float) -> None:
        super().__init__()
        v = float(value)
        if not math.isfinite(v):
            raise InputError(f"Constant value must be finite, got {value}")
        self.register_buffer("value", torch.tensor(v, dtype=torch.float64))

    def extra_repr(self) -> str:
        return f"value={self.value.item()!r}"

    def forward(self, x: Tensor) -> Tensor:
        return self.value.to(dtype=x.dtype, device=x.device)


def as_subnet(net: nn.Module | float | int, name: str) -> nn.Module:
    """Pass a module through; wrap a number into a :class:`Constant`."""
    if isinstance(net, nn.Module):
        return net
    if isinstance(net, (int, float)) and not isinstance(net, bool):
        return Constant(net)
    raise InputTypeError(f"{name} must be an nn.Module or a number, got {type(net).__name__}")


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
}


def make_activation(name: str) -> nn.Module:
    """An activation module from its name (keys of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise InputError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def mlp(in_features: int, out_features: int, hidden: int = 64, n_hidden: int = 2,
        activation: str = "relu") -> nn.Sequential:
    """``Linear -> act -> (Linear -> act) * (n_hidden - 1) -> Linear``."""
    if min(in_features, out_features, hidden) < 1 or n_hidden < 1:
        raise InputError("in_features, out_features, hidden and n_hidden must be >= 1")
    sizes = [in_features] + [hidden] * n_hidden
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), make_activation(activation)]
    layers.append(nn.Linear(sizes[-1], out_features))
    return nn.Sequential(*layers)


def conv_subnet(in_channels: int, out_channels: int, hidden: int = 64,
                activation: str = "relu") -> nn.Sequential:
    """Glow's coupling network: ``Conv3x3 -> act -> Conv1x1 -> act -> Conv3x3`` (zero padding)."""
    if min(in_channels, out_channels, hidden) < 1:
        raise InputError("in_channels, out_channels and hidden must be >= 1")
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1),
        make_activation(activation),
        nn.Conv2d(hidden, hidden, 1),
        make_activation(activation),
        nn.Conv2d(hidden, out_channels, 3, padding=1),
    )
