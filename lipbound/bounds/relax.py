r"""Output ranges of small sub-networks by linear relaxation (CROWN-style backward bound
propagation), rigorous in floating point, intersected with interval bound propagation.

For a chain ``z_1 = W_1 x + b_1``, ``h_j = sigma(z_j)``, ``z_{j+1} = W_{j+1} h_j + b_{j+1}``, a
lower bound on ``z_k`` over the box ``x in c +- r`` follows backward from ``Lambda = I``:

* through an affine layer, ``Lambda z_j = (Lambda W_j) h_{j-1} + Lambda b_j``;
* through ``sigma`` (ReLU or LeakyReLU with ``0 <= a <= 1``, convex, ``sigma(0) = 0``) on
  ``z in [l, u]``, with lines ``alpha z <= sigma(z) <= s z + beta``: a non-negative coefficient
  takes the lower line, a negative one the upper line;
* at the input, ``Lambda x >= Lambda c - |Lambda| r``.

The upper bound is the lower bound of ``-z_k``. Pre-activation ranges ``[l, u]`` come from the same
propagation on each prefix, intersected with interval propagation (:mod:`.layers`), so the result is
never looser than interval propagation.

**Soundness in floating point.** The lines are valid for any float slopes: the lower line has
slope ``alpha in {a, 1}`` and intercept 0 (``sigma(z) >= alpha z`` everywhere), the upper line's
intercept is ``beta = max(sigma(l) - s l, sigma(u) - s u)`` rounded up (above ``sigma`` at both
ends, so above it on ``[l, u]`` by convexity). Every float product and sum of the backward pass is
then charged its error bound (Higham, eq. 3.5): ``fl(Lambda W) = Lambda W + E`` with
``|E| <= gamma(n) |Lambda| |W|``, so
``Lambda W h >= fl(Lambda W) h - gamma(n) (|Lambda| |W|) |h|_max`` with ``|h|_max`` from the
enclosures of ``h``; the same for the products with slopes and intercepts, the sums of the
constant terms and the final evaluation at the box. The sum of these charges, rounded up, is
subtracted.

Boxes may be batches (``(B, ...)``, one relaxation per box, :mod:`.batched`): the backward
coefficients then carry the batch dimension.

Supported: ``nn.Sequential`` of ``nn.Linear`` / ``nn.Conv2d`` (stride 1, zero padding, as dense
matrices, exact: a convolution of a one-hot input is one weight) alternating with ``nn.ReLU`` /
``nn.LeakyReLU``, ending with a linear layer, up to :data:`MAX_ENTRIES` entries per matrix; other
networks get ``None`` (interval propagation alone).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .interval import Box
from .intervalmatrix import matvec
from .layers import ibp
from .rounding import ETA, U, gamma

__all__ = ["MAX_ENTRIES", "METHOD", "dense_matrix", "out_shape", "relaxed_box", "supports"]

#: Largest dense matrix (entries) the relaxation builds; larger networks use intervals alone.
MAX_ENTRIES = 2_000_000
#: The name of the method, as reports state it.
METHOD = "linear relaxation (CROWN-style) intersected with interval propagation"


def _slope(layer: nn.Module) -> float | None:
    if type(layer) is nn.ReLU:
        return 0.0
    if type(layer) is nn.LeakyReLU and 0.0 <= layer.negative_slope <= 1.0:
        return float(layer.negative_slope)
    return None


def dense_matrix(layer: nn.Module, shape: tuple[int, ...]
                 ) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """``(W, b, output shape)`` of a plain linear or stride-1 zero-padded convolution layer as a
    dense matrix on flattened samples (exact: each column is the layer on a one-hot input)."""
    n = math.prod(shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    w = layer.weight.detach().to(torch.float64)
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            cols = torch.nn.functional.linear(eye, w)
        else:
            cols = torch.nn.functional.conv2d(eye, w, padding=layer.padding)
    out_shape = tuple(cols.shape[1:])
    b = torch.zeros(out_shape, dtype=torch.float64)
    if layer.bias is not None:
        bias = layer.bias.detach().to(torch.float64)
        b = b + (bias if isinstance(layer, nn.Linear) else bias.reshape(-1, 1, 1))
    return cols.reshape(n, -1).T.contiguous(), b.reshape(-1), out_shape


def _plain_conv(layer: nn.Module) -> bool:
    return (type(layer) is nn.Conv2d and layer.stride == (1, 1) and layer.dilation == (1, 1)
            and layer.groups == 1 and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str))


def out_shape(layer: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The layer's per-sample output shape, or ``None`` if the relaxation does not take it."""
    if type(layer) is nn.Linear:
        return (layer.out_features,) if shape == (layer.in_features,) else None
    if not _plain_conv(layer) or len(shape) != 3 or shape[0] != layer.in_channels:
        return None
    h, w = (shape[1 + i] + 2 * layer.padding[i] - layer.kernel_size[i] + 1 for i in range(2))
    return (layer.out_channels, h, w) if h > 0 and w > 0 else None


def supports(net: nn.Module, shape: tuple[int, ...]) -> bool:
    """Whether :func:`relaxed_box` handles ``net`` on per-sample inputs of ``shape``."""
    if type(net) is not nn.Sequential or len(net) % 2 == 0:
        return False
    for i, layer in enumerate(net):
        if i % 2:
            if _slope(layer) is None:
                return False
            continue
        out = out_shape(layer, tuple(shape))
        if out is None or math.prod(out) * math.prod(shape) > MAX_ENTRIES:
            return False
        shape = out
    return True


def _lines(lo: Tensor, hi: Tensor, a: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(alpha, s, beta)``: ``alpha z <= sigma(z) <= s z + beta`` on ``[lo, hi]`` for
    ``sigma(z) = max(z, a z)`` (module docstring)."""
    sig_lo, sig_hi = torch.maximum(lo, a * lo), torch.maximum(hi, a * hi)
    width = hi - lo
    chord = torch.where(width > 0, (sig_hi - sig_lo) / torch.where(width > 0, width, 1.0),
                        torch.ones_like(lo))
    s = torch.where(hi <= 0, torch.full_like(lo, a), torch.where(lo >= 0, 1.0, chord))
    at_lo, at_hi = sig_lo - s * lo, sig_hi - s * hi
    pad = 4 * U * (sig_lo.abs() + (s * lo).abs() + sig_hi.abs() + (s * hi).abs()) + ETA
    beta = torch.maximum(at_lo, at_hi) + pad
    beta = torch.where((hi <= 0) | (lo >= 0), torch.zeros_like(lo), beta)  # exact lines
    beta = torch.nextafter(beta, torch.full_like(beta, math.inf))
    # float64 tensors: torch.where of two python numbers is float32 (0.01 -> 0.0099999998)
    one, slope = torch.ones_like(lo), torch.full_like(lo, a)
    alpha = torch.where(hi <= 0, slope,
                        torch.where(lo >= 0, one, torch.where(hi >= -lo, one, slope)))
    return alpha, s, beta


def _lower(mats: list[tuple[Tensor, Tensor]], slopes: list[float], pre: list[tuple[Tensor, Tensor]],
           mags: list[Tensor], center: Tensor, radius: Tensor, k: int, sign: float) -> Tensor:
    """A lower bound on ``sign * z_k`` (0-based ``k``) over the box (module docstring): ``pre``
    the ranges of ``z_0 .. z_{k-1}``, ``mags[j]`` an upper bound on ``|h_{j-1}|`` (``mags[0]``
    on ``|x|``) and ``mags`` of ``z`` in ``pre`` themselves."""
    w_k, b_k = mats[k]
    lam = sign * torch.eye(w_k.shape[0], dtype=torch.float64)
    const = torch.zeros(w_k.shape[0], dtype=torch.float64)
    charge = torch.zeros_like(const)
    sums = torch.zeros_like(const)  # |const| after each addition: their rounding errors
    for j in range(k, -1, -1):
        w, b = mats[j]
        n = w.shape[1]
        const = const + lam @ b
        sums = sums + const.abs()
        charge = charge + gamma(w.shape[0] + 1) * (lam.abs() @ b.abs())
        m = lam @ w
        charge = charge + gamma(w.shape[0] + 1) * matvec(lam.abs() @ w.abs(), mags[j])
        if j == 0:
            lam = m
            break
        lo, hi = pre[j - 1]
        alpha, s, beta = _lines(lo, hi, slopes[j - 1])
        pos, neg = m.clamp(min=0), m.clamp(max=0)
        lam = pos * alpha.unsqueeze(-2) + neg * s.unsqueeze(-2)
        const = const + matvec(neg, beta)
        sums = sums + const.abs()
        z_mag = torch.maximum(lo.abs(), hi.abs())
        charge = charge + U * matvec(lam.abs(), z_mag) + gamma(n + 1) * matvec(neg.abs(),
                                                                              beta.abs())
    n = lam.shape[-1]
    value = matvec(lam, center) - matvec(lam.abs(), radius) + const
    charge = charge + gamma(n + 2) * (matvec(lam.abs(), center.abs())
                                       + matvec(lam.abs(), radius) + const.abs()) + U * sums
    charge = charge * (1 + gamma(4 * n + 4 * k + 8)) + ETA
    return torch.nextafter(value - charge, torch.full_like(value, -math.inf))


def relaxed_box(net: nn.Module, box: Box) -> Box | None:
    """A box enclosing ``net(x)`` for every ``x`` in ``box``, from the linear relaxation
    intersected with interval propagation; ``None`` when ``net`` is not supported
    (:func:`supports`)."""
    if not supports(net, box.shape) or not box.is_finite():
        return None
    layers = list(net)
    mats, slopes, shape = [], [], box.shape
    interval = [box]  # enclosures of x, z_0, h_0, z_1, ...
    with torch.no_grad():
        for i, layer in enumerate(layers):
            if i % 2 == 0:
                w, b, shape = dense_matrix(layer, shape)
                mats.append((w, b))
            else:
                slopes.append(_slope(layer))
            interval.append(ibp(layer, interval[-1]))
        c, r = box.center_radius()
        batch = len(c)
        center, radius = c.reshape(batch, -1), r.reshape(batch, -1)
        pre: list[tuple[Tensor, Tensor]] = []
        for k in range(len(mats)):
            z_ibp = interval[2 * k + 1]
            if not z_ibp.is_finite():
                return None
            # |h_{k-1}|: its interval enclosure, or sigma of the relaxed range of z_{k-1}
            mags = [torch.maximum(box.lo.abs(), box.hi.abs()).reshape(batch, -1)]
            for j in range(1, k + 1):
                lo, hi = pre[j - 1]
                a = slopes[j - 1]
                mags.append(torch.maximum(torch.maximum(lo, a * lo).abs(),
                                          torch.maximum(hi, a * hi).abs()))
            lo = _lower(mats, slopes, pre, mags, center, radius, k, 1.0)
            hi = -_lower(mats, slopes, pre, mags, center, radius, k, -1.0)
            lo = torch.maximum(lo, z_ibp.lo.reshape(batch, -1))
            hi = torch.minimum(hi, z_ibp.hi.reshape(batch, -1))
            if bool((lo > hi).any()):
                raise RuntimeError("the linear relaxation and interval propagation disagree: "
                                   "one of them is unsound")
            pre.append((lo, hi))
    out = interval[-1]
    lo, hi = pre[-1]
    return Box(lo.reshape(out.lo.shape), hi.reshape(out.hi.shape))
