"""Saved models and input arrays on disk.

A MODEL file is a whole :class:`~lipbound.blocks.InvertibleBlock` written with
:func:`save_model` (``torch.save(model, path)``). INPUTS files are ``.pt`` (a tensor) or
``.npy`` (the array) or ``.npz`` (the array named ``x``, or its only array), batch first, of real
floating-point, integer or boolean numbers.

Loading is done with ``torch.load(weights_only=True)`` wherever the file allows it (tensors,
state dicts). A model file is a pickled module: its classes are not on torch's weights-only allow
list, so it needs a full unpickle, which can run code stored in the file. Load only files you
trust. Files that are not written by ``torch.save`` (or by numpy, for inputs) are never unpickled.

Every unreadable file (missing, empty, of another format, an array with no samples) raises an
:class:`~lipbound.errors.InputError` (or ``FileNotFoundError``) that names the file and says what
was expected. :func:`check_output_path` and :func:`check_output_folder` check, before any work
is done, that the commands can write their output files where they were told to.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .blocks import InvertibleBlock, require_block
from .errors import InputError, InputTypeError

__all__ = ["check_output_folder", "check_output_path", "load_inputs", "load_model", "load_saved",
           "save_model"]

#: What ``torch.load`` and ``np.load`` raise on a file they cannot read (a corrupt archive, a
#: truncated pickle, a class that cannot be found).
_UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, KeyError, IndexError,
               AttributeError, ImportError, OSError, UnicodeDecodeError, zipfile.BadZipFile)

_MODEL_EXPECTED = "a model written by lipbound.io.save_model(model, path) (torch.save)"


def save_model(model: InvertibleBlock, path: str | Path) -> None:
    """Write ``model`` so that :func:`load_model` and the ``lipbound`` commands can read it."""
    require_block(model)
    try:
        torch.save(model, Path(path))
    except (pickle.PicklingError, AttributeError, TypeError) as err:
        if "pickle" not in str(err):
            raise
        Path(path).unlink(missing_ok=True)  # torch.save leaves a truncated file behind
        raise InputError(
            f"the model cannot be saved whole ({_first_line(err)}): torch.save pickles every "
            "attribute, and lambdas or local functions cannot be pickled. Use module-level "
            "functions (FrEIA coupling blocks: clamp_activation=\"TANH\"); FrEIA's AllInOneBlock "
            "never pickles: save its state_dict, rebuild, and run lipbound.diagnostics in Python"
        ) from err


def _existing(path: str | Path, what: str) -> Path:
    """``path`` as a ``Path``; ``FileNotFoundError`` or :class:`InputError` when it is missing,
    a directory, or empty."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    if not path.is_file():
        raise InputError(f"{what} file {str(path)!r} is not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{what} file {str(path)!r} is empty (0 bytes)")
    return path


def _is_torch_file(path: Path) -> bool:
    """Whether ``path`` has the format of ``torch.save``: a zip archive holding ``data.pkl``, or
    the legacy format, which starts with a pickle protocol 2+ opcode."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith("/data.pkl") for name in archive.namelist())
        except zipfile.BadZipFile:
            return False
    with open(path, "rb") as f:
        return f.read(1) == pickle.PROTO


def _not_format(path: Path, what: str, fmt: str, expected: str) -> InputError:
    """The error for a file not in the format ``fmt``, telling a damaged zip archive (a cut-off
    download or copy) from a file of another kind."""
    with open(path, "rb") as f:
        # a zip archive's start, but no valid archive
        damaged = f.read(4) == b"PK\x03\x04" and not zipfile.is_zipfile(path)
    kind = "a damaged (truncated?) zip archive" if damaged else f"not a {fmt} file"
    return InputError(f"{what} file {str(path)!r} is {kind}; expected {expected}")


def _is_numpy_file(path: Path) -> bool:
    """Whether ``path`` has the format its suffix says: ``.npy`` (``numpy.save``, magic string
    ``\\x93NUMPY``) or ``.npz`` (``numpy.savez``, a zip archive)."""
    if path.suffix == ".npz":
        return zipfile.is_zipfile(path)
    with open(path, "rb") as f:
        return f.read(6) == b"\x93NUMPY"


def _torch_load(path: Path, what: str, expected: str, full_unpickle: bool) -> object:
    """``torch.load`` of ``path`` onto the CPU, ``weights_only=True`` first; with
    ``full_unpickle`` a file that needs more (a pickled module) is then unpickled in full."""
    if not _is_torch_file(path):
        raise _not_format(path, what, "torch.save", expected)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # objects outside the weights-only allow list
        if not full_unpickle:
            raise InputError(f"{what} file {str(path)!r} holds Python objects other than "
                             f"tensors, which are not loaded; expected {expected}") from err
    except _UNREADABLE as err:
        if not full_unpickle:
            raise InputError(f"{what} file {str(path)!r} cannot be read as {expected}: "
                             f"{_first_line(err)}") from err
    # A whole module (what save_model writes) is a pickle of its classes, which weights_only
    # refuses: only a full unpickle rebuilds it. That runs code from the file (trusted files only).
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ImportError) as err:
        raise InputError(f"{what} file {str(path)!r} needs a class that cannot be imported here "
                         f"({_first_line(err)}): install the library that defines it, or define "
                         "it in an importable module") from err
    except _UNREADABLE as err:
        raise InputError(f"{what} file {str(path)!r} cannot be read as {expected}: "
                         f"{_first_line(err)}") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def load_saved(path: str | Path) -> object:
    """Load whatever ``torch.save`` wrote to the MODEL file ``path`` (onto the CPU), for models
    of other libraries too; :func:`load_model` also checks that it is a lipbound block.

    Tensors and state dicts load with ``weights_only=True``; a whole module needs a full unpickle,
    which can run code from the file: load only files you trust.
    """
    obj = _torch_load(_existing(path, "model"), "model", _MODEL_EXPECTED, full_unpickle=True)
    if isinstance(obj, dict):
        raise InputTypeError(f"model file {str(path)!r} holds a state dict, not a model: a state "
                             "dict holds no architecture; build the model, call "
                             "model.load_state_dict(state), then save the whole model with "
                             "torch.save(model, path)")
    if isinstance(obj, Tensor):
        raise InputTypeError(f"model file {str(path)!r} holds a tensor, not a model; expected a "
                             "model saved whole with torch.save(model, path)")
    return obj


def load_model(path: str | Path) -> InvertibleBlock:
    """Read a model written by :func:`save_model` (``torch.save`` of a whole module)."""
    model = load_saved(path)
    if not isinstance(model, InvertibleBlock):
        raise InputTypeError(f"model file {str(path)!r} holds a {type(model).__name__}, expected "
                             "a lipbound InvertibleBlock saved with lipbound.io.save_model")
    return model


def _existing_ancestor(path: Path, option: str, shown: Path) -> None:
    """:class:`InputError` naming ``option`` unless the nearest existing folder above ``path``
    (``path`` itself included) is a folder that can be written to."""
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{option} {str(shown)!r}: {str(folder)!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{option} {str(shown)!r}: the folder {str(folder)!r} is not writable")


def check_output_path(path: str | Path, option: str, suffixes: tuple[str, ...] | None = None,
                      create_parents: bool = False) -> Path:
    """``path`` as a :class:`~pathlib.Path`, checked before a command does its work: an
    :class:`InputError` naming ``option`` unless ``path`` ends in one of ``suffixes`` (any suffix
    when ``None``; compared in lower case), is not a folder, and its folder exists (or, with
    ``create_parents``, can be created: the nearest existing folder above it) and is writable."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise InputError(f"{option} must end in {' or '.join(suffixes)}, got {str(path)!r}")
    if path.is_dir():
        raise InputError(f"{option} {str(path)!r} is a folder; expected a file name")
    parent = path.parent
    if not create_parents and not parent.exists():
        raise InputError(f"{option} {str(path)!r}: the folder {str(parent)!r} does not exist")
    _existing_ancestor(parent, option, path)
    return path


def check_output_folder(path: str | Path, option: str) -> Path:
    """``path`` as a :class:`~pathlib.Path`: an :class:`InputError` naming ``option`` unless it is
    a folder or can be created as one (the nearest existing path above it is a writable
    folder)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {str(path)!r} is a file; expected a folder")
    _existing_ancestor(path, option, path)
    return path


def _npz_array(data: np.lib.npyio.NpzFile, path: Path) -> np.ndarray:
    """The array named ``x`` of an ``.npz`` file, else its only array."""
    if "x" in data.files:
        return data["x"]
    if len(data.files) == 1:
        return data[data.files[0]]
    if not data.files:
        raise InputError(f"inputs file {str(path)!r} holds no arrays; expected an array of "
                         "inputs, batch first")
    raise InputError(f"inputs file {str(path)!r} holds {len(data.files)} arrays "
                     f"({', '.join(data.files)}) and none named x; save the inputs as x "
                     "(numpy.savez(path, x=inputs)) or alone")


def _read_array(path: Path) -> np.ndarray:
    """The array of an ``.npy`` file, or the array ``x`` (or only array) of an ``.npz`` file (no
    pickles)."""
    if not _is_numpy_file(path):
        raise _not_format(path, "inputs", f"numpy {path.suffix}",
                          "an array saved with numpy.save (.npy) or numpy.savez (.npz)")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                return _npz_array(data, path)
        return data
    except _UNREADABLE as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"inputs file {str(path)!r} cannot be read as a numpy array of numbers "
                         f"({_first_line(err)})") from err


#: The suffixes of the files :func:`load_inputs` reads.
INPUT_SUFFIXES = (".pt", ".npy", ".npz")


def load_inputs(path: str | Path) -> Tensor:
    """Read a batch of inputs (batch first, at least one sample; real floating-point, integer or
    boolean numbers) from ``.pt``, ``.npy`` or ``.npz``."""
    path = Path(path)
    if path.suffix not in INPUT_SUFFIXES:
        raise InputError(f"inputs must be a .pt, .npy or .npz file, got {str(path)!r}")
    path = _existing(path, "inputs")
    if path.suffix == ".pt":
        x = _torch_load(path, "inputs", "a tensor saved with torch.save(x, path)",
                        full_unpickle=False)
        if not isinstance(x, Tensor):
            raise InputTypeError(f"inputs file {str(path)!r} must hold a tensor, got "
                                 f"{type(x).__name__}")
    else:
        arr = _read_array(path)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise InputError(f"inputs file {str(path)!r} holds an array of {arr.dtype}, "
                             "expected numbers")
        if np.issubdtype(arr.dtype, np.complexfloating):
            raise InputError(f"inputs file {str(path)!r} holds complex numbers ({arr.dtype}); "
                             "expected real floating-point or integer numbers")
        x = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="), copy=False))  # native order
    if x.is_complex():
        raise InputError(f"inputs file {str(path)!r} holds complex numbers ({x.dtype}); expected "
                         "real floating-point or integer numbers")
    if x.dim() == 0 or x.shape[0] == 0:
        raise InputError(f"inputs file {str(path)!r} holds no samples (shape "
                         f"{tuple(x.shape)}); expected an array of inputs, batch first, with at "
                         "least one sample")
    return x
