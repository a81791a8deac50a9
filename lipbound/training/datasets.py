"""The paper's image datasets as 8-bit tensors in memory: CIFAR-10 and SVHN with labels, CelebA at
64x64 without.

:func:`load_image_set` returns the images of one split as ``uint8`` ``(N, 3, H, W)`` (pinned when
asked, for asynchronous copies to a GPU) and the labels as ``int64`` ``(N,)``. The training tasks
(:mod:`.tasks`) quantise, dequantise, normalise and augment per batch on the device; keeping the
data as bytes costs 1/4 of float32 (CelebA's 162,770 training images at 64x64: 2.0 GB).

Two readers give the same tensors from the same files:

* ``"torchvision"``: torchvision's dataset classes (``CIFAR10``, ``SVHN``, ``CelebA``; the optional
  ``datasets`` extra, ``pip install 'lipbound[datasets]'``), decoded through a
  :class:`torch.utils.data.DataLoader` with ``workers`` worker processes.
* ``"direct"``: the same on-disk layouts read with numpy, scipy and PIL. It exists because a
  torchvision wheel is built for one torch release (torchvision 0.28 needs torch 2.14.1 and fails
  to import beside another), so a machine whose torch is pinned elsewhere still reads the data.

``backend="auto"`` takes torchvision when it imports and the direct reader otherwise (for
``celeba64`` torchvision only when the annotation files its ``CelebA`` reads,
:data:`CELEBA_TORCHVISION_FILES`, are there too). The layouts
(``root`` is the folder given to torchvision, the trainer's ``data_root``):

==============  ===========================================================================
``cifar10``     ``root/cifar-10-batches-py/data_batch_1..5`` (train), ``test_batch`` (test):
                pickled dicts with ``data`` uint8 ``(N, 3 H W)`` (channel planes, rows) and
                ``labels``
``svhn``        ``root/train_32x32.mat``, ``root/test_32x32.mat``: ``X`` uint8 ``(H, W, 3, N)``,
                ``y`` ``(N, 1)`` with 10 meaning the digit 0
``celeba64``    ``root/celeba/img_align_celeba/*.jpg`` and ``root/celeba/list_eval_partition.txt``
                (``NAME SPLIT`` lines, 0 train, 1 valid, 2 test); each 178x218 image is
                centre-cropped to 148x148 and resized (PIL bilinear) to ``image_size`` (64), the
                CelebA 64x64 of Real NVP (Dinh et al., 2017) that Glow and Residual Flows train on
                (the paper does not state the crop)
==============  ===========================================================================

Nothing is downloaded here: a missing file raises :class:`FileNotFoundError` naming the expected
path and the torchvision call that downloads it. Pickled CIFAR-10 batches are unpickled, so read
only files you trust (as torchvision does).
"""

from __future__ import annotations

import importlib
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..errors import InputError

__all__ = ["BACKENDS", "CELEBA_TORCHVISION_FILES", "IMAGE_SETS", "ImageSet", "load_image_set",
           "torchvision_datasets"]

#: Dataset name -> its splits.
IMAGE_SETS: dict[str, tuple[str, ...]] = {
    "cifar10": ("train", "test"),
    "svhn": ("train", "test"),
    "celeba64": ("train", "valid", "test"),
}
BACKENDS = ("auto", "torchvision", "direct")
#: CelebA's aligned images are centre-cropped to this square before resizing.
CELEBA_CROP = 148
CELEBA_SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
#: Images decoded per DataLoader batch.
LOAD_BATCH = 512

_DOWNLOAD = {
    "cifar10": "torchvision.datasets.CIFAR10({root!r}, download=True) (or extract "
               "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into {root!r})",
    "svhn": "torchvision.datasets.SVHN({root!r}, split='train'/'test', download=True) (or "
            "http://ufldl.stanford.edu/housenumbers/{{train,test}}_32x32.mat into {root!r})",
    "celeba64": "torchvision.datasets.CelebA({root!r}, download=True) (Google Drive; or put "
                "img_align_celeba/ and list_eval_partition.txt from the CelebA site into "
                "{root!r}/celeba, and for backend 'torchvision' also "
                "identity_CelebA.txt, list_attr_celeba.txt, list_bbox_celeba.txt and "
                "list_landmarks_align_celeba.txt)",
}
#: The annotation files torchvision's CelebA reads besides the images and the split list (the
#: flows use none of them; the direct reader does not need them).
CELEBA_TORCHVISION_FILES = ("identity_CelebA.txt", "list_attr_celeba.txt",
                            "list_bbox_celeba.txt", "list_landmarks_align_celeba.txt")


@dataclass(frozen=True)
class ImageSet:
    """One split of an image dataset: ``images`` uint8 ``(N, C, H, W)``, ``labels`` int64
    ``(N,)`` or ``None`` (CelebA: the flows use no labels)."""

    images: Tensor
    labels: Tensor | None

    def __len__(self) -> int:
        return self.images.shape[0]


def torchvision_datasets() -> Any | None:
    """``torchvision.datasets``, or ``None`` when torchvision is missing or built for another
    torch (it then raises ``RuntimeError`` on import, e.g. ``operator torchvision::nms does not
    exist``)."""
    try:
        return importlib.import_module("torchvision.datasets")
    except (ImportError, RuntimeError):
        return None


def _missing(name: str, path: Path, root: Path) -> FileNotFoundError:
    how = _DOWNLOAD[name].format(root=str(root))
    return FileNotFoundError(f"data_root {str(root)!r}: {name} needs {str(path)!r}, which does "
                             f"not exist; get the data with {how}")


def _require(name: str, path: Path, root: Path) -> Path:
    if not path.exists():
        raise _missing(name, path, root)
    return path


# -- the direct readers ------------------------------------------------------------------------

def _cifar10_files(root: Path, split: str) -> list[Path]:
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return [_require("cifar10", folder / n, root) for n in names]


def _cifar10_direct(root: Path, split: str) -> ImageSet:
    images, labels = [], []
    for path in _cifar10_files(root, split):
        with path.open("rb") as f:
            try:
                batch = pickle.load(f, encoding="latin1")
            except (pickle.UnpicklingError, EOFError, ValueError) as err:
                raise InputError(f"{str(path)!r} is not a pickled CIFAR-10 batch: {err}") from err
        if not isinstance(batch, dict):
            raise InputError(f"{str(path)!r} must hold a dict, got {type(batch).__name__}")
        data = batch.get("data", batch.get(b"data"))
        target = batch.get("labels", batch.get(b"labels"))
        if data is None or target is None:
            raise InputError(f"{str(path)!r} must hold the keys 'data' and 'labels', got "
                             f"{sorted(map(str, batch))}")
        data = np.asarray(data)
        side = math.isqrt(data.shape[1] // 3) if data.ndim == 2 else 0
        if data.dtype != np.uint8 or data.ndim != 2 or 3 * side * side != data.shape[1]:
            raise InputError(f"{str(path)!r}: 'data' must be uint8 (N, 3 * H * H), got "
                             f"{data.dtype} {data.shape}")
        if len(target) != data.shape[0]:
            raise InputError(f"{str(path)!r}: {len(target)} labels for {data.shape[0]} images")
        images.append(torch.from_numpy(data.reshape(-1, 3, side, side).copy()))
        labels.append(torch.as_tensor(np.asarray(target, dtype=np.int64)))
    shapes = {tuple(x.shape[1:]) for x in images}
    if len(shapes) > 1:
        raise InputError(f"{str(root)!r}: the CIFAR-10 batches hold images of shapes {shapes}")
    return ImageSet(torch.cat(images), torch.cat(labels))


def _svhn_path(root: Path, split: str) -> Path:
    return _require("svhn", root / f"{split}_32x32.mat", root)


def _svhn_direct(root: Path, split: str) -> ImageSet:
    import scipy.io

    path = _svhn_path(root, split)
    try:
        mat = scipy.io.loadmat(str(path))
    except (ValueError, TypeError, OSError) as err:
        raise InputError(f"{str(path)!r} is not a MATLAB file: {err}") from err
    if "X" not in mat or "y" not in mat:
        raise InputError(f"{str(path)!r} must hold the arrays 'X' and 'y'")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != y.shape[0]:
        raise InputError(f"{str(path)!r}: X must be uint8 (H, W, 3, N) with N = len(y) = "
                         f"{y.shape[0]}, got {x.dtype} {x.shape}")
    y = np.where(y == 10, 0, y)  # SVHN stores the digit 0 as 10
    return ImageSet(torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))),
                    torch.from_numpy(y))


def _celeba_names(root: Path, split: str) -> list[str]:
    part = _require("celeba64", root / "celeba" / "list_eval_partition.txt", root)
    _require("celeba64", root / "celeba" / "img_align_celeba", root)
    code, names = CELEBA_SPLIT_CODES[split], []
    for number, line in enumerate(part.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise InputError(f"{str(part)!r} line {number}: expected 'NAME.jpg 0|1|2', "
                             f"got {line!r}")
        if int(fields[1]) == code:
            names.append(fields[0])
    return names


def celeba_transform(image: Any, size: int) -> Tensor:
    """A PIL image centre-cropped to 148x148 (offsets ``round((W - 148) / 2)``,
    ``round((H - 148) / 2)`` as torchvision's ``CenterCrop``) and resized to ``size`` x ``size``
    with PIL's bilinear filter (torchvision's ``Resize`` on PIL images), as uint8 ``(3, size,
    size)``."""
    from PIL import Image

    w, h = image.size
    if min(w, h) < CELEBA_CROP:
        raise InputError(f"CelebA image {getattr(image, 'filename', '')!r} is {w}x{h}, smaller "
                         f"than the {CELEBA_CROP}x{CELEBA_CROP} centre crop")
    left, top = int(round((w - CELEBA_CROP) / 2.0)), int(round((h - CELEBA_CROP) / 2.0))
    image = image.convert("RGB").crop((left, top, left + CELEBA_CROP, top + CELEBA_CROP))
    image = image.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())


class _CelebAFiles(Dataset):
    """CelebA images by file name, decoded with PIL (the direct reader's DataLoader source)."""

    def __init__(self, folder: Path, names: Sequence[str], size: int) -> None:
        self.folder, self.names, self.size = folder, list(names), size

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Tensor:
        from PIL import Image

        path = self.folder / self.names[i]
        if not path.is_file():
            raise FileNotFoundError(f"CelebA image {str(path)!r} listed in "
                                    "list_eval_partition.txt does not exist")
        with Image.open(path) as image:
            return celeba_transform(image, self.size)


# -- the torchvision readers --------------------------------------------------------------------

class _TorchvisionImages(Dataset):
    """A torchvision dataset of PIL images as uint8 tensors (and int labels unless dropped)."""

    def __init__(self, data: Any, transform: Any, labels: bool) -> None:
        self.data, self.transform, self.labels = data, transform, labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Any:
        image, target = self.data[i]
        x = self.transform(image)
        return (x, int(target)) if self.labels else x


def _celeba_torchvision_missing(root: Path) -> list[str]:
    """The files of :data:`CELEBA_TORCHVISION_FILES` missing from ``root/celeba``."""
    return [f for f in CELEBA_TORCHVISION_FILES if not (root / "celeba" / f).is_file()]


def _torchvision_source(tv: Any, name: str, root: Path, split: str, size: int) -> Dataset:
    if name == "cifar10":
        _cifar10_files(root, split)
        data = tv.CIFAR10(str(root), train=split == "train", download=False)
    elif name == "svhn":
        _svhn_path(root, split)
        data = tv.SVHN(str(root), split=split, download=False)
    else:
        _celeba_names(root, split)
        missing = _celeba_torchvision_missing(root)
        if missing:
            raise FileNotFoundError(
                f"data_root {str(root)!r}: torchvision's CelebA reader needs "
                f"{', '.join(missing)} in {str(root / 'celeba')!r}, which do not exist (backend "
                "'direct' reads celeba64 without them); get them with "
                + _DOWNLOAD[name].format(root=str(root)))
        data = tv.CelebA(str(root), split=split, target_type=[], download=False)
        return _TorchvisionImages(data, lambda im: celeba_transform(im, size), labels=False)
    to_tensor = importlib.import_module("torchvision.transforms").PILToTensor()
    return _TorchvisionImages(data, to_tensor, labels=True)


def _collect(source: Dataset, workers: int, labels: bool) -> ImageSet:
    """All of ``source`` through a DataLoader (``workers`` processes decode in parallel)."""
    loader = DataLoader(source, batch_size=LOAD_BATCH, shuffle=False, num_workers=workers)
    parts = list(loader)
    if not parts:
        raise InputError("the dataset split holds no images")
    if labels:
        return ImageSet(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    return ImageSet(torch.cat(parts), None)


def load_image_set(name: str, root: str | Path, split: str = "train", *,
                   image_size: int | None = None, workers: int = 0, pin_memory: bool = False,
                   backend: str = "auto") -> ImageSet:
    """One split of ``name`` from ``root`` (see the module docstring for the layouts).

    Args:
        name: ``"cifar10"``, ``"svhn"`` or ``"celeba64"``.
        root: the data folder (torchvision's ``root``).
        split: ``"train"`` or ``"test"`` (CelebA also ``"valid"``).
        image_size: CelebA's side after the 148x148 centre crop (``None``: 64); CIFAR-10 and SVHN
            keep their stored size, and ``image_size`` must be ``None`` or that size.
        workers: DataLoader worker processes decoding the images (0: in this process).
        pin_memory: return page-locked tensors (for ``non_blocking`` copies to CUDA).
        backend: ``"auto"``, ``"torchvision"`` or ``"direct"``.
    """
    if name not in IMAGE_SETS:
        raise InputError(f"dataset must be one of {list(IMAGE_SETS)}, got {name!r}")
    if split not in IMAGE_SETS[name]:
        raise InputError(f"split of {name!r} must be one of {list(IMAGE_SETS[name])}, "
                         f"got {split!r}")
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InputError(f"workers must be an integer >= 0, got {workers!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise InputError(f"image_size must be an integer >= 1 or None, got {image_size!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data_root {str(root)!r} is not a folder; get the data with "
                                + _DOWNLOAD[name].format(root=str(root)))
    tv = torchvision_datasets() if backend != "direct" else None
    if backend == "auto" and name == "celeba64" and _celeba_torchvision_missing(root):
        tv = None  # torchvision's CelebA needs annotation files the direct reader does without
    if backend == "torchvision" and tv is None:
        raise InputError(f"backend 'torchvision' needs a torchvision that imports beside torch "
                         f"{torch.__version__}: pip install 'lipbound[datasets]', or use "
                         "backend 'direct'")
    size = 64 if image_size is None else image_size
    if tv is not None:
        data = _collect(_torchvision_source(tv, name, root, split, size), workers,
                        labels=name != "celeba64")
    elif name == "celeba64":
        source = _CelebAFiles(root / "celeba" / "img_align_celeba", _celeba_names(root, split),
                              size)
        data = _collect(source, workers, labels=False)
    else:
        data = (_cifar10_direct if name == "cifar10" else _svhn_direct)(root, split)
    if name != "celeba64" and image_size is not None and data.images.shape[-1] != image_size:
        raise InputError(f"image_size: {name} images in {str(root)!r} are "
                         f"{data.images.shape[-1]}x{data.images.shape[-2]} and are not resized; "
                         f"give image_size {data.images.shape[-1]} or none")
    if pin_memory:  # the whole split at once: a DataLoader's pinned batches are copied by cat
        data = ImageSet(data.images.pin_memory(),
                        None if data.labels is None else data.labels.pin_memory())
    return data
