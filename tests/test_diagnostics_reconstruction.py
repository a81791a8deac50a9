"""Reconstruction statistics, NaN and Inf accounting, the per-block trace, and the attack."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipbound.blocks import (
    AdditiveCoupling,
    AffineCoupling,
    ChannelPartition,
    IdentityScale,
    InvertibleSequential,
    figure1_chain,
    mlp,
)
from lipbound.diagnostics import (
    checkerboard,
    error_summary,
    invertibility_attack,
    reconstruction_stats,
)

FIRST = ChannelPartition([0], [1], 2)


def _nan_inf_model() -> InvertibleSequential:
    """``y2 = x2 * x1`` (``g = h = x1``): 0/0 = NaN at x1 = 0, Inf at x1 = x2 = 1e200."""
    return InvertibleSequential(AffineCoupling(FIRST, 0.0, nn.Identity(), IdentityScale()))


def _fragile_affine(seed: int = 0) -> InvertibleSequential:
    """Additive, affine, additive; only the affine block (index 1) can lose information.

    Its scale is ``sigmoid(h + 2)`` with ``h = -x_cond``: about 1 for the data in [-4, 4]^2,
    below float32's range for conditioning values beyond ~ 100 (inputs scaled by 100).
    """
    torch.manual_seed(seed)
    s = nn.Linear(1, 1)
    with torch.no_grad():
        s.weight.fill_(-1.0)
        s.bias.zero_()
    return InvertibleSequential(
        AdditiveCoupling(FIRST, mlp(1, 1, 16, 2, "tanh")),
        AffineCoupling(FIRST.swapped(), mlp(1, 1, 16, 2, "tanh"), s),
        AdditiveCoupling(FIRST, mlp(1, 1, 16, 2, "tanh")),
    ).eval()


def test_error_summary_keeps_nan_and_inf_apart():
    s = error_summary(torch.tensor([1.0, 2.0, math.nan, math.inf, 3.0, math.nan]))
    assert (s["n"], s["n_finite"], s["n_inf"], s["n_nan"]) == (6, 3, 1, 2)
    assert s["pct_inf"] == pytest.approx(100 / 6) and s["pct_nan"] == pytest.approx(200 / 6)
    assert (s["mean"], s["median"], s["max"]) == (2.0, 2.0, 3.0)
    none = error_summary(torch.tensor([math.nan, math.inf]))
    assert none["mean"] is None and none["max"] is None


def test_constructed_nan_and_inf_are_counted_and_located():
    x = torch.tensor([[0.0, 1.0], [1e200, 1e200], [2.0, 3.0], [0.0, -2.0]])
    st = reconstruction_stats(_nan_inf_model(), x, "float64")
    e = st.errors
    assert math.isnan(e[0]) and math.isinf(e[1]) and math.isnan(e[3])
    assert e[2] == 0.0  # 3 * 2 / 2 is exact
    s = st.summary()
    assert (s["n_nan"], s["n_inf"], s["n_finite"]) == (2, 1, 1)
    assert s["mean"] == 0.0 and s["pct_nan"] == 50.0 and s["pct_inf"] == 25.0
    f = st.failures
    assert (f[0].block, f[0].stage) == (0, "inverse")  # 0 / 0 on the way back
    assert (f[1].block, f[1].stage) == (0, "forward")  # 1e400 overflows going forward
    assert f[2] is None and f[0].kind == "AffineCoupling"
    assert st.failure_counts() == {"0:inverse": 2, "0:forward": 1}


def test_latent_direction_maps_failures_back_to_model_blocks():
    # z -> x -> z runs the inverse first: z1 = 0 divides by zero there.
    model = InvertibleSequential(AdditiveCoupling(FIRST.swapped(), 0.5), *_nan_inf_model())
    z = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    st = reconstruction_stats(model, z, "float64", direction="z->x->z")
    assert math.isinf(st.errors[0]) or math.isnan(st.errors[0])
    assert st.failures[1] is None
    assert (st.failures[0].block, st.failures[0].stage) == (1, "inverse")
    assert st.failures[0].kind == "AffineCoupling"


def test_figure1_affine_chain_fails_x_to_z_to_x_but_not_z_to_x_to_z():
    # Lip(F) = 1, Lip(F^-1) = 10^12 (section 2): float32 rounding of z is amplified on the way
    # back, rounding of x is not amplified going forward.
    model = figure1_chain(12, "affine")
    x = torch.ones(1, 2)
    fwd = reconstruction_stats(model, x, "float32")
    assert not fwd.errors[0] < 0.01  # at least 1% of ||x||, or non-finite
    assert fwd.failures[0] is not None and fwd.failures[0].stage == "inverse"
    with torch.no_grad():
        z = model(x)
    back = reconstruction_stats(model, z, "float32", direction="z->x->z")
    assert back.relative_errors[0] < 1e-5 and back.failures[0] is None


def test_per_block_trace_names_the_fragile_affine_block():
    model = _fragile_affine()
    x = 100 * checkerboard(256, torch.Generator().manual_seed(0))
    st = reconstruction_stats(model, x, "float32")
    failed = [i for i, f in enumerate(st.failures) if f is not None]
    assert len(failed) >= 32
    assert {(st.failures[i].block, st.failures[i].stage) for i in failed} == {(1, "inverse")}
    assert st.lowest_failing_block == 1 and st.block_kinds[1] == "AffineCoupling"
    assert st.first_failure == "1:inverse"
    # Independent check in float64: the affine block's scale g at each sample.
    with torch.no_grad():
        h0 = model[0](x)
        g = torch.sigmoid(-h0[:, 1] + 2)
    assert bool((g[failed] < 1e-3).all())
    assert all(st.failures[i] is not None for i in torch.nonzero(g < 1e-12).flatten().tolist())
    # on the data's own scale nothing fails
    calm = reconstruction_stats(model, x / 100, "float32")
    assert calm.lowest_failing_block is None and calm.first_failure is None


def test_attack_progress_bar_ends_full(capsys):
    x = checkerboard(4, torch.Generator().manual_seed(1))
    invertibility_attack(_fragile_affine(), x, iterations=5, progress=True)
    err = capsys.readouterr().err
    assert "6/6" in err and "5/6" not in err.splitlines()[-1], err


def test_attack_does_not_flag_the_affine_model_on_the_datas_scale():
    model = _fragile_affine()
    x = checkerboard(64, torch.Generator().manual_seed(1))
    calm = invertibility_attack(model, x, iterations=20)  # the 8-bit dequantization cell
    assert calm.radius == 0.5 / 256 and not bool(calm.flagged.any())


def test_attack_flags_the_affine_model_driven_to_fail_and_the_trace_names_the_block():
    # Inputs scaled by 100 (x1 = 100 * 1.5): the affine block's scale sigmoid(2 - h) decays like
    # e^-x2, so its float32 round trip fails above x2 ~ 19 (sqrt(eps) test). Start points below
    # that pass; the attack must find failing inputs in their boxes that the start points lack.
    model = _fragile_affine()
    x2 = torch.arange(14.0, 19.0, 0.25)
    x = torch.stack([torch.full_like(x2, 150.0), x2], dim=1)
    res = invertibility_attack(model, x, radius=1.0, step=0.1, iterations=30)
    added = res.flagged & ~res.flagged_at_start
    assert int(res.flagged_at_start.sum()) <= 1 and int(added.sum()) >= 4
    assert bool((res.errors > res.initial_errors).all())  # the ascent raised every error
    assert float((res.x_worst - x).abs().max()) <= 1.0 * (1 + 1e-6)
    # The per-block trace of the inputs found names the affine block's inverse, alone. (Rerun
    # in another batch, float32 rounding differs - BLAS kernels depend on the batch - so the
    # trace is compared with itself on the start points, not with the attack's flags.)
    found = reconstruction_stats(model, res.x_worst, "float32").failures
    start = reconstruction_stats(model, res.start, "float32").failures
    assert {(f.block, f.kind, f.stage) for f in found if f is not None} == {
        (1, "AffineCoupling", "inverse")}
    assert sum(f is not None for f in found) >= sum(f is not None for f in start) + 4


class _DriftingInverse(InvertibleSequential):
    """A deliberately inconsistent model: ``F(x) = x`` but ``F^-1(y) = y + c y^2`` (elementwise),
    so ``||x - F^-1(F(x))|| = c ||x^2||`` grows with every ``|x_i|``."""

    def _forward(self, x, with_log_det):
        return x, None

    def _inverse(self, y, with_log_det):
        return y + 0.01 * y**2, None


def test_signed_gradient_ascent_reaches_the_analytic_worst_corner():
    x = torch.tensor([[0.3, -0.2, 1.0], [-2.0, 0.5, 0.1]])
    r = 0.05
    res = invertibility_attack(_DriftingInverse(), x, radius=r, step=0.02, iterations=10,
                               precision="float64")
    corner = x + r * torch.sign(x)  # maximises every |x_i| inside the box
    torch.testing.assert_close(res.x_worst, corner, rtol=0, atol=1e-15)
    torch.testing.assert_close(res.errors, 0.01 * (corner**2).norm(dim=1), rtol=1e-12, atol=0)
    torch.testing.assert_close(res.initial_errors, 0.01 * (x**2).norm(dim=1), rtol=1e-12, atol=0)


class _DeadZoneInverse(InvertibleSequential):
    """``F(x) = x``, ``F^-1(y) = y + 0.01 relu(y - 0.3)^2``: exact (error and gradient 0) below
    0.3 in every coordinate, wrong above."""

    def _forward(self, x, with_log_det):
        return x, None

    def _inverse(self, y, with_log_det):
        return y + 0.01 * torch.relu(y - 0.3) ** 2, None


def test_attack_moves_where_the_gradient_vanishes():
    # At x = 0.28 the error and its gradient are exactly 0, so eq. 12 alone cannot move; the
    # random directions reach the wrong region (x_i > 0.3) inside the box, then the gradient rules.
    x = torch.full((2, 3), 0.28)
    res = invertibility_attack(_DeadZoneInverse(), x, radius=0.05, step=0.01, iterations=20,
                               precision="float64")
    assert bool((res.initial_errors == 0).all()) and bool((res.errors > 0).all())
    assert float((res.x_worst - x).abs().max()) <= 0.05 * (1 + 1e-12)
    best = 0.01 * (0.33 - 0.3) ** 2 * math.sqrt(3)  # every coordinate at the box's edge
    assert bool((res.errors <= best * (1 + 1e-9)).all())
    stuck = invertibility_attack(_DeadZoneInverse(), x, radius=0.05, step=0.01, iterations=0,
                                 precision="float64")
    assert bool((stuck.errors == 0).all())


def test_attack_box_is_the_dequantization_cell_of_each_input():
    model = _fragile_affine(1)
    gen = torch.Generator().manual_seed(2)
    k = torch.randint(-40, 40, (4, 2), generator=gen).double()  # 4-bit levels, 1/16 wide
    x = (k + torch.rand(4, 2, generator=gen)) / 16
    res = invertibility_attack(model, x, bits=4, step=5e-3, iterations=30, precision="float64")
    assert res.radius == 0.5 / 16
    torch.testing.assert_close(res.start, (k + 0.5) / 16, rtol=0, atol=0)
    assert float((res.x_worst - res.start).abs().max()) <= res.radius * (1 + 1e-12)
    with torch.no_grad():
        rec = model.inverse(model(res.x_worst))
    torch.testing.assert_close(res.errors, (res.x_worst - rec).norm(dim=1), rtol=1e-10, atol=0)
    assert bool((res.errors >= res.initial_errors).all())


def test_bad_arguments_are_clear_errors():
    model = _fragile_affine()
    x = torch.randn(2, 2)
    with pytest.raises(ValueError, match="direction must be one of"):
        reconstruction_stats(model, x, direction="x->x")
    with pytest.raises(ValueError, match="precision must be one of"):
        reconstruction_stats(model, x, "float8")
    with pytest.raises(ValueError, match="radius must be > 0"):
        invertibility_attack(model, x, radius=0.0)
    with pytest.raises(ValueError, match="x must be a non-empty batch"):
        reconstruction_stats(model, torch.randn(0, 2))
    with pytest.raises(ValueError, match="tol must be > 0"):
        reconstruction_stats(model, x, tol=-1.0)
    with pytest.raises(ValueError, match="tol must be > 0"):
        invertibility_attack(model, x, tol=0.0)
    with pytest.raises(ValueError, match="levels must be >= 2"):
        invertibility_attack(model, x, levels=1)
