"""Datasets, 2D maps, histograms and ``lipbound diagnose`` end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lipbound.blocks import (
    AffineCoupling,
    ChannelPartition,
    IdentityScale,
    InvertibleSequential,
    coupling_mlp,
    figure1_chain,
    glow_like,
    randomize_parameters,
)
from lipbound.cli import main
from lipbound.diagnostics import checkerboard, grid_maps, load_digits, plot_grid_maps
from lipbound.diagnostics.data import load_images
from lipbound.io import save_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _strict_json(path):
    def refuse(token):
        raise ValueError(f"bare {token} in JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_checkerboard_follows_the_papers_recipe():
    x = checkerboard(4000, torch.Generator().manual_seed(0))
    assert x.shape == (4000, 2) and x.dtype == torch.float64
    assert float(x.min()) >= -4 and float(x.max()) < 4
    # x2/2 = U(0,1) - 2 B + (floor(x1/2) mod 2): floor(x2/2) has the parity of floor(x1/2)
    parity = torch.remainder(torch.floor(x[:, 0] / 2) - torch.floor(x[:, 1] / 2), 2)
    assert bool((parity == 0).all())
    counts = torch.histc(x[:, 0], bins=4, min=-4, max=4)
    assert bool((counts > 800).all())  # x1 uniform over [-4, 4)


def test_digits_are_dequantised_in_their_cells():
    pytest.importorskip("sklearn", reason="scikit-learn (test extra) ships the digits dataset")
    x = load_digits(generator=torch.Generator().manual_seed(0))
    assert x.shape == (1797, 64)
    centres = load_digits(dequantize=False)
    assert bool(((x - centres).abs() <= 0.5 / 17).all())
    levels = centres * 17 - 0.5
    assert bool((levels == levels.round()).all()) and float(levels.max()) == 16


def test_image_loader_errors_clearly():
    with pytest.raises(ValueError, match="name must be one of"):
        load_images("mnist", "/tmp")
    with pytest.raises(ValueError, match="bits must be in 1..8"):
        load_images("cifar10", "/tmp", bits=9)


def test_grid_maps_are_analytic_for_the_figure1_chain(tmp_path):
    # diag(1, g^3) everywhere: sigma_min = 1e-3, condition number 1e3
    maps = grid_maps(figure1_chain(3, "affine"), n=9, lim=8.0, precision="float64")
    assert maps.error.shape == (9, 9)
    torch.testing.assert_close(maps.sigma_min, torch.full((9, 9), 1e-3), rtol=1e-12, atol=0)
    torch.testing.assert_close(maps.condition, torch.full((9, 9), 1e3), rtol=1e-12, atol=0)
    assert bool((maps.error < 1e-12).all())
    path = plot_grid_maps(maps, tmp_path / "maps.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_grid_maps_mark_nan_where_the_scale_vanishes(tmp_path):
    # g = x1: the column x1 = 0 of the grid reconstructs 0 / 0 = NaN
    model = InvertibleSequential(AffineCoupling(ChannelPartition([0], [1], 2), 0.0, nn.Identity(),
                                                IdentityScale()))
    maps = grid_maps(model, n=9, lim=4.0, precision="float64")
    nan = torch.isnan(maps.error)
    assert int(nan.sum()) == 9 and bool(nan[:, 4].all())  # xs[4] = 0, all 9 rows
    assert bool((maps.sigma_min[:, 4] == 0).all())
    assert bool(torch.isinf(maps.condition[:, 4]).all())
    plot_grid_maps(maps, tmp_path / "nan.png")
    assert (tmp_path / "nan.png").stat().st_size > 0


def test_diagnose_cli_on_a_2d_model(tmp_path, capsys):
    model = coupling_mlp(2, n_blocks=4, hidden=16, coupling="affine")
    randomize_parameters(model, 0.3, torch.Generator().manual_seed(1))
    save_model(model, tmp_path / "m.pt")
    out, png = tmp_path / "r.json", tmp_path / "maps.png"
    assert main(["diagnose", str(tmp_path / "m.pt"), "checkerboard:200", "--json", str(out),
                 "--plot", str(png), "--grid", "12", "--lim", "80", "--attack-samples", "4",
                 "--attack-iterations", "5", "--spectrum-samples", "3"]) == 0
    text = capsys.readouterr().out
    assert "reconstruction" in text and "invertibility attack" in text and "sigma_min" in text
    rep = _strict_json(out)
    assert rep["blocks"] == ["AffineCoupling"] * 4 and rep["n_samples"] == 200
    assert {(r["direction"], r["precision"]) for r in rep["reconstruction"]} == {
        ("x->z->x", "float32"), ("z->x->z", "float32"), ("x->z->x", "float64"),
        ("z->x->z", "float64")}
    for r in rep["reconstruction"]:
        assert r["n_finite"] + r["n_inf"] + r["n_nan"] == 200 and len(r["errors"]) == 200
    assert len(rep["spectrum"]["sigma_min"]) == 3 and len(rep["attack"]["errors"]) == 4
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_diagnose_cli_on_images_writes_histograms_and_nonfinite_json(tmp_path, capsys):
    model = glow_like((3, 4, 4), levels=1, steps=1, hidden=8, coupling="affine")
    randomize_parameters(model, 0.05, torch.Generator().manual_seed(0))
    save_model(model, tmp_path / "g.pt")
    x = torch.rand(6, 3, 4, 4)
    x[0, 0, 0, 0] = math.inf  # a broken input: its error must be reported as non-finite
    torch.save(x, tmp_path / "x.pt")
    out, png = tmp_path / "g.json", tmp_path / "hist.png"
    assert main(["diagnose", str(tmp_path / "g.pt"), str(tmp_path / "x.pt"), "--precision",
                 "float32", "--direction", "x->z->x", "--attack-samples", "0",
                 "--spectrum-samples", "0", "--json", str(out), "--plot", str(png)]) == 0
    rep = _strict_json(out)
    (r,) = rep["reconstruction"]
    assert r["errors"][0] in ("nan", "inf") and r["n_inf"] + r["n_nan"] == 1
    assert r["n_finite"] == 5 and r["max"] < 1e-4
    assert "spectrum" not in rep and "attack" not in rep
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_diagnose_cli_errors_are_clear(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path / "missing.pt"), "checkerboard"]) == 2
    assert "does not exist" in capsys.readouterr().err
    save_model(figure1_chain(2), tmp_path / "f.pt")
    assert main(["diagnose", str(tmp_path / "f.pt"), "checkerboard:10", "--precision",
                 "float8"]) == 2
    assert "precision must be one of" in capsys.readouterr().err
    assert main(["diagnose", str(tmp_path / "f.pt"), "checkerboard:x"]) == 2
    assert "integer N" in capsys.readouterr().err
    torch.save(nn.Linear(2, 2), tmp_path / "lin.pt")
    assert main(["diagnose", str(tmp_path / "lin.pt"), "checkerboard:10"]) == 2
    assert "no adapter for" in capsys.readouterr().err


def test_diagnose_on_digits(tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn (test extra) ships the digits dataset")
    from lipbound.diagnostics import diagnose
    from lipbound.diagnostics.report import AttackSettings

    x = load_digits(generator=torch.Generator().manual_seed(0))[:200]
    model = coupling_mlp(64, n_blocks=4, hidden=32, coupling="affine")
    randomize_parameters(model, 0.05, torch.Generator().manual_seed(0))
    d = diagnose(model, x, spectrum_samples=2, spectrum_method="full",
                 attack=AttackSettings(samples=4, iterations=10, bits=0, radius=0.5 / 17))
    by = {(s.direction, s.precision): s.summary() for s in d.reconstruction}
    assert by[("x->z->x", "float64")]["max"] < 1e-12
    assert 1e-9 < by[("x->z->x", "float32")]["max"] < 1e-4
    free = diagnose(model, x[:2], precisions=("float64",), spectrum_samples=2,
                    spectrum_method="matrix_free", attack=None).spectrum
    torch.testing.assert_close(free.sigma_max, d.spectrum.sigma_max, rtol=1e-7, atol=0)
    torch.testing.assert_close(free.sigma_min, d.spectrum.sigma_min, rtol=1e-7, atol=0)
    assert float((d.attack.x_worst.double() - x[:4]).abs().max()) <= 0.5 / 17 * (1 + 1e-6)
