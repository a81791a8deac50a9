"""Shared fixtures and assertions. Numerical tests run in float64 unless they test a precision."""

from __future__ import annotations

import pytest
import torch

from lipbound.autodiff import batch_jacobian

# The tests use small tensors, where intra-op threads cost more than they give: on a loaded
# 2-core machine oneDNN's batch-1 conv2d slowed from ~10 us to ~10 ms with the default threads.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def float64_default():
    """Every test runs with float64 as torch's default dtype, restored afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def relative_round_trip_error(block, x):
    """Largest per-sample ``||x - F^-1(F(x))|| / ||x||`` (measured in float64)."""
    with torch.no_grad():
        rec = block.inverse(block(x))
    err = (x.double() - rec.double()).reshape(len(x), -1).norm(dim=1)
    return float((err / x.double().reshape(len(x), -1).norm(dim=1)).max())


def functional_jacobian(fn, x):
    """Per-sample Jacobians ``(B, m, d)`` of the batched map ``fn`` from
    torch.autograd.functional.jacobian, one sample at a time (independent of torch.func)."""
    return torch.stack([torch.autograd.functional.jacobian(lambda v: fn(v[None])[0].reshape(-1), xi)
                        .reshape(-1, xi.numel()) for xi in x])


def assert_log_det_matches_autograd(block, x, atol=1e-9):
    """``log|det J_F(x)|`` from the block against slogdet of the torch.func Jacobian, both ways."""
    jac = batch_jacobian(block, x)
    with torch.no_grad():
        y, ld = block.forward_and_log_det(x)
        x_rec, ld_inv = block.inverse_and_log_det(y)
    sign, ref = torch.linalg.slogdet(jac)
    assert bool((sign != 0).all()), "autograd Jacobian is singular"
    torch.testing.assert_close(ld, ref, atol=atol, rtol=0)
    torch.testing.assert_close(ld_inv, -ref, atol=atol, rtol=0)
    assert ld.shape == (x.shape[0],)
