"""Round trips, log-determinants and errors of every block and builder (float64 unless stated)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_log_det_matches_autograd, relative_round_trip_error
from torch import nn

from lipbound.blocks import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ChannelPartition,
    DiagonalScaling,
    ExpScale,
    IdentityScale,
    Invertible1x1Conv,
    InvertibleSequential,
    Permutation,
    SigmoidScale,
    SoftClampScale,
    Squeeze,
    checkerboard,
    conv_subnet,
    coupling_mlp,
    figure1_chain,
    glow_like,
    halves,
    mlp,
    randomize_parameters,
    residual_flow,
)
from lipbound.errors import InputTypeError


def _rand(model, std=0.2, seed=0):
    return randomize_parameters(model, std=std, generator=torch.Generator().manual_seed(seed))


def _vec(d=6, b=5):
    return torch.randn(b, d)


def _img(c=4, h=6, w=6, b=3):
    return torch.randn(b, c, h, w)


def _affine_vec(scale):
    p = halves(6)
    return _rand(AffineCoupling(p, mlp(3, 3, 16), mlp(3, 3, 16), scale)), _vec()


# Every block kind, with random non-trivial parameters: name -> () -> (block, input).
CASES = {
    "additive_halves_mlp": lambda: (_rand(AdditiveCoupling(halves(6), mlp(3, 3, 16))), _vec()),
    "additive_index_sets": lambda: (
        _rand(AdditiveCoupling(ChannelPartition([0, 3, 4], [1, 2, 5], 6), mlp(3, 3, 16))), _vec()),
    "additive_uneven_index_sets": lambda: (
        _rand(AdditiveCoupling(ChannelPartition([4], [0, 1, 2, 3], 5), mlp(1, 4, 16))), _vec(5)),
    "affine_sigmoid": lambda: _affine_vec("sigmoid"),
    "affine_modified": lambda: _affine_vec("modified"),
    "affine_exp": lambda: _affine_vec(ExpScale()),
    "affine_softclamp": lambda: _affine_vec(SoftClampScale(1.5)),
    "affine_bounded_range": lambda: _affine_vec(SigmoidScale(0.2, 3.0)),
    "affine_channel_conv": lambda: (
        _rand(AffineCoupling(halves(4, flip=True), conv_subnet(2, 2, 8), conv_subnet(2, 2, 8))),
        _img()),
    "additive_checkerboard_conv": lambda: (
        _rand(AdditiveCoupling(checkerboard((4, 6, 6)), conv_subnet(4, 4, 8))), _img()),
    "affine_checkerboard_conv": lambda: (
        _rand(AffineCoupling(checkerboard((4, 6, 6), 1), conv_subnet(4, 4, 8),
                             conv_subnet(4, 4, 8), "modified")), _img()),
    "affine_checkerboard_vector": lambda: (
        _rand(AffineCoupling(checkerboard((5,)), mlp(5, 5, 16), mlp(5, 5, 16))), _vec(5)),
    "affine_constant": lambda: (AffineCoupling(halves(2), 0.123456789, 0.1, IdentityScale()),
                                _vec(2)),
    "diagonal_vector": lambda: (DiagonalScaling(torch.tensor([0.5, -2.0, 3.0, -0.25])), _vec(4)),
    "diagonal_image_per_channel": lambda: (
        DiagonalScaling(torch.tensor([0.5, -2.0, 3.0, 1.5]).reshape(4, 1, 1)), _img()),
    "actnorm_vector": lambda: (_rand(ActNorm(6), 0.5), _vec()),
    "actnorm_image": lambda: (_rand(ActNorm(4), 0.5), _img()),
    "conv1x1_plain": lambda: (_rand(Invertible1x1Conv(4), 0.3), _img()),
    "conv1x1_lu": lambda: (_rand(Invertible1x1Conv(4, lu=True), 0.3), _img()),
    "conv1x1_vector": lambda: (_rand(Invertible1x1Conv(6, lu=True), 0.3), _vec()),
    "permutation_reverse": lambda: (Permutation(6), _vec()),
    "permutation_random": lambda: (Permutation(4, "random", seed=3), _img()),
    "squeeze": lambda: (Squeeze(2), _img()),
    "sequential_mixed": lambda: (_rand(InvertibleSequential(
        ActNorm(4), Invertible1x1Conv(4), AffineCoupling(halves(4), conv_subnet(2, 2, 8),
                                                         conv_subnet(2, 2, 8)),
        Squeeze(), Permutation(16, "random"))), _img()),
}

BUILDERS = {
    "glow_additive_1x1": lambda: (_rand(glow_like((3, 8, 8), 2, 2, 16, "additive"), 0.05),
                                  _img(3, 8, 8, 2)),
    "glow_affine_lu": lambda: (_rand(glow_like((3, 8, 8), 2, 2, 16, "affine", "lu"), 0.05),
                               _img(3, 8, 8, 2)),
    "glow_affine_permutation": lambda: (
        _rand(glow_like((3, 4, 4), 1, 3, 16, "affine", "random", "modified"), 0.05),
        _img(3, 4, 4, 2)),
    "coupling_mlp_affine": lambda: (_rand(coupling_mlp(2, 6, 32, "affine"), 0.1), _vec(2, 8)),
    "coupling_mlp_additive_actnorm": lambda: (
        _rand(coupling_mlp(4, 4, 32, "additive", actnorm=True), 0.1), _vec(4, 8)),
    "figure1_affine": lambda: (figure1_chain(3, "affine"), torch.ones(1, 2)),
    "figure1_additive_alternating": lambda: (figure1_chain(10, "additive", alternate=True),
                                             torch.ones(1, 2)),
    "residual_flow_conv_actnorm": lambda: (
        _rand(residual_flow((2, 4, 4), 2, 8, coeff=0.9, actnorm=True, tol=1e-14), 0.3),
        _img(2, 4, 4, 2)),
    "residual_flow_mlp": lambda: (_rand(residual_flow((2,), 3, 16, coeff=0.8, tol=1e-14), 0.3),
                                  _vec(2, 8)),
}


@pytest.mark.parametrize("name", sorted(CASES) + sorted(BUILDERS))
def test_round_trip_float64(name):
    block, x = {**CASES, **BUILDERS}[name]()
    # Condition numbers of these random models are modest (< 1e3), so a float64 round trip
    # lands within a few thousand ulps of ||x||.
    assert relative_round_trip_error(block, x) < 1e-12


@pytest.mark.parametrize("name", sorted(CASES) + sorted(BUILDERS))
def test_log_det_matches_autograd_jacobian(name):
    block, x = {**CASES, **BUILDERS}[name]()
    assert_log_det_matches_autograd(block, x)


@pytest.mark.parametrize("dtype, k", [(torch.float32, 2e3), (torch.bfloat16, 40.0)])
@pytest.mark.parametrize("name", ["affine_sigmoid", "affine_modified", "additive_halves_mlp",
                                  "affine_channel_conv", "conv1x1_lu", "actnorm_image",
                                  "diagonal_vector", "squeeze"])
def test_round_trip_low_precision(name, dtype, k):
    """Round trips at float32 and bfloat16 stay within ``k * eps`` of ``||x||``.

    A block round trip at unit roundoff ``u`` errs by at most ``Lip(F^-1) ||delta|| + ||delta2||``
    (section 2), with ``||delta||`` and ``||delta2||`` of order ``n u ||x||`` for ``n`` the
    accumulation length of the sub-networks (up to 8 * 9 = 72 products in the conv nets here) and
    ``Lip(F^-1)`` of order 1 for these parameters. ``k = 2000`` leaves room for the worst
    rounding-error accumulation in float32 (``u = 6e-8``: 1.2e-4). For bfloat16 (``u = 2^-9``)
    only the sub-network inputs of order 1 are rounded that coarsely and errors do not compound
    as badly relative to the ``k``; ``k = 40`` gives 0.08.
    """
    block, x = CASES[name]()
    block = block.to(dtype)
    eps = torch.finfo(dtype).eps
    err = relative_round_trip_error(block, x.to(dtype))
    assert err < k * eps
    # It is a real rounding error, not an exact round trip by accident in low precision:
    # float64 is orders of magnitude more accurate on the same model.
    err64 = relative_round_trip_error(block.to(torch.float64), x)
    assert err64 < 1e-12


def test_figure1_affine_singular_values():
    """The affine toy's Jacobian is diag(1, 0.1^L): singular values 1 and 0.1^L."""
    from lipbound.autodiff import batch_jacobian

    for depth in (1, 5, 20):
        model = figure1_chain(depth, "affine")
        jac = batch_jacobian(model, torch.ones(1, 2))[0]
        sv = torch.linalg.svdvals(jac)
        torch.testing.assert_close(sv, torch.tensor([1.0, 0.1**depth]), rtol=1e-12, atol=0)
        additive = batch_jacobian(figure1_chain(depth, "additive"), torch.ones(1, 2))[0]
        torch.testing.assert_close(additive, torch.eye(2), rtol=0, atol=0)


@pytest.mark.parametrize("depth", [5, 10, 14])
def test_figure1_float64_error_follows_the_condition_number(depth):
    """The deep affine toy loses accuracy in float64 as ``eps * cond = eps * 10^depth``: the
    round-trip error is that size (measured: 0.008 to 0.04 of it for depths 2 to 16), neither
    above it nor an exact round trip (0 would mean the rounding was not exercised)."""
    model = figure1_chain(depth, "affine")
    err = relative_round_trip_error(model, torch.ones(1, 2))
    unit = torch.finfo(torch.float64).eps * 10.0**depth
    assert 1e-3 * unit <= err <= 10 * unit


def test_figure1_float16_affine_chain_loses_the_input():
    """Figure 1's effect: in float16 the deep affine chain's round trip error explodes, the
    additive one's does not."""
    x = torch.ones(1, 2, dtype=torch.float16)
    affine = figure1_chain(30, "affine").to(torch.float16)
    additive = figure1_chain(30, "additive").to(torch.float16)
    with torch.no_grad():
        err_aff = (affine.inverse(affine(x)).double() - 1).norm()
        err_add = (additive.inverse(additive(x)).double() - 1).norm()
    assert not (err_aff < 1.0)  # 0.1^30 underflows float16: error >= 1, or Inf/NaN
    assert err_add < 1e-2


def test_actnorm_data_dependent_initialisation():
    x = 3.0 + 2.0 * _img(4, 5, 5, 8)
    act = ActNorm(4)
    y = act(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-12, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-5, rtol=0)
    assert bool(act.initialized)
    bias = act.bias.clone()
    act(x + 10)  # second call does not re-initialise
    torch.testing.assert_close(act.bias, bias)


def test_sequential_trace_and_flat_blocks():
    inner = InvertibleSequential(ActNorm(6), Permutation(6))
    model = _rand(InvertibleSequential(inner, AdditiveCoupling(halves(6), mlp(3, 3, 8))))
    assert [type(b).__name__ for b in model.flat_blocks()] == ["ActNorm", "Permutation",
                                                               "AdditiveCoupling"]
    x = _vec()
    fwd = model.trace_forward(x)
    assert len(fwd) == 4
    torch.testing.assert_close(fwd[-1], model(x), rtol=0, atol=0)
    inv = model.trace_inverse(fwd[-1])
    torch.testing.assert_close(inv[-1], x, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(inv[1], fwd[2], rtol=1e-13, atol=1e-13)


def test_flat_blocks_of_a_leaf_is_itself():
    leaf = Permutation(4)
    assert leaf.flat_blocks() == [leaf]
    nested = InvertibleSequential(InvertibleSequential(leaf), Squeeze())
    assert [type(b) for b in nested.flat_blocks()] == [Permutation, Squeeze]


def test_squeeze_layout():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = Squeeze(2)(x)
    assert y.shape == (1, 4, 2, 2)
    # channel i*2 + j holds the (i, j) offset of every 2x2 patch
    torch.testing.assert_close(y[0, 0], torch.tensor([[0.0, 2.0], [8.0, 10.0]]))
    torch.testing.assert_close(y[0, 3], torch.tensor([[5.0, 7.0], [13.0, 15.0]]))


def test_lu_and_plain_1x1_conv_agree():
    w = torch.linalg.qr(torch.randn(4, 4))[0] + 0.3 * torch.randn(4, 4)
    plain, lu = Invertible1x1Conv(4, weight=w), Invertible1x1Conv(4, lu=True, weight=w)
    torch.testing.assert_close(lu.matrix(), w, rtol=1e-12, atol=1e-12)
    x = _img()
    torch.testing.assert_close(lu(x), plain(x), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- bad input

def test_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match="6 features/channels"):
        AdditiveCoupling(halves(6), mlp(3, 3))(torch.randn(2, 4))
    with pytest.raises(ValueError, match="4-D"):
        Squeeze()(torch.randn(2, 4))
    with pytest.raises(ValueError, match="divisible"):
        Squeeze()(torch.randn(2, 1, 3, 4))
    with pytest.raises(ValueError, match="channels"):
        ActNorm(4)(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        Invertible1x1Conv(4)(torch.randn(2, 3))
    with pytest.raises(ValueError, match="per-sample shape"):
        AdditiveCoupling(checkerboard((4, 6, 6)), conv_subnet(4, 4))(torch.randn(1, 4, 4, 4))
    with pytest.raises(ValueError, match="sub-network t returned shape"):
        AdditiveCoupling(halves(6), mlp(3, 2))(torch.randn(2, 6))
    with pytest.raises(ValueError, match="dimension 1"):
        Permutation(5)(torch.randn(2, 4))


def test_bad_partitions_are_refused():
    with pytest.raises(ValueError, match="even size"):
        halves(5)
    with pytest.raises(ValueError, match="disjoint"):
        ChannelPartition([0, 1], [1, 2], 3)
    with pytest.raises(ValueError, match="non-empty"):
        ChannelPartition([], [0, 1], 2)
    with pytest.raises(ValueError, match="proper subset"):
        from lipbound.blocks import MaskPartition

        MaskPartition(torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="partition"):
        AdditiveCoupling([0, 1], 0.1)


def test_non_finite_parameters_are_refused():
    with pytest.raises(ValueError, match="must be finite.*1 NaN"):
        DiagonalScaling(torch.tensor([1.0, math.nan]))
    with pytest.raises(ValueError, match="finite"):
        Invertible1x1Conv(2, weight=torch.tensor([[1.0, math.inf], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="finite"):
        AdditiveCoupling(halves(2), math.nan)
    block = _rand(AffineCoupling(halves(4), mlp(2, 2), mlp(2, 2)))
    block.validate()
    with torch.no_grad():
        block.t[0].weight[0, 0] = math.inf
    with pytest.raises(ValueError, match=r"t\.0\.weight.*1 Inf"):
        block.validate()


def test_actnorm_initialisation_follows_load_state_dict():
    """The host-side copy of ``initialized`` (no device read per forward) follows the buffer."""
    x = 3.0 + 2.0 * _img(4, 5, 5, 8)
    act = ActNorm(4)
    act(x)
    act.load_state_dict(ActNorm(4).state_dict())  # an uninitialised state
    y = act(x + 10)  # initialises again, on this batch
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-12, rtol=0)
    loaded = ActNorm(4)
    loaded.load_state_dict(act.state_dict())
    bias = loaded.bias.clone()
    loaded(x)  # initialised by the load: no re-initialisation
    torch.testing.assert_close(loaded.bias, bias, rtol=0, atol=0)


def test_singular_parameters_are_refused():
    with pytest.raises(ValueError, match="singular"):
        Invertible1x1Conv(3, weight=torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0, 0, 1.0]]))
    with pytest.raises(ValueError, match="singular"):
        Invertible1x1Conv(2, lu=True, weight=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="zero entries"):
        DiagonalScaling(torch.tensor([1.0, 0.0]))


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="scale must be"):
        AffineCoupling(halves(2), 0.0, 0.0, "tanh")
    with pytest.raises(ValueError, match="low < high"):
        SigmoidScale(1.0, 0.5)
    with pytest.raises(ValueError, match="coupling must be"):
        glow_like(coupling="spline")
    with pytest.raises(ValueError, match="mixing must be"):
        glow_like(mixing="fft")
    with pytest.raises(ValueError, match="divisible"):
        glow_like((3, 12, 12), levels=3)
    with pytest.raises(ValueError, match="depth"):
        figure1_chain(0)
    with pytest.raises(TypeError, match="InvertibleBlock"):
        InvertibleSequential(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="t must be"):
        AdditiveCoupling(halves(2), "0.1")


def test_permutation_size_must_be_an_integer():
    with pytest.raises(InputTypeError, match="size must be an integer"):
        Permutation(torch.arange(4))
