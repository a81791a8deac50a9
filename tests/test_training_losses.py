"""The FD regularizer (eq. 6) and the NF loss (eq. 7) against independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from lipbound.blocks import coupling_mlp, glow_like, randomize_parameters
from lipbound.errors import InputError, InputTypeError
from lipbound.training import fd_regularizer, memory_saving, nf_loss


def _model(seed=1):
    return randomize_parameters(glow_like((2, 4, 4), 1, 2, 8, "affine", "lu"), 0.1,
                                torch.Generator().manual_seed(seed))


def _x(shape=(5, 2, 4, 4), seed=2):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("direction", ["both", "forward", "inverse"])
def test_fd_value_against_a_sample_by_sample_computation(direction, batched):
    model, x, eps, coeff = _model(), _x(), 0.1, 0.25
    fd = fd_regularizer(model, x, eps, coeff, direction, batched=batched,
                        generator=torch.Generator().manual_seed(3))
    fwd = inv = 0.0
    with torch.no_grad():
        for i in range(len(x)):
            xi = x[i:i + 1]
            if fd.v is not None:
                assert math.isclose(float(fd.v[i].norm()), 1.0, rel_tol=1e-14)
                fwd += float(((model(xi) - model(xi + eps * fd.v[i:i + 1])) ** 2).sum()) / eps
            if fd.w is not None:
                assert math.isclose(float(fd.w[i].norm()), 1.0, rel_tol=1e-14)
                rec = model.inverse(model(xi) + eps * fd.w[i:i + 1])
                inv += float(((xi - rec) ** 2).sum()) / eps
    fwd, inv = fwd / len(x), inv / len(x)
    assert (fd.v is None) == (direction == "inverse") and (fd.w is None) == (direction == "forward")
    if fd.forward_term is not None:
        assert math.isclose(float(fd.forward_term.detach()), fwd, rel_tol=1e-12)
    if fd.inverse_term is not None:
        assert math.isclose(float(fd.inverse_term.detach()), inv, rel_tol=1e-12)
    assert math.isclose(float(fd.loss.detach()), coeff * (fwd + inv), rel_tol=1e-12)
    torch.testing.assert_close(fd.z, model(x), rtol=1e-13, atol=1e-13)


def test_fd_directions_are_unit_per_sample_not_per_batch():
    x = _x((64, 2, 4, 4)) * torch.linspace(0.01, 100, 64).reshape(-1, 1, 1, 1)
    fd = fd_regularizer(_model(), x, generator=torch.Generator().manual_seed(0))
    norms = fd.v.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(64), rtol=1e-14, atol=0)
    assert fd.w.shape == fd.z.shape


def test_fd_with_log_det_and_memory_saving_agree_with_plain():
    model, x = _model(), _x()
    plain = fd_regularizer(model, x, with_log_det=True, generator=torch.Generator().manual_seed(4))
    saved = fd_regularizer(memory_saving(model), x, with_log_det=True,
                           generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(saved.loss, plain.loss, rtol=1e-13, atol=0)
    torch.testing.assert_close(saved.log_det, model.forward_and_log_det(x)[1], rtol=1e-13,
                               atol=1e-13)


def _log_prob_by_jacobian(model, x):
    """log p(x) from eq. 7 with slogdet of the torch.func Jacobian of each sample."""
    out = []
    for xi in x:
        def f(v, shape=xi.shape):
            return model(v.reshape((1,) + shape)).reshape(-1)
        jac = torch.func.jacrev(f)(xi.reshape(-1))
        z = f(xi.reshape(-1))
        d = z.numel()
        log_pz = -0.5 * float((z @ z).detach()) - 0.5 * d * math.log(2 * math.pi)
        out.append(log_pz + float(torch.linalg.slogdet(jac.detach())[1]))
    return out


@pytest.mark.parametrize("build, shape", [
    (lambda: _model(), (4, 2, 4, 4)),
    (lambda: randomize_parameters(coupling_mlp(2, 4, 16, "affine", actnorm=True), 0.2,
                                  torch.Generator().manual_seed(0)), (6, 2)),
])
def test_nf_loss_against_change_of_variables_with_autograd_jacobian(build, shape):
    model, x = build(), _x(shape)
    out = nf_loss(model, x, coeff=1e-3, n_bins=256, data_range=2.0)
    nll = -sum(_log_prob_by_jacobian(model, x)) / len(x)
    d = x[0].numel()
    assert math.isclose(float(out.nll.detach()), nll, rel_tol=1e-12)
    assert math.isclose(float(out.loss.detach()), 1e-3 * nll, rel_tol=1e-12)
    assert math.isclose(float(out.bits_per_dim), (nll + d * math.log(128)) / (d * math.log(2)),
                        rel_tol=1e-12)
    plain = nf_loss(model, x)
    assert math.isclose(float(plain.bits_per_dim), nll / (d * math.log(2)), rel_tol=1e-12)
    reuse = nf_loss(model, x, z=out.z, log_det=out.log_det)
    assert float(reuse.nll.detach()) == float(out.nll.detach())


@pytest.mark.parametrize("kwargs, error, message", [
    ({"eps": 0.0}, InputError, "eps must be positive"),
    ({"direction": "sideways"}, InputError, "direction must be one of"),
])
def test_fd_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        fd_regularizer(_model(), _x(), **kwargs)


def test_bad_arguments():
    with pytest.raises(InputTypeError, match="model must be an InvertibleBlock"):
        fd_regularizer(torch.nn.Linear(2, 2), _x((3, 2)))
    with pytest.raises(InputError, match="x must be a floating-point tensor"):
        fd_regularizer(_model(), torch.ones(3, dtype=torch.int64))
    with pytest.raises(InputError, match="n_bins must be a positive integer"):
        nf_loss(_model(), _x(), n_bins=0)
    with pytest.raises(InputError, match="data_range must be positive"):
        nf_loss(_model(), _x(), data_range=-1.0)
    with pytest.raises(InputError, match="give both z and log_det"):
        nf_loss(_model(), _x(), z=_x())
    with pytest.raises(InputError, match="one entry per sample"):
        nf_loss(_model(), _x(), z=_x(), log_det=torch.zeros(2))
    with pytest.raises(InputTypeError, match="x must be a torch.Tensor"):
        nf_loss(_model(), [1.0])
