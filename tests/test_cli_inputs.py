"""Bad input to the ``lipbound`` command (issue 9): one line, exit 2, no traceback, naming the
option, argument or file the user typed and what was expected -- never an internal name -- and
output paths refused before any work is done."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_helpers import cli_error

from lipbound.blocks import figure1_chain, glow_like
from lipbound.cli import main
from lipbound.errors import InputError
from lipbound.io import check_output_folder, check_output_path, load_inputs, save_model


@pytest.fixture
def files(tmp_path):
    """A 2D model, a Glow-like image model, matching inputs, and a folder."""
    save_model(figure1_chain(2, "affine"), tmp_path / "m.pt")
    save_model(glow_like((3, 4, 4), levels=1, steps=1, hidden=4), tmp_path / "g.pt")
    np.savez(tmp_path / "x.npz", x=np.ones((3, 2)))
    (tmp_path / "adir").mkdir()
    (tmp_path / "d.png").mkdir()
    return {name: str(tmp_path / name) for name in ("m.pt", "g.pt", "x.npz", "adir", "d.png")}


def _refused_before_work(argv, capsys, *fragments):
    """The command exits 2 with one line holding every fragment and prints nothing on stdout
    (so the output path was checked before the work)."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert out == "", out
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_output_paths_are_checked_before_any_work(files, tmp_path, capsys):
    m, x, adir, dpng = files["m.pt"], files["x.npz"], files["adir"], files["d.png"]
    missing = str(tmp_path / "nonexist" / "r.json")
    cases = [
        (["diagnose", m, x, "--json", adir], f"--json {adir!r} is a folder"),
        (["diagnose", m, x, "--plot", dpng], f"--plot {dpng!r} is a folder"),
        (["diagnose", m, x, "--plot", adir], "--plot must end in .png or .pdf, got"),
        (["diagnose", m, x, "--plot", "x.jpgx"], "--plot must end in .png or .pdf, got 'x.jpgx'"),
        (["diagnose", m, x, "--json", missing],
         f"the folder {str(tmp_path / 'nonexist')!r} does not exist"),
        (["check", "--json", missing], f"--json {missing!r}: the folder"),
        (["check", "--json", f"{m}/r.json"], f"{m!r} is not a folder"),
        (["verify", m, x, "--json", adir], f"--json {adir!r} is a folder"),
        (["verify", m, x, "--json", missing], "--json"),
        (["bounds", m, "--output", missing], f"--output {missing!r}"),
        (["bounds", m, "--output", adir], f"--output {adir!r} is a folder"),
        (["sweep", "--depth", "2", "--out", str(tmp_path / "d")],
         f"--out {dpng!r} is a folder"),
        (["sweep", "--depth", "2", "--out", f"{m}/fig"], f"--out {m + '/fig.png'!r}"),
        (["sweep", "--depth", "2", "--json", adir], f"--json {adir!r} is a folder"),
        (["train", "digits-classifier", "--out", m, "--steps", "1"],
         f"--out {m!r} is a file; expected a folder"),
    ]
    for argv, fragment in cases:
        _refused_before_work(argv, capsys, fragment)


def test_sweep_out_may_name_a_new_folder(tmp_path, capsys):
    stem = tmp_path / "new" / "deeper" / "fig"
    assert main(["sweep", "--depth", "2", "--chains", "additive", "--precision", "float64",
                 "--no-progress", "--out", str(stem)]) == 0
    assert stem.with_suffix(".png").is_file() and stem.with_suffix(".csv").is_file()


def test_check_output_path_and_folder(tmp_path):
    (tmp_path / "f").write_text("")
    assert check_output_path(tmp_path / "a.PNG", "--plot", (".png", ".pdf")) == tmp_path / "a.PNG"
    with pytest.raises(InputError, match=r"--plot must end in \.png or \.pdf"):
        check_output_path(tmp_path / "a.jpg", "--plot", (".png", ".pdf"))
    with pytest.raises(InputError, match="the folder .* does not exist"):
        check_output_path(tmp_path / "no" / "a.json", "--json")
    assert check_output_path(tmp_path / "no" / "a.json", "--out", create_parents=True)
    with pytest.raises(InputError, match="is not a folder"):
        check_output_path(tmp_path / "f" / "a.json", "--out", create_parents=True)
    with pytest.raises(InputError, match="is a folder; expected a file name"):
        check_output_path(tmp_path, "--json")
    assert check_output_folder(tmp_path / "new" / "run", "--out") == tmp_path / "new" / "run"
    with pytest.raises(InputError, match="is a file; expected a folder"):
        check_output_folder(tmp_path / "f", "--out")


def test_messages_name_what_the_user_typed(files, tmp_path, capsys):
    m, g, x = files["m.pt"], files["g.pt"], files["x.npz"]
    np.save(tmp_path / "four3.npy", np.zeros((4, 3)))
    np.save(tmp_path / "one_d.npy", np.zeros(2))
    four3, one_d = str(tmp_path / "four3.npy"), str(tmp_path / "one_d.npy")
    cases = [
        (["diagnose", m, "checkerboard:0"],
         "DATA checkerboard:N needs an integer N >= 1, got 'checkerboard:0'"),
        (["diagnose", m, four3, "--no-progress"],
         f"DATA {four3!r} of shape (4, 3) does not fit the model"),
        (["diagnose", m, "digits", "--no-progress"],
         "DATA 'digits' of shape (1797, 64) does not fit the model"),
        (["diagnose", m, one_d], f"DATA {one_d!r} must be a batch of at least one sample"),
        (["verify", g, x, "--no-progress"], f"INPUTS {x!r} of shape (3, 2) does not fit the model"),
        (["check", "--hidden", "0"], "--hidden must be >= 1, got 0"),
        (["check", "--levels", "0"], "--levels must be >= 1, got 0"),
        (["check", "--steps", "0"], "--steps must be >= 1, got 0"),
        (["check", "--shape", "3", "7", "7"],
         "--shape 3 7 7: H and W must be divisible by 2**--levels = 4"),
        (["check", "--shape", "4"], "--shape must be C H W for the built Glow-like model"),
        (["check", "--max-jacobian-dim", "-1"], "--max-jacobian-dim must be >= 0, got -1"),
        (["check", "--model", m, "--shape", "3", "--no-progress"],
         "--shape 3: the model cannot run on inputs of per-sample shape (3,)"),
        (["bounds", m, "--shape", "3", "--no-progress"],
         "--shape 3: the model cannot run on inputs of per-sample shape (3,)"),
        (["bounds", m, "--box", "1", "0"], "--box needs finite A <= B, got 1.0 0.0"),
        (["bounds", m, "--output-box", "nan", "1"], "--output-box needs finite A <= B, got nan"),
    ]
    internal = (": n must be", ": x must", "x of shape", "in_channels", "2**levels", "(1, 3)",
                "path must", ": box needs")
    for argv, fragment in cases:
        err = cli_error(argv, capsys)
        assert fragment in err, err
        assert not any(name in err for name in internal), err


@pytest.mark.parametrize("data", ["digits:5", "foo", "checkerboard:x"])
def test_diagnose_data_error_lists_every_accepted_form(files, data, capsys):
    err = cli_error(["diagnose", files["m.pt"], data], capsys)
    assert repr(data) in err
    if data != "checkerboard:x":
        for form in (".pt, .npy or .npz file", "checkerboard,", "checkerboard:N", "digits"):
            assert form in err, err


def test_complex_inputs_are_refused(files, tmp_path, capsys):
    np.save(tmp_path / "c.npy", np.ones((3, 2)) * (1 + 1j))
    torch.save(torch.ones(3, 2, dtype=torch.complex64), tmp_path / "c.pt")
    for name, dtype in (("c.npy", "complex128"), ("c.pt", "torch.complex64")):
        path = str(tmp_path / name)
        for argv in (["diagnose", files["m.pt"], path], ["verify", files["m.pt"], path]):
            err = cli_error(argv, capsys)
            assert f"inputs file {path!r} holds complex numbers ({dtype})" in err, err
            assert "real floating-point or integer" in err


def test_npz_inputs_use_the_array_named_x_or_the_only_one(tmp_path):
    np.savez(tmp_path / "named.npz", a=np.zeros((2, 2)), x=np.ones((3, 2)), z=np.zeros((1, 1)))
    np.savez(tmp_path / "only.npz", data=np.full((4, 2), 2.0))
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 2)), b=np.ones((2, 2)))
    assert torch.equal(load_inputs(tmp_path / "named.npz"), torch.ones(3, 2, dtype=torch.float64))
    assert torch.equal(load_inputs(tmp_path / "only.npz"),
                       torch.full((4, 2), 2.0, dtype=torch.float64))
    with pytest.raises(InputError, match=r"holds 2 arrays \(a, b\) and none named x"):
        load_inputs(tmp_path / "two.npz")

