"""Datasets for the diagnostics: the paper's 2D checkerboard, scikit-learn's 8x8 digits, and the
image datasets of the paper (CIFAR-10, SVHN, CelebA) through torchvision.

Every loader returns a float64 tensor, batch first, uniformly dequantised where the data are
quantised: ``x = (k + u) / levels`` with integer level ``k``, ``u ~ U(0, 1)`` (paper appendix E),
so that the invertibility attack's default box (half a cell, ``0.5 / levels``) stays inside the
data distribution. ``dequantize=False`` gives the cell centres ``(k + 0.5) / levels`` instead.
"""

from __future__ import annotations

import importlib

import torch
from torch import Tensor

from ..errors import InputError, InputTypeError

__all__ = ["IMAGE_DATASETS", "checkerboard", "load_digits", "load_images", "quantized_images"]

#: torchvision dataset class, constructor keyword for the split, and the splits, per name.
IMAGE_DATASETS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "cifar10": ("CIFAR10", "train", ("train", "test")),
    "svhn": ("SVHN", "split", ("train", "test", "extra")),
    "celeba": ("CelebA", "split", ("train", "valid", "test", "all")),
}


def checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points of the paper's 2D checkerboard (section 4.1), in ``[-4, 4]^2``.

    ``x1 ~ U(-2, 2)``, ``x2 = U(0, 1) - 2 Bernoulli(1/2) + (floor(x1) mod 2)``, both times 2
    (the authors' recipe).
    """
    if int(n) < 1:
        raise InputError(f"n must be >= 1, got {n}")
    n = int(n)
    x1 = 4 * torch.rand(n, generator=generator, dtype=torch.float64) - 2
    coin = torch.randint(0, 2, (n,), generator=generator).to(torch.float64)
    x2 = torch.rand(n, generator=generator, dtype=torch.float64) - 2 * coin
    x2 = x2 + torch.remainder(torch.floor(x1), 2)
    return 2 * torch.stack([x1, x2], dim=1)


def _dequantize(levels_k: Tensor, levels: int, dequantize: bool,
                generator: torch.Generator | None) -> Tensor:
    k = levels_k.to(torch.float64)
    u = (torch.rand(k.shape, generator=generator, dtype=torch.float64) if dequantize
         else torch.full_like(k, 0.5))
    return (k + u) / levels


def load_digits(dequantize: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """scikit-learn's 1797 handwritten 8x8 digits (17 grey levels), shape ``(1797, 64)``, in
    ``[0, 1)``; it ships inside scikit-learn, so no download."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as err:
        raise ImportError(
            "the digits dataset needs scikit-learn: pip install scikit-learn"
        ) from err
    pixels = torch.as_tensor(sk_load_digits().data)
    return _dequantize(pixels, 17, dequantize, generator)


def _check_count_and_bits(n: int | None, bits: int) -> None:
    if not 1 <= int(bits) <= 8:
        raise InputError(f"bits must be in 1..8, got {bits}")
    if n is not None and int(n) < 1:
        raise InputError(f"n must be >= 1 (or None for all), got {n}")


def quantized_images(data, n: int | None = None, bits: int = 8, dequantize: bool = True,
                     generator: torch.Generator | None = None) -> Tensor:
    """The first ``n`` images of ``data`` (a sequence of ``(image, label)`` with 8-bit images
    ``(C, H, W)``, as torchvision datasets give them), reduced to ``bits`` bits (level ``k =
    floor(pixel / 2^(8 - bits))``) and dequantised into ``[0, 1)``, float64."""
    _check_count_and_bits(n, bits)
    count = len(data) if n is None else min(int(n), len(data))
    if count == 0:
        raise InputError("data holds no images")
    pixels = torch.stack([torch.as_tensor(data[i][0]) for i in range(count)])
    if pixels.dtype != torch.uint8:
        raise InputTypeError(f"images must be 8-bit (torch.uint8), got {pixels.dtype}")
    levels = torch.div(pixels, 2 ** (8 - int(bits)), rounding_mode="floor")
    return _dequantize(levels, 2 ** int(bits), dequantize, generator)


def load_images(name: str, root: str, n: int | None = None, split: str = "train", bits: int = 8,
                download: bool = False, dequantize: bool = True,
                generator: torch.Generator | None = None) -> Tensor:
    """The first ``n`` images of a torchvision dataset, ``(n, 3, H, W)``, reduced to ``bits`` bits
    and dequantised into ``[0, 1)`` (:func:`quantized_images`).

    Args:
        name: a key of :data:`IMAGE_DATASETS` (``"cifar10"``, ``"svhn"``, ``"celeba"``).
        root: the torchvision data folder.
        n: how many images (``None``: all).
        split: ``"train"`` or ``"test"`` (SVHN also ``"extra"``, CelebA ``"valid"`` and
            ``"all"``).
        bits: quantisation of the data (the paper: 8 on CIFAR-10, 5 on CelebA64).
        download: let torchvision download the data.
    """
    if name not in IMAGE_DATASETS:
        raise InputError(f"name must be one of {sorted(IMAGE_DATASETS)}, got {name!r}")
    cls, split_kw, splits = IMAGE_DATASETS[name]
    if split not in splits:
        raise InputError(f"split of {name!r} must be one of {list(splits)}, got {split!r}")
    _check_count_and_bits(n, bits)
    try:
        datasets = importlib.import_module("torchvision.datasets")
        transforms = importlib.import_module("torchvision.transforms")
    except (ImportError, RuntimeError) as err:  # RuntimeError: built for another torch
        raise ImportError(
            f"loading {name!r} needs a working torchvision matching torch {torch.__version__}: "
            f"pip install 'lipbound[datasets]' ({err})"
        ) from err
    split_value: str | bool = split == "train" if split_kw == "train" else split
    data = getattr(datasets, cls)(root, **{split_kw: split_value}, download=download,
                                  transform=transforms.PILToTensor())
    return quantized_images(data, n, bits, dequantize, generator)
