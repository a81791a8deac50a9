"""Reference implementations of the layers that sub-networks are built from.

Each builder reads the torch layer's stored parameters and returns a callable on
:class:`~reference.tensor.RTensor` (or :class:`~reference.tensor.DualTensor`):

* ``nn.Linear``: ``y = x W^T + b`` as one backend matrix product;
* ``nn.Conv2d`` (groups 1, dilation 1, zero padding, any stride): im2col into a matrix, then one
  matrix product with the ``(C_in k_h k_w) x C_out`` weight matrix;
* activations ``ReLU``, ``LeakyReLU``, ``ELU``, ``Tanh``, ``Sigmoid``, ``SiLU``, ``Softplus``,
  ``LipSwish``, see :mod:`reference.functions`;
* ``Constant`` (coupling constants), ``nn.Sequential``, ``nn.Identity``;
* ``SpectralNormLinear``/``SpectralNormConv2d``: the effective weight
  ``W / max(1, sigma / c)`` with ``sigma = u^T A(W) v`` from the stored vectors ``u, v``,
  computed exactly (the layer's own power iteration never runs; stale vectors are refused);
* ``ODEFunc``: ``f(t, x) = net([x, t])``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from torch import nn

from lipbound.blocks.ode import ODEFunc
from lipbound.blocks.spectral import (
    LipSwish,
    SpectralNormConv2d,
    SpectralNormLayer,
    SpectralNormLinear,
)
from lipbound.blocks.subnets import Constant
from lipbound.errors import InputError

from . import functions as fn
from .registry import Compiler, register
from .tensor import RTensor, Tensorish

__all__ = ["Conv2dMap", "LinearMap", "conv_patches"]

Map = Callable[[Tensorish], Tensorish]


class LinearMap:
    """``y = x W^T + b`` over the last dimension; ``W`` is ``out x in``."""

    def __init__(self, weight: RTensor, bias: RTensor | None) -> None:
        out_f, in_f = weight.shape
        self.in_features, self.out_features = in_f, out_f
        w_t = weight.take(weight.index_grid().T)  # (in, out)
        self.prepared = weight.backend.prepare(w_t.data, in_f, out_f)
        self.bias = bias

    def __call__(self, x: Tensorish) -> Tensorish:
        y = x.matmul(self.prepared, self.in_features, self.out_features)
        return y if self.bias is None else y + self.bias


@lru_cache(maxsize=64)
def conv_patches(shape: tuple[int, int, int, int], kernel: tuple[int, int],
                 stride: tuple[int, int], padding: tuple[int, int]) -> np.ndarray:
    """im2col index: for an input of ``shape = (B, C, H, W)``, an index array of shape
    ``(B, H_out, W_out, C, k_h, k_w)`` into the flat input, ``-1`` where the zero padding is."""
    b, c, h, w = shape
    kh, kw = kernel
    (sh, sw), (ph, pw) = stride, padding
    h_out, w_out = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    rows = (np.arange(h_out) * sh - ph)[:, None] + np.arange(kh)[None, :]  # (H_out, kh)
    cols = (np.arange(w_out) * sw - pw)[:, None] + np.arange(kw)[None, :]  # (W_out, kw)
    r = rows[None, :, None, None, :, None]
    q = cols[None, None, :, None, None, :]
    bi = np.arange(b)[:, None, None, None, None, None]
    ci = np.arange(c)[None, None, None, :, None, None]
    index = ((bi * c + ci) * h + r) * w + q
    inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
    return np.where(inside, index, -1)


class Conv2dMap:
    """2-D cross-correlation (torch's ``conv2d``), groups 1, dilation 1, zero padding:
    ``y[b, o, i, j] = bias[o] + sum_{c, u, v} W[o, c, u, v] x_pad[b, c, i s_h + u, j s_w + v]``."""

    def __init__(self, weight: RTensor, bias: RTensor | None, stride: tuple[int, int],
                 padding: tuple[int, int]) -> None:
        self.out_channels, self.in_channels, kh, kw = weight.shape
        self.kernel, self.stride, self.padding = (kh, kw), stride, padding
        self.inner = self.in_channels * kh * kw
        w_t = weight.reshape(self.out_channels, self.inner)
        w_t = w_t.take(w_t.index_grid().T)  # (C_in kh kw, C_out)
        self.prepared = weight.backend.prepare(w_t.data, self.inner, self.out_channels)
        self.bias = None if bias is None else bias.reshape(1, self.out_channels, 1, 1)

    def __call__(self, x: Tensorish) -> Tensorish:
        if len(x.shape) != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"conv input must be (B, {self.in_channels}, H, W), got {x.shape}")
        index = conv_patches(tuple(x.shape), self.kernel, self.stride, self.padding)
        b, h_out, w_out = index.shape[:3]
        cols = x.take(index.reshape(b * h_out * w_out, self.inner))
        y = cols.matmul(self.prepared, self.inner, self.out_channels)  # (B H W, C_out)
        grid = np.arange(b * h_out * w_out * self.out_channels).reshape(
            b, h_out, w_out, self.out_channels)
        y = y.take(grid.transpose(0, 3, 1, 2))
        return y if self.bias is None else y + self.bias


def _pair(v: int | tuple[int, ...], name: str) -> tuple[int, int]:
    if isinstance(v, str):
        raise InputError(f"Conv2d {name}={v!r} is not supported by the reference; use integers")
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _check_conv(module: nn.Conv2d) -> None:
    if module.groups != 1 or _pair(module.dilation, "dilation") != (1, 1):
        raise InputError(f"reference Conv2d supports groups=1 and dilation=1, got groups="
                         f"{module.groups}, dilation={module.dilation}")
    if module.padding_mode != "zeros":
        raise InputError(f"reference Conv2d supports padding_mode='zeros', got "
                         f"{module.padding_mode!r}")


@register(nn.Linear)
def _linear(module: nn.Linear, c: Compiler) -> Map:
    return LinearMap(c.param(module.weight), c.param(module.bias))


@register(nn.Conv2d)
def _conv(module: nn.Conv2d, c: Compiler) -> Map:
    _check_conv(module)
    return Conv2dMap(c.param(module.weight), c.param(module.bias),
                     _pair(module.stride, "stride"), _pair(module.padding, "padding"))


def _elementwise(f: fn.Elementwise) -> Map:
    return lambda x: x.apply(f)


register(nn.ReLU)(lambda m, c: _elementwise(fn.RELU))
register(nn.Tanh)(lambda m, c: _elementwise(fn.TANH))
register(nn.Sigmoid)(lambda m, c: _elementwise(fn.SIGMOID))
register(nn.SiLU)(lambda m, c: _elementwise(fn.SILU))
register(nn.LeakyReLU)(lambda m, c: _elementwise(fn.leaky_relu(float(m.negative_slope))))
register(nn.ELU)(lambda m, c: _elementwise(fn.elu(float(m.alpha))))
register(nn.Softplus)(lambda m, c: _elementwise(fn.softplus(float(m.beta),
                                                             float(m.threshold))))
register(nn.Identity)(lambda m, c: (lambda x: x))


@register(nn.Sequential)
def _sequential(module: nn.Sequential, c: Compiler) -> Map:
    layers = [c.compile(m) for m in module]

    def run(x: Tensorish) -> Tensorish:
        for layer in layers:
            x = layer(x)
        return x

    return run


@register(Constant)
def _constant(module: Constant, c: Compiler) -> Map:
    value = c.constant(module.value)
    return lambda x: value


@register(LipSwish)
def _lipswish(module: LipSwish, c: Compiler) -> Map:
    """``x * sigmoid(x * softplus(b)) / 1.1`` (torch's ``F.softplus``: beta 1, threshold 20)."""
    beta = c.param(module.raw_beta).apply(fn.softplus(1.0, 20.0))
    denom = c.number(1.1)
    return lambda x: x * (x * beta).apply(fn.SIGMOID) / denom


def _spectral(module: SpectralNormLayer, c: Compiler,
              make: Callable[[RTensor, RTensor | None], Map]) -> Map:
    """``W_eff = W / max(1, sigma / coeff)``, ``sigma = sum(u * A(W) v)`` from the layer's stored
    weight and power-iteration vectors ``u``, ``v`` (see
    :class:`lipbound.blocks.spectral.SpectralNormLayer`): the map its eval-mode forward applies.

    Nothing of the layer runs: the stored vectors are used as they are. When they do not belong
    to the current weight (the layer's state query ``vectors_current()``), the layer would
    recompute them at its next call, so its map is not yet fixed: refused, with the remedy."""
    name = type(module).__name__
    if module.v is None:
        raise InputError(f"{name}: the input shape is unknown, so the layer has no power-iteration "
                         "vectors yet; pass input_shape or run the model once before compiling "
                         "the reference")
    if not module.vectors_current():
        raise InputError(
            f"{name}: its stored power-iteration vectors u, v were computed for another weight "
            "(the weight changed since), so the layer recomputes them at its next call and its "
            "map is not fixed yet; call lipbound.blocks.refresh_spectral_norm(model) (or run the "
            "model once in eval mode) before compiling the reference")
    weight = c.param(module.weight)
    u, v = c.param(module.u), c.param(module.v)
    av = make(weight, None)(v)
    products = u * av
    bk = c.backend
    sigma = bk.zero()
    for p in products.data:
        sigma = sigma + p
    ratio = sigma / c.number(module.coeff).data[0]
    factor = bk.greater(ratio, bk.one(), lambda r: r, lambda r: bk.one())
    w_eff = weight / RTensor([factor], (), bk)
    return make(w_eff, c.param(module.bias))


@register(SpectralNormLinear)
def _sn_linear(module: SpectralNormLinear, c: Compiler) -> Map:
    return _spectral(module, c, LinearMap)


@register(SpectralNormConv2d)
def _sn_conv(module: SpectralNormConv2d, c: Compiler) -> Map:
    pad = (module.padding, module.padding)
    return _spectral(module, c, lambda w, b: Conv2dMap(w, b, (1, 1), pad))


@register(ODEFunc)
def _odefunc(module: ODEFunc, c: Compiler) -> Callable[[RTensor, Tensorish], Tensorish]:
    """``f(t, x) = net([x, t])`` (``t`` appended as the last feature when time dependent)."""
    net = c.compile(module.net)
    d = module.d

    def f(t: RTensor, x: Tensorish) -> Tensorish:
        if not module.time_dependent:
            return net(x)
        b = x.shape[0]
        index = np.concatenate([np.arange(b * d).reshape(b, d),
                                b * d + np.zeros((b, 1), dtype=np.int64)], axis=1)
        return net(x.reshape(b * d).stack_with(t.reshape(1)).take(index))

    return f
