"""OOD reproduction (Figure 4, Table 5): the smoke run writes its numbers; the datasets are in
the training range; the claims are checked on synthetic numbers both ways."""

from __future__ import annotations

import csv
import dataclasses
import math

import numpy as np
import pytest
import torch

from lipbound.errors import InputError
from lipbound.reproduce import ood
from lipbound.reproduce.common import Settings, run_experiment
from lipbound.reproduce.ood import image_patches, noise_datasets, ood_claims, run, shipped_images


def test_smoke_run_writes_numbers(tmp_path):
    settings = Settings(out=tmp_path / "ood", scale="smoke", progress=False)
    run_experiment(run, settings)
    for name in ("ood.png", "table.csv", "result.json"):
        assert (settings.out / name).stat().st_size > 0
    rows = list(csv.DictReader(open(settings.out / "table.csv")))
    assert {r["model"] for r in rows} == {"affine", "resflow"}
    datasets = {r["dataset"] for r in rows}
    assert {"digits (test)", "Uniform", "Gaussian", "Rademacher"} <= datasets
    assert len(datasets) > 4  # images shipped inside scikit-learn / matplotlib
    for row in rows:
        assert 0 <= float(row["pct_inf"]) + float(row["pct_nan"]) <= 100
        if float(row["pct_inf"]) + float(row["pct_nan"]) < 100:
            assert math.isfinite(float(row["mean_error"]))


def test_noise_and_patches_lie_in_the_training_range():
    gen = torch.Generator().manual_seed(0)
    for name, x in noise_datasets(50, (1, 8, 8), gen).items():
        assert x.shape == (50, 1, 8, 8), name
        assert float(x.min()) >= -0.5 and float(x.max()) <= 0.5, name
    noise = noise_datasets(50, (1, 8, 8), gen)
    assert set(noise["Rademacher"].unique().tolist()) == {-0.5, 0.5}
    flat = noise["Gaussian"].reshape(50, -1)  # each image spans the whole range
    assert torch.allclose(flat.min(1).values, torch.full((50,), -0.5))
    images = shipped_images()
    assert images, "scikit-learn ships china.jpg and flower.jpg"
    patches = image_patches(next(iter(images.values())), 20, 8, 8, gen)
    assert patches.shape == (20, 1, 8, 8)
    assert float(patches.min()) >= -0.5 and float(patches.max()) <= 0.5
    ramp = np.tile(np.arange(64.0), (64, 1))  # block means of a ramp: the ramp's means
    p = image_patches(ramp, 1, 8, 8, gen)
    assert torch.allclose(p[0, 0, 0], (torch.arange(8.0, dtype=torch.float64) * 8 + 3.5)
                          / 255 - 0.5)
    with pytest.raises(InputError, match="smaller than 8 x 8"):
        image_patches(np.zeros((40, 40)), 1, 8, 8, gen)
    with pytest.raises(InputError, match="must be grey"):
        image_patches(np.zeros((40, 40, 3)), 1, 8, 8, gen)


def test_claims_both_ways():
    holds = ood_claims({"affine": {"in": 0.0, "Uniform": 100.0, "china": 3.0},
                        "resflow": {"in": 0.0, "Uniform": 0.0, "china": 0.0}}, "in")
    assert [c.holds for c in holds] == [True, True, True]
    fails = ood_claims({"affine": {"in": 2.0, "Uniform": 0.0, "china": 0.0},
                        "resflow": {"in": 0.0, "Uniform": 1.0, "china": 0.0}}, "in")
    assert [c.holds for c in fails] == [False, False, False]
    broken = {"affine": {"in": 0.0, "Uniform": 0.0}, "resflow": {"in": 0.0, "Uniform": 0.0}}
    large = ood_claims(broken, "in", {"affine": {"in": 0.0, "Uniform": 40.0},
                                      "resflow": {"in": 0.0, "Uniform": 0.0}})
    assert large[0].holds is True and "Uniform" in large[0].statement
    small = ood_claims(broken, "in", {"affine": {"in": 0.0, "Uniform": 1.0},
                                      "resflow": {"in": 0.0, "Uniform": 1.0}})
    assert small[0].holds is False


def test_ood_sets_lie_in_each_models_training_range(tmp_path, monkeypatch):
    """A model trained on [0, 1) (centered=False, offset 0) sees its OOD sets in [0, 1], a
    centred one (offset -1/2) in [-1/2, 1/2]."""
    real = ood.digits_flow

    def flow(name, settings):
        f = real(name, settings)
        return dataclasses.replace(f, offset=0.0) if name == "resflow" else f

    seen = []
    stats = ood.reconstruction_stats

    def recording(model, x, *args, **kwargs):
        seen.append((float(x.min()), float(x.max())))
        return stats(model, x, *args, **kwargs)

    monkeypatch.setattr(ood, "digits_flow", flow)
    monkeypatch.setattr(ood, "reconstruction_stats", recording)
    ood.run(Settings(out=tmp_path / "ood", scale="smoke", progress=False))
    half = len(seen) // 2  # ood.MODELS in order, each on its test data and then the OOD sets
    assert ood.MODELS == ("affine", "resflow") and len(seen) == 2 * half
    for ranges, lo in ((seen[1:half], -0.5), (seen[half + 1:], 0.0)):
        assert ranges and all(lo - 1e-12 <= a and b <= lo + 1 + 1e-12 for a, b in ranges), lo
        assert min(a for a, _ in ranges) < lo + 0.05  # Uniform/Rademacher reach the bottom


def test_in_model_range_shifts_by_the_offset():
    x = {"u": torch.tensor([[-0.5, 0.0, 0.5]], dtype=torch.float64)}
    assert torch.equal(ood.in_model_range(x, -0.5)["u"], x["u"])
    assert torch.equal(ood.in_model_range(x, 0.0)["u"],
                       torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64))


def test_no_broken_set_names_none_and_the_note_names_the_data():
    zero = {"digits (test)": 0.0, "Uniform": 0.0, "Gaussian": 0.0}
    claim = ood_claims({"affine": zero, "resflow": zero}, "digits (test)")[1]
    assert claim.holds is False and "Uniform" not in claim.statement
    assert "none broke" in claim.statement
    some = ood_claims({"affine": {**zero, "Gaussian": 30.0}, "resflow": zero},
                      "digits (test)")[1]
    assert some.holds is True and "most: Gaussian" in some.statement
    assert ood.trained_on((1, 8, 8)) == "8x8 digits"
    assert "8x8" not in ood.trained_on((3, 64, 64)) and "3 x 64 x 64" in ood.trained_on((3, 64, 64))
