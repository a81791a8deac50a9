r"""Sub-network layers: certified Lipschitz constants and interval bound propagation (IBP).

A sub-network (the ``t`` and ``s`` of a coupling, the ``g`` of an i-ResNet, the ``f`` of a neural
ODE) is a chain of layers, so

.. math:: \mathrm{Lip}(L_k \circ \dots \circ L_1) \le \prod_i \mathrm{Lip}(L_i),

with ``Lip`` of a linear or convolutional layer its exact operator norm bounded from above
(:mod:`.norms`; never the norm of a reshaped kernel; for spectral-norm layers the stored ``W``
times an outward enclosure of the exact factor ``1 / max(1, sigma / c)``, see
:func:`_spectral_factor`) and ``Lip`` of an activation the sup of its
derivative:

===============  ==============================================================
activation       Lip
===============  ==============================================================
ReLU, Tanh       1
LeakyReLU(a)     max(1, |a|)
ELU(alpha)       max(1, alpha)
Sigmoid          1/4
SiLU             1.1  (``sup (x sigmoid(x))' = 1.09984...`` at ``x = 2.3994...``)
Softplus         1    (the derivative is a sigmoid)
LipSwish         1    (``SiLU(beta x) / 1.1``: ``1.09984 / 1.1 < 1``)
Constant         0
===============  ==============================================================

Each layer type has a :class:`LayerRule` in a registry (:func:`register_layer`): its Lipschitz
constant on an input shape, its output shape, and the box of its outputs on a box of inputs (IBP,
outward rounded, :mod:`.interval`). An unknown layer gets a ``TypeError`` that says how to register
one.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from flint import arb
from torch import Tensor, nn

from ..blocks.residual import LipSwish
from ..blocks.spectral import SpectralNormConv2d, SpectralNormLayer, SpectralNormLinear
from ..blocks.subnets import Constant
from ..errors import InputError
from .evaluate import ball_lower, ball_upper, working_precision
from .interval import Box, affine_map, monotone_map
from .norms import conv2d_norm_upper, spectral_norm_upper
from .registry import TypeRegistry
from .rounding import LIB_ULPS, U, down, up, widen

__all__ = ["LayerRule", "ibp", "layer_rule", "lipschitz", "register_layer"]

Shape = tuple[int, ...]
#: A linear operator ``op(x, weight, bias)`` (``F.linear``, ``F.conv2d`` with fixed settings).
Operator = Callable[[Tensor, Tensor, Tensor | None], Tensor]

#: SiLU: its minimiser ``x* = -1.27846...`` (where ``1 + x (1 - sigmoid(x)) = 0``), enclosed, and a
#: lower bound on its minimum ``x* + 1 = -0.27846...``.
_SILU_ARGMIN = (-1.2785, -1.2784)
_SILU_MIN = -0.27847
#: Upper bound on ``sup_x d/dx [x sigmoid(x)] = 1.09984...`` (checked in the tests).
SILU_LIP = 1.1


@dataclass(frozen=True)
class LayerRule:
    """How to bound one layer type.

    Attributes:
        lipschitz: ``(layer, input shape) -> (upper bound on Lip, output shape)``.
        ibp: ``(layer, input box) -> output box`` enclosing every output.
    """

    lipschitz: Callable[[nn.Module, Shape], tuple[float, Shape]]
    ibp: Callable[[nn.Module, Box], Box]


_RULES = TypeRegistry(
    LayerRule, "Lipschitz/IBP rule for layer type",
    "lipbound.bounds.layers.register_layer(LayerType, LayerRule(lipschitz=..., ibp=...))")


def register_layer(layer_type: type, rule: LayerRule) -> None:
    """Teach the bounds a new sub-network layer type (subclasses inherit the rule)."""
    _RULES.register(layer_type, rule)


def layer_rule(layer: nn.Module) -> LayerRule:
    """The rule registered for ``layer``'s type or its nearest registered base class."""
    return _RULES.lookup(layer)


def lipschitz(net: nn.Module, in_shape: Shape) -> tuple[float, Shape]:
    """A certified upper bound on ``Lip(net)`` for per-sample inputs of shape ``in_shape``, and the
    output shape."""
    return layer_rule(net).lipschitz(net, tuple(in_shape))


def ibp(net: nn.Module, box: Box) -> Box:
    """A box enclosing ``net(x)`` for every ``x`` in ``box``."""
    return layer_rule(net).ibp(net, box)


# --- containers and constants -------------------------------------------------------------------

def _sequential_lip(net: nn.Module, shape: Shape) -> tuple[float, Shape]:
    total = 1.0
    for layer in net:
        lip, shape = lipschitz(layer, shape)
        total = up(total * lip)
    return total, shape


def _sequential_ibp(net: nn.Module, box: Box) -> Box:
    for layer in net:
        box = ibp(layer, box)
    return box


def _constant_ibp(net: Constant, box: Box) -> Box:
    return Box.point(net.value.reshape(()))


# --- linear layers -----------------------------------------------------------------------------

def _weight(layer: nn.Module) -> Tensor:
    """The stored weight ``W`` (for spectral-norm layers, before the normalisation)."""
    return layer.weight.detach()


def _linear_weight(layer: nn.Module, shape: Shape) -> Tensor:
    """The weight, checked against the per-sample input shape."""
    w = _weight(layer)
    if shape[-1] != w.shape[1]:
        raise InputError(f"{type(layer).__name__} expects {w.shape[1]} input features, "
                         f"got input shape {shape}")
    return w


#: Power-iteration vectors a stale spectral-norm layer's next forward call will store, by layer:
#: ``(state key, u, v)`` (:func:`_power_vectors`).
_REFRESHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _power_vectors(layer: SpectralNormLayer) -> tuple[Tensor, Tensor]:
    """The ``u``, ``v`` of the map the layer's next forward call applies: the stored ones when
    they belong to the current weight (``vectors_current()``; the oracle reads the same), else
    the ones that call will recompute (weights changed since), computed without storing them."""
    if layer.u is None or layer.v is None:
        raise InputError(f"{type(layer).__name__}: the input shape is unknown (no stored power-"
                         "iteration vectors); pass input_shape or call the layer once")
    if layer.vectors_current():
        return layer.u.detach(), layer.v.detach()
    state = (layer._weight_key(), id(layer.u), layer.u._version, id(layer.v), layer.v._version)
    cached = _REFRESHED.get(layer)
    if cached is None or cached[0] != state:
        u, v = layer._refreshed()
        cached = _REFRESHED[layer] = (state, u.detach(), v.detach())
    return cached[1], cached[2]


def _spectral_factor(layer: nn.Module, op: Operator, fan_in: int) -> tuple[float, float]:
    r"""``[f_lo, f_hi]`` holding the exact ``f = 1 / max(1, sigma / c)`` of a spectral-norm layer,
    whose effective weight is ``f W`` (:class:`~lipbound.blocks.spectral.SpectralNormLayer`):
    ``sigma = <u, A(W) v>`` with the layer's power-iteration vectors (:func:`_power_vectors`),
    enclosed in interval arithmetic; ``(1, 1)`` for plain layers. The float ``effective_weight()``
    is not used: the bound holds for the exact normalised map."""
    if not isinstance(layer, SpectralNormLayer):
        return 1.0, 1.0
    u, v = _power_vectors(layer)
    u = u.to(torch.float64)
    av = affine_map(Box.point(v), op, _weight(layer), None, fan_in)
    products = torch.stack([u * av.lo, u * av.hi])
    lo, hi = widen(products.min(0).values, products.max(0).values, 0.0)
    # math.fsum is correctly rounded: one ulp outward encloses the exact sum
    ratio_lo = down(down(math.fsum(lo.flatten().tolist())) / layer.coeff)
    ratio_hi = up(up(math.fsum(hi.flatten().tolist())) / layer.coeff)
    f_hi = 1.0 if ratio_lo <= 1 else up(1.0 / ratio_lo)
    f_lo = 1.0 if ratio_hi <= 1 else down(1.0 / ratio_hi)
    return f_lo, f_hi


def _scaled_affine_map(layer: nn.Module, box: Box, op: Operator, fan_in: int) -> Box:
    """The box of the layer's map ``op(x, f W, b)`` (``f`` from :func:`_spectral_factor`)."""
    w = _weight(layer)
    factor = _spectral_factor(layer, op, fan_in)
    if factor == (1.0, 1.0):
        return affine_map(box, op, w, layer.bias, fan_in)
    out = affine_map(box, op, w, None, fan_in) * Box.scalar(*factor)
    if layer.bias is None:
        return out
    bias = layer.bias.detach().reshape(1, -1, *([1] * (out.lo.dim() - 2)))
    return out + Box.point(bias)


def _scaled_norm(layer: nn.Module, norm: float, op: Operator, fan_in: int) -> float:
    """``||f W|| <= f_hi ||W||``, rounded up."""
    f_hi = _spectral_factor(layer, op, fan_in)[1]
    return norm if f_hi == 1.0 else up(norm * f_hi)


def _linear_lip(layer: nn.Module, shape: Shape) -> tuple[float, Shape]:
    w = _linear_weight(layer, shape)
    norm = _scaled_norm(layer, spectral_norm_upper(w), F.linear, w.shape[1])
    return norm, (*shape[:-1], w.shape[0])


def _linear_ibp(layer: nn.Module, box: Box) -> Box:
    w = _linear_weight(layer, box.shape)
    return _scaled_affine_map(layer, box, F.linear, w.shape[1])


def _conv_settings(layer: nn.Module) -> tuple[int, int]:
    """The zero padding ``(ph, pw)`` of a stride-1, undilated, ungrouped 2-D convolution."""
    if isinstance(layer, SpectralNormConv2d):
        return layer.padding, layer.padding
    if (layer.stride != (1, 1) or layer.dilation != (1, 1) or layer.groups != 1
            or layer.padding_mode != "zeros" or isinstance(layer.padding, str)):
        raise InputError(
            f"{layer}: bounds support stride 1, dilation 1, groups 1 and numeric zero padding only"
        )
    return tuple(layer.padding)


def _conv_out_shape(layer: nn.Module, shape: Shape) -> Shape:
    w = _weight(layer)
    if len(shape) != 3 or shape[0] != w.shape[1]:
        raise InputError(f"{type(layer).__name__} expects input (C={w.shape[1]}, H, W), "
                         f"got {shape}")
    ph, pw = _conv_settings(layer)
    return (w.shape[0], shape[1] + 2 * ph - w.shape[2] + 1, shape[2] + 2 * pw - w.shape[3] + 1)


def _conv_op(layer: nn.Module) -> tuple[Operator, int]:
    """The convolution as ``op(x, weight, bias)`` and its inner-product length."""
    w = _weight(layer)
    padding = _conv_settings(layer)

    def op(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, weight, bias, padding=padding)

    return op, w.shape[1] * w.shape[2] * w.shape[3]


def _conv_lip(layer: nn.Module, shape: Shape) -> tuple[float, Shape]:
    out = _conv_out_shape(layer, shape)
    norm = conv2d_norm_upper(_weight(layer), shape[1:], _conv_settings(layer))
    return _scaled_norm(layer, norm, *_conv_op(layer)), out


def _conv_ibp(layer: nn.Module, box: Box) -> Box:
    _conv_out_shape(layer, box.shape)  # checks the input shape
    return _scaled_affine_map(layer, box, *_conv_op(layer))


# --- activations -------------------------------------------------------------------------------

def _activation(lip: Callable[[nn.Module], float]) -> Callable[[nn.Module, Shape],
                                                             tuple[float, Shape]]:
    def rule(layer: nn.Module, shape: Shape) -> tuple[float, Shape]:
        return lip(layer), shape
    return rule


def _monotone(layer: nn.Module, box: Box) -> Box:
    absolute = 1e-8 if isinstance(layer, nn.Softplus) else 0.0  # torch's linear threshold jump
    return monotone_map(box, layer, absolute=absolute)


def _checked_monotone(attr: str, image: Callable[[nn.Module, Box], Box] = _monotone
                      ) -> Callable[[nn.Module, Box], Box]:
    """``image``, refusing layers whose ``attr < 0`` (the activation is then not monotone)."""
    def rule(layer: nn.Module, box: Box) -> Box:
        if getattr(layer, attr) < 0:
            raise InputError(f"{layer}: {attr} < 0 makes the activation non-monotone; "
                             "not supported")
        return image(layer, box)
    return rule


def _elu_image(layer: nn.ELU, box: Box) -> Box:
    """``alpha (e^x - 1)`` for ``x < 0``, ``x`` for ``x >= 0`` (increasing for ``alpha >= 0``),
    evaluated with ``expm1``, which is accurate *relative to its result* also near 0, so the
    relative widening of :func:`.interval.monotone_map` encloses it. (``exp(x) - 1`` cancels
    near 0: its error is absolute, about ``u``, and no relative widening covers it.)"""
    alpha = float(layer.alpha)

    def elu(x: Tensor) -> Tensor:
        return torch.where(x < 0, alpha * torch.expm1(torch.clamp(x, max=0.0)), x)

    return monotone_map(box, elu, ulps=LIB_ULPS + 2)


def _silu_box(z: Box) -> Box:
    """Box of ``silu(z) = z sigmoid(z)`` on ``z``: decreasing, then increasing, with its minimum
    (``>= _SILU_MIN``) at ``z* = -1.278...``; torch's ``silu`` at the exact float ends is
    accurate relative to its result (``z`` times a sigmoid), so a relative widening encloses it."""
    f_lo, f_hi = F.silu(z.lo), F.silu(z.hi)
    lo, hi = torch.minimum(f_lo, f_hi), torch.maximum(f_lo, f_hi)
    may_hold_min = (z.lo <= _SILU_ARGMIN[1]) & (z.hi >= _SILU_ARGMIN[0])
    lo = torch.where(may_hold_min, torch.full_like(lo, _SILU_MIN), lo)
    return Box(*widen(lo, hi, 16 * U))


def _silu_ibp(layer: nn.Module, box: Box) -> Box:
    return _silu_box(box)


def _lipswish_ibp(layer: LipSwish, box: Box) -> Box:
    """``silu(beta x) / (1.1 beta)`` with ``beta = softplus(raw_beta)`` enclosed in ball arithmetic
    (torch's ``softplus``: ``raw_beta`` itself above the threshold 20) and ``1.1`` the float
    the layer divides by: interval products, so no rounding of ``beta`` or ``beta x`` escapes."""
    raw = float(layer.raw_beta.detach())
    if raw > 20.0:
        beta = Box.scalar(raw, raw)
    else:
        with working_precision():
            ball = arb(raw).exp().log1p()
            beta = Box.scalar(ball_lower(ball), ball_upper(ball))
    return _silu_box(box * beta).divide(beta * Box.scalar(1.1, 1.1), "LipSwish beta")


def _identity_ibp(layer: nn.Module, box: Box) -> Box:
    return box


_ONE = _activation(lambda layer: 1.0)
for _cls in (nn.ReLU, nn.Tanh):
    register_layer(_cls, LayerRule(_ONE, _monotone))
register_layer(nn.Sigmoid, LayerRule(_activation(lambda layer: 0.25), _monotone))
register_layer(nn.LeakyReLU, LayerRule(
    _activation(lambda layer: max(1.0, abs(layer.negative_slope))),
    _checked_monotone("negative_slope")))
register_layer(nn.ELU, LayerRule(_activation(lambda layer: max(1.0, layer.alpha)),
                                 _checked_monotone("alpha", _elu_image)))
register_layer(nn.SiLU, LayerRule(_activation(lambda layer: SILU_LIP), _silu_ibp))
register_layer(nn.Softplus, LayerRule(_ONE, _monotone))
register_layer(LipSwish, LayerRule(_ONE, _lipswish_ibp))
register_layer(nn.Identity, LayerRule(_ONE, _identity_ibp))
register_layer(nn.Sequential, LayerRule(_sequential_lip, _sequential_ibp))
register_layer(Constant, LayerRule(lambda net, shape: (0.0, ()), _constant_ibp))
register_layer(nn.Linear, LayerRule(_linear_lip, _linear_ibp))
register_layer(SpectralNormLinear, LayerRule(_linear_lip, _linear_ibp))
register_layer(nn.Conv2d, LayerRule(_conv_lip, _conv_ibp))
register_layer(SpectralNormConv2d, LayerRule(_conv_lip, _conv_ibp))
