"""Datasets, 2D maps, histograms and ``lipbound diagnose`` end to end."""

from __future__ import annotations

import json
import math
import sys
import types

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
from lipbound.diagnostics.attack import dequantization_cell
from lipbound.diagnostics.data import load_images, quantized_images
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


def test_digit_cells_invert_the_dequantisation():
    pytest.importorskip("sklearn", reason="scikit-learn (test extra) ships the digits dataset")
    x = load_digits(generator=torch.Generator().manual_seed(3))
    centre, radius = dequantization_cell(x, 17)
    assert radius == 0.5 / 17
    torch.testing.assert_close(centre, load_digits(dequantize=False), rtol=0, atol=0)


def test_image_loader_errors_clearly():
    with pytest.raises(ValueError, match="name must be one of"):
        load_images("mnist", "/tmp")
    with pytest.raises(ValueError, match="bits must be in 1..8"):
        load_images("cifar10", "/tmp", bits=9)
    with pytest.raises(ValueError, match="split of 'cifar10' must be one of"):
        load_images("cifar10", "/tmp", split="valid")  # CIFAR-10 has no validation split
    with pytest.raises(ValueError, match="n must be >= 1"):
        load_images("svhn", "/tmp", n=0)
    with pytest.raises(TypeError, match="must be 8-bit"):
        quantized_images([(torch.zeros(3, 2, 2), 0)])


class _FakeDataset:
    """A stand-in for a torchvision dataset: HWC uint8 "PIL" images through ``transform``."""

    made: list[tuple[str, dict]] = []

    def __init__(self, root, download=False, transform=None, **split):
        type(self).made.append((type(self).__name__, {"root": root, "download": download,
                                                      **split}))
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (5, 4, 4, 3), generator=gen, dtype=torch.uint8)
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), 0


def test_image_loader_reduces_bits_and_dequantises_a_torchvision_dataset(monkeypatch):
    # torchvision does not import beside this torch; a fake module runs the loader's own code.
    datasets = types.ModuleType("torchvision.datasets")
    for name in ("CIFAR10", "SVHN", "CelebA"):
        setattr(datasets, name, type(name, (_FakeDataset,), {}))
    transforms = types.ModuleType("torchvision.transforms")
    transforms.PILToTensor = lambda: (lambda img: img.permute(2, 0, 1))  # HWC -> CHW
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    monkeypatch.setitem(sys.modules, "torchvision.transforms", transforms)
    monkeypatch.setattr(_FakeDataset, "made", [])
    pixels = _FakeDataset("r").images[:3].permute(0, 3, 1, 2).double()  # (3, 3, 4, 4)

    centres = load_images("cifar10", "root", n=3, split="test", bits=5, dequantize=False)
    torch.testing.assert_close(centres, (torch.floor(pixels / 8) + 0.5) / 32, rtol=0, atol=0)
    x = load_images("svhn", "root", n=3, split="extra", bits=8,
                    generator=torch.Generator().manual_seed(1))
    assert x.shape == (3, 3, 4, 4) and x.dtype == torch.float64
    assert bool((x >= pixels / 256).all()) and bool((x < (pixels + 1) / 256).all())
    assert len(load_images("celeba", "root", split="valid", bits=5)) == 5  # n=None: all
    made = _FakeDataset.made[1:]  # the first is this test's own
    assert made == [("CIFAR10", {"root": "root", "download": False, "train": False}),
                    ("SVHN", {"root": "root", "download": False, "split": "extra"}),
                    ("CelebA", {"root": "root", "download": False, "split": "valid"})]


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
    argv = ["diagnose", str(tmp_path / "g.pt"), str(tmp_path / "x.pt"), "--precision", "float32",
            "--direction", "x->z->x", "--attack-samples", "0", "--spectrum-samples", "0",
            "--json", str(out), "--plot", str(png), "--no-progress"]
    assert main(argv) == 2 and not out.exists()  # refused unless asked for
    assert "holds NaN or Inf in 1 of 6 samples (Inf in row 0); to diagnose them anyway, pass " \
           "--allow-nonfinite" in capsys.readouterr().err
    assert main([*argv, "--allow-nonfinite"]) == 0
    assert "the data hold NaN or Inf in 1 sample (row 0)" in capsys.readouterr().out
    rep = _strict_json(out)
    assert rep["non_finite_rows"] == [0]
    (r,) = rep["reconstruction"]
    assert r["errors"][0] == "inf" and r["n_inf"] == 1 and r["n_nan"] == 0  # its input is Inf
    assert r["n_finite"] == 5 and r["max"] < 1e-4
    # the broken input is blamed on the data, not on block 0
    assert r["first_failure"] == "input" and r["first_failure_counts"] == {"input": 1}
    assert r["failure_per_sample"][0] == {"block": None, "kind": None, "stage": "input"}
    assert r["lowest_failing_block"] is None
    assert "spectrum" not in rep and "attack" not in rep
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_diagnose_counts_nan_and_inf_inputs_apart(tmp_path, capsys):
    """A row of only Inf makes NaN in the network (inf - inf), but is counted under Inf; a row
    with a NaN under NaN; finite rows stay finite."""
    import numpy as np

    save_model(figure1_chain(2, "affine"), tmp_path / "m.pt")
    np.save(tmp_path / "x.npy", np.array([[1.0, 2.0], [math.inf, math.inf], [math.nan, 1.0],
                                          [-math.inf, 0.5]]))
    out = tmp_path / "r.json"
    assert main(["diagnose", str(tmp_path / "m.pt"), str(tmp_path / "x.npy"), "--precision",
                 "float64", "--attack-samples", "0", "--spectrum-samples", "0",
                 "--allow-nonfinite", "--no-progress", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rep = _strict_json(out)
    (fwd, back) = rep["reconstruction"]
    assert fwd["direction"] == "x->z->x"
    assert fwd["errors"][1:] == ["inf", "nan", "inf"]
    assert (fwd["n_finite"], fwd["n_inf"], fwd["n_nan"]) == (1, 2, 1)
    assert fwd["pct_inf"] == 50.0 and fwd["pct_nan"] == 25.0
    assert back["n_finite"] == 4  # latent samples are finite
    assert "50.00" in text and "25.00" in text


def test_mark_non_finite_classifies_by_input_then_reconstruction():
    from lipbound.diagnostics.views import mark_non_finite

    inf, nan = math.inf, math.nan
    x = torch.tensor([[1.0, 1.0], [inf, inf], [nan, inf], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    rec = torch.tensor([[1.0, 1.0], [nan, nan], [inf, 1.0], [inf, 0.0], [nan, inf], [2.0, 1.0]])
    got = mark_non_finite(torch.tensor([0.0, 9.0, 9.0, 9.0, 9.0, 1.0]), rec, x)
    assert got[0] == 0 and got[5] == 1
    assert torch.isinf(got[1]) and torch.isnan(got[2]) and torch.isinf(got[3])
    assert torch.isnan(got[4])


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


def test_diagnose_cli_oracle_decomposition_agrees_with_the_float_diagnostics(tmp_path, capsys):
    model = coupling_mlp(2, n_blocks=3, hidden=8, coupling="affine")
    randomize_parameters(model, 0.3, torch.Generator().manual_seed(2))
    save_model(model, tmp_path / "m.pt")
    out = tmp_path / "r.json"
    assert main(["diagnose", str(tmp_path / "m.pt"), "checkerboard:20", "--reference", "arb:128",
                 "--reference-samples", "3", "--spectrum-samples", "3", "--attack-samples", "0",
                 "--direction", "x->z->x", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("oracle decomposition (section 2)") == 2 and "verdict: rounding" in text
    rep = _strict_json(out)
    assert rep["oracle"]["note"] is None
    by_precision = {r["precision"]: r for r in rep["reconstruction"]}
    for dec in rep["oracle"]["decomposition"]:
        assert dec["reference"] == "arb:128" and dec["n_samples"] == 3
        # the oracle's total ||x - F_p^-1(F_p(x))|| is the float round trip's error
        torch.testing.assert_close(torch.tensor(dec["per_sample"]["total"]),
                                   torch.tensor(by_precision[dec["precision"]]["errors"][:3]),
                                   rtol=1e-12, atol=1e-300)
    dec64 = next(d for d in rep["oracle"]["decomposition"] if d["precision"] == "float64")
    # local Lip(F^-1) from the arb Jacobian against the torch.func spectrum (float64 weights)
    torch.testing.assert_close(torch.tensor(dec64["per_sample"]["lip_inverse"]),
                               torch.tensor(rep["spectrum"]["inverse_sigma_max"]), rtol=1e-9,
                               atol=0)


def test_diagnose_cli_bad_numbers_are_clear_errors(tmp_path, capsys):
    save_model(figure1_chain(2), tmp_path / "f.pt")
    for options, message in [(["--tol", "-1"], "--tol must be a finite number > 0, got -1.0"),
                             (["--attack-step", "nan"],
                              "--attack-step must be a finite number > 0, got nan"),
                             (["--radius", "inf"], "--radius must be a finite number > 0, got inf"),
                             (["--lim", "0"], "--lim must be a finite number > 0, got 0.0"),
                             (["--attack-steps", "-1"], "--attack-steps must be >= 0, got -1"),
                             (["--grid", "1"], "--grid must be >= 2, got 1"),
                             (["--bits", "0"], "--bits must be >= 1, got 0"),
                             (["--max-full-dim", "0"], "--max-full-dim must be >= 1, got 0"),
                             (["--spectrum-samples", "-1"], "--spectrum-samples must be >= 0"),
                             (["--attack-samples", "-2"], "--attack-samples must be >= 0, got -2"),
                             (["--reference", "arb:64", "--reference-samples", "0"],
                              "--reference-samples must be >= 1, got 0"),
                             (["--reference", "float32", "--attack-samples", "0"],
                              "--reference must be one of mp:<bits> or arb:<bits>"),
                             (["--threads", "0"], "--threads must be >= 1, got 0")]:
        argv = ["diagnose", str(tmp_path / "f.pt"), "checkerboard:4", *options]
        assert main(argv) == 2, options
        assert message in capsys.readouterr().err, options


def test_diagnose_cli_attacks_digits_inside_their_17_level_cells(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="scikit-learn (test extra) ships the digits dataset")
    model = coupling_mlp(64, n_blocks=2, hidden=16, coupling="affine")
    randomize_parameters(model, 0.05, torch.Generator().manual_seed(0))
    save_model(model, tmp_path / "d.pt")
    out = tmp_path / "d.json"
    assert main(["diagnose", str(tmp_path / "d.pt"), "digits", "--n", "30", "--precision",
                 "float32", "--spectrum-samples", "0", "--attack-samples", "3",
                 "--attack-iterations", "5", "--attack-step", "0.01", "--json", str(out)]) == 0
    rep = _strict_json(out)["attack"]
    assert rep["radius"] == 0.5 / 17
    centres = load_digits(dequantize=False)[rep["worst_index"]]
    torch.testing.assert_close(torch.tensor(rep["worst_start"]), centres.float().double(),
                               rtol=0, atol=0)
    moved = (torch.tensor(rep["worst_input"]) - centres).abs().max()
    assert 0 < float(moved) <= 0.5 / 17 * (1 + 1e-6)
    assert "at the start points" in capsys.readouterr().out


def test_map_colours_keep_zero_tiny_nan_and_inf_apart(tmp_path):
    from lipbound.diagnostics.maps import INF_COLOR, NAN_COLOR, ZERO_COLOR, map_colors

    values = torch.tensor([[0.0, 1e-300, 1e-20], [1.0, math.nan, math.inf]])
    rgba, norm = map_colors(values)
    colours = [tuple(rgba[i, j]) for i in range(2) for j in range(3)]
    assert colours[0] == ZERO_COLOR and colours[4] == NAN_COLOR and colours[5] == INF_COLOR
    assert len(set(colours)) == 6  # zero, the tiniest error, ..., NaN and Inf: all different
    assert (norm.vmin, norm.vmax) == (1e-300, 1.0)
    import matplotlib
    import numpy as np

    scale = {tuple(c) for c in matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))}
    assert not {ZERO_COLOR, NAN_COLOR, INF_COLOR} & scale  # none of them is on the scale
    rgba, norm = map_colors(torch.zeros(2, 2))  # nothing on the log scale: no colour bar
    assert norm is None and all(tuple(c) == ZERO_COLOR for c in rgba.reshape(-1, 4))
    with pytest.raises(ValueError, match="values must be >= 0"):
        map_colors(torch.tensor([[-1.0, 1.0]]))


def test_grid_map_of_an_exact_model_draws_its_zero_errors_white(tmp_path):
    from lipbound.diagnostics.maps import ZERO_COLOR, map_colors

    # y2 = x1 x2, x2 = y2 / x1: in float32 exact at some grid points, an ulp off at others
    model = InvertibleSequential(AffineCoupling(ChannelPartition([0], [1], 2), 0.0, nn.Identity(),
                                                IdentityScale()))
    maps = grid_maps(model, n=8, lim=1.0, precision="float32")
    zero = maps.error == 0
    assert bool(zero.any()) and bool((~zero).any())  # both kinds of pixel occur
    rgba, _ = map_colors(maps.error)
    assert all(tuple(c) == ZERO_COLOR for c in rgba[zero.numpy()])
    assert not any(tuple(c) == ZERO_COLOR for c in rgba[(~zero).numpy()])
    assert plot_grid_maps(maps, tmp_path / "m.png").read_bytes()[:8] == PNG_MAGIC


def test_diagnose_names_the_batch_shape_the_model_refuses(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "x.npy", np.ones((4, 3)))
    save_model(coupling_mlp(2, n_blocks=2, hidden=4), tmp_path / "m2.pt")
    save_model(glow_like((3, 4, 4), levels=1, steps=1, hidden=4), tmp_path / "g.pt")
    for name in ("m2.pt", "g.pt"):
        assert main(["diagnose", str(tmp_path / name), str(tmp_path / "x.npy"),
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"DATA {str(tmp_path / 'x.npy')!r} of shape (4, 3) does not fit the model" in err
        assert "(1, 3)" not in err and "Traceback" not in err, err
    save_model(coupling_mlp(3, n_blocks=2, hidden=4), tmp_path / "m3.pt")
    out = tmp_path / "r.json"
    assert main(["diagnose", str(tmp_path / "m3.pt"), str(tmp_path / "x.npy"), "--no-progress",
                 "--attack-samples", "0", "--spectrum-samples", "1", "--json", str(out)]) == 0
    assert "data shape (4, 3): 4 samples of shape (3,)" in capsys.readouterr().out
    rep = _strict_json(out)
    assert rep["data_shape"] == [4, 3] and rep["sample_shape"] == [3] and rep["n_samples"] == 4


def test_diagnose_help_states_every_default():
    import argparse

    from lipbound.diagnostics.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 20
    for action in options:
        assert "default" in (action.help or ""), action.option_strings
    args = parser.parse_args(["m.pt", "checkerboard"])
    assert args.attack_steps == 50 and not args.no_progress and not args.allow_nonfinite
    assert parser.parse_args(["m.pt", "d", "--attack-iterations", "7"]).attack_steps == 7


def test_diagnose_shows_progress_for_every_stage_and_states_the_attack(tmp_path, capsys):
    model = coupling_mlp(2, n_blocks=2, hidden=8, coupling="affine")
    save_model(model, tmp_path / "m.pt")
    out = tmp_path / "r.json"
    argv = ["diagnose", str(tmp_path / "m.pt"), "checkerboard:50", "--spectrum-samples", "2",
            "--attack-samples", "3", "--attack-steps", "4", "--attack-step", "0.001",
            "--plot", str(tmp_path / "m.png"), "--grid", "6", "--json", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    for stage in ("reconstruction x->z->x float32", "reconstruction z->x->z float64",
                  "Jacobian spectrum", "invertibility attack (float32)",
                  "grid round trips (float32)", "grid Jacobians"):
        assert stage in captured.err, stage
    assert "invertibility attack (float32, 3 samples, 4 steps of size 0.001, L-inf radius " \
           "1.953e-03)" in captured.out
    rep = _strict_json(out)["attack"]
    assert (rep["samples"], rep["iterations"], rep["step"], rep["radius"]) == (3, 4, 0.001,
                                                                               0.5 / 256)
    torch.set_num_threads(2)
    try:  # --threads (default 1) holds for the run only
        assert main([*argv, "--no-progress"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert capsys.readouterr().err == ""


def test_diagnose_names_the_batch_shape_a_foreign_model_refuses(capsys):
    from lipbound.adapters import adapt
    from lipbound.diagnostics import diagnose

    zuko = pytest.importorskip("zuko")
    flow = adapt(zuko.flows.NSF(features=2, context=0, transforms=2, hidden_features=(8,)))
    with pytest.raises(ValueError, match=r"x of shape \(4, 3\) does not fit the model: "
                                         r"RuntimeError") as err:
        diagnose(flow, torch.ones(4, 3), spectrum_samples=0, attack=None)
    assert "(1, 3)" not in str(err.value)


@pytest.mark.parametrize("argv, message", [
    (["--reference", "mp:abc"], "--reference must be one of mp:<bits> or arb:<bits>"),
    (["--reference", "float32"], "--reference must be one of mp:<bits> or arb:<bits>"),
    (["--precision", "mp:24"], "--precision must be one of float16, bfloat16, float32 or float64"),
])
def test_diagnose_names_the_precision_options(tmp_path, capsys, argv, message):
    save_model(figure1_chain(2, "affine"), tmp_path / "m.pt")
    torch.save(torch.ones(2, 2, dtype=torch.float64), tmp_path / "x.pt")
    assert main(["diagnose", str(tmp_path / "m.pt"), str(tmp_path / "x.pt"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
