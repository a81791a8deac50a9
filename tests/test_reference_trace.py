"""The traced oracle: ATen graphs captured with torch.export, run in ball arithmetic.

Checked against float64 torch on models of the five adapted libraries and on the refusals (an
undecided comparison after the precision cap, an unsupported operation); against the hand-written
oracle in tests/test_reference_trace_oracles.py.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from test_adapters import BUILDERS
from test_reference_trace_oracles import MODELS, agree
from torch import nn

import reference
from lipbound.adapters import adapt
from lipbound.blocks import (
    figure1_chain,
)
from lipbound.errors import InputError, InputTypeError, LipboundError
from reference import interp

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

PREC = "arb:128"


def test_traced_jacobian_matches_handwritten():
    """Forward mode (dual numbers) through the interpreter: sigma_min of the Figure 1 chain."""
    model = figure1_chain(3, "affine").double()
    x = torch.ones(1, 2, dtype=torch.float64)
    sv_hand = reference.singular_values(reference.compile(model, PREC), x)
    sv_traced = reference.singular_values(reference.compile_traced(model, PREC), x)
    for a, b, ea, eb in zip(sv_hand.values, sv_traced.values, sv_hand.errors, sv_traced.errors,
                            strict=True):
        assert abs(a - b) <= ea + eb + 1e-30 * abs(a)
    assert sv_traced.values[-1] == pytest.approx(0.1 ** 3, rel=1e-14)


def test_mp_backend_cross_checks_arb():
    block, x = MODELS["coupling_mlp_affine"]
    model = block.double().eval()
    traced = reference.compile_traced(model, "arb:128")
    y_arb = traced.forward(x)
    y_mp = traced.with_backend("mp:128").forward(x)  # the same captured graphs
    assert np.abs(y_arb.to_numpy() - y_mp.to_numpy()).max() <= 1e-30


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_traced_oracle_on_foreign_models(name):
    """FrEIA, nflows, zuko (a spline: comparisons and gathers), normflows, memcnn: the exact maps
    within float64 rounding of torch's float64 run, forward and inverse."""
    torch.manual_seed(0)
    native, _ = BUILDERS[name]()
    model = adapt(native).to(torch.float64).eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    with torch.no_grad():
        y64 = model.forward(x)
        x64 = model.inverse(y64)
    traced = reference.compile_traced(model, "arb:113")
    y = traced.forward(x)
    x1 = traced.inverse(y64)
    assert np.abs(y.to_numpy() - y64.numpy()).max() <= 1e-13
    assert np.abs(x1.to_numpy() - x64.numpy()).max() <= 1e-13
    assert float(y.radii().max()) < 1e-25


def test_freia_soft_permutation_inverse_is_wrong_in_exact_arithmetic():
    """FrEIA's AllInOneBlock(permute_soft=True) keeps the soft permutation and its inverse as
    separate float32 tensors: the exact inverse of the exact forward misses x by ~1e-8, far above
    the certified radius, so the error is in the model, not in rounding."""
    model = adapt(_soft_permutation_inn()).double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    traced = reference.compile_traced(model, PREC)
    y = traced.forward(x)
    back = traced.inverse(y)
    miss = np.abs(back.to_numpy() - x.numpy()).max()
    assert miss > 1e-10
    assert miss > 1e6 * float(back.radii().max())


class _Threshold(nn.Module):
    """``where((x / 3) * 3 > 1, x, -x)``: at ``x = 1`` the left side is a ball around 1."""

    def forward(self, x):
        return torch.where((x / 3) * 3 > 1, x, -x)


def test_straddled_comparison_refused_after_the_precision_cap():
    f = reference.trace(_Threshold(), torch.zeros(1, 2, dtype=torch.float64))
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    with pytest.raises(reference.UndecidedComparisonError) as info:
        f.evaluate(x, "arb:64", max_prec=256)
    message = str(info.value)
    assert "aten.gt.Scalar" in message and "256 bits" in message and "refuses" in message
    assert isinstance(info.value, LipboundError) and info.value.op == "aten.gt.Scalar"


def test_mp_comparison_near_its_threshold_is_undecided():
    """mpmath has no radius: ``(1 / 3) * 3`` lands within a few ulps of 1, too close to decide."""
    f = reference.trace(_Threshold(), torch.zeros(1, 2, dtype=torch.float64))
    with pytest.raises(reference.UndecidedComparisonError, match="aten.gt.Scalar"):
        f.evaluate(torch.tensor([[1.0, 2.0]], dtype=torch.float64), "mp:64", max_prec=128)


def test_undecided_comparison_retried_at_higher_precision():
    """``x = 1 + 2^-52``: ``(x / 3) * 3 > 1`` straddles at 32 bits, is decided at 64."""
    f = reference.trace(_Threshold(), torch.zeros(1, 1, dtype=torch.float64))
    x = torch.tensor([[1.0 + 2.0 ** -52]], dtype=torch.float64)
    with pytest.raises(reference.UndecidedComparisonError):
        f.evaluate(x, "arb:32", max_prec=32)
    y = f.evaluate(x, "arb:32", max_prec=64)
    assert y.to_numpy()[0, 0] == 1.0 + 2.0 ** -52  # the x branch, not -x


class _Cosine(nn.Module):
    def forward(self, x):
        return torch.cos(x) + 1


def test_unsupported_op_names_it_and_how_to_register(monkeypatch):
    f = reference.trace(_Cosine(), torch.zeros(2, dtype=torch.float64))
    x = torch.tensor([0.5, 1.0], dtype=torch.float64)
    with pytest.raises(reference.UnsupportedOpError,
                       match=r"aten\.cos\.default; register one with "
                             r"@reference\.register_op\(torch\.ops\.aten\.cos\.default\)"):
        f.evaluate(x, PREC)
    monkeypatch.setattr(interp, "_OPS", dict(interp._OPS))
    cos = reference.Elementwise("cos", lambda bk, v: v.cos(), lambda bk, v: -v.sin())

    @reference.register_op(torch.ops.aten.cos)
    def _(ctx, v):
        return ctx.elementwise(v, cos)

    y = f.evaluate(x, PREC)
    assert np.abs(y.to_numpy() - (np.cos(x.numpy()) + 1)).max() <= 1e-15
    assert "aten.cos" in " ".join(reference.registered_ops())


class _Layout(nn.Module):
    """Layout, reduction and elementwise operations in one graph."""

    def forward(self, x):
        a, b = torch.split(x, [1, 3], dim=1)
        c = torch.cat([b.flip(1), a.expand(-1, 2)], dim=1)        # (B, 5)
        d = c[:, 1:4].transpose(0, 1).reshape(-1).unsqueeze(0)   # (1, 3B)
        e = torch.nn.functional.softplus(d) + torch.nn.functional.elu(d) * torch.sigmoid(d)
        f = torch.log1p(torch.abs(e)) + torch.expm1(d / 4) - torch.sqrt(e * e + 1)
        g = torch.clamp(f, -0.5, 0.5) + torch.atan(f).pow(2) + f.mean() - f.sum(dim=1)
        return torch.nn.functional.leaky_relu(g, 0.2) + torch.nn.functional.silu(g)


def test_layout_and_elementwise_operations_against_float64():
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    f = reference.trace(_Layout(), x)
    y = f.evaluate(x, PREC)
    with torch.no_grad():
        expected = _Layout()(x)
    assert y.shape == tuple(expected.shape)
    assert np.abs(y.to_numpy() - expected.numpy()).max() <= 1e-14
    assert float(y.radii().max()) < 1e-25


def test_make_fx_capture_gives_the_same_map():
    block, x = MODELS["coupling_mlp_affine"]
    leaf = block.double().eval().flat_blocks()[1]
    exported = reference.trace(leaf.forward, x)
    fx = reference.trace(leaf.forward, x, capture="make_fx")
    assert (exported.captured_with, fx.captured_with) == ("torch.export", "make_fx")
    agree(exported.evaluate(x, PREC), fx.evaluate(x, PREC))


def test_data_dependent_loop_is_a_trace_error_without_torch_noise(capsys):
    """The i-ResNet inverse iterates until a data-dependent test holds: no graph to capture
    (the traced oracle captures the residual branch g and iterates itself)."""
    from lipbound.blocks import residual_flow

    leaf = residual_flow((2,), n_blocks=1, hidden=4).double().eval().flat_blocks()[0]
    with pytest.raises(reference.TraceError, match="cannot capture the graph of "
                                                   "InvertibleResidual.inverse"):
        reference.trace(leaf.inverse, torch.zeros(1, 2, dtype=torch.float64))
    assert capsys.readouterr().err == ""


def test_parameters_changed_in_place_are_read_again():
    layer = nn.Linear(2, 2).double()
    f = reference.trace(layer, torch.zeros(1, 2, dtype=torch.float64))
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    before = f.evaluate(x, PREC).to_numpy()
    with torch.no_grad():
        layer.weight.mul_(2)
        expected = layer(x).numpy()
    after = f.evaluate(x, PREC).to_numpy()
    assert np.abs(after - expected).max() <= 1e-15 and np.abs(after - before).max() > 1e-3


def test_bad_inputs():
    with pytest.raises(InputTypeError, match="example_input must be a floating-point"):
        reference.trace(nn.Tanh(), [1.0, 2.0])
    with pytest.raises(InputTypeError, match="fn must be callable"):
        reference.trace(3, torch.zeros(2))
    f = reference.trace(nn.Tanh(), torch.zeros(1, 2))
    with pytest.raises(InputError, match=r"traced for input shape \(1, 2\), got \(2, 2\)"):
        f.evaluate(torch.zeros(2, 2), PREC)
    with pytest.raises(InputError, match="max_prec must be an integer >= the backend's 128"):
        reference.compile_traced(figure1_chain(2).double(), PREC, max_prec=64)
    with pytest.raises(reference.TraceError, match="cannot capture the graph of .*torch.export "
                                                   "failed.*make_fx failed"):
        reference.trace(lambda x: x if float(x.sum()) > 0 else -x, torch.zeros(2))
    with pytest.raises(InputError, match="capture must be one of auto, export, make_fx"):
        reference.trace(nn.Tanh(), torch.zeros(2), capture="jit")
    with pytest.raises(InputError, match="iterations must be 'converged' or 'as_float', got "
                                         "'exact'"):
        reference.compile_traced(figure1_chain(2).double(), PREC, iterations="exact")
    with pytest.raises(InputTypeError, match=r"\(or a tuple of them, one per input\), got "
                                             "an empty tuple"):
        reference.trace(nn.Tanh(), ())


def test_several_inputs():
    """A vector field ``f(t, x)``: one graph of two inputs, each checked."""
    field = reference.trace(lambda t, x: torch.tanh(x) * t,
                            (torch.zeros((), dtype=torch.float64), torch.zeros(1, 2)))
    t, x = torch.tensor(0.5, dtype=torch.float64), torch.tensor([[1.0, -2.0]])
    y = field.evaluate((t, x), PREC)
    assert np.abs(y.to_numpy() - 0.5 * np.tanh(x.numpy())).max() <= 1e-15
    assert field.input_shape == ((), (1, 2))
    with pytest.raises(InputError, match="was traced for 2 inputs, got 1"):
        field.evaluate(x, PREC)
    with pytest.raises(InputError, match=r"traced for input 2's shape \(1, 2\), got \(2, 2\)"):
        field.evaluate((t, torch.zeros(2, 2)), PREC)


def _soft_permutation_inn():
    ff = pytest.importorskip("FrEIA.framework")
    fm = pytest.importorskip("FrEIA.modules")
    torch.manual_seed(0)
    inn = ff.SequenceINN(4)
    inn.append(fm.AllInOneBlock, subnet_constructor=_linear, permute_soft=True)
    return inn


def _linear(n_in: int, n_out: int) -> nn.Module:
    return nn.Linear(n_in, n_out)


def test_decompose_freia_soft_permutation_is_wrong_in_exact_arithmetic():
    from lipbound.precision.decompose import decompose

    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    d = decompose(_soft_permutation_inn(), x, "float64", "arb:113")
    assert d.verdict == "wrong in exact arithmetic"
    assert any("the exact inverse does not invert the exact forward" in r for r in d.reasons)
    assert [row.kind for row in d.trace] == ["FrEIABlock(AllInOneBlock)"]
    assert d.total > 1e-10  # float64 rounding alone would be ~1e-16


def test_verify_cli_on_a_saved_zuko_flow(tmp_path, capsys):
    zuko = pytest.importorskip("zuko")
    from lipbound.cli import main

    torch.manual_seed(0)
    flow = zuko.flows.RealNVP(4, transforms=2, hidden_features=(8,))
    torch.save(flow, tmp_path / "flow.pt")
    torch.save(torch.randn(3, 4), tmp_path / "x.pt")
    code = main(["verify", str(tmp_path / "flow.pt"), str(tmp_path / "x.pt"),
                 "--reference", "arb:113", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ZukoBlock(" in out  # the per-block trace names the adapted steps
    verdict = out.split("verdict: ")[1].splitlines()[0]
    assert verdict == "rounding"  # a well-conditioned float32 flow: its error is rounding


@pytest.mark.parametrize("activation", [nn.GELU(), nn.GELU("tanh"), nn.Hardtanh(-0.5, 0.5),
                                        nn.Mish(), nn.LogSigmoid()])
def test_oracle_falls_back_to_tracing_for_layers_without_a_reference(activation):
    """A lipbound coupling whose sub-network has a layer with no hand-written reference gets the
    traced oracle; lipbound's own blocks keep the hand-written one."""
    from lipbound.blocks import AdditiveCoupling, halves

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), activation, nn.Linear(8, 2))
    model = AdditiveCoupling(halves(4), net).double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    ref = reference.oracle(model, PREC)
    assert isinstance(ref, reference.TracedModel)
    with torch.no_grad():
        y64 = model.forward(x)
    y = ref.forward(x)
    assert np.abs(y.to_numpy() - y64.numpy()).max() <= 1e-14
    assert np.abs(ref.inverse(y).to_numpy() - x.numpy()).max() <= 1e-25
    assert type(reference.oracle(figure1_chain(2).double(), PREC)) is reference.ReferenceModel


def test_verify_cli_unsupported_op_is_one_line(tmp_path, capsys):
    from lipbound.blocks import AdditiveCoupling, halves
    from lipbound.cli import main

    model = AdditiveCoupling(halves(2), nn.Sequential(nn.Linear(1, 1), _Cosine()))
    torch.save(model, tmp_path / "model.pt")
    torch.save(torch.randn(2, 2), tmp_path / "x.pt")
    code = main(["verify", str(tmp_path / "model.pt"), str(tmp_path / "x.pt"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "aten.cos.default" in err[0] and "register_op" in err[0], err


VERDICTS = ("wrong in exact arithmetic", "range", "instability", "rounding")


def test_diagnose_cli_reference_on_a_saved_zuko_model(tmp_path):
    """``lipbound diagnose --reference`` on a foreign model: the traced oracle's decomposition.
    A one-transform RealNVP with amplification ~1 is well conditioned: its verdict is rounding."""
    zuko = pytest.importorskip("zuko")
    from lipbound.cli import main

    torch.manual_seed(0)
    torch.save(zuko.flows.RealNVP(features=2, context=0, transforms=1, hidden_features=(8,)),
               tmp_path / "m.pt")
    torch.save(torch.randn(6, 2), tmp_path / "x.pt")
    out = tmp_path / "r.json"
    assert main(["diagnose", str(tmp_path / "m.pt"), str(tmp_path / "x.pt"), "--reference",
                 "arb:113", "--reference-samples", "2", "--precision", "float64",
                 "--attack-samples", "0", "--spectrum-samples", "0", "--no-progress", "--json",
                 str(out)]) == 0
    oracle = json.loads(out.read_text())["oracle"]
    assert oracle["note"] is None
    [dec] = oracle["decomposition"]
    assert dec["verdict"] in VERDICTS and dec["reference"] == "arb:113" and dec["n_samples"] == 2
    assert dec["verdict"] == "rounding", dec["reasons"]


def test_diagnose_freia_soft_permutation_is_wrong_in_exact_arithmetic():
    from lipbound.diagnostics.report import OracleSettings, diagnose

    model = adapt(_soft_permutation_inn()).double().eval()
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    d = diagnose(model, x, precisions=("float64",), spectrum_samples=0, attack=None,
                 oracle=OracleSettings("arb:113", 2))
    assert d.oracle_note is None
    [dec] = d.decomposition
    assert dec.verdict == "wrong in exact arithmetic", dec.reasons
    assert dec.n_samples == 2 and dec.total > 1e-10


def test_diagnose_reports_the_oracle_refusal_instead_of_failing():
    """An ATen operation without a ball implementation: the report names it, the rest stands."""
    from lipbound.blocks import AdditiveCoupling, halves
    from lipbound.diagnostics.report import OracleSettings, diagnose

    torch.manual_seed(0)
    model = AdditiveCoupling(halves(2), nn.Sequential(nn.Linear(1, 1), _Cosine())).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    d = diagnose(model, x, precisions=("float64",), spectrum_samples=0, attack=None,
                 oracle=OracleSettings("arb:64", 2))
    assert d.decomposition == []
    assert d.oracle_note.startswith("no oracle decomposition: ")
    assert "aten.cos.default" in d.oracle_note and "register_op" in d.oracle_note
    assert d.reconstruction and all(float(r.errors.max()) < 1e-12 for r in d.reconstruction)


def test_zuko_recon_exact_is_the_float_forward_rounding_not_an_exact_round_trip():
    """``recon_exact`` is ``||x - F^-1(z_p)||``: the exact inverse of the *float* output
    ``z_p``, so at float64 it carries the forward rounding ``delta`` (~1e-16, amplified by about
    ``Lip(F^-1)`` ~ 1 here), not 0; the exact round trip ``F^-1(F(x))`` of the exact forward is
    within the ball radius (~1e-32 at arb:113)."""
    zuko = pytest.importorskip("zuko")
    from lipbound.precision.decompose import decompose

    torch.manual_seed(0)
    flow = zuko.flows.RealNVP(4, transforms=2, hidden_features=(8,))
    x = torch.randn(3, 4)
    d = decompose(flow, x, "float64", "arb:113", same_mantissa=False)
    recon, delta = np.array(d.per_sample["recon_exact"]), np.array(d.per_sample["delta"])
    assert ((recon > 1e-18) & (recon < 1e-14)).all()  # float64 rounding
    assert ((recon >= 0.1 * delta) & (recon <= 10 * delta)).all()  # delta, carried through
    model = adapt(flow).double().eval()
    ref = reference.compile_traced(model, "arb:113")
    x64 = x.double()
    with torch.no_grad():
        x1 = ref.inverse(model(x64))  # F^-1(z_p), independently of decompose
    with ref.backend.active():
        miss = (ref.convert(x64) - x1).to_numpy()
        back = ref.inverse(ref.forward(x64)) - ref.convert(x64)
    assert np.allclose(np.linalg.norm(miss, axis=1), recon, rtol=1e-6)
    assert (np.abs(back.to_numpy()) <= back.radii()).all() and back.radii().max() < 1e-30
