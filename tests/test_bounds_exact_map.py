"""The bounds certify the exact map the oracle computes, not torch's rounded weights: the LU
product of an invertible 1x1 convolution and the spectral normalisation ``W / max(1, sigma / c)``,
each against a 50-digit mpmath computation from the stored parameters."""

from __future__ import annotations

import mpmath as mp
import pytest
import torch

from lipbound.blocks import Invertible1x1Conv, InvertibleSequential
from lipbound.blocks.residual import SpectralNormConv2d, SpectralNormLinear
from lipbound.bounds import bound_model
from lipbound.bounds.blocks import _matrix
from lipbound.bounds.layers import _power_vectors, _spectral_factor, lipschitz


def _mp_lu(block: Invertible1x1Conv) -> mp.matrix:
    n = block.num_channels
    lower, upper, perm = (t.detach().tolist() for t in (block.lower, block.upper, block.perm))
    sign, log_s = block.sign_s.tolist(), block.log_s.detach().tolist()
    low = mp.matrix([[lower[i][j] if j < i else int(i == j) for j in range(n)] for i in range(n)])
    up = mp.matrix([[upper[i][j] if j > i else (sign[i] * mp.exp(log_s[i]) if i == j else 0)
                     for j in range(n)] for i in range(n)])
    return mp.matrix(perm) * low * up


@pytest.mark.parametrize("n", [3, 8])
def test_lu_matrix_enclosure_holds_the_exact_product(n):
    block = Invertible1x1Conv(n, lu=True)
    with torch.no_grad():
        block.log_s.add_(torch.randn(n))
        block.lower.add_(torch.randn(n, n))
        block.upper.add_(torch.randn(n, n))
    m, e = _matrix(block)
    with mp.workdps(50):
        exact = _mp_lu(block)
        gap = mp.sqrt(sum((exact[i, j] - mp.mpf(float(m[i, j]))) ** 2
                          for i in range(n) for j in range(n)))
        torch_gap = mp.sqrt(sum((exact[i, j] - mp.mpf(float(w))) ** 2
                                for (i, j), w in zip(((i, j) for i in range(n) for j in range(n)),
                                                     block.matrix().detach().flatten().tolist())))
    assert gap <= e <= 1e-14 * float(m.abs().max())
    assert torch_gap > 0  # torch's product is rounded: the enclosure is needed
    row = bound_model(InvertibleSequential(block), (n,)).blocks[0]
    with mp.workdps(50):
        s = mp.svd_r(exact, compute_uv=False)
    assert float(max(s)) <= row.forward.value <= float(max(s)) * (1 + 1e-3)
    assert float(1 / min(s)) <= row.inverse.value <= float(1 / min(s)) * (1 + 1e-3)


def _mp_sigma(layer: SpectralNormLinear, u: torch.Tensor, v: torch.Tensor) -> mp.mpf:
    w = layer.weight.detach().tolist()
    uu, vv = u.flatten().tolist(), v.flatten().tolist()
    return mp.fsum(uu[i] * mp.fsum(mp.mpf(w[i][j]) * vv[j] for j in range(len(vv)))
                   for i in range(len(uu)))


@pytest.mark.parametrize("stale", [False, True])
@pytest.mark.parametrize("exact", [False, True])
def test_spectral_factor_encloses_the_exact_normalisation(exact, stale):
    layer = SpectralNormLinear(5, 4, coeff=0.6, exact=exact)
    with torch.no_grad():
        layer(torch.zeros(1, 5))  # vectors current for this weight
        if stale:
            layer.weight.add_(torch.randn(4, 5))  # the forward would refresh them first
    stored = layer.u.clone()
    u, v = _power_vectors(layer)
    assert torch.equal(u, stored) != stale  # stale: other vectors than the stored ones
    layer.eval()
    with torch.no_grad():
        layer(torch.zeros(1, 5))  # the forward refreshes a stale layer: to what the bound used
    assert torch.equal(u, layer.u) and torch.equal(v, layer.v)
    f_lo, f_hi = _spectral_factor(layer, torch.nn.functional.linear, 5)
    with mp.workdps(50):
        f = 1 / max(mp.mpf(1), _mp_sigma(layer, u, v) / mp.mpf(layer.coeff))
        assert f_lo <= f <= f_hi and f_hi - f_lo <= 1e-14 * f
    lip = lipschitz(layer, (5,))[0]
    with mp.workdps(50):
        norm = max(mp.svd_r(mp.matrix(layer.weight.detach().tolist()), compute_uv=False)) * f
    assert norm <= lip <= norm * (1 + 1e-3)


def test_spectral_layer_with_dyadic_weight_has_its_exact_norm():
    """``W = diag(4, 2)``, exact sigma = 4, ``c = 0.5``: the map is ``W / 8``, of norm 1/2."""
    layer = SpectralNormLinear(2, 2, coeff=0.5, exact=True, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.diag(torch.tensor([4.0, 2.0])))
        layer(torch.zeros(1, 2))
    assert 0.5 <= lipschitz(layer, (2,))[0] <= 0.5 * (1 + 1e-3)
    conv = SpectralNormConv2d(1, 1, 1, coeff=0.5, exact=True, input_shape=(1, 2, 2))
    with torch.no_grad():
        conv.weight.fill_(4.0)  # 1x1 kernel 4: the map is 4 x, normalised to 0.5 x
    assert 0.5 <= lipschitz(conv, (1, 2, 2))[0] <= 0.5 * (1 + 1e-3)


def test_unset_power_vectors_are_a_clear_error():
    conv = SpectralNormConv2d(1, 1, 3, coeff=0.5)  # no input_shape, never called
    with pytest.raises(ValueError, match="input shape is unknown"):
        lipschitz(conv, (1, 4, 4))
