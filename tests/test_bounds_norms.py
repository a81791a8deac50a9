"""Certified norms against exact ones, activation constants, and interval bound propagation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipbound.blocks.residual import LipSwish
from lipbound.bounds import Box
from lipbound.bounds.layers import SILU_LIP, ibp, lipschitz
from lipbound.bounds.norms import _circular_norm_upper as circular_norm_upper
from lipbound.bounds.norms import (
    certified_inverse,
    conv2d_norm_upper,
    spectral_norm_upper,
)


def _exact(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w, 2))


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (3, 5), (40, 40), (64, 17)])
@pytest.mark.parametrize("kind", ["gaussian", "orthogonal", "rank1", "scaled"])
def test_spectral_norm_upper_is_a_tight_upper_bound(shape, kind):
    w = torch.randn(shape)
    if kind == "orthogonal":
        w = torch.linalg.qr(torch.randn(max(shape), max(shape)))[0][: shape[0], : shape[1]]
    elif kind == "rank1":
        w = torch.randn(shape[0], 1) @ torch.randn(1, shape[1])
    elif kind == "scaled":
        w = w * 1e-7
    exact = _exact(w)
    ub = spectral_norm_upper(w)
    assert exact <= ub <= exact * (1 + 1e-3)


def test_spectral_norm_upper_complex_batch_and_zero():
    w = torch.randn(7, 6, 4, dtype=torch.complex128)
    exact = float(torch.linalg.matrix_norm(w, 2).max())
    assert exact <= spectral_norm_upper(w) <= exact * (1 + 1e-3)
    assert spectral_norm_upper(torch.zeros(3, 4)) == 0.0
    with pytest.raises(ValueError, match="finite"):
        spectral_norm_upper(torch.tensor([[math.nan]]))


def test_certified_inverse():
    w = torch.randn(6, 6)
    exact = _exact(torch.linalg.inv(w))
    x, bound, residual = certified_inverse(w)
    assert exact <= bound <= exact * (1 + 1e-3)
    assert residual < 1e-10
    with pytest.raises(ValueError, match="singular|ill-conditioned"):
        certified_inverse(torch.ones(3, 3))


def _dense_conv_norm(w: torch.Tensor, hw: tuple[int, int], padding: tuple[int, int]) -> float:
    n = w.shape[1] * hw[0] * hw[1]
    basis = torch.eye(n).reshape(n, w.shape[1], *hw)
    return _exact(F.conv2d(basis, w, padding=padding).reshape(n, -1).T)


CONV_CASES = [(k, p, hw) for k, p in [(3, (1, 1)), (3, (0, 2)), (5, (2, 2)), (5, (4, 1)),
                                        (1, (0, 0)), (2, (1, 0))]
              for hw in [(1, 1), (3, 4), (6, 5)]
              if min(hw[0] + 2 * p[0], hw[1] + 2 * p[1]) >= k]  # else there is no output


@pytest.mark.parametrize("k,padding,hw", CONV_CASES)
def test_conv_norm_bounds_the_zero_padded_operator(k, padding, hw):
    w = torch.randn(3, 2, k, k)
    exact = _dense_conv_norm(w, hw, padding)
    assert exact <= conv2d_norm_upper(w, hw, padding) <= exact * (1 + 1e-3) + 1e-12
    if k > 1:  # the circular embedding alone (the path used for large inputs) is also a bound
        grid = (hw[0] + padding[0], hw[1] + padding[1])
        assert exact <= circular_norm_upper(w, grid, 1e-4)


def test_conv_norm_refuses_unsupported_padding():
    with pytest.raises(ValueError, match="padding"):
        conv2d_norm_upper(torch.randn(2, 2, 3, 3), (4, 4), (3, 1))


def test_activation_constants_dominate_derivatives():
    x = torch.linspace(-30, 30, 200001, requires_grad=True)
    for layer, lip in [(nn.SiLU(), SILU_LIP), (LipSwish(), 1.0), (nn.Sigmoid(), 0.25),
                       (nn.ELU(2.0), 2.0), (nn.Softplus(), 1.0), (nn.Tanh(), 1.0)]:
        (grad,) = torch.autograd.grad(layer(x).sum(), x)
        assert float(grad.abs().max()) <= lip, layer
        assert float(grad.abs().max()) >= 0.2 * lip, layer  # the constant is not vacuous
        assert lipschitz(layer, (3,))[0] == lip


ACTS = [nn.ReLU(), nn.LeakyReLU(0.1), nn.ELU(), nn.Tanh(), nn.Sigmoid(), nn.SiLU(),
        nn.Softplus(), LipSwish()]


@pytest.mark.parametrize("act", ACTS, ids=lambda a: type(a).__name__)
def test_ibp_encloses_mlp_outputs(act):
    net = nn.Sequential(nn.Linear(3, 16), act, nn.Linear(16, 16), act, nn.Linear(16, 2))
    box = Box(torch.tensor([[-1.0, 0.0, 2.0]]), torch.tensor([[0.5, 0.1, 2.5]]))
    out = ibp(net, box)
    x = box.lo + torch.rand(4000, 3) * (box.hi - box.lo)
    with torch.no_grad():
        y = net(x)
    assert bool((y >= out.lo).all() and (y <= out.hi).all())


def test_ibp_encloses_conv_outputs_and_lipschitz_bounds_them():
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Tanh(),
                        nn.Conv2d(4, 2, 3, padding=1))
    box = Box.uniform(-1.0, 1.0, (2, 4, 4))
    out = ibp(net, box)
    x = box.lo + torch.rand(500, 2, 4, 4) * (box.hi - box.lo)
    with torch.no_grad():
        y = net(x)
    assert bool((y >= out.lo).all() and (y <= out.hi).all())
    lip, shape = lipschitz(net, (2, 4, 4))
    assert shape == (2, 4, 4)
    with torch.no_grad():
        ratio = (net(x[:250]) - net(x[250:])).flatten(1).norm(dim=1) / (
            x[:250] - x[250:]).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= lip


def test_unknown_layer_gets_a_registration_hint():
    with pytest.raises(TypeError, match="register_layer"):
        lipschitz(nn.Sequential(nn.Linear(2, 2), nn.Hardswish()), (2,))
    with pytest.raises(ValueError, match="stride 1"):
        lipschitz(nn.Conv2d(2, 2, 3, stride=2), (2, 4, 4))
    with pytest.raises(ValueError, match="expects 2 input features"):
        ibp(nn.Linear(2, 2), Box.uniform(0.0, 1.0, (3,)))
    with pytest.raises(ValueError, match="expects input"):
        ibp(nn.Conv2d(2, 2, 3, padding=1), Box.uniform(0.0, 1.0, (3, 4, 4)))


def test_interval_overflow_gives_infinite_ends_never_nan():
    huge = Box.uniform(-1e300, 1e300, (2,))
    prod = huge * huge  # overflows: [-inf, inf], not NaN
    assert bool(torch.isinf(prod.lo).all() and torch.isinf(prod.hi).all())
    assert float(prod.lo.max()) < 0 < float(prod.hi.min())
    positive = Box.uniform(1e200, 1e201, (2,))
    square = positive * positive  # both ends overflow to +inf: the lower end knows nothing
    assert bool(torch.isposinf(square.hi).all()) and not bool(torch.isnan(square.lo).any())
    assert float(square.lo.max()) <= torch.finfo(torch.float64).max
    everything = Box.everything((2,))
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))
    out = ibp(net, everything)  # [-inf, inf] after the first layer, tanh bounds it again
    assert out.is_finite()
    with torch.no_grad():
        y = net(torch.tensor([[1e200, -1e200], [0.0, 0.0]]))
    assert bool((y >= out.lo).all() and (y <= out.hi).all())
    zero_times_inf = Box.uniform(0.0, 1.0, (2,)) * everything
    assert bool(torch.isneginf(zero_times_inf.lo).all() and torch.isposinf(zero_times_inf.hi).all())


def test_box_intersection_is_exact_and_refuses_disjoint_enclosures():
    a, b = Box.uniform(-1.0, 2.0, (3,)), Box.uniform(0.5, 5.0, (3,))
    both = a.intersect(b)
    assert float(both.lo.min()) == 0.5 and float(both.hi.max()) == 2.0
    with pytest.raises(RuntimeError, match="disjoint"):
        a.intersect(Box.uniform(3.0, 4.0, (3,)))


def test_rule_registries_check_what_they_are_given():
    from lipbound.bounds import BlockRule, register_block, register_layer
    from lipbound.bounds.blocks import block_rule

    with pytest.raises(TypeError, match="register_block"):
        block_rule(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="BlockRule"):
        register_block(nn.Linear, lambda block, ctx: None)
    with pytest.raises(TypeError, match="LayerRule"):
        register_layer(nn.Hardswish, BlockRule(None, None, None))
    with pytest.raises(TypeError, match="class"):
        register_layer(nn.Hardswish(), BlockRule(None, None, None))
