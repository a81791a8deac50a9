"""Loading models and inputs: every file that is not what a command expects is a one-line error
that names the file (exit status 2, no traceback), through each command that reads files."""

from __future__ import annotations

import io
import pathlib
import sys

import numpy as np
import pytest
import torch

from lipbound.blocks import figure1_chain
from lipbound.cli import main
from lipbound.io import load_inputs, load_saved, save_model


def _text(path):
    path.write_text("hello, this is not a model\n")


def _empty(path):
    path.write_bytes(b"")


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _zero_rows_npy(path):
    np.save(path, np.zeros((0, 2)))


def _no_arrays_npz(path):
    np.savez(path)


def _object_npy(path):
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)


def _strings_npy(path):
    np.save(path, np.array(["a", "b"]))


def _scalar_npy(path):
    np.save(path, np.float64(3.0))


def _dict_pt(path):
    torch.save({"x": torch.zeros(2, 2)}, path)


def _zero_rows_pt(path):
    torch.save(torch.zeros(0, 2), path)


class _TouchOnUnpickle:
    """Unpickling this object creates the file ``marker``: shows whether a file was fully
    unpickled."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


# name -> (write the bad file, suffix, a fragment of the message)
BAD_MODELS = {
    "text": (_text, ".pt", "is not a torch.save file; expected a model written by "
                           "lipbound.io.save_model"),
    "empty": (_empty, ".pt", "is empty (0 bytes)"),
    "npz_as_model": (lambda p: np.savez(p.open("wb"), x=np.ones(2)), ".pt",
                     "is not a torch.save file"),
    "truncated": (lambda p: p.write_bytes(_torch_bytes(figure1_chain(2))[:300]), ".pt",
                  "is a damaged (truncated?) zip archive; expected a model"),
    "state_dict": (lambda p: torch.save(figure1_chain(2).state_dict(), p), ".pt",
                   "holds a state dict, not a model: a state dict holds no architecture"),
    "tensor": (lambda p: torch.save(torch.ones(2, 2), p), ".pt",
               "holds a tensor, not a model"),
    "linear": (lambda p: torch.save(torch.nn.Linear(2, 2), p), ".pt", None),
}

BAD_INPUTS = {
    "text_npy": (_text, ".npy", "is not a numpy .npy file; expected an array saved with "
                                "numpy.save (.npy) or numpy.savez (.npz)"),
    "text_npz": (_text, ".npz", "is not a numpy .npz file"),
    "truncated_npy": (lambda p: np.save(p.open("wb"), np.ones((4, 4)))
                      or p.write_bytes(p.read_bytes()[:100]), ".npy",
                      "cannot be read as a numpy array of numbers"),
    "text_pt": (_text, ".pt", "is not a torch.save file; expected a tensor"),
    "truncated_npz": (lambda p: np.savez(p.open("wb"), x=np.ones((4, 4)))
                      or p.write_bytes(p.read_bytes()[:100]), ".npz",
                      "is a damaged (truncated?) zip archive; expected an array"),
    "empty_npy": (_empty, ".npy", "is empty (0 bytes)"),
    "empty_npz": (_empty, ".npz", "is empty (0 bytes)"),
    "empty_pt": (_empty, ".pt", "is empty (0 bytes)"),
    "zero_rows_npy": (_zero_rows_npy, ".npy", "holds no samples (shape (0, 2))"),
    "zero_rows_pt": (_zero_rows_pt, ".pt", "holds no samples (shape (0, 2))"),
    "scalar_npy": (_scalar_npy, ".npy", "holds no samples (shape ())"),
    "no_arrays_npz": (_no_arrays_npz, ".npz", "holds no arrays"),
    "object_npy": (_object_npy, ".npy", "Object arrays cannot be loaded"),
    "strings_npy": (_strings_npy, ".npy", "holds an array of <U1, expected numbers"),
    "dict_pt": (_dict_pt, ".pt", "must hold a tensor, got dict"),
    "module_pt": (lambda p: torch.save(torch.nn.Linear(2, 2), p), ".pt",
                  "holds Python objects other than tensors, which are not loaded"),
    "csv": (lambda p: p.write_text("1,2\n"), ".csv", "must be a .pt, .npy or .npz file"),
}


@pytest.fixture
def good(tmp_path):
    model, inputs = tmp_path / "good.pt", tmp_path / "good.npy"
    save_model(figure1_chain(2), model)
    np.save(inputs, np.ones((2, 2)))
    return str(model), str(inputs)


def _model_argv(command, bad, good_inputs):
    return {"check": ["check", "--model", bad], "bounds": ["bounds", bad],
            "verify": ["verify", bad, good_inputs],
            "diagnose": ["diagnose", bad, good_inputs]}[command]


def _assert_clear_error(argv, path, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert repr(str(path)) in err, err
    assert fragment in err, err


@pytest.mark.parametrize("command", ["check", "bounds", "verify", "diagnose"])
@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_file_is_a_clear_error(command, case, tmp_path, good, capsys):
    write, suffix, fragment = BAD_MODELS[case]
    path = tmp_path / f"bad{suffix}"
    write(path)
    if fragment is None:  # a torch module that is not a lipbound block
        if command in ("diagnose", "verify"):  # of no supported library: the adapter says which
            assert main(_model_argv(command, str(path), good[1])) == 2
            assert "no adapter for torch.nn.modules.linear.Linear" in capsys.readouterr().err
            return
        fragment = "holds a Linear, expected a lipbound InvertibleBlock"
    _assert_clear_error(_model_argv(command, str(path), good[1]), path, fragment, capsys)


@pytest.mark.parametrize("command", ["verify", "diagnose"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_file_is_a_clear_error(command, case, tmp_path, good, capsys):
    write, suffix, fragment = BAD_INPUTS[case]
    path = tmp_path / f"bad{suffix}"
    write(path)
    _assert_clear_error([command, good[0], str(path)], path, fragment, capsys)


@pytest.mark.parametrize("command", ["check", "bounds", "verify", "diagnose"])
def test_missing_or_directory_model_is_a_clear_error(command, tmp_path, good, capsys):
    missing = tmp_path / "missing.pt"
    _assert_clear_error(_model_argv(command, str(missing), good[1]), missing, "does not exist",
                        capsys)
    folder = tmp_path / "folder.pt"
    folder.mkdir()
    _assert_clear_error(_model_argv(command, str(folder), good[1]), folder, "is not a file",
                        capsys)


def test_model_whose_class_cannot_be_imported(tmp_path, monkeypatch, capsys):
    module = tmp_path / "lipbound_test_gone.py"
    module.write_text("import torch\nclass Gone(torch.nn.Module):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import lipbound_test_gone

    torch.save(lipbound_test_gone.Gone(), tmp_path / "gone.pt")
    del sys.modules["lipbound_test_gone"]
    module.unlink()
    _assert_clear_error(["check", "--model", str(tmp_path / "gone.pt")], tmp_path / "gone.pt",
                        "needs a class that cannot be imported here (ModuleNotFoundError: No "
                        "module named 'lipbound_test_gone')", capsys)


def test_tensors_and_state_dicts_load_weights_only(tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs["weights_only"])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    state = figure1_chain(2).state_dict()
    torch.save(state, tmp_path / "state.pt")
    with pytest.raises(TypeError, match="a state dict holds no architecture"):
        load_saved(tmp_path / "state.pt")
    assert calls == [True]  # read weights-only, never fully unpickled
    calls.clear()
    x = torch.randn(3, 2)
    torch.save(x, tmp_path / "x.pt")
    torch.testing.assert_close(load_inputs(tmp_path / "x.pt"), x, rtol=0, atol=0)
    assert calls == [True]
    calls.clear()
    model = figure1_chain(3)
    save_model(model, tmp_path / "m.pt")
    # a whole module is not weights-only loadable: the full unpickle is the second attempt
    loaded = load_saved(tmp_path / "m.pt")
    assert calls == [True, False]
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_inputs_are_never_fully_unpickled(tmp_path, capsys):
    marker = tmp_path / "unpickled"
    torch.save(_TouchOnUnpickle(marker), tmp_path / "x.pt")
    with pytest.raises(ValueError, match="holds Python objects other than tensors, which are not "
                                         "loaded; expected a tensor saved with torch.save"):
        load_inputs(tmp_path / "x.pt")
    assert not marker.exists()


def test_save_model_refuses_an_unpicklable_model_with_advice(tmp_path):
    model = figure1_chain(2)
    model.note = lambda v: v  # an attribute that pickle cannot write
    with pytest.raises(ValueError, match="cannot be saved whole.*lambdas or local functions"):
        save_model(model, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_inputs_in_any_byte_order_and_memory_layout(tmp_path):
    x = np.arange(12.0).reshape(4, 3)
    np.save(tmp_path / "big.npy", x.astype(">f8"))
    np.save(tmp_path / "fortran.npy", np.asfortranarray(x))
    for name in ("big.npy", "fortran.npy"):
        torch.testing.assert_close(load_inputs(tmp_path / name), torch.from_numpy(x), rtol=0,
                                   atol=0)


def test_legacy_torch_save_format_loads(tmp_path):
    model, x = figure1_chain(3), torch.randn(3, 2)
    torch.save(model, tmp_path / "m.pt", _use_new_zipfile_serialization=False)
    torch.save(x, tmp_path / "x.pt", _use_new_zipfile_serialization=False)
    torch.testing.assert_close(load_inputs(tmp_path / "x.pt"), x, rtol=0, atol=0)
    torch.testing.assert_close(load_saved(tmp_path / "m.pt")(x), model(x), rtol=0, atol=0)
