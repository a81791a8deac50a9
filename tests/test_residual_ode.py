"""i-ResNet blocks, spectral normalisation and neural ODE blocks, checked in float64.

Every model has random, non-trivial parameters: weights are re-drawn from N(0, scale^2) with a
visible scale before spectral normalisation rescales them.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import relative_round_trip_error
from torch import nn

from lipbound.blocks.ode import NeuralODE, ODEFunc
from lipbound.blocks.residual import (
    InvertibleResidual,
    SpectralNormConv2d,
    SpectralNormLinear,
    residual_conv,
    residual_mlp,
)

F64 = torch.float64


def _redraw(module: nn.Module, scale: float = 1.0, seed: int = 0) -> nn.Module:
    """Re-draw every parameter from N(0, scale^2) (biases at a tenth of the scale), in float64."""
    gen = torch.Generator().manual_seed(seed)
    module.to(F64)
    with torch.no_grad():
        for name, p in module.named_parameters():
            std = scale if name.endswith("weight") else 0.1 * scale
            p.copy_(std * torch.randn(p.shape, generator=gen, dtype=F64))
    return module


def _jacrev_blocks(fn, x: torch.Tensor) -> torch.Tensor:
    """The per-sample blocks ``(B, n, n)`` of torch.func.jacrev of the whole batched map ``fn``."""
    n, batch = x[0].numel(), x.shape[0]
    jac = torch.func.jacrev(fn)(x).reshape(batch, n, batch, n)
    return torch.stack([jac[b, :, b, :] for b in range(batch)])


def _autograd_log_det(fn, x: torch.Tensor) -> torch.Tensor:
    """slogdet of the per-sample blocks of torch.func.jacrev of the batched map ``fn``."""
    return torch.linalg.slogdet(_jacrev_blocks(fn, x)).logabsdet


def _vector_iresnet(coeff: float = 0.9, d: int = 4, **kwargs) -> InvertibleResidual:
    return InvertibleResidual(_redraw(residual_mlp(d, 16, coeff=coeff)), **kwargs).eval()


def _image_iresnet(coeff: float = 0.9, **kwargs) -> InvertibleResidual:
    g = _redraw(residual_conv(2, 4, coeff=coeff, input_shape=(2, 4, 4)), scale=0.5)
    return InvertibleResidual(g, **kwargs).eval()


# ---------------------------------------------------------------- spectral normalisation


@pytest.mark.parametrize("shape", [(5, 7), (7, 5)])  # Gram matrix from either side
def test_exact_spectral_norm_linear_matches_svd(shape: tuple[int, int]):
    layer = _redraw(SpectralNormLinear(*shape, coeff=0.8, exact=True), scale=2.0)
    sigma = torch.linalg.svdvals(layer.weight.detach())[0]
    torch.testing.assert_close(layer.sigma().detach(), sigma, rtol=1e-13, atol=0)
    assert sigma > 0.8  # the redrawn weight is large, so normalisation is active
    assert torch.linalg.matrix_norm(layer.effective_weight().detach(), 2) <= 0.8 * (1 + 1e-13)


def test_exact_spectral_norm_conv_matches_dense_operator():
    layer = _redraw(SpectralNormConv2d(2, 3, 3, coeff=0.7, input_shape=(2, 5, 5), exact=True))
    n = 2 * 5 * 5
    basis = torch.eye(n, dtype=F64).reshape(n, 2, 5, 5)

    def dense(w: torch.Tensor) -> torch.Tensor:  # column j is the zero-padded conv of e_j
        return F.conv2d(basis, w, padding=1).reshape(n, -1).T

    with torch.no_grad():
        sigma = torch.linalg.matrix_norm(dense(layer.weight), 2)
        torch.testing.assert_close(layer.sigma(), sigma, rtol=1e-13, atol=0)
        assert sigma > 0.7
        assert torch.linalg.matrix_norm(dense(layer.effective_weight()), 2) <= 0.7 * (1 + 1e-13)
        # the layer applies that operator (plus bias) with the normalised weight
        x = torch.randn(3, 2, 5, 5, dtype=F64)
        ref = (dense(layer.effective_weight()) @ x.reshape(3, -1).T).T.reshape(3, 3, 5, 5)
        torch.testing.assert_close(layer(x), ref + layer.bias.reshape(1, 3, 1, 1))
    # a new weight invalidates the cached singular vectors
    _redraw(layer, scale=3.0, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(layer.sigma(), torch.linalg.matrix_norm(dense(layer.weight), 2),
                                   rtol=1e-13, atol=0)


@pytest.mark.parametrize("conv", [False, True])
def test_power_iteration_approaches_exact_sigma(conv: bool):
    if conv:
        layer = _redraw(SpectralNormConv2d(2, 3, 3, input_shape=(2, 5, 5), n_power_iterations=1))
        x = torch.randn(2, 2, 5, 5, dtype=F64)
    else:
        layer = _redraw(SpectralNormLinear(6, 4, n_power_iterations=1))
        x = torch.randn(2, 6, dtype=F64)
    exact = _redraw(SpectralNormConv2d(2, 3, 3, input_shape=(2, 5, 5), exact=True) if conv
                    else SpectralNormLinear(6, 4, exact=True))
    exact.load_state_dict({"weight": layer.weight, "bias": layer.bias}, strict=False)
    target = float(exact.sigma().detach())
    layer.train()
    layer(x)  # the first call converges the estimate for the new weight
    layer.u = torch.randn_like(layer.u)  # forget it: restart from a random vector
    errors = []
    for _ in range(60):  # one power-iteration step per training-mode forward call
        layer(x)
        errors.append(abs(float(layer.sigma().detach()) - target) / target)
    assert errors[-1] < 1e-8
    assert errors[-1] < errors[0]
    # in eval mode a changed weight triggers power iteration to convergence
    layer.eval()
    with torch.no_grad():
        layer.weight.mul_(-2.0)
    assert abs(float(layer.sigma().detach()) - 2 * target) <= 1e-10 * target


def test_spectral_norm_coeff_must_be_positive():
    for bad in (0.0, -0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="coeff"):
            SpectralNormLinear(3, 3, coeff=bad)
    with pytest.raises(ValueError, match="coeff"):
        SpectralNormConv2d(2, 2, 3, coeff=0.0)


def test_spectral_norm_bad_input_shape():
    with pytest.raises(ValueError, match="x"):
        SpectralNormLinear(3, 3)(torch.randn(2, 4, dtype=F64))
    conv = SpectralNormConv2d(2, 2, 3, input_shape=(2, 4, 4))
    with pytest.raises(ValueError, match="per-sample shape"):
        conv(torch.randn(1, 2, 5, 5))
    with pytest.raises(ValueError, match="input_shape"):
        SpectralNormConv2d(2, 2, 3, input_shape=(3, 4, 4))


# ---------------------------------------------------------------- i-ResNet


def test_iresnet_vector_round_trip_machine_precision():
    block = _vector_iresnet(tol=1e-13)
    x = torch.randn(16, 4, dtype=F64)
    with torch.no_grad():
        y = block(x)
        x_rec, info = block.inverse_with_info(y)
    assert info.converged and info.iterations < block.max_iter
    assert info.residual <= 1e-12
    err = (x_rec - x).norm(dim=1) / x.norm(dim=1)
    assert float(err.max()) <= 1e-10
    assert block.is_iterative


def test_iresnet_image_round_trip_machine_precision():
    block = _image_iresnet(tol=1e-13)
    x = torch.randn(3, 2, 4, 4, dtype=F64)
    with torch.no_grad():
        x_rec, info = block.inverse_with_info(block(x))
    assert info.converged
    err = (x_rec - x).reshape(3, -1).norm(dim=1) / x.reshape(3, -1).norm(dim=1)
    assert float(err.max()) <= 1e-10


@pytest.mark.parametrize("image", [False, True])
def test_iresnet_default_tolerance_float32(image: bool):
    # tol=None means 4 eps of the input's dtype; the iteration's rounding floor is below 1 eps
    block = (_image_iresnet(coeff=0.97) if image else _vector_iresnet(coeff=0.97)).float()
    x = torch.randn(8, 2, 4, 4) if image else torch.randn(8, 4)
    with torch.no_grad():
        x_rec, info = block.inverse_with_info(block(x.float()))
    assert info.converged and info.tol == 4 * torch.finfo(torch.float32).eps
    # error <= Lip(g)/(1 - Lip(g)) * step + rounding; well within 1e-4 for these small models
    assert float((x_rec.double() - x).norm() / x.norm()) < 1e-5


def test_iresnet_lazy_conv_shape_first_seen_inside_torch_func():
    # input_shape omitted: the first call, here inside vmap(jacrev), fixes it
    block = InvertibleResidual(_redraw(residual_conv(2, 4, coeff=0.9), scale=0.5)).eval()
    x = torch.randn(2, 2, 3, 3, dtype=F64)
    ref = _autograd_log_det(block.forward, x)
    torch.testing.assert_close(block.log_abs_det(x), ref, rtol=0, atol=1e-12)
    assert block.g[0].input_shape == (2, 3, 3)
    with pytest.raises(ValueError, match="per-sample shape"):
        block(torch.randn(2, 2, 4, 4, dtype=F64))


def test_iresnet_training_mode_forward_and_inverse_use_the_same_map():
    # In training mode each forward call advances the power iteration once; the inverse and the
    # log-determinant must not, or they would invert a different map.
    block = _vector_iresnet(tol=1e-13).train()
    x = torch.randn(8, 4, dtype=F64)
    y, _ = block.forward_and_log_det(x)
    with torch.no_grad():
        x_rec = block.inverse(y)
    assert float((x_rec - x).norm() / x.norm()) <= 1e-10


@pytest.mark.parametrize("image", [False, True])
def test_iresnet_exact_log_det_matches_autograd(image: bool):
    block = (_image_iresnet(log_det="exact") if image else _vector_iresnet(log_det="exact"))
    x = torch.randn(3, 2, 4, 4, dtype=F64) if image else torch.randn(5, 4, dtype=F64)
    y, ld = block.forward_and_log_det(x)
    ref = _autograd_log_det(block.forward, x)
    torch.testing.assert_close(ld, ref, rtol=0, atol=1e-12)
    _, ld_inv = block.inverse_and_log_det(y)
    torch.testing.assert_close(ld_inv, -ref, rtol=0, atol=1e-10)
    assert ld.shape == (x.shape[0],)


def test_iresnet_series_log_det_within_statistical_and_truncation_error():
    d, n_terms, n_probes = 4, 8, 4000
    # coeff 0.5 and three layers: Lip(g) <= 0.125, so the series converges fast
    block = _vector_iresnet(coeff=0.5, d=d, log_det="series", n_series_terms=n_terms,
                            n_probes=n_probes)
    x = torch.randn(3, d, dtype=F64)
    torch.manual_seed(1)
    estimate = block.log_abs_det(x).detach()
    torch.manual_seed(1)
    torch.testing.assert_close(block.log_abs_det(x).detach(), estimate, rtol=0, atol=0)

    j_g = _jacrev_blocks(block.forward, x).detach() - torch.eye(d, dtype=F64)
    exact = torch.linalg.slogdet(torch.eye(d, dtype=F64) + j_g).logabsdet
    # The estimator is the Hutchinson trace of the truncated series L = sum_k (-1)^{k+1} J^k / k.
    power, series = torch.eye(d, dtype=F64).expand(3, d, d), torch.zeros(3, d, d, dtype=F64)
    for k in range(1, n_terms + 1):
        power = power @ j_g
        series = series + (-1) ** (k + 1) / k * power
    # Rademacher probes: Var(eps^T L eps) = 2 sum_{i != j} S_ij^2 with S the symmetric part of L;
    # the mean of n_probes draws is within 5 standard deviations (Gaussian tail ~6e-7).
    sym = (series + series.transpose(1, 2)) / 2
    off_diagonal = sym - torch.diag_embed(sym.diagonal(dim1=1, dim2=2))
    std = torch.sqrt(2 * off_diagonal.pow(2).sum((1, 2)) / n_probes)
    # Truncation: |sum_{k>n} tr(J^k)/k| <= d c^{n+1} / ((n+1)(1-c)), c = ||J_g||_2 < 1.
    c = torch.linalg.matrix_norm(j_g, 2)
    truncation = d * c ** (n_terms + 1) / ((n_terms + 1) * (1 - c))
    assert bool(((series.diagonal(dim1=1, dim2=2).sum(-1) - exact).abs() <= truncation).all())
    assert bool(((estimate - exact).abs() <= 5 * std + truncation).all())
    assert float(std.max()) < 0.01  # the check is not vacuous


def test_iresnet_converges_fast_for_small_lipschitz_constant():
    block = _vector_iresnet(coeff=0.2, tol=1e-13)  # Lip(g) <= 0.008
    with torch.no_grad():
        _, info = block.inverse_with_info(torch.randn(8, 4, dtype=F64))
    assert info.converged
    assert info.iterations <= 12  # 0.008^k falls below 1e-13 by k = 7


def test_iresnet_reports_non_convergence_without_contraction():
    # g = a linear map of spectral norm 2: x = y - g(x) diverges from x_0 = y
    linear = nn.Linear(4, 4, bias=False).to(F64)
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=F64))
        linear.weight.copy_(2.0 * q)
    block = InvertibleResidual(linear, max_iter=50, check_contraction=False)
    with torch.no_grad():
        _, info = block.inverse_with_info(torch.randn(4, 4, dtype=F64))
    assert not info.converged and info.iterations == 50
    assert info.residual > 1.0
    # neither is spectral normalisation with coeff 1.5: here W_eff = 1.5 Q, Q orthogonal
    layer = SpectralNormLinear(4, 4, coeff=1.5, exact=True, bias=False).to(F64)
    with torch.no_grad():
        layer.weight.copy_(3.0 * q)
    sn_block = InvertibleResidual(layer, max_iter=100, check_contraction=False)
    with torch.no_grad():
        _, info = sn_block.inverse_with_info(torch.randn(8, 4, dtype=F64))
    assert not info.converged and info.residual > 1.0


def test_iresnet_non_finite_iterates_are_reported_not_raised():
    linear = nn.Linear(3, 3, bias=False, dtype=torch.float32)
    with torch.no_grad():
        linear.weight.copy_(10.0 * torch.eye(3))
    block = InvertibleResidual(linear, max_iter=1000, check_contraction=False)
    with torch.no_grad():
        x = block.inverse(torch.ones(2, 3, dtype=torch.float32))  # 10^k overflows float32
    info = block.last_convergence
    assert not info.converged and info.iterations < 1000
    assert math.isnan(info.residual)
    assert not bool(torch.isfinite(x).all())


def test_iresnet_contraction_checks():
    with pytest.raises(ValueError, match="coeff.*contraction"):
        InvertibleResidual(residual_mlp(4, 8, coeff=1.0))
    with pytest.raises(ValueError, match="coeff"):
        residual_mlp(4, 8, coeff=0.0)
    unnormalised = r"not spectrally normalised.*Lip\(g\) < 1.*check_contraction=False"
    with pytest.raises(ValueError, match=unnormalised):
        InvertibleResidual(nn.Sequential(SpectralNormLinear(4, 8, coeff=0.5), nn.ELU(),
                                         nn.Linear(8, 4)))
    InvertibleResidual(nn.Linear(4, 4), check_contraction=False)  # opting out is allowed
    with pytest.raises(ValueError, match="activation"):
        residual_mlp(4, 8, activation="sigmoid")


def test_iresnet_bad_input_shape():
    block = _vector_iresnet()
    with pytest.raises(ValueError, match="per-sample shape"):
        block(torch.randn(2, 5, dtype=F64))
    with pytest.raises(ValueError, match="y"):
        block.inverse(torch.randn(2, 4, 1, dtype=F64))
    with pytest.raises(ValueError, match="log_det"):
        InvertibleResidual(residual_mlp(4, 8), log_det="bogus")


# ---------------------------------------------------------------- neural ODE


def _ode(steps: int = 20, d: int = 3, **kwargs) -> NeuralODE:
    # scale 0.2: Lip(f) <= ~1.7 and x moves by ~25% of its norm over [0, 1]
    f = _redraw(ODEFunc(d, hidden=16, activation="tanh"), scale=0.2)
    return NeuralODE(f, T=1.0, steps=steps, **kwargs)


def test_ode_round_trip_error_falls_with_order_four():
    x = torch.randn(8, 3, dtype=F64)
    errors = [relative_round_trip_error(_ode(steps), x) for steps in (4, 8, 16)]
    # RK4 is fourth order: halving h divides the error by ~16 (observed ~32: the leading terms of
    # the forward and backward truncation errors cancel for this even-order method)
    assert errors[0] / errors[1] > 10 and errors[1] / errors[2] > 10
    assert relative_round_trip_error(_ode(64), x) < 1e-10
    # Euler is first order and its round trip is far worse
    euler = [relative_round_trip_error(_ode(steps, method="euler"), x) for steps in (16, 32)]
    assert 1.5 < euler[0] / euler[1] < 2.5 and euler[1] > 1e3 * errors[2]


def test_ode_exact_log_det_matches_autograd_both_ways():
    block = _ode(10, log_det="exact")
    x = torch.randn(4, 3, dtype=F64)
    y, ld = block.forward_and_log_det(x)
    torch.testing.assert_close(ld, _autograd_log_det(block.forward, x), rtol=0, atol=1e-12)
    _, ld_inv = block.inverse_and_log_det(y)
    torch.testing.assert_close(ld_inv, _autograd_log_det(block.inverse, y), rtol=0, atol=1e-12)
    # the backward solve is the inverse up to truncation, so the log-dets nearly cancel
    torch.testing.assert_close(ld_inv, -ld, rtol=0, atol=1e-6)


def test_ode_cnf_log_det_agrees_with_exact_within_truncation():
    x = torch.randn(4, 3, dtype=F64)

    def log_dets(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        exact = _ode(steps, log_det="exact").log_abs_det(x).detach()
        cnf = _ode(steps, log_det="cnf").log_abs_det(x).detach()
        return exact, cnf

    exact, cnf = log_dets(8)
    exact_fine, cnf_fine = log_dets(16)
    # Both converge to the exact flow's log-det at order 4; Richardson: |L_h - L| ~ 16/15
    # |L_h - L_{h/2}|. Allow twice the sum of the two estimated truncation errors.
    tol = 2 * 16 / 15 * ((exact - exact_fine).abs() + (cnf - cnf_fine).abs())
    assert bool(((exact - cnf).abs() <= tol + 1e-13).all())
    assert float(tol.max()) < 1e-5 and float((exact - cnf).abs().max()) > 0


def test_ode_hutchinson_trace_exact_for_diagonal_jacobian():
    # f acts coordinate-wise, so df/dx is diagonal and eps^T J eps = tr J for Rademacher eps:
    # the Hutchinson path must then reproduce the exact-trace CNF log-det to rounding.
    class Diagonal(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.randn(5, dtype=F64))
            self.b = nn.Parameter(torch.randn(5, dtype=F64))

        def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.a * x + self.b * t)

    f, x = Diagonal(), torch.randn(3, 5, dtype=F64)
    exact_trace = NeuralODE(f, steps=10, log_det="cnf").log_abs_det(x)
    hutchinson = NeuralODE(f, steps=10, log_det="cnf", exact_log_det_max_dim=2,
                           n_probes=3).log_abs_det(x)
    torch.testing.assert_close(hutchinson, exact_trace, rtol=0, atol=1e-13)


def test_ode_float32_round_trip():
    block64 = _ode(16)
    x = torch.randn(32, 3, dtype=F64)
    truncation = relative_round_trip_error(block64, x)
    block32 = NeuralODE(ODEFunc(3, hidden=16), T=1.0, steps=16).float()
    block32.f.load_state_dict(block64.f.state_dict())
    err32 = relative_round_trip_error(block32, x.float())
    # Each of the 2 * 16 RK4 steps rounds the state to a few ulps (say 4 eps) of its norm, which
    # stays below 2 ||x|| here. An error made at time t is amplified by at most exp(Lip(f) T) by
    # the rest of the forward solve and again by the backward solve (Table 3), with Lip(f) at
    # most the product of the layers' spectral norms (tanh is 1-Lipschitz). The truncation error
    # (float64, same steps) adds to that; x was rounded to float32 before the comparison.
    lip = math.prod(float(torch.linalg.matrix_norm(m.weight.detach(), 2))
                    for m in block64.f.modules() if isinstance(m, nn.Linear))
    eps32 = torch.finfo(torch.float32).eps
    bound = truncation + 2 * 16 * 4 * eps32 * 2 * math.exp(2 * lip)
    assert err32 <= bound
    assert bound < 2e-3 and err32 > 100 * truncation  # meaningful, and rounding dominates


def test_ode_images():
    class ConvField(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.conv(x)) * torch.cos(t)

    block = NeuralODE(_redraw(ConvField(), scale=0.3), steps=32)
    x = torch.randn(2, 2, 3, 3, dtype=F64)
    y, ld = block.forward_and_log_det(x)  # 18 <= 64 features: exact
    torch.testing.assert_close(ld, _autograd_log_det(block.forward, x), rtol=0, atol=1e-12)
    with torch.no_grad():
        assert float((block.inverse(y) - x).norm() / x.norm()) < 1e-9


def test_ode_truncation_estimate_matches_fine_solve():
    block, x = _ode(8), torch.randn(4, 3, dtype=F64)
    with torch.no_grad():
        true_error = (block(x) - _ode(256)(x)).norm(dim=1)
        estimate = block.truncation_estimate(x)
    torch.testing.assert_close(estimate, true_error, rtol=0.2, atol=1e-14)


def test_ode_bad_arguments():
    f = ODEFunc(3)
    with pytest.raises(ValueError, match="steps"):
        NeuralODE(f, steps=0)
    for bad_t in (0.0, -1.0):
        with pytest.raises(ValueError, match="T"):
            NeuralODE(f, T=bad_t)
    with pytest.raises(ValueError, match="method"):
        NeuralODE(f, method="dopri5")
    with pytest.raises(ValueError, match="log_det"):
        NeuralODE(f, log_det="series")
    block = NeuralODE(f.to(F64))
    with pytest.raises(ValueError, match="per-sample shape"):
        block(torch.randn(2, 4, dtype=F64))
    with pytest.raises(ValueError, match="y"):
        block.inverse(torch.randn(3, dtype=F64))
    with pytest.raises(ValueError, match="activation"):
        ODEFunc(3, activation="not_an_activation")


# ---------------------------------------------------------------- which weight u, v belong to


def _vectors(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    return layer.u.clone(), layer.v.clone()


def test_stored_vectors_follow_the_weight_they_were_computed_for():
    import copy

    layer = SpectralNormLinear(4, 3, coeff=0.7)
    assert layer.vectors_current()  # a new layer with a known input shape starts current
    for other in (copy.deepcopy(layer), copy.deepcopy(layer).double(),
                  copy.deepcopy(layer).to(torch.float16)):
        assert other.vectors_current()  # the same network, other storage or precision
    _redraw(layer, scale=2.0)
    assert not layer.vectors_current()
    u, v = _vectors(layer)
    stale_sigma = layer.sigma()  # what the next call will use, computed without storing
    assert torch.equal(layer.u, u) and torch.equal(layer.v, v) and not layer.vectors_current()
    torch.testing.assert_close(stale_sigma, torch.linalg.svdvals(layer.weight.detach())[0],
                               rtol=1e-10, atol=0)
    layer.eval()(torch.randn(2, 4, dtype=F64))  # the forward call stores them
    assert layer.vectors_current() and not torch.equal(layer.u, u)
    assert torch.equal(layer.sigma(), stale_sigma)


def test_loading_a_state_dict_with_u_and_v_keeps_them():
    source = _redraw(SpectralNormLinear(4, 3, coeff=0.7), scale=2.0)
    source.refresh_vectors()
    target = SpectralNormLinear(4, 3, coeff=0.7).double()
    target.load_state_dict(source.state_dict())
    assert target.vectors_current()
    assert torch.equal(target.u, source.u) and torch.equal(target.sigma(), source.sigma())
    weights_only = SpectralNormLinear(4, 3, coeff=0.7).double()
    weights_only.load_state_dict({"weight": source.weight, "bias": source.bias}, strict=False)
    assert not weights_only.vectors_current()  # its u, v belong to its old weight


def test_residual_module_reexports_its_layers():
    from lipbound import blocks
    from lipbound.blocks import residual, spectral

    for name in ("SpectralNormLinear", "SpectralNormConv2d", "LipSwish", "frozen_spectral_norm",
                 "lipschitz_activation", "LIPSCHITZ_ACTIVATIONS"):
        assert getattr(residual, name) is getattr(spectral, name)
    assert blocks.SpectralNormLinear is spectral.SpectralNormLinear
    assert blocks.InvertibleResidual is residual.InvertibleResidual


def test_forced_refresh_converges_a_cast_layer_to_its_new_precision():
    layer = SpectralNormLinear(6, 5, coeff=0.5).float()
    with torch.no_grad():
        layer.weight.mul_(4.0)  # a norm well above coeff: the normalisation is active
    layer.refresh_vectors()
    layer = layer.double()
    exact = torch.linalg.svdvals(layer.weight.detach())[0]
    cast_error = abs(float(layer.sigma().detach()) - float(exact)) / float(exact)
    layer.refresh_vectors()  # current: nothing to do
    assert abs(float(layer.sigma().detach()) - float(exact)) / float(exact) == cast_error
    layer.refresh_vectors(force=True)
    assert abs(float(layer.sigma().detach()) - float(exact)) <= 1e-13 * float(exact)
    assert cast_error <= 1e-5  # float32 accuracy before
