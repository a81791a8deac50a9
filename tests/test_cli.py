"""The ``lipbound`` command: help, and ``check`` on the default and on a saved model."""

from __future__ import annotations

import json

import pytest
import torch

from lipbound.blocks import figure1_chain
from lipbound.cli import main
from lipbound.io import load_inputs, load_model, save_model


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "check" in capsys.readouterr().out


def test_check_default_model_table_and_json(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main(["check", "--levels", "1", "--steps", "2", "--shape", "3", "4", "4",
                 "--hidden", "8", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "round trip float32" in text and "AffineCoupling" in text
    rows = json.loads(out.read_text())
    kinds = [r["kind"] for r in rows]
    assert kinds[0] == "Squeeze" and kinds[-1] == "InvertibleSequential"
    assert len(rows) == 1 + 2 * 3 + 1  # squeeze, 2 x (actnorm, 1x1 conv, coupling), model
    for r in rows:
        assert r["round_trip"]["float64"] < 1e-12
        # float32 round trips of these well-conditioned blocks: a few hundred ulps at most
        assert r["round_trip"]["float32"] < 1e-4
        assert r["round_trip"]["float32"] > r["round_trip"]["float64"] or r["kind"] in (
            "Squeeze",)
        assert r["log_det_error"] < 1e-9


def test_check_saved_model(tmp_path, capsys):
    path = tmp_path / "toy.pt"
    save_model(figure1_chain(12, "affine"), path)
    assert isinstance(load_model(path), torch.nn.Module)
    out = tmp_path / "rows.json"
    assert main(["check", "--model", str(path), "--shape", "2", "--batch", "2",
                 "--precision", "float16", "float64", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    model_row = rows[-1]
    assert model_row["index"] == "model"
    # float16 cannot hold 0.1^12 * x (below its smallest subnormal, 6e-8 relative to 1):
    # the inverse loses x_2 entirely, an error of order 1 or a non-finite value.
    f16 = model_row["round_trip"]["float16"]
    assert f16 in ("inf", "nan") or f16 > 0.1


def test_check_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["check", "--precision", "float8"]) == 2
    assert "precision must be one of" in capsys.readouterr().err
    assert main(["check", "--model", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    torch.save(torch.nn.Linear(2, 2), tmp_path / "linear.pt")
    assert main(["check", "--model", str(tmp_path / "linear.pt")]) == 2
    assert "expected a lipbound InvertibleBlock" in capsys.readouterr().err


def test_load_inputs_formats(tmp_path):
    import numpy as np

    x = np.arange(6.0).reshape(3, 2)
    np.savez(tmp_path / "x.npz", data=x)
    np.save(tmp_path / "x.npy", x)
    torch.save(torch.from_numpy(x), tmp_path / "x.pt")
    for name in ("x.npz", "x.npy", "x.pt"):
        torch.testing.assert_close(load_inputs(tmp_path / name), torch.from_numpy(x))
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match=r"\.pt, \.npy or \.npz"):
        load_inputs(tmp_path / "x.csv")


def test_check_marks_unconverged_iterative_inverses(tmp_path, capsys):
    """An i-ResNet whose fixed point cannot converge within its cap is marked, not hidden."""
    from lipbound.blocks import InvertibleResidual, InvertibleSequential, SpectralNormLinear
    from lipbound.check import check_model, format_rows

    g = torch.nn.Sequential(SpectralNormLinear(2, 2, coeff=0.9, exact=True))
    slow = InvertibleResidual(g, tol=1e-15, max_iter=2)  # 2 iterations cannot reach 1e-15
    fast = InvertibleResidual(torch.nn.Sequential(SpectralNormLinear(2, 2, coeff=0.5, exact=True)),
                              tol=1e-15, max_iter=500)
    rows = check_model(InvertibleSequential(fast, slow), torch.randn(3, 2))
    assert rows[0].not_converged == []
    assert rows[1].not_converged == ["float32", "float64"]
    assert rows[2].not_converged == ["float32", "float64"]  # the model contains the slow block
    table = format_rows(rows)
    assert "*" in table and "did not converge" in table


def test_version_and_python_dash_m(capsys):
    import subprocess
    import sys

    import lipbound

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"lipbound {lipbound.__version__}"
    run = subprocess.run([sys.executable, "-m", "lipbound", "--version"], capture_output=True,
                         text=True, check=False)
    assert run.returncode == 0 and run.stdout.strip() == f"lipbound {lipbound.__version__}"


def test_every_check_option_has_help_with_its_default():
    import argparse

    from lipbound.check import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) == 12
    for action in options:
        assert action.help and "(default: " in action.help, action.option_strings
        if action.default not in (None, False):  # the stated default is the real one
            shown = action.default if not isinstance(action.default, list) else " ".join(
                map(str, action.default))
            assert f"(default: {shown}" in action.help, action.option_strings


def test_check_reads_the_input_shape_of_a_saved_model(tmp_path, capsys):
    from lipbound.blocks import glow_like

    vec = tmp_path / "vec.pt"
    save_model(figure1_chain(3, "affine"), vec)
    out = tmp_path / "rows.json"
    assert main(["check", "--model", str(vec), "--batch", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["dim"] for r in rows] == [2] * 4
    assert rows[-1]["round_trip"]["float64"] < 1e-12
    capsys.readouterr()
    assert main(["check", "--model", str(vec), "--shape", "3"]) == 2
    err = capsys.readouterr().err
    assert ("--shape 3: the model cannot run on inputs of per-sample shape (3,) (the model's input "
            "must have 2 features/channels") in err and "(1, 3)" not in err, err
    img = tmp_path / "img.pt"
    save_model(glow_like((3, 4, 4), levels=1, steps=1, hidden=4), img)
    assert main(["check", "--model", str(img)]) == 2
    assert "pass --shape, e.g. --shape 3 32 32" in capsys.readouterr().err
    assert main(["check", "--model", str(img), "--shape", "3", "4", "4", "--batch", "2",
                 "--json", str(out)]) == 0
    assert [r["dim"] for r in json.loads(out.read_text())] == [48] * 5


def test_a_bug_shows_its_traceback_and_bad_input_exits_2(monkeypatch, capsys):
    import lipbound.check
    from lipbound.errors import InputError

    def buggy(args):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(lipbound.check, "run", buggy)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["check"])

    def bad_input(args):
        raise InputError("--levels must be >= 1, got 0")

    monkeypatch.setattr(lipbound.check, "run", bad_input)
    assert main(["check"]) == 2
    assert capsys.readouterr().err == "lipbound check: error: --levels must be >= 1, got 0\n"


@pytest.mark.parametrize("name", ["figure1", "toy2d", "residual", "glow"])
def test_example_writes_a_model_and_inputs_that_fit(name, tmp_path, capsys):
    from lipbound.shape import infer_shape

    assert main(["example", name, "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert f"wrote {tmp_path / 'out' / name}.pt" in text and "try:" in text
    model = load_model(tmp_path / "out" / f"{name}.pt")
    x = load_inputs(tmp_path / "out" / f"{name}.npz")
    assert x.dtype == torch.float64 and x.shape[0] >= 1
    if name == "glow":  # image models do not store their spatial size
        assert tuple(x.shape[1:]) == (3, 8, 8)
    else:
        assert infer_shape(model) == tuple(x.shape[1:])
    with torch.no_grad():
        z = model(x)
        x_rec = model.inverse(z)
    assert bool(torch.isfinite(z).all())
    if name != "figure1":  # the Figure 1 chain amplifies rounding by 1e15 on purpose
        assert float((x_rec - x).abs().max()) < 1e-10
    # not volume-preserving (so not the identity or a permutation): parameters are non-trivial
    with torch.no_grad():
        assert float(model.forward_and_log_det(x)[1].abs().min()) > 1e-3


def test_example_out_must_be_a_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["example", "toy2d", "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert f"--out {str(tmp_path / 'file')!r} is a file; expected a folder" in err
    with pytest.raises(SystemExit) as exc:  # argparse: an unknown NAME lists the choices
        main(["example", "nosuch"])
    assert exc.value.code == 2
    assert "invalid choice: 'nosuch'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, option", [
    (["check", "--precision", "float8"], "--precision"),
    (["check", "--precision", "mp:24"], "--precision"),
])
def test_check_names_the_precision_option(argv, option, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{option} must be one of float16, bfloat16, float32 or float64" in err


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    """``lipbound bounds SPEC | head -1``: no BrokenPipeError traceback on stderr."""
    import pathlib
    import subprocess
    import sys

    spec = pathlib.Path(__file__).resolve().parents[1] / "examples/architectures"
    spec = sorted(spec.glob("*.json"))[0]
    run = subprocess.run(f"{sys.executable} -m lipbound bounds {spec} --no-progress | head -c 1",
                         shell=True, capture_output=True, text=True, cwd=tmp_path)
    assert run.stdout and "Traceback" not in run.stderr and "BrokenPipe" not in run.stderr
