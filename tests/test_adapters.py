"""Adapters: models of FrEIA, nflows, zuko, normflows and memcnn through the lipbound contract.

Each library is a test extra; a missing one skips its tests with the reason.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import functional_jacobian
from torch import nn

from lipbound.adapters import AdaptedSequence, adapt
from lipbound.blocks import figure1_chain
from lipbound.cli import main
from lipbound.diagnostics import diagnose, reconstruction_stats, spectrum
from lipbound.diagnostics.report import AttackSettings

warnings.filterwarnings("ignore", category=DeprecationWarning)
D = 4


def _mlp(n_in: int, n_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, 16), nn.Tanh(), nn.Linear(16, n_out))


def _freia_sequence():
    ff = pytest.importorskip("FrEIA.framework")
    fm = pytest.importorskip("FrEIA.modules")
    inn = ff.SequenceINN(D)
    for k in range(3):
        # TANH: FrEIA's default ATAN clamp is a lambda, which torch.save cannot pickle
        inn.append(fm.GLOWCouplingBlock, subnet_constructor=_mlp, clamp=2.0,
                   clamp_activation="TANH")
        inn.append(fm.PermuteRandom, seed=k)
    return inn, 6


def _freia_graph():
    ff = pytest.importorskip("FrEIA.framework")
    fm = pytest.importorskip("FrEIA.modules")
    inp = ff.InputNode(D, name="in")
    a = ff.Node(inp, fm.RNVPCouplingBlock, {"subnet_constructor": _mlp, "clamp": 2.0,
                                            "clamp_activation": "TANH"})
    b = ff.Node(a, fm.PermuteRandom, {"seed": 1})
    return ff.GraphINN([inp, a, b, ff.OutputNode(b)]), 1


def _nflows():
    transforms = pytest.importorskip("nflows.transforms")
    nets = pytest.importorskip("nflows.nn.nets")
    inner = transforms.CompositeTransform([
        transforms.AffineCouplingTransform(torch.tensor([1, 0, 1, 0]),
                                           lambda i, o: nets.ResidualNet(i, o, 16)),
        transforms.ReversePermutation(D),
    ])
    return transforms.CompositeTransform([transforms.MaskedAffineAutoregressiveTransform(D, 16),
                                          inner]), 3


def _normflows():
    nf = pytest.importorskip("normflows")
    flows = []
    for _ in range(2):
        flows += [nf.flows.AffineCouplingBlock(nf.nets.MLP([D // 2, 16, D], init_zeros=False)),
                  nf.flows.Permute(D, mode="swap")]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(D), flows), 4


def _zuko():
    zuko = pytest.importorskip("zuko")
    return zuko.flows.NSF(features=D, context=0, transforms=2, hidden_features=(16,)), 2


def _memcnn():
    memcnn = pytest.importorskip("memcnn")

    def coupling():
        return memcnn.InvertibleModuleWrapper(
            memcnn.AffineCoupling(Fm=_mlp(D // 2, D // 2), Gm=_mlp(D // 2, D // 2),
                                  adapter=memcnn.AffineAdapterSigmoid),
            keep_input=True, keep_input_inverse=True)

    return nn.Sequential(coupling(), coupling()), 2


BUILDERS = {"freia_sequence": _freia_sequence, "freia_graph": _freia_graph, "nflows": _nflows,
            "normflows": _normflows, "zuko": _zuko, "memcnn": _memcnn}


@pytest.fixture(params=sorted(BUILDERS))
def adapted(request):
    torch.manual_seed(0)
    native, n_steps = BUILDERS[request.param]()
    return request.param, native, adapt(native).to(torch.float64).eval(), n_steps


def test_contract_round_trip_and_log_det_against_autograd(adapted):
    name, _, model, n_steps = adapted
    blocks = model.flat_blocks() if isinstance(model, AdaptedSequence) else [model]
    assert len(blocks) == n_steps
    x = torch.randn(5, D)
    with torch.no_grad():
        z, ld = model.forward_and_log_det(x)
        x_rec, ld_inv = model.inverse_and_log_det(z)
    torch.testing.assert_close(x_rec, x, rtol=0, atol=1e-12)
    ref = torch.linalg.slogdet(functional_jacobian(model, x)).logabsdet
    torch.testing.assert_close(ld, ref, rtol=0, atol=1e-9)
    torch.testing.assert_close(ld_inv, -ref, rtol=0, atol=1e-9)


def test_forward_is_the_data_to_latent_direction(adapted):
    name, native, model, _ = adapted
    native = native.to(torch.float64)
    x = torch.randn(3, D)
    with torch.no_grad():
        z = model(x)
        if name == "normflows":  # normflows: forward is latent -> data, inverse data -> latent
            expected = native.inverse(x)
        elif name == "zuko":
            expected = native().transform(x)
        elif name == "nflows":
            expected = native(x)[0]
        elif name == "memcnn":
            expected = native(x)
        else:  # FrEIA: rev=False is data -> latent
            expected = native(x)[0]
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-13)


def test_spectrum_full_and_matrix_free_agree(adapted):
    _, _, model, _ = adapted
    x = torch.randn(2, D)
    full = spectrum(model, x, method="full")
    free = spectrum(model, x, method="matrix_free")
    torch.testing.assert_close(free.sigma_max, full.sigma_max, rtol=1e-7, atol=0)
    torch.testing.assert_close(free.sigma_min, full.sigma_min, rtol=1e-7, atol=0)
    torch.testing.assert_close(full.inverse_sigma_max, 1 / full.sigma_min, rtol=1e-8, atol=0)


def test_diagnose_runs_and_traces_every_step(adapted):
    _, _, model, n_steps = adapted
    x = torch.randn(16, D)
    d = diagnose(model, x, spectrum_samples=2, attack=AttackSettings(samples=2, iterations=3))
    assert len(d.block_kinds) == n_steps
    by = {(s.direction, s.precision): s for s in d.reconstruction}
    f64 = by[("x->z->x", "float64")].summary()
    assert f64["n_finite"] == 16 and f64["max"] < 1e-12
    f32 = by[("x->z->x", "float32")].summary()
    assert f32["n_finite"] == 16 and 1e-10 < f32["max"] < 1e-4
    assert d.attack is not None and d.attack.errors.shape == (2,)


def test_per_block_trace_finds_a_sabotaged_step():
    # Break one step of an nflows composite: its inverse no longer inverts its forward.
    transforms = pytest.importorskip("nflows.transforms")
    model, _ = _nflows()
    inner = model._transforms[1]
    perm = inner._transforms[1]
    perm.inverse = lambda y, context=None: (y, y.new_zeros(y.shape[0]))  # identity, not reversal
    assert isinstance(perm, transforms.ReversePermutation)
    st = reconstruction_stats(adapt(model), torch.randn(8, D), "float64")
    assert {(f.block, f.stage) for f in st.failures} == {(2, "inverse")}


def test_adapt_passes_lipbound_blocks_and_refuses_unknown_types():
    chain = figure1_chain(2)
    assert adapt(chain) is chain
    with pytest.raises(TypeError, match="no adapter for torch.nn.modules.linear.Linear"):
        adapt(nn.Linear(2, 2))


def _zuko_affine(shift, scale):
    """A multivariate zuko affine transform (module level, so UnconditionalTransform takes it)."""
    import zuko

    return zuko.transforms.DependentTransform(zuko.transforms.AffineTransform(shift, scale), 1)


def test_zuko_plain_transform_is_refused_and_the_advised_wrapper_works():
    zuko = pytest.importorskip("zuko")
    flow, _ = _zuko()
    with pytest.raises(TypeError, match="UnconditionalTransform"):
        adapt(flow().transform)
    # the advice of the message: the same map wrapped in UnconditionalTransform is adapted
    shift, scale = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.25])
    model = adapt(zuko.lazy.UnconditionalTransform(_zuko_affine, shift, scale, buffer=True))
    x = torch.randn(3, 2)
    with torch.no_grad():
        z, ld = model.forward_and_log_det(x)
        torch.testing.assert_close(z, shift + scale * x, rtol=0, atol=0)
        torch.testing.assert_close(ld, torch.full((3,), float(torch.log(scale).sum())),
                                   rtol=1e-15, atol=0)
        torch.testing.assert_close(model.inverse(z), x, rtol=0, atol=1e-15)


def _freia_all_in_one():
    ff = pytest.importorskip("FrEIA.framework")
    fm = pytest.importorskip("FrEIA.modules")
    inn = ff.SequenceINN(D)
    for _ in range(3):
        inn.append(fm.AllInOneBlock, subnet_constructor=_mlp)
    return inn.to(torch.float64)  # its permutations are created in float32


def test_freia_save_advice_works(tmp_path):
    """The README's advice: coupling blocks with clamp_activation="TANH" save whole; an
    AllInOneBlock does not, and its state dict rebuilds the same map for diagnose in Python."""
    import pickle

    from lipbound.io import save_model

    glow, _ = _freia_sequence()  # GLOWCouplingBlock with clamp_activation="TANH"
    torch.save(glow, tmp_path / "glow.pt")
    inn = _freia_all_in_one()
    with pytest.raises((AttributeError, pickle.PicklingError), match="lambda"):
        torch.save(inn, tmp_path / "aio.pt")
    with pytest.raises(ValueError, match="AllInOneBlock never pickles: save its state_dict"):
        save_model(adapt(inn), tmp_path / "aio.pt")
    torch.save(inn.state_dict(), tmp_path / "aio_state.pt")
    torch.manual_seed(123)  # a different random init, overwritten by the state dict
    rebuilt = _freia_all_in_one()
    rebuilt.load_state_dict(torch.load(tmp_path / "aio_state.pt", weights_only=True))
    x = torch.randn(6, D)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x)[0], inn(x)[0], rtol=0, atol=0)
    d = diagnose(adapt(rebuilt), x, precisions=("float64",), spectrum_samples=2,
                 attack=None)
    assert len(d.block_kinds) == 3
    assert d.reconstruction[0].summary()["max"] < 1e-12


def test_memcnn_wrapper_is_unwrapped_to_the_same_function():
    memcnn = pytest.importorskip("memcnn")
    seq, _ = _memcnn()
    model = adapt(seq)
    assert not any(isinstance(m, memcnn.InvertibleModuleWrapper) for m in model.modules())
    x = torch.randn(3, D, dtype=torch.float32)
    torch.testing.assert_close(model.to(torch.float32)(x), seq(x).detach(), rtol=0, atol=0)


def test_diagnose_cli_on_a_saved_model_of_each_library(adapted, tmp_path):
    name, native, _, n_steps = adapted
    torch.save(native, tmp_path / "m.pt")
    torch.save(torch.randn(12, D), tmp_path / "x.pt")
    out = tmp_path / "r.json"
    assert main(["diagnose", str(tmp_path / "m.pt"), str(tmp_path / "x.pt"), "--json", str(out),
                 "--spectrum-samples", "2", "--attack-samples", "2", "--attack-iterations", "3"
                 ]) == 0
    rep = json.loads(out.read_text())
    assert len(rep["blocks"]) == n_steps and "oracle" not in rep
    for r in rep["reconstruction"]:
        assert r["n_finite"] == 12, (name, r["direction"], r["precision"])
        assert r["max"] < (1e-4 if r["precision"] == "float32" else 1e-12)
    torch.testing.assert_close(torch.tensor(rep["spectrum"]["inverse_sigma_max"]),
                               1 / torch.tensor(rep["spectrum"]["sigma_min"]), rtol=1e-8, atol=0)
