"""The image dataset readers on files the tests write in the datasets' own formats: pixels and
labels exactly (CIFAR-10, SVHN), shapes, range, splits and colours (CelebA JPEGs); torchvision's
classes give the same tensors when torchvision imports; bad inputs name what is wrong."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from dataset_files import write_celeba, write_cifar10, write_svhn

from lipbound.errors import InputError
from lipbound.training import datasets
from lipbound.training.datasets import (
    CELEBA_TORCHVISION_FILES,
    load_image_set,
    torchvision_datasets,
)

NO_TORCHVISION = ("torchvision does not import beside this torch (missing, or built for another "
                  "torch release)")


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar10_pixels_and_labels_exactly(tmp_path, bytes_keys):
    written = write_cifar10(tmp_path, n_train=4, n_test=3, side=8, bytes_keys=bytes_keys)
    train = load_image_set("cifar10", tmp_path, "train", backend="direct")
    assert train.images.dtype == torch.uint8 and train.images.shape == (20, 3, 8, 8)
    rows = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    # the row holds the red plane, then green, then blue, each row-major
    n, c, i, j = 13, 2, 5, 6
    assert int(train.images[n, c, i, j]) == int(rows[n, c * 64 + i * 8 + j])
    for n in range(20):
        for c in range(3):
            assert np.array_equal(train.images[n, c].numpy(), rows[n, c * 64:(c + 1) * 64]
                                  .reshape(8, 8))
    assert train.labels.tolist() == labels
    test = load_image_set("cifar10", tmp_path, "test", backend="direct")
    assert test.images.shape == (3, 3, 8, 8)
    assert test.labels.tolist() == written["test_batch"][1]


def test_svhn_pixels_and_labels_exactly(tmp_path):
    x, y = write_svhn(tmp_path, n=5, split="test")
    data = load_image_set("svhn", tmp_path, "test", backend="direct")
    assert data.images.dtype == torch.uint8 and data.images.shape == (5, 3, 32, 32)
    for n in range(5):
        for c in range(3):
            assert np.array_equal(data.images[n, c].numpy(), x[:, :, c, n])
    expected = [0 if v == 10 else int(v) for v in y[:, 0]]
    assert data.labels.tolist() == expected and data.labels[0] == 0


def test_celeba_crop_resize_splits_and_colours(tmp_path):
    colours = [(10, 200, 30), (250, 250, 250), (0, 0, 0), (40, 80, 160), (128, 64, 32)]
    write_celeba(tmp_path, colours, splits=[0, 0, 2, 1, 0])
    train = load_image_set("celeba64", tmp_path, "train", backend="direct")
    assert train.labels is None
    assert train.images.dtype == torch.uint8 and train.images.shape == (3, 3, 64, 64)
    assert len(load_image_set("celeba64", tmp_path, "valid", backend="direct")) == 1
    test = load_image_set("celeba64", tmp_path, "test", image_size=16, backend="direct")
    assert test.images.shape == (1, 3, 16, 16)
    # the red strips lie outside the 148x148 centre crop: every pixel is near the colour
    for image, colour in zip([*train.images, test.images[0]], [colours[i] for i in (0, 1, 4, 2)]):
        diff = (image.to(torch.int64) - torch.tensor(colour)[:, None, None]).abs().max()
        assert diff <= 4, (colour, diff)
    again = load_image_set("celeba64", tmp_path, "train", workers=1, backend="direct")
    assert torch.equal(again.images, train.images)


def test_backend_auto_is_direct_without_torchvision(tmp_path):
    write_cifar10(tmp_path)
    if torchvision_datasets() is not None:
        pytest.skip("torchvision imports here; the auto backend uses it")
    auto = load_image_set("cifar10", tmp_path, "test")
    direct = load_image_set("cifar10", tmp_path, "test", backend="direct")
    assert torch.equal(auto.images, direct.images) and torch.equal(auto.labels, direct.labels)
    with pytest.raises(InputError, match="backend 'torchvision' needs a torchvision"):
        load_image_set("cifar10", tmp_path, "test", backend="torchvision")


class _TorchvisionUsed(Exception):
    pass


def test_backend_auto_reads_celeba_directly_without_torchvisions_annotation_files(
        tmp_path, monkeypatch):
    """With torchvision importable (a stand-in here), ``auto`` takes its CelebA only when the
    annotation files it reads exist; otherwise the direct reader, and backend 'torchvision'
    names the missing files."""
    def celeba(*args, **kwargs):
        raise _TorchvisionUsed

    monkeypatch.setattr(datasets, "torchvision_datasets", lambda: SimpleNamespace(CelebA=celeba))
    write_celeba(tmp_path, [(10, 200, 30), (40, 80, 160)], splits=[0, 0])
    with pytest.raises(_TorchvisionUsed):
        load_image_set("celeba64", tmp_path, "train")
    for f in CELEBA_TORCHVISION_FILES[1:]:
        (tmp_path / "celeba" / f).unlink()
    auto = load_image_set("celeba64", tmp_path, "train")
    direct = load_image_set("celeba64", tmp_path, "train", backend="direct")
    assert len(auto) == 2 and torch.equal(auto.images, direct.images)
    with pytest.raises(FileNotFoundError, match=r"torchvision's CelebA reader needs "
                       r"list_attr_celeba.txt, list_bbox_celeba.txt, "
                       r"list_landmarks_align_celeba.txt in '.*celeba', which do not exist"):
        load_image_set("celeba64", tmp_path, "train", backend="torchvision")


@pytest.mark.skipif(torchvision_datasets() is None, reason=NO_TORCHVISION)
def test_torchvision_gives_the_same_tensors(tmp_path, monkeypatch):
    tv = torchvision_datasets()
    # the written files are not the published ones, so their checksums differ
    for cls in (tv.CIFAR10, tv.SVHN, tv.CelebA):
        monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv.cifar, "check_integrity", lambda *args: True)  # batches.meta
    write_cifar10(tmp_path, side=32)
    write_svhn(tmp_path, split="train")
    write_celeba(tmp_path, [(10, 200, 30), (40, 80, 160), (1, 2, 3)], splits=[0, 2, 0])
    for name, split in [("cifar10", "train"), ("cifar10", "test"), ("svhn", "train"),
                        ("celeba64", "train")]:
        a = load_image_set(name, tmp_path, split, backend="torchvision")
        b = load_image_set(name, tmp_path, split, backend="direct")
        assert torch.equal(a.images, b.images), name
        assert (a.labels is None and b.labels is None) or torch.equal(a.labels, b.labels), name


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(InputError, match=r"dataset must be one of \['cifar10', 'svhn', "
                                         r"'celeba64'\], got 'mnist'"):
        load_image_set("mnist", tmp_path)
    with pytest.raises(InputError, match="split of 'cifar10' must be one of"):
        load_image_set("cifar10", tmp_path, "valid")
    with pytest.raises(InputError, match="backend must be one of"):
        load_image_set("cifar10", tmp_path, backend="pil")
    with pytest.raises(InputError, match="workers must be an integer >= 0"):
        load_image_set("cifar10", tmp_path, workers=-1)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="is not a folder; get the data with "
                                                r"torchvision.datasets.CIFAR10\("):
        load_image_set("cifar10", missing)
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py/data_batch_1.*does not "
                                                r"exist; get the data with"):
        load_image_set("cifar10", tmp_path, backend="direct")
    with pytest.raises(FileNotFoundError, match=r"test_32x32.mat.*SVHN\("):
        load_image_set("svhn", tmp_path, "test", backend="direct")
    with pytest.raises(FileNotFoundError, match=r"celeba/list_eval_partition.txt.*CelebA\("):
        load_image_set("celeba64", tmp_path, backend="direct")
    write_cifar10(tmp_path, side=8)
    with pytest.raises(InputError, match="image_size: cifar10 images .* are 8x8 and are not "
                                         "resized"):
        load_image_set("cifar10", tmp_path, "test", image_size=32, backend="direct")
    with (tmp_path / "cifar-10-batches-py" / "test_batch").open("wb") as f:
        pickle.dump({b"data": np.zeros((2, 10), dtype=np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(InputError, match=r"'data' must be uint8 \(N, 3 \* H \* H\)"):
        load_image_set("cifar10", tmp_path, "test", backend="direct")
    (tmp_path / "celeba" / "img_align_celeba").mkdir(parents=True)
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text("000001.jpg 7\n")
    with pytest.raises(InputError, match="line 1: expected 'NAME.jpg 0|1|2'"):
        load_image_set("celeba64", tmp_path, backend="direct")
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    with pytest.raises(FileNotFoundError, match="000001.jpg' listed in list_eval_partition"):
        load_image_set("celeba64", tmp_path, backend="direct")
