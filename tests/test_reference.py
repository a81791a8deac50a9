"""The oracle (package ``reference``): against torch float64, arb against mpmath, certification,
exact Jacobians and singular values, the registry."""

from __future__ import annotations

from fractions import Fraction

import flint
import mpmath
import numpy as np
import pytest
import torch
from torch import nn

import reference
from lipbound.blocks import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ChannelPartition,
    DiagonalScaling,
    IdentityScale,
    Invertible1x1Conv,
    InvertibleResidual,
    InvertibleSequential,
    NeuralODE,
    ODEFunc,
    Permutation,
    SpectralNormLinear,
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
from lipbound.blocks.residual import LipSwish
from reference.linalg import to_mpf


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """One small random network per block kind, with an input."""
    torch.manual_seed(0)
    g = _gen()
    out: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    for act in ("relu", "leaky_relu", "elu", "tanh", "sigmoid", "silu", "softplus"):
        for scale in ("sigmoid", "modified", "exp", "softclamp"):
            if act != "relu" and scale != "sigmoid":
                continue
            m = coupling_mlp(4, 2, 6, "affine", scale, activation=act, actnorm=True)
            out[f"mlp-{act}-{scale}"] = (randomize_parameters(m, generator=g), torch.randn(2, 4))
    out["glow-affine-1x1"] = (randomize_parameters(glow_like((2, 4, 4), 1, 2, 4, "affine"),
                                                   generator=g), torch.randn(1, 2, 4, 4))
    out["glow-additive-lu"] = (randomize_parameters(
        glow_like((2, 4, 4), 1, 2, 4, "additive", "lu"), generator=g), torch.randn(1, 2, 4, 4))
    out["mask-diag-perm-squeeze"] = (randomize_parameters(InvertibleSequential(
        DiagonalScaling(torch.rand(2, 4, 4) + 0.5),
        AffineCoupling(checkerboard((2, 4, 4)), conv_subnet(2, 2, 3), conv_subnet(2, 2, 3)),
        Squeeze(2), Permutation(8, "random"), Invertible1x1Conv(8, lu=True, generator=g),
        AdditiveCoupling(halves(8), conv_subnet(4, 4, 3))), generator=g),
        torch.randn(1, 2, 4, 4))
    out["residual-mlp"] = (residual_flow((3,), 2, 5, coeff=0.5), torch.randn(2, 3))
    lip = InvertibleResidual(nn.Sequential(SpectralNormLinear(3, 4, coeff=0.5), LipSwish(),
                                           SpectralNormLinear(4, 3, coeff=0.5)))
    out["residual-lipswish"] = (InvertibleSequential(lip), torch.randn(2, 3))
    out["residual-conv"] = (residual_flow((1, 3, 3), 1, 2, coeff=0.4), torch.randn(1, 1, 3, 3))
    out["mlp-additive-identity-scale-split"] = (randomize_parameters(InvertibleSequential(
        AdditiveCoupling(ChannelPartition([0, 2], [1, 3], 4), mlp(2, 2, 5, 1, "tanh")),
        AffineCoupling(ChannelPartition([3], [0, 1, 2], 4), mlp(1, 3, 5, 1, "elu"), 1.5,
                       IdentityScale())), generator=g), torch.randn(2, 4))
    # built at import, before the float64 fixture runs: cast explicitly
    return {k: (m.double().eval(), x.double()) for k, (m, x) in out.items()}


MODELS = _models()
#: The neural ODE, whose float solve truncates: compared with torch in its own test, and here
#: arb against mpmath in both reference modes (the torch solver's steps, and the exact flow).
ODE = (NeuralODE(ODEFunc(2, 6), T=1.0, steps=10).double().eval(),
       torch.randn(2, 2, generator=_gen(3)).double())
CROSS_CHECK = {**{k: (m, x, "converged") for k, (m, x) in MODELS.items()},
               "ode-solver-steps": (*ODE, "as_float"), "ode-exact-flow": (*ODE, "converged")}


def _max_abs(a: np.ndarray) -> float:
    return float(np.abs(a).max())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reference_matches_torch_float64_and_inverts(name):
    model, x = MODELS[name]
    ref = reference.compile(model, "arb:128")
    y = ref.forward(x)
    with torch.no_grad():
        y_torch = model(x)
    scale = max(1.0, _max_abs(y_torch.numpy()))
    assert _max_abs(y.to_numpy() - y_torch.numpy()) <= 1e-12 * scale
    assert float(y.radii().max()) <= 1e-25 * scale
    x_rec = ref.inverse(y)
    assert _max_abs(x_rec.to_numpy() - x.numpy()) <= 1e-25 * max(1.0, _max_abs(x.numpy()))


def _max_difference(a: reference.RTensor, m: reference.RTensor) -> float:
    with mpmath.workprec(300):
        return max(abs(float(to_mpf(u) - v)) for u, v in zip(a.data, m.data))


@pytest.mark.parametrize("name", sorted(CROSS_CHECK))
def test_arb_and_mpmath_agree_to_their_precision(name):
    """Every block kind (couplings of channel and mask partitions with every scale function
    and activation, ActNorm, diagonal, 1x1 conv plain and LU, permutation, squeeze, i-ResNet,
    neural ODE, sequential), forward and inverse, at 113 bits."""
    model, x, iterations = CROSS_CHECK[name]
    arb = reference.compile(model, "arb:113", iterations=iterations)
    mp = reference.compile(model, "mp:113", iterations=iterations)
    y_arb, y_mp = arb.forward(x), mp.forward(x)
    scale = max(1.0, _max_abs(y_arb.to_numpy()))
    assert _max_difference(y_arb, y_mp) <= 2.0 ** -95 * scale
    assert float(y_arb.radii().max()) <= 2.0 ** -95 * scale  # the ball is tight, too
    y64 = y_arb.to_numpy()  # both inverses of the same (exactly converted) point
    x_scale = max(1.0, _max_abs(x.numpy()))
    assert _max_difference(arb.inverse(y64), mp.inverse(y64)) <= 2.0 ** -90 * x_scale
    if iterations == "converged":  # a 10-step RK4 run backwards does not undo the forward one
        assert _max_abs(arb.inverse(y_arb).to_numpy() - x.numpy()) <= 2.0 ** -90 * x_scale


def test_arb_balls_contain_the_value_computed_at_far_higher_precision():
    model, x = MODELS["glow-affine-1x1"]
    low = reference.compile(model, "arb:60").forward(x)
    high = reference.compile(model, "arb:600").forward(x)
    assert all(b.contains(h.mid()) for b, h in zip(low.data, high.data))
    assert float(low.radii().max()) > 0  # a real ball, not a point


@pytest.mark.parametrize("name", ["residual-mlp", "residual-lipswish"])
def test_fixed_point_inverse_encloses_the_input(name):
    model, x = MODELS[name]
    ref = reference.compile(model, "arb:80")
    x_rec = ref.inverse(ref.forward(x))
    exact = reference.RTensor.from_array(x, ref.backend)
    assert all(b.contains(e) for b, e in zip(x_rec.data, exact.data))
    assert 0 < float(x_rec.radii().max()) < 1e-20


def test_neural_ode_discrete_and_exact_flow():
    ode = NeuralODE(ODEFunc(2, 6), T=1.0, steps=10).eval()
    x = torch.randn(2, 2)
    with torch.no_grad():
        y_torch = ode(x)
        ode_fine = NeuralODE(ode.f, T=1.0, steps=400)
        y_fine = ode_fine(x)
    discrete = reference.compile(ode, "arb:80", iterations="as_float").forward(x).to_numpy()
    assert _max_abs(discrete - y_torch.numpy()) <= 1e-14
    flow = reference.compile(ode, "arb:80").forward(x)
    assert _max_abs(flow.to_numpy() - y_fine.numpy()) <= 1e-12  # rk4, h = 1/400: ~1e-13
    assert _max_abs(flow.to_numpy() - y_torch.numpy()) > 1e-11  # the 10-step solve truncates
    back = reference.compile(ode, "arb:80").inverse(flow).to_numpy()
    assert _max_abs(back - x.numpy()) <= 1e-20


def test_dual_jacobian_matches_autograd():
    model, x = MODELS["mask-diag-perm-squeeze"]
    ref = reference.compile(model, "arb:100")
    jac = np.array([[float(to_mpf(v)) for v in row] for row in ref.jacobian(x)])
    expected = torch.autograd.functional.jacobian(lambda v: model(v).reshape(-1), x)
    np.testing.assert_allclose(jac, expected.reshape(jac.shape).numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("depth", [1, 7, 30, 100])
def test_toy_exact_singular_values(depth):
    x = torch.ones(1, 2)
    with mpmath.workprec(600):
        tenth = mpmath.mpf(1) / 10
        for chain, expected in (("affine", (1, tenth ** depth)), ("additive", (1, 1))):
            sv = reference.singular_values(reference.figure1_reference(depth, chain), x)
            for got, want in zip((sv.sigma_max, sv.sigma_min), expected):
                assert abs(got - want) <= mpmath.mpf(10) ** -30 * want
    # the stored float64 network: g = fl(0.1), sigma_min = fl(0.1)^L exactly as a rational
    sv = reference.singular_values(reference.compile(figure1_chain(depth, "affine")), x)
    want = Fraction(0.1) ** depth
    with mpmath.workprec(600):
        rel = abs(sv.sigma_min - mpmath.mpf(want.numerator) / want.denominator) / sv.sigma_min
    assert rel <= 1e-30


def test_round_trip_at_256_bits_sits_at_the_unit_roundoff_times_cond():
    x = torch.ones(1, 2)
    for depth in (10, 40, 80):
        ref = reference.figure1_reference(depth, "affine", backend="arb:256")
        rec = ref.inverse(ref.forward(x))
        err = float(np.abs(rec.to_numpy() - 1).max() + rec.radii().max())
        cond = 10.0 ** depth
        assert err <= 64 * 2.0 ** -256 * cond
        assert err >= 2.0 ** -256 * cond / 64  # the ball honestly reflects the amplification


def test_certification_raises_precision_and_refuses_beyond_max():
    ref = reference.figure1_reference(40, "affine", backend="arb:64")
    z = ref.forward(torch.ones(1, 2)).to_numpy()
    cert = reference.certified_inverse(ref, z, tol=1e-20)
    assert cert.certified and cert.prec > 64
    assert cert.error <= 1e-20 * np.abs(cert.value.to_numpy()).max()
    with pytest.raises(reference.CertificationError, match="not certified"):
        reference.certified_inverse(ref, z, tol=1e-20, max_prec=100)
    mp = reference.certified_forward(reference.compile(figure1_chain(5), "mp:80"),
                                     torch.ones(1, 2), tol=1e-20)
    assert not mp.certified and mp.error <= 1e-20


def test_mpmath_results_are_confirmed_at_a_higher_precision():
    """A 40-block affine inverse loses log2(1e40) = 133 bits: at 64 bits the confirmation run
    (128 bits) disagrees, so the precision doubles; at 128 bits the 192-bit run confirms it. The
    returned value is the 192-bit one and agrees with the certified arb result."""
    ref = reference.figure1_reference(40, "affine", backend="mp:64")
    z = ref.forward(torch.ones(1, 2)).to_numpy()
    mp = reference.certified_inverse(ref, z, tol=1e-20)
    assert not mp.certified and mp.prec == 192
    arb = reference.certified_inverse(reference.figure1_reference(40, "affine"), z, tol=1e-20)
    scale = np.abs(arb.value.to_numpy()).max()
    assert arb.certified and arb.error <= 1e-20 * scale
    with mpmath.workprec(400):
        diff = max(abs(to_mpf(a) - b) for a, b in zip(arb.value.data, mp.value.data))
    assert float(diff) <= mp.error + arb.error + 1e-20 * scale
    # the difference is taken in mpmath, not after rounding both values to float64
    assert 0 < mp.error < 1e-16 * scale


def test_iterative_results_are_not_marked_certified():
    """The converged fixed point widens its ball by an error estimate, not a proof."""
    model, x = MODELS["residual-mlp"]
    result = reference.certified_inverse(reference.compile(model, "arb:128"), x, tol=1e-25)
    assert not result.certified and result.error <= 1e-25 * max(1.0, _max_abs(x.numpy()))
    coupling, xc = MODELS["mlp-relu-sigmoid"]
    assert reference.certified_forward(reference.compile(coupling, "arb:128"), xc).certified


def test_conversion_is_exact_for_every_float_dtype():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        t = (torch.randn(50) * 1e3).to(dtype)
        for kind in ("arb:11", "mp:11"):
            bk = reference.make_backend(kind)
            r = reference.RTensor.from_array(t, bk)
            exact = [Fraction(v) for v in t.double().tolist()]
            got = [Fraction(float(to_mpf(v))) for v in r.data]  # 11-bit precision, no rounding
            assert got == exact


def test_conv_stride_and_padding_match_torch():
    for stride, padding in ((1, 0), (2, 1), (2, 2)):
        conv = nn.Conv2d(2, 3, 3, stride=stride, padding=padding)
        x = torch.randn(2, 2, 6, 5)
        f = reference.Compiler(reference.make_backend("arb:80")).compile(conv)
        with torch.no_grad():
            expected = conv(x).numpy()
        got = f(reference.RTensor.from_array(x, reference.make_backend("arb:80"))).to_numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-13)


class _Doubling(nn.Module):
    def forward(self, x):
        return 2 * x


def test_unknown_layer_is_named_and_registration_works():
    block = AdditiveCoupling(halves(2), nn.Sequential(_Doubling()))
    with pytest.raises(reference.UnknownLayerError, match="_Doubling.*reference.register"):
        reference.compile(block, "arb:64")
    reference.register(_Doubling)(lambda module, compiler: (lambda x: x * compiler.number(2.0)))
    y = reference.compile(block, "arb:64").forward(torch.tensor([[1.5, 1.0]]))
    assert y.to_numpy().tolist() == [[1.5, 4.0]]


def test_backend_names_are_validated():
    for bad in ("arb", "arb:x", "float32", "mp:1", "gmp:64"):
        with pytest.raises(ValueError, match="arb:<bits>"):
            reference.make_backend(bad)
    assert reference.make_backend("mp:53").name == "mp:53"
    assert flint.ctx.prec == 53  # backends restore the global precision


def test_uninitialised_actnorm_in_training_mode_is_refused():
    block = ActNorm(2)
    with pytest.raises(ValueError, match="uninitialised"):
        reference.compile(block, "arb:64")
    x = torch.tensor([[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0]])
    block(x)  # the first forward initialises it from the data: now it has a fixed map
    y = reference.compile(block, "arb:64").forward(x).to_numpy()
    with torch.no_grad():
        np.testing.assert_allclose(y, block(x).numpy(), rtol=0, atol=1e-14)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-14)  # data-dependent init: zero mean


def _figure1_output(backend: str) -> reference.RTensor:
    ref = reference.compile(figure1_chain(3, "affine").double(), backend)
    return ref.forward(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64))


def test_rtensor_indexing_and_slicing_follow_numpy():
    y = _figure1_output("arb:128")
    mids, radii = y.to_numpy(), y.radii()
    for key in (1, -1, (2, 0), slice(0, 2), (slice(None), 1), (Ellipsis, 0), [2, 0],
                np.array([True, False, True]), (slice(None, None, -1), slice(1, None))):
        part = y[key]
        assert isinstance(part, reference.RTensor)
        assert part.shape == mids[key].shape
        np.testing.assert_array_equal(part.to_numpy(), mids[key])
        np.testing.assert_array_equal(part.radii(), radii[key])
    assert y[2, 1].item() is y.data[5]  # the same ball, not a rounded copy
    assert len(y) == 3 and [r.shape for r in y] == [(2,)] * 3  # iteration by rows
    with pytest.raises(IndexError):
        y[3]
    with pytest.raises(TypeError):
        len(y[0, 0])
    with pytest.raises(ValueError, match="one entry"):
        y[0].item()


def test_rtensor_repr_is_short_and_shows_midpoints_and_the_largest_radius():
    y = _figure1_output("arb:128")
    text = repr(y)
    assert text.startswith("RTensor(shape=(3, 2), arb:128, mid=["), text
    shown_mids = [float(v) for v in text.split("mid=[")[1].split("]")[0].split(", ")]
    np.testing.assert_allclose(shown_mids, y.to_numpy().ravel(), rtol=1e-5)  # 6 digits, all
    assert "values" not in text and len(text) < 200  # 6 entries: all shown, short
    largest = max(float(r) for r in y.radii().ravel())
    shown = float(text.split("max_radius=")[1].rstrip(")"))
    assert largest > 0 and abs(shown - largest) <= 1e-2 * largest  # 3 digits of the largest
    big = reference.RTensor.from_floats([0.25] * 100, (10, 10), y.backend)
    assert "... 100 values" in repr(big) and len(repr(big)) < 200
    assert repr(big).endswith("max_radius=0)")  # floats convert exactly
    # no float64 underflow in the text: 2^-2000 = 10^(-2000 log10 2) = 8.70981e-603
    tiny = reference.compile(figure1_chain(1, "affine").double(), "mp:64")
    with tiny.backend.active():
        t = reference.RTensor.from_floats([2.0**-1000], (1,), tiny.backend) * 2.0**-1000
    assert repr(t).endswith("mp:64, mid=[8.70981e-603], no radius (mpmath))")
    assert "max_radius" not in repr(t)


def test_reference_fixed_point_reports_the_same_convergence_type_as_torch():
    from lipbound.blocks import ConvergenceInfo

    model, x = MODELS["residual-mlp"]
    block = model.flat_blocks()[0]
    with torch.no_grad():
        block.inverse(block(x))  # records the torch block's ConvergenceInfo
    for iterations in ("converged", "as_float"):
        ref = reference.compile(block, "arb:96", iterations=iterations)
        ref.inverse(ref.forward(x))
        info = ref.leaves()[0].last_convergence
        assert isinstance(info, ConvergenceInfo) and isinstance(block.last_convergence,
                                                                ConvergenceInfo)
        assert info.converged
        if iterations == "converged":
            assert info.tol == 2.0 ** -96 and info.residual <= 2.0 ** -96 * 10
        else:  # exactly the torch block's own iteration count
            assert info.iterations == block.last_convergence.iterations and info.tol == 0.0
