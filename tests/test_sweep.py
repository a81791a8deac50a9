"""The Figure 1 depth sweep and ``lipbound sweep``."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from cli_helpers import cli_error

from lipbound.blocks import figure1_chain
from lipbound.cli import main
from lipbound.precision.sweep import SweepRecord, figure1_sweep
from lipbound.precision.sweep_plot import plot_sweep


@pytest.fixture(scope="module")
def records() -> list[SweepRecord]:
    return figure1_sweep(30)


def _get(records, chain, precision, key):
    return np.array([getattr(r, key) for r in records
                     if r.chain == chain and r.precision == precision])


def test_sweep_has_every_point_and_exact_singular_values(records):
    assert len(records) == 2 * 5 * 30
    depth = np.arange(1, 31)
    np.testing.assert_allclose(_get(records, "affine", "exact", "sigma_min"), 0.1 ** depth,
                               rtol=1e-13)
    np.testing.assert_allclose(_get(records, "affine", "exact", "sigma_max"), 1.0, rtol=1e-15)
    np.testing.assert_allclose(_get(records, "additive", "exact", "cond"), 1.0, rtol=1e-15)
    # the float16 network's own g = fl16(0.1) = 0.0999755859375
    np.testing.assert_allclose(_get(records, "affine", "float16", "sigma_min"),
                               0.0999755859375 ** depth, rtol=1e-13)


def test_exact_row_is_exact_to_the_reference_bits(records):
    """The reference's own round trip runs at 256 + log2(cond) + 32 bits: its certified error
    bound stays below 2^-256 ||x|| at every depth (at a fixed 256 bits it would grow as
    2^-256 cond, to 1e-47 at depth 30)."""
    for chain in ("additive", "affine"):
        err = _get(records, chain, "exact", "recon_error")
        assert (err > 0).all() and (err <= 2.0 ** -256 * math.sqrt(2)).all(), err


def test_deep_chain_beyond_float64_range_keeps_inf_and_nan_honest():
    """g = 0.01 at depth 170: sigma_min = 1e-340 underflows float64 and cond overflows it; the
    records say 0 and inf (no division by zero), the float64 error overflows to inf and its
    bound is inf, not NaN."""
    rec = figure1_sweep(170, chains=("affine",), precisions=("float64", "exact"), g=0.01)
    deep = {r.precision: r for r in rec if r.depth == 170}
    assert deep["exact"].sigma_min == 0.0 and deep["exact"].cond == math.inf
    assert deep["float64"].recon_error == math.inf and deep["float64"].bound == math.inf
    assert 0 < deep["exact"].recon_error <= 2.0 ** -256 * math.sqrt(2)
    at150 = [r for r in rec if r.depth == 150 and r.precision == "exact"][0]
    assert at150.sigma_min == pytest.approx(1e-300, rel=1e-13)
    assert at150.cond == pytest.approx(1e300, rel=1e-13)


def test_bound_holds_for_every_float_point(records):
    for r in records:
        if r.precision != "exact" and math.isfinite(r.recon_error):
            assert r.recon_error <= r.bound * (1 + 1e-9), r


def test_same_growth_rate_at_every_precision(records):
    """Affine: the error grows by 1/g = 10 per block at every precision (instability), at an
    offset set by the precision (rounding)."""
    slopes, offsets = {}, {}
    for p in ("float32", "float64"):
        err = _get(records, "affine", p, "recon_error")
        depth = np.arange(1, 31)
        ok = np.isfinite(err) & (err > 0) & (depth >= 3)
        slope, offset = np.polyfit(depth[ok], np.log10(err[ok]), 1)
        slopes[p], offsets[p] = slope, offset
    assert abs(slopes["float32"] - 1) < 0.1 and abs(slopes["float64"] - 1) < 0.1
    assert 7 < offsets["float32"] - offsets["float64"] < 11  # ~ log10(2^-24 / 2^-53) = 8.7
    additive = _get(records, "additive", "float32", "recon_error")
    assert additive.max() < 1e-6


def test_float16_overflow_is_kept_as_inf(records):
    err = _get(records, "affine", "float16", "recon_error")
    assert np.isinf(err).any() and np.isfinite(err[0])


def test_alternating_partition():
    rec = figure1_sweep(6, chains=("affine",), precisions=("exact",), alternate=True)
    smin = np.array([r.sigma_min for r in rec])
    np.testing.assert_allclose(smin, [0.1 ** (d - d // 2) for d in range(1, 7)], rtol=1e-13)


def test_sweep_command_writes_png_csv_json(tmp_path, capsys):
    out, js = tmp_path / "fig", tmp_path / "fig.json"
    code = main(["sweep", "--depth", "12", "--out", str(out), "--json", str(js),
                 "--no-progress"])
    assert code == 0
    assert (tmp_path / "fig.png").stat().st_size > 10_000
    rows = list(csv.DictReader((tmp_path / "fig.csv").open()))
    assert len(rows) == 2 * 5 * 12
    data = json.loads(js.read_text())
    assert set(data[0]) == {"chain", "depth", "precision", "recon_error", "sigma_min",
                            "sigma_max", "cond"}
    assert any(d["recon_error"] == "inf" for d in data)
    assert "affine chain" in capsys.readouterr().out


def test_sweep_rejects_bad_arguments():
    with pytest.raises(ValueError, match="precisions must be one of float16, bfloat16, float32, "
                                         "float64 or exact, got 'arb:64'"):
        figure1_sweep(3, precisions=("arb:64",))
    with pytest.raises(ValueError, match="chains"):
        figure1_sweep(3, chains=("spline",))
    for g in (0.0, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"^g must be"):
            figure1_sweep(3, g=g)
        with pytest.raises(ValueError, match=r"^g must be"):
            figure1_chain(3, "affine", g=g)
    with pytest.raises(ValueError, match="t must be finite"):
        figure1_chain(3, "additive", t=math.inf)
    with pytest.raises(TypeError, match="g must be a number, got str"):
        figure1_chain(3, g="0.1")


def test_figure1_chain_inverse_is_exact_for_a_valid_g():
    """The validation accepts every finite nonzero g: with g = -0.5 (exact in float64) the
    round trip is exact."""
    model = figure1_chain(5, "affine", t=0.25, g=-0.5)
    x = torch.tensor([[1.0, 3.0]])
    assert torch.equal(model.inverse(model(x)), x)
    assert model(x)[0, 1].item() == pytest.approx(3 * (-0.5) ** 5 + 0.25 * sum(
        (-0.5) ** k for k in range(5)), rel=1e-15)


@pytest.mark.parametrize("args, message", [
    (["--g", "0"], "--g must be nonzero (g = 0 makes the affine chain singular: its inverse "
                   "divides by g), got 0.0"),
    (["--g", "nan"], "--g must be finite, got nan"),
    (["--g", "inf"], "--g must be finite, got inf"),
    (["--g=-inf"], "--g must be finite, got -inf"),
    (["--t", "nan"], "--t must be finite, got nan"),
    (["--g", "1e-9"], "--g = 1e-09 rounds to 0.0 in float16: the float16 affine chain would not "
                      "be invertible; choose another --g or leave float16 out of --precision"),
    (["--g", "1e5", "--precision", "float16"], "--g = 100000.0 rounds to inf in float16"),
    (["--x", "1", "nan"], "--x must be two finite numbers, got [1.0, nan]"),
    (["--depth", "0"], "--depth must be an integer >= 1, got 0"),
    (["--chains", "spline"], "--chains must be one or more of additive, affine, got ['spline']"),
    (["--precision", "mp:24"], "--precision must be one of float16, bfloat16, float32, float64 "
                               "or exact, got 'mp:24'"),
    (["--reference", "mp:64"], "--reference must be arb:<bits> (bits >= 2), got 'mp:64'"),
    (["--reference", "mp:abc"], "--reference must be arb:<bits> (bits >= 2), got 'mp:abc'"),
])
def test_sweep_command_bad_input_is_a_clear_error(tmp_path, capsys, args, message):
    err = cli_error(["sweep", "--depth", "2", "--out", str(tmp_path / "f"), "--no-progress",
                     *args], capsys)
    assert "reference_name" not in err and "precisions" not in err and "depths" not in err
    assert err.startswith("lipbound sweep: error: ") and message in err, err
    assert not (tmp_path / "f.png").exists()


def test_sweep_help_names_the_accepted_precisions(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "one of float16, bfloat16, float32, float64 or exact" in text
    assert "the oracle, arb:<bits> (bits >= 2)" in text and "mp:<bits> is not accepted" in text


def test_sweep_g_without_float16_runs_where_float16_would_round_it_to_zero(tmp_path):
    """g = 1e-9 rounds to 0 in float16 only: without float16 the sweep runs, and the exact
    sigma_min is g^L."""
    rec = figure1_sweep(2, chains=("affine",), precisions=("float32", "exact"), g=1e-9)
    exact = [r for r in rec if r.precision == "exact"]
    np.testing.assert_allclose([r.sigma_min for r in exact], [1e-9, 1e-18], rtol=1e-13)


def test_plot_keeps_float_and_exact_rows_on_their_own_axes(records, tmp_path):
    drawn = plot_sweep(records, tmp_path / "f.png", subtitle="t = 0.123456789")
    assert (tmp_path / "f.png").stat().st_size > 10_000
    floats = [r for r in records if r.precision != "exact"]
    shown = np.array([v for r in floats for v in (r.recon_error, r.bound)])
    shown = shown[np.isfinite(shown) & (shown > 0)]
    lo, hi = drawn.ylim_decades["recon_error"]
    assert lo <= np.log10(shown.min()) and np.log10(shown.max()) <= hi
    exact = np.log10([r.recon_error for r in records if r.precision == "exact"])
    assert exact.max() < -70 and lo > exact.max()  # not on the float axis
    assert drawn.ylim_decades["exact"][0] <= exact.min() <= exact.max() <= drawn.ylim_decades[
        "exact"][1]
    # every Inf and zero of the float errors is a marker, of its own kind
    assert len(set(drawn.markers.values())) == 3
    for category, test in (("inf", np.isinf), ("zero", lambda v: v == 0)):
        want = {("recon_error", r.chain, r.precision, r.depth) for r in floats
                if test(r.recon_error)}
        got = {m for m in drawn.marked[category] if m[0] == "recon_error"}
        assert want and got == want, category
    assert not drawn.marked["nan"]
    assert any("Inf" in t for t in drawn.legend) and any("NaN" in t for t in drawn.legend)
    assert any("exactly 0" in t for t in drawn.legend)
    assert any(t.startswith("bound") for t in drawn.legend)


def test_plot_tells_inf_nan_and_zero_apart(tmp_path):
    """A made-up sweep with one value of each kind in every panel."""
    special = [1e-3, math.nan, math.inf, 0.0]
    recs = [SweepRecord(chain, d + 1, p, special[d], special[d], special[d], special[d],
                        special[d])
            for chain in ("additive", "affine") for p in ("float32", "exact") for d in range(4)]
    drawn = plot_sweep(recs, tmp_path / "s.png")
    for category, depth in (("nan", 2), ("inf", 3), ("zero", 4)):
        for panel in ("recon_error", "exact", "sigma_min", "sigma_max", "cond"):
            for chain in ("additive", "affine"):
                p = "exact" if panel == "exact" else "float32"
                assert (panel, chain, p, depth) in drawn.marked[category], (category, panel)
        assert all(m[3] == depth for m in drawn.marked[category])
    lo, hi = drawn.ylim_decades["recon_error"]
    assert lo < -3 < hi
