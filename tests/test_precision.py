"""Precision names, float runs against plain IEEE arithmetic, emulation, the decomposition and
its verdicts, ``lipbound verify``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import cli_error

import reference
from lipbound.blocks import (
    AdditiveCoupling,
    ChannelPartition,
    InvertibleSequential,
    coupling_mlp,
    figure1_chain,
    randomize_parameters,
    residual_flow,
)
from lipbound.cli import main
from lipbound.io import save_model
from lipbound.jsonio import jsonable as json_safe
from lipbound.precision import parse_precision, torch_dtype
from lipbound.precision.decompose import decompose, format_decomposition
from lipbound.precision.emulate import RoundEachOp, is_missing_kernel
from lipbound.precision.run import cast_model, row_norms, run_forward, run_inverse


def test_precision_names():
    assert parse_precision("float16").bits == 11 and parse_precision("bfloat16").bits == 8
    assert parse_precision("arb:256").kind == "arb" and parse_precision("mp:24").bits == 24
    assert parse_precision("float32").same_mantissa_reference() == "mp:24"
    assert torch_dtype("bfloat16") is torch.bfloat16
    for bad in ("float8", "arb:", "mp:1", "fp32", 32):
        with pytest.raises(ValueError, match="precision must be"):
            parse_precision(bad)


def _bf16(v: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (round to nearest even), kept as float32."""
    u = np.asarray(v, dtype=np.float32).view(np.uint32)
    u = (u + (((u >> 16) & 1) + np.uint32(0x7FFF))) & np.uint32(0xFFFF0000)
    return u.view(np.float32)


def _ieee_loop(depth: int, precision: str, chain: str, g: float, t: float, x2: float
               ) -> tuple[float, float]:
    """The toy chain's active coordinate, forward then inverse, one rounded operation at a
    time in numpy."""
    if precision == "bfloat16":
        dt, rnd = np.float32, _bf16
    else:
        dt = {"float16": np.float16, "float32": np.float32, "float64": np.float64}[precision]
        rnd = np.asarray
    g, t = rnd(dt(g)), rnd(dt(t))
    y = rnd(dt(x2))
    for _ in range(depth):
        y = rnd(rnd(y * g) + t) if chain == "affine" else rnd(y + t)
    x = y
    for _ in range(depth):
        x = rnd(rnd(x - t) / g) if chain == "affine" else rnd(x - t)
    return float(y), float(x)


@pytest.mark.parametrize("chain", ["affine", "additive"])
@pytest.mark.parametrize("precision", ["float16", "bfloat16", "float32", "float64"])
def test_float_runs_equal_plain_ieee_arithmetic(precision, chain):
    depth = 6 if chain == "affine" else 30  # affine float16 overflows from depth 8 on
    model = figure1_chain(depth, chain)
    cast = cast_model(model, torch_dtype(precision))
    t = float(cast[0].t.value)  # the network's own stored (cast) parameters
    g = float(cast[0].s.value) if chain == "affine" else 1.0
    x = torch.tensor([[1.0, 0.7]])
    fwd = run_forward(model, x, precision)
    inv = run_inverse(model, torch.from_numpy(fwd.values), precision)
    y_ref, x_ref = _ieee_loop(depth, precision, chain, g, t, 0.7)
    assert fwd.values[0, 1] == y_ref and inv.values[0, 1] == x_ref
    assert fwd.values[0, 0] == 1.0 and not fwd.emulated


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_emulated_half_equals_native_on_elementwise_ops_and_is_marked(precision):
    model = figure1_chain(8, "affine")
    x = torch.tensor([[1.0, 0.3]])
    native = run_forward(model, x, precision)
    emulated = run_forward(model, x, precision, emulate=True)
    assert emulated.emulated and not native.emulated
    np.testing.assert_array_equal(native.values, emulated.values)
    with RoundEachOp(torch_dtype(precision)):
        out = torch.ones(2, dtype=torch_dtype(precision)) / 3
    assert out.dtype == torch_dtype(precision)
    assert is_missing_kernel(RuntimeError('"addmm" not implemented for \'Half\''))
    assert not is_missing_kernel(RuntimeError("shape mismatch"))


def test_reference_runs_at_mp_and_arb_precisions():
    model = figure1_chain(4, "affine")
    x = torch.tensor([[1.0, 1.0]])
    f16 = run_forward(model, x, "float16")
    mp11 = run_forward(cast_model(model, torch.float16), x, "mp:11")
    # same significand: equal here, as every value stays in float16's normal range
    np.testing.assert_array_equal(f16.values, mp11.values)
    arb = run_forward(model, x, "arb:200")
    assert isinstance(arb.exact, reference.RTensor)


def test_decomposition_bound_holds_and_terms_add_up():
    d = decompose(figure1_chain(12, "affine"), torch.ones(1, 2), "float32")
    assert d.verdict == "instability"
    assert d.total <= d.recon_exact + d.delta2 + 1e-12 * d.total
    assert d.recon_exact <= d.lip_inverse * d.delta * (1 + 1e-9)  # linear map: Lip = 1/sigma_min
    assert d.total <= d.bound * (1 + 1e-9)
    assert abs(d.lip_inverse / 10.0 ** 12 - 1) < 1e-6
    assert d.amplification == pytest.approx(d.recon_exact / d.delta)
    assert len(d.trace) == 12 and d.same_mantissa["precision"] == "mp:24"


def test_block_trace_is_measured_in_exact_arithmetic():
    """In float64 the forward errors are below half an ulp of the values: the trace must
    still see them (a float64 subtraction of the rounded exact values gives 0). Its last
    forward row is ||delta||, its first inverse row ||delta2||."""
    d = decompose(figure1_chain(20, "affine"), torch.ones(1, 2), "float64")
    assert 0 < d.delta < 1e-16
    assert d.trace[-1].forward_error == d.delta and d.trace[0].inverse_error == d.delta2
    assert all(r.forward_error > 0 for r in d.trace[1:])


def test_row_norms_neither_overflow_nor_underflow():
    v = np.array([[1e200, 1e200], [3e-200, 4e-200], [np.inf, 1.0], [np.nan, np.inf], [0.0, 0.0]])
    got = row_norms(v)
    np.testing.assert_allclose(got[:2], [np.sqrt(2) * 1e200, 5e-200], rtol=1e-15)
    assert got[2] == np.inf and np.isnan(got[3]) and got[4] == 0.0


def test_verdict_rounding_for_a_well_conditioned_model():
    model = randomize_parameters(coupling_mlp(4, 4, 16), generator=torch.Generator().manual_seed(1))
    d = decompose(model, torch.randn(3, 4), "float32", parameter_rounding=True)
    assert d.verdict == "rounding", d.reasons
    assert d.total <= 1e-5 and d.parameter_rounding > 0
    text = format_decomposition(d)
    assert "verdict: rounding" in text
    # every value of the table starts in the same column, the local Lip(F^-1) row included
    rows = [line for line in text.splitlines()[1:8] if not line.startswith("  amplification")]
    assert any(line.startswith("  Lip(F^-1) local  1/sigma_min (") for line in rows), text
    columns = {line.index(f"{v:.3e}") for line, v in zip(rows, (d.delta, d.recon_exact,
                                                                d.delta2, d.total,
                                                                d.lip_inverse, d.bound))}
    assert len(columns) == 1, text


def test_verdict_range_for_an_affine_chain_that_overflows_float16():
    model = figure1_chain(6, "affine", g=10.0)  # 10^6 > 65504, exact values are fine
    d = decompose(model, torch.ones(1, 2), "float16")
    assert d.verdict == "range", d.reasons
    assert d.forward_nonfinite["inf"] > 0
    assert d.same_mantissa["total"] < 1e-2  # mp:11 reconstructs: only the range is missing


class _WrongInverse(AdditiveCoupling):
    """An additive coupling whose inverse is off by a factor: a bug."""

    def _inverse(self, y, with_log_det):
        x, ld = super()._inverse(y, with_log_det)
        return x * 1.001, ld


reference.register(_WrongInverse)(lambda module, compiler: reference.registry._REGISTRY[
    AdditiveCoupling](module, compiler))


def test_verdict_wrong_in_exact_arithmetic_for_a_wrong_inverse():
    model = InvertibleSequential(_WrongInverse(ChannelPartition([0], [1], 2), 0.5))
    d = decompose(model, torch.ones(1, 2), "float32")
    assert d.verdict == "wrong in exact arithmetic", d.reasons
    assert d.delta2 > 1e-3 and d.comparison["delta2"] > 1e-3


def test_truncation_term_of_an_iterative_inverse():
    model = residual_flow((3,), 2, 6, coeff=0.5)
    d = decompose(model, torch.randn(2, 3), "float32")
    assert d.truncation is not None and d.truncation["inverse"] > 0
    assert d.truncation["inverse"] < 1e-4
    assert d.truncation["forward"] == 0.0  # x + g(x) is not iterative: nothing truncates


def test_verify_command_writes_table_and_json(tmp_path, capsys):
    model_path, x_path, out = tmp_path / "m.pt", tmp_path / "x.npz", tmp_path / "d.json"
    save_model(figure1_chain(5, "affine", g=10.0), model_path)
    np.savez(x_path, x=np.ones((2, 2)))
    code = main(["verify", str(model_path), str(x_path), "--precision", "float16",
                 "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "verdict: range" in text and "||delta2||" in text
    data = json.loads(out.read_text())
    assert data["verdict"] == "range" and data["total"] == "inf"
    assert data["forward_nonfinite"]["inf"] > 0


def test_verify_command_rejects_bad_input(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "missing.pt"), str(tmp_path / "x.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_json_safe():
    assert json_safe({"a": [float("inf"), float("-inf"), float("nan"), np.float32(2)]}) == {
        "a": ["inf", "-inf", "nan", 2.0]}


def test_amplification_leaves_out_exact_forward_and_nan_samples():
    from lipbound.precision.decompose import _amplification

    amp = _amplification(np.array([1.0, 0.0, np.nan, 5.0]), np.array([1e-3, 0.0, 1.0, 1e-2]))
    assert amp.worst == pytest.approx(1e3) and amp.samples == 2 and amp.exact_forward == 1
    none = _amplification(np.zeros(2), np.zeros(2))
    assert none.worst is None and none.samples == 0 and none.exact_forward == 2


def test_an_exact_forward_sample_does_not_hide_instability(tmp_path):
    """t = 0: the chain scales x_2 by 0.1 per block. x = (1, 0) maps to (1, 0) exactly in
    float32 (delta = 0, a ratio 0 / 0), x = (1, 1) is amplified by 1/sigma_min = 10^12. Before,
    the NaN ratio of the exact sample made the batch's verdict "rounding"."""
    model = figure1_chain(12, "affine", t=0.0)
    alone = decompose(model, torch.tensor([[1.0, 1.0]]), "float32", trace=False)
    mixed = decompose(model, torch.tensor([[1.0, 1.0], [1.0, 0.0]]), "float32", trace=False)
    assert alone.verdict == mixed.verdict == "instability", mixed.reasons
    assert mixed.per_sample["delta"][1] == 0.0 and mixed.per_sample["delta"][0] > 0
    assert mixed.exact_forward_samples == 1 and mixed.amplification_samples == 1
    assert mixed.amplification == alone.amplification
    assert mixed.amplification == pytest.approx(mixed.recon_exact / mixed.delta)
    assert mixed.amplification > 1e11  # 1/sigma_min = 10^12, up to float32's g
    assert "1 of 2 samples; 1 with delta = 0 left out" in format_decomposition(mixed)
    data = json.loads(json.dumps(json_safe(mixed.to_dict())))
    assert data["exact_forward_samples"] == 1 and data["amplification"] > 1e11


def test_an_exact_float_run_is_rounding_without_amplification():
    """g = 0.5, t = 0: every float operation is exact, so delta = 0 for every sample: there is
    no amplification to measure (None, not NaN) and the verdict is rounding (of size 0)."""
    model = figure1_chain(12, "affine", t=0.0, g=0.5)
    d = decompose(model, torch.tensor([[1.0, 1.0], [2.0, -3.0]]), "float32", trace=False)
    assert d.delta == 0.0 and d.total == 0.0
    assert d.amplification is None and d.exact_forward_samples == 2
    assert d.lip_inverse == 2.0 ** 12
    assert d.verdict == "rounding", d.reasons


def test_decompose_rejects_non_finite_inputs():
    x = torch.tensor([[1.0, 1.0], [float("nan"), 0.0], [1.0, float("inf")]])
    with pytest.raises(ValueError, match=r"x must be finite: rows \[1, 2\]"):
        decompose(figure1_chain(2, "affine"), x)


@pytest.mark.parametrize("option, value, message", [
    ("--reference", "mp:abc",
     "--reference must be one of mp:<bits> or arb:<bits> (bits >= 2), got 'mp:abc'"),
    ("--reference", "float64",
     "--reference must be one of mp:<bits> or arb:<bits> (bits >= 2), got 'float64'"),
    ("--precision", "mp:24",
     "--precision must be one of float16, bfloat16, float32 or float64, got 'mp:24'"),
])
def test_verify_command_names_the_option_and_the_accepted_precisions(tmp_path, capsys, option,
                                                                     value, message):
    save_model(figure1_chain(2, "affine"), tmp_path / "m.pt")
    np.save(tmp_path / "x.npy", np.ones((1, 2)))
    err = cli_error(["verify", str(tmp_path / "m.pt"), str(tmp_path / "x.npy"), option, value],
                     capsys)
    assert f"lipbound verify: error: {message}" in err
    assert "reference_name" not in err
    # the help names the same accepted precisions as the message
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    accepted = message.split(" must be ")[1].split(", got")[0]
    assert accepted in help_text


def test_verify_command_rejects_non_finite_and_empty_inputs(tmp_path, capsys):
    save_model(figure1_chain(2, "affine"), tmp_path / "m.pt")
    x = np.ones((3, 2))
    x[2, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    err = cli_error(["verify", str(tmp_path / "m.pt"), str(tmp_path / "x.npy")], capsys)
    assert f"INPUTS {str(tmp_path / 'x.npy')!r} must be finite: rows [2] hold NaN or Inf" in err
    torch.save(torch.ones(1, 0), tmp_path / "e.pt")
    err = cli_error(["verify", str(tmp_path / "m.pt"), str(tmp_path / "e.pt")], capsys)
    assert "must hold at least one sample of at least one value, got shape (1, 0)" in err


def test_verify_reference_mp_works(tmp_path, capsys):
    save_model(figure1_chain(3, "affine"), tmp_path / "m.pt")
    np.save(tmp_path / "x.npy", np.ones((1, 2)))
    assert main(["verify", str(tmp_path / "m.pt"), str(tmp_path / "x.npy"), "--reference",
                 "mp:200", "--no-progress"]) == 0
    assert "against mp:200" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["verify", "sweep"])
def test_every_option_states_its_default(command):
    """Every option's help says its default (positional arguments say they are required)."""
    import argparse
    import importlib

    from lipbound.cli import COMMANDS

    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        wanted = "required" if not action.option_strings else "default"
        assert action.help and wanted in action.help, (action.dest, action.help)


def test_cast_model_is_the_one_cast_and_leaves_the_model_alone():
    """``cast_model`` (by name or dtype) and the diagnostics' ``at_precision`` give the same
    copy: every floating tensor rounded to the dtype, eval mode; the model keeps its float64
    values and its training mode."""
    from lipbound.diagnostics.views import at_precision

    model = randomize_parameters(residual_flow((3,), 2, 6, actnorm=True),
                                 generator=torch.Generator().manual_seed(3)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    by_name, by_dtype = cast_model(model, "float16"), cast_model(model, torch.float16)
    diag = at_precision(model, "float16")
    for copy_ in (by_name, by_dtype, diag):
        assert not copy_.training
        for k, v in copy_.state_dict().items():
            if before[k].is_floating_point():
                assert v.dtype == torch.float16
                assert torch.equal(v, before[k].to(torch.float16)), k
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == before[k].dtype, k
    with pytest.raises(ValueError, match="precision must be one of float16, bfloat16, float32 "
                                         "or float64, got 'mp:11'"):
        cast_model(model, "mp:11")


def test_verdict_comparisons_ignore_nan():
    from lipbound.precision.decompose import _at_least, _largest_known

    assert not _at_least(float("nan"), 100.0) and not _at_least(None, 100.0)
    assert _at_least(float("inf"), 100.0) and _at_least(100.0, 100.0)
    assert _largest_known(np.array([np.nan, 3.0, 1e3])) == 1e3
    assert _largest_known(np.array([np.nan])) is None and _largest_known(None) is None


def test_per_block_columns_stay_aligned_with_long_block_names():
    import dataclasses

    from lipbound.blocks import figure1_chain
    from lipbound.precision.decompose import decompose, format_decomposition

    d = decompose(figure1_chain(2, "affine"), torch.ones(1, 2, dtype=torch.float64), "float32",
                  "arb:128")
    long = "FrEIABlock(AllInOneBlock)"
    d.trace = [dataclasses.replace(d.trace[0], kind=long), *d.trace[1:]]
    rows = [ln for ln in format_decomposition(d).splitlines()
            if "AffineCoupling" in ln or long in ln]
    assert len(rows) == 2
    assert len({ln.rindex(" ") for ln in rows}) == 1  # the inverse-error column starts in one place
