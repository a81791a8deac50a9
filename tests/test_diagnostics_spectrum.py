"""Jacobian spectra: full SVD and matrix-free Lanczos against exact singular values in float64."""

from __future__ import annotations

import pytest
import torch
from conftest import functional_jacobian
from torch import nn

from lipbound.blocks import (
    AffineCoupling,
    ChannelPartition,
    ExpScale,
    InvertibleSequential,
    figure1_chain,
    glow_like,
    randomize_parameters,
    residual_flow,
)
from lipbound.diagnostics import (
    jacobian,
    jacobian_rowwise,
    sigma_max,
    sigma_min,
    singular_values,
    spectrum,
)


def _glow(seed: int = 0):
    model = glow_like((3, 2, 2), levels=1, steps=2, hidden=8, coupling="affine")
    return randomize_parameters(model, 0.1, torch.Generator().manual_seed(seed)).eval()


def _reference_svd(fn, x):
    """Singular values from torch.autograd.functional.jacobian (not torch.func), per sample."""
    return torch.linalg.svdvals(functional_jacobian(fn, x))


def test_figure1_chain_has_singular_values_one_and_g_to_the_depth():
    # End of section 2 of the paper: the affine chain's Jacobian is diag(1, g^depth).
    depth, g = 6, 0.1
    model = figure1_chain(depth, "affine", g=g)
    x = torch.randn(3, 2)
    full = spectrum(model, x, method="full")
    torch.testing.assert_close(full.sigma_max, torch.ones(3), rtol=1e-13, atol=0)
    torch.testing.assert_close(full.sigma_min, torch.full((3,), g**depth), rtol=1e-12, atol=0)
    torch.testing.assert_close(full.condition_inverse, torch.full((3,), g**-depth), rtol=1e-10,
                               atol=0)
    free = spectrum(model, x, method="matrix_free")
    torch.testing.assert_close(free.sigma_max, torch.ones(3), rtol=1e-10, atol=0)
    torch.testing.assert_close(free.sigma_min, torch.full((3,), g**depth), rtol=1e-10, atol=0)


def test_full_spectrum_matches_an_independent_jacobian():
    model = _glow()
    x = torch.randn(2, 3, 2, 2)
    sp = spectrum(model, x, method="full")
    ref = _reference_svd(model, x)
    torch.testing.assert_close(sp.singular_values, ref, rtol=1e-10, atol=1e-14)
    with torch.no_grad():
        z = model(x)
    ref_inv = _reference_svd(model.inverse, z)
    torch.testing.assert_close(sp.inverse_sigma_max, ref_inv[:, 0], rtol=1e-10, atol=0)
    # J_{F^-1}(F(x)) = J_F(x)^-1: its singular values are the reciprocals.
    torch.testing.assert_close(sp.inverse_sigma_max, 1 / sp.sigma_min, rtol=1e-9, atol=0)
    torch.testing.assert_close(sp.condition_forward, sp.condition_inverse, rtol=1e-9, atol=0)


def test_matrix_free_sigma_within_stated_accuracy_of_exact_svd():
    model = _glow(1)
    x = torch.randn(2, 3, 2, 2)
    exact = _reference_svd(model, x)
    for b in range(2):
        top = sigma_max(model, x[b], tol=1e-10)
        low = sigma_min(model, x[b], tol=1e-10)
        assert top.converged and low.converged
        assert top.rel_accuracy < 1e-6 and low.rel_accuracy < 1e-6
        assert abs(top.value - exact[b, 0]) <= top.rel_accuracy * top.value + 1e-12
        assert abs(low.value - exact[b, -1]) <= low.rel_accuracy * low.value + 1e-12
        # a Rayleigh quotient never exceeds the largest singular value
        assert top.value <= exact[b, 0] * (1 + 1e-12)
    sp = spectrum(model, x, method="matrix_free", tol=1e-10)
    torch.testing.assert_close(sp.sigma_max, exact[:, 0], rtol=1e-6, atol=0)
    torch.testing.assert_close(sp.sigma_min, exact[:, -1], rtol=1e-6, atol=0)
    assert bool((sp.rel_accuracy < 1e-6).all())


def test_rowwise_jacobian_equals_vmapped_one():
    model = _glow(2)
    x = torch.randn(2, 3, 2, 2)
    batched = jacobian(model, x)
    for b in range(2):
        torch.testing.assert_close(jacobian_rowwise(model, x[b]), batched[b], rtol=1e-12,
                                   atol=1e-14)


def test_iterative_inverse_spectrum_is_consistent():
    # i-ResNet: the inverse is a fixed-point loop; its Jacobian must invert the forward one.
    model = residual_flow((2,), n_blocks=2, hidden=8, coeff=0.8).eval()
    x = torch.randn(4, 2)
    sp = spectrum(model, x, method="full")
    torch.testing.assert_close(sp.inverse_sigma_max, 1 / sp.sigma_min, rtol=1e-8, atol=0)
    # Lip(g) <= 0.8 per block: 0.2^2 <= sigma <= 1.8^2 (Table 3, composed)
    assert bool((sp.sigma_min >= 0.2**2).all()) and bool((sp.sigma_max <= 1.8**2).all())


def test_non_finite_jacobian_gives_nan_spectrum_row():
    # y2 = x2 * exp(x1): J = [[1, 0], [x2 exp(x1), exp(x1)]] is infinite at x1 = 1000.
    model = InvertibleSequential(AffineCoupling(ChannelPartition([0], [1], 2), 0.0, nn.Identity(),
                                                ExpScale()))
    x = torch.tensor([[2.0, 3.0], [1000.0, 1.0]])
    sv = singular_values(model, x)
    assert bool(torch.isfinite(sv[0]).all()) and bool(torch.isnan(sv[1]).all())
    est = sigma_max(model, x[1])
    assert est.value != est.value and not est.converged  # NaN, reported, not raised


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="method must be"):
        spectrum(_glow(), torch.randn(1, 3, 2, 2), method="lanczos")
    with pytest.raises(ValueError, match="x must be a batch"):
        spectrum(_glow(), torch.randn(12))


def test_matrix_free_on_iterative_inverse_matches_full():
    model = residual_flow((3,), n_blocks=2, hidden=8, coeff=0.8).eval()
    x = torch.randn(2, 3)
    full = spectrum(model, x, method="full")
    free = spectrum(model, x, method="matrix_free")
    torch.testing.assert_close(free.sigma_max, full.sigma_max, rtol=1e-7, atol=0)
    torch.testing.assert_close(free.sigma_min, full.sigma_min, rtol=1e-7, atol=0)
