"""Write small image datasets in the real on-disk formats (no download): CIFAR-10's pickled
batches, SVHN's MATLAB files, CelebA's aligned JPEGs with the partition list."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def write_cifar10(root: Path, n_train: int = 4, n_test: int = 3, side: int = 8,
                  seed: int = 0, bytes_keys: bool = False
                  ) -> dict[str, tuple[np.ndarray, list[int]]]:
    """``root/cifar-10-batches-py/data_batch_1..5`` (``n_train`` images each), ``test_batch`` and
    ``batches.meta``; returns the rows and labels per file.

    The published files are Python-2 pickles whose ``str`` keys load as ``str`` with
    ``encoding="latin1"`` (torchvision's choice) and as ``bytes`` with ``encoding="bytes"``;
    Python 3 cannot write a Python-2 ``str``, so the keys are ``str`` (the latin1 view) or, with
    ``bytes_keys``, ``bytes`` (the other view)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, n in [(f"data_batch_{i}", n_train) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, size=(n, 3 * side * side), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        batch = {"batch_label": name, "labels": labels, "data": data,
                 "filenames": [f"{name}_{i}.png" for i in range(n)]}
        if bytes_keys:
            batch = {k.encode(): v for k, v in batch.items()}
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = (data, labels)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"num_cases_per_batch": n_train, "num_vis": 3 * side * side,
                     "label_names": [f"class{i}" for i in range(10)]}, f, protocol=2)
    return written


def write_svhn(root: Path, n: int = 5, split: str = "train", seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    """``root/{split}_32x32.mat`` with ``X`` uint8 ``(32, 32, 3, n)`` and ``y`` ``(n, 1)`` in 1..10
    (10 is the digit 0); returns ``X`` and ``y``."""
    import scipy.io

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)
    y[0, 0] = 10
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(root / f"{split}_32x32.mat"), {"X": x, "y": y})
    return x, y


def write_celeba(root: Path, colours: list[tuple[int, int, int]], splits: list[int]) -> list[str]:
    """178x218 JPEGs in ``root/celeba/img_align_celeba``: image ``i`` is ``colours[i]`` inside the
    central 148x148 crop's area and pure red in a 10-pixel strip on the left and a 30-pixel strip at
    the top (outside the crop, so the loaders must not see it); ``list_eval_partition.txt`` gives
    image ``i`` the split code ``splits[i]``. Also the other annotation files torchvision's CelebA
    reads (placeholder values). Returns the file names."""
    from PIL import Image

    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(colours))]
    for name, colour in zip(names, colours):
        pixels = np.empty((218, 178, 3), dtype=np.uint8)
        pixels[:] = colour
        pixels[:, :10] = (255, 0, 0)
        pixels[:30, :] = (255, 0, 0)
        Image.fromarray(pixels).save(folder / name, quality=95, subsampling=0)
    base = root / "celeba"
    (base / "list_eval_partition.txt").write_text(
        "".join(f"{name} {s}\n" for name, s in zip(names, splits)))
    n = len(names)
    (base / "identity_CelebA.txt").write_text("".join(f"{name} 1\n" for name in names))
    (base / "list_bbox_celeba.txt").write_text(
        f"{n}\nimage_id x_1 y_1 width height\n" + "".join(f"{name} 0 0 1 1\n" for name in names))
    marks = " ".join(f"m{i}" for i in range(10))
    (base / "list_landmarks_align_celeba.txt").write_text(
        f"{n}\n{marks}\n" + "".join(f"{name} " + " ".join(["0"] * 10) + "\n" for name in names))
    attrs = " ".join(f"a{i}" for i in range(40))
    (base / "list_attr_celeba.txt").write_text(
        f"{n}\n{attrs}\n" + "".join(f"{name} " + " ".join(["1"] * 40) + "\n" for name in names))
    return names
