"""Certified norms against exact ones, activation constants, and interval bound propagation."""

from __future__ import annotations

import math

import mpmath as mp
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipbound.blocks.residual import LipSwish
from lipbound.bounds import Box
from lipbound.bounds.layers import ibp, lipschitz
from lipbound.bounds.norms import _circular_norm_upper as circular_norm_upper
from lipbound.bounds.norms import (
    certified_inverse,
    conv2d_norm_upper,
    spectral_norm_upper,
)


def _dyadic(shape: tuple[int, ...]) -> torch.Tensor:
    """Random dyadic entries k / 64 with |k| <= 256 (every product and sum here is exact)."""
    return torch.randint(-256, 257, shape).to(torch.float64) / 64


def _signed_permutation(n: int) -> torch.Tensor:
    signs = torch.randint(0, 2, (n,)).to(torch.float64) * 2 - 1
    return torch.eye(n)[torch.randperm(n)] * signs


def _hadamard(n: int) -> torch.Tensor:
    """The orthogonal ``H / sqrt(n)`` for ``n`` a power of 4 (entries +-2^-k: exact)."""
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / 2 ** (math.log2(n) / 2)


def _known_norm(kind: str, m: int, n: int) -> tuple[torch.Tensor, float]:
    """A matrix whose 2-norm is known exactly: ``Q1 D Q2`` with ``Q`` orthogonal (signed
    permutations, or a scaled Hadamard matrix) and ``D`` dyadic and diagonal (norm max |D_ii|),
    or a rank-one ``u v^T`` with ``||u|| = 5/8``, ``||v|| = 13/16`` (norm 65/128)."""
    if kind == "rank1":  # with m or n = 1 only the 3 (or 5) is kept: the norms stay exact
        u, v = torch.zeros(m, 1), torch.zeros(1, n)
        u[torch.randperm(m)[: min(m, 2)], 0] = torch.tensor([3.0, 4.0])[: min(m, 2)] / 8
        v[0, torch.randperm(n)[: min(n, 2)]] = torch.tensor([5.0, 12.0])[: min(n, 2)] / 16
        return u @ v, float(u.norm()) * float(v.norm())  # 5/8 * 13/16 = 65/128 etc., exact
    k = min(m, n)
    d = _dyadic((k,))  # |d_i| <= 4
    d[torch.randint(0, k, ())] = -4.25  # the largest, exactly
    middle = torch.zeros(m, n)
    middle[range(k), range(k)] = d
    left = _hadamard(m) if kind == "hadamard" else _signed_permutation(m)
    right = _hadamard(n) if kind == "hadamard" else _signed_permutation(n)
    return left @ middle @ right, 4.25


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (3, 5), (40, 40), (64, 17)])
@pytest.mark.parametrize("kind", ["permuted", "rank1", "scaled"])
def test_spectral_norm_upper_bounds_exactly_known_norms(shape, kind):
    w, exact = _known_norm("permuted" if kind == "scaled" else kind, *shape)
    if kind == "scaled":  # by a power of two: still exact
        w, exact = w * 2.0 ** -30, exact * 2.0 ** -30
    ub = spectral_norm_upper(w)
    assert exact <= ub <= exact * (1 + 1e-3)


@pytest.mark.parametrize("n", [4, 16, 64])
def test_spectral_norm_upper_with_dense_orthogonal_factors(n):
    w, exact = _known_norm("hadamard", n, n)
    assert bool((w != 0).float().mean() > 0.5)  # dense: no entry is known without the product
    ub = spectral_norm_upper(w)
    assert exact <= ub <= exact * (1 + 1e-3)


def _norm_lower(w: torch.Tensor) -> mp.mpf:
    """A lower bound on the exact ``||w||_2``: ``||w x|| / ||x||`` in 40-digit arithmetic at the
    float top right singular vector ``x`` (within ``O(u^2)`` of the norm)."""
    x = torch.linalg.svd(w.to(torch.complex128) if w.is_complex() else w).Vh[0].conj()
    with mp.workdps(40):
        rows = [sum(mp.mpc(complex(a)) * mp.mpc(complex(b)) for a, b in zip(row, x.tolist()))
                for row in w.tolist()]
        return mp.sqrt(sum(abs(r) ** 2 for r in rows)) / mp.sqrt(sum(abs(mp.mpc(complex(b))) ** 2
                                                                   for b in x.tolist()))


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (17, 9)])
def test_spectral_norm_upper_of_gaussian_matrices(shape):
    w = torch.randn(shape)
    lower = _norm_lower(w)
    ub = spectral_norm_upper(w)
    assert lower <= ub <= lower * (1 + 1e-3)


def test_spectral_norm_upper_complex_batch_and_zero():
    w = torch.randn(7, 6, 4, dtype=torch.complex128)
    lower = max(_norm_lower(m) for m in w)
    assert lower <= spectral_norm_upper(w) <= lower * (1 + 1e-3)
    diag = torch.zeros(2, 3, 3, dtype=torch.complex128)
    diag[1, range(3), range(3)] = torch.tensor([0.5j, -2.0 + 0j, 1.5 + 0j])  # norm 2, exactly
    assert 2.0 <= spectral_norm_upper(diag) <= 2.0 * (1 + 1e-3)
    assert spectral_norm_upper(torch.zeros(3, 4)) == 0.0
    with pytest.raises(ValueError, match="finite"):
        spectral_norm_upper(torch.tensor([[math.nan]]))


def test_certified_inverse():
    q1, q2 = _signed_permutation(6), _hadamard(4)
    d = torch.tensor([0.25, -2.0, 1.5, 8.0, -0.75, 3.0])
    w = q1 @ torch.diag(d) @ q1.T  # ||W^-1|| = 1 / 0.25 = 4 exactly
    x, bound, residual = certified_inverse(w)
    assert 4.0 <= bound <= 4.0 * (1 + 1e-3)
    assert residual < 1e-10
    dense = q2 @ torch.diag(torch.tensor([0.5, 2.0, -1.0, 0.125])) @ q2.T  # norm of inverse: 8
    assert 8.0 <= certified_inverse(dense)[1] <= 8.0 * (1 + 1e-3)
    # with an error e, the bound covers every W within e: here W = w + e I, smallest |d| - e
    e = 2.0 ** -10
    assert certified_inverse(w, error=e)[1] >= 1 / (0.25 - e)
    with pytest.raises(ValueError, match="singular|ill-conditioned"):
        certified_inverse(torch.ones(3, 3))


def _dense_conv_norm(w: torch.Tensor, hw: tuple[int, int], padding: tuple[int, int]) -> mp.mpf:
    """A lower bound on the exact norm of the convolution (:func:`_norm_lower` of its dense
    matrix, whose entries are single weights: exact)."""
    n = w.shape[1] * hw[0] * hw[1]
    basis = torch.eye(n).reshape(n, w.shape[1], *hw)
    return _norm_lower(F.conv2d(basis, w, padding=padding).reshape(n, -1).T)


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


@pytest.mark.parametrize("hw", [(3, 4), (40, 40)])
def test_conv_norm_of_a_centre_tap_kernel_is_its_channel_matrix_norm(hw):
    """A 3x3 kernel with only its centre tap, padding 1: the map is ``x -> K x`` per pixel, of norm
    ``||K||``; ``K = Q D Q'`` with dyadic ``D`` has norm 4.25 exactly (large inputs take the
    circular-embedding path)."""
    k, exact = _known_norm("permuted", 4, 3)
    w = torch.zeros(4, 3, 3, 3)
    w[:, :, 1, 1] = k
    assert exact <= conv2d_norm_upper(w, hw, (1, 1)) <= exact * (1 + 1e-3)


def test_conv_norm_refuses_unsupported_padding():
    with pytest.raises(ValueError, match="padding"):
        conv2d_norm_upper(torch.randn(2, 2, 3, 3), (4, 4), (3, 1))


def test_activation_constants_dominate_derivatives():
    """Each rule's constant lies between the largest sampled derivative and 1% above it (the SiLU
    constant is also checked against mpmath in test_bounds_activations.py)."""
    x = torch.linspace(-30, 30, 200001, requires_grad=True)
    for layer in [nn.SiLU(), LipSwish(), nn.Sigmoid(), nn.ELU(2.0), nn.Softplus(), nn.Tanh(),
                  nn.LeakyReLU(-1.5)]:
        (grad,) = torch.autograd.grad(layer(x).sum(), x)
        found = float(grad.abs().max())
        lip = lipschitz(layer, (3,))[0]
        assert found <= lip <= found * 1.01, (layer, found, lip)


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
