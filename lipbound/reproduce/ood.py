r"""Figure 4 and Table 5 (section 4.1.1, appendix D): round trips of flows on in-distribution and
out-of-distribution data.

The flows (:mod:`.digits_flows`): a Glow-like affine flow beside a Residual Flow, trained here on
the 8x8 digits (at CPU scale). The datasets, built in ``[-1/2, 1/2]`` as below and then shifted
per model into that model's training range ``[offset, offset + 1]`` (``offset`` of
:class:`~.digits_flows.DigitsFlow`: ``-1/2`` for centred data, ``0`` for data in ``[0, 1)``;
appendix D: "normalized such that pixel values fell into the same range as each model was
originally trained on"):

* ``digits (test)``: each model's own held-out test data, dequantised as in training;
* ``Uniform``: ``U(-1/2, 1/2)`` per pixel; ``Rademacher``: ``+-1/2`` per pixel; ``Gaussian``:
  ``N(0, 1)`` per pixel, each image rescaled from its min and max onto ``[-1/2, 1/2]``;
* natural images that ship inside installed packages (no download): scikit-learn's
  ``china.jpg`` and ``flower.jpg`` and matplotlib's ``grace_hopper.jpg``, in grey, shrunk by
  block means so that an 8x8 patch holds a recognisable structure, cut into random 8x8 patches,
  pixel ``p`` in ``0..255`` mapped to ``p / 255 - 1/2``.

Per dataset and model: the float32 round trip ``||x - F^-1(F(x))||_2`` per image
(:func:`lipbound.diagnostics.reconstruction_stats`), the percentages of Inf and of NaN apart
(the authors' code counted only Inf, so NaN leaked into their means), the percentage of finite
errors above ``1e-3`` (a failed round trip, as in the checkerboard maps), and the mean error over
the finite ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..diagnostics import error_summary, reconstruction_stats
from ..diagnostics.figures import pyplot
from ..errors import InputError
from .common import (
    Claim,
    ExperimentResult,
    Settings,
    claim_at_least,
    claim_less_than,
    save_figure,
)
from .digits_flows import digits_flow

__all__ = ["PAPER", "image_patches", "in_model_range", "noise_datasets", "ood_claims", "run",
           "shipped_images"]

#: Figure 4 (right): % Inf and mean error of the CIFAR-10 Glow and Residual Flow.
PAPER = {
    "CIFAR-10": {"glow_pct_inf": 0.0, "glow_error": 6.3e-5, "resflow_pct_inf": 0.0,
                 "resflow_error": 2.9e-2},
    "Uniform": {"glow_pct_inf": 100.0, "resflow_pct_inf": 0.0, "resflow_error": 1.7e-2},
    "Gaussian": {"glow_pct_inf": 100.0, "resflow_pct_inf": 0.0, "resflow_error": 7.2e-3},
    "Rademacher": {"glow_pct_inf": 100.0, "resflow_pct_inf": 0.0, "resflow_error": 1.9e-3},
    "SVHN": {"glow_pct_inf": 0.0, "glow_error": 5.5e-5, "resflow_pct_inf": 0.0,
             "resflow_error": 7.3e-2},
    "Texture": {"glow_pct_inf": 37.0, "glow_error": 7.8e-2, "resflow_pct_inf": 0.0,
                "resflow_error": 2.0e-2},
    "Places": {"glow_pct_inf": 24.9, "glow_error": 9.9e-2, "resflow_pct_inf": 0.0,
               "resflow_error": 2.9e-2},
    "tinyImageNet": {"glow_pct_inf": 38.9, "glow_error": 1.6e-1, "resflow_pct_inf": 0.0,
                     "resflow_error": 3.5e-2},
}
#: A round trip with a finite error above this fails (as in the checkerboard maps).
FAIL_ERROR = 1e-3
#: Models compared: the Glow-like affine flow and the Residual Flow.
MODELS = ("affine", "resflow")


def noise_datasets(n: int, shape: tuple[int, ...], generator: torch.Generator
                   ) -> dict[str, Tensor]:
    """Uniform, Gaussian and Rademacher noise images in ``[-1/2, 1/2]`` (module docstring)."""
    size = (n, *shape)
    uniform = torch.rand(size, generator=generator, dtype=torch.float64) - 0.5
    gauss = torch.randn(size, generator=generator, dtype=torch.float64).reshape(n, -1)
    lo, hi = gauss.min(dim=1, keepdim=True).values, gauss.max(dim=1, keepdim=True).values
    gauss = ((gauss - lo) / (hi - lo) - 0.5).reshape(size)
    rademacher = torch.randint(0, 2, size, generator=generator).to(torch.float64) - 0.5
    return {"Uniform": uniform, "Gaussian": gauss, "Rademacher": rademacher}


def in_model_range(datasets: dict[str, Tensor], offset: float) -> dict[str, Tensor]:
    """``datasets`` built in ``[-1/2, 1/2]`` shifted into a model's training range
    ``[offset, offset + 1]`` (``offset = -1/2``: unchanged)."""
    return {name: x + (float(offset) + 0.5) for name, x in datasets.items()}


def shipped_images() -> dict[str, np.ndarray]:
    """Grey images (float, ``0..255``) that ship inside scikit-learn and matplotlib."""
    out = {}
    try:
        from sklearn.datasets import load_sample_images

        data = load_sample_images()
        for name, image in zip(data.filenames, data.images, strict=True):
            out[Path(name).stem] = np.asarray(image, dtype=np.float64).mean(axis=2)
    except ImportError:
        pass
    try:
        import matplotlib.cbook as cbook
        import matplotlib.image as mimage

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            image = np.asarray(mimage.imread(f, format="jpg"), dtype=np.float64)
        out["grace_hopper"] = image.mean(axis=2) if image.ndim == 3 else image
    except (ImportError, OSError, ValueError):
        pass
    return out


def image_patches(image: np.ndarray, n: int, side: int, shrink: int,
                  generator: torch.Generator) -> Tensor:
    """``n`` random ``side x side`` patches of ``image`` (grey, ``0..255``) after block means of
    ``shrink x shrink``, as ``(n, 1, side, side)`` in ``[-1/2, 1/2]``."""
    if image.ndim != 2:
        raise InputError(f"image must be grey (H, W), got shape {image.shape}")
    h, w = (image.shape[0] // shrink) * shrink, (image.shape[1] // shrink) * shrink
    small = image[:h, :w].reshape(h // shrink, shrink, w // shrink, shrink).mean(axis=(1, 3))
    if min(small.shape) < side:
        raise InputError(f"image of shape {image.shape} shrunk by {shrink} is smaller than "
                         f"{side} x {side}")
    t = torch.as_tensor(small)
    rows = torch.randint(0, t.shape[0] - side + 1, (n,), generator=generator)
    cols = torch.randint(0, t.shape[1] - side + 1, (n,), generator=generator)
    patches = torch.stack([t[r:r + side, c:c + side] for r, c in zip(rows, cols, strict=True)])
    return (patches / 255.0 - 0.5).unsqueeze(1)


def ood_claims(pct_broken: dict[str, dict[str, float]], in_distribution: str,
               pct_failed: dict[str, dict[str, float]] | None = None) -> list[Claim]:
    """Claims from ``pct_broken[model][dataset]`` (% of images with an Inf or NaN round trip):
    the Residual Flow never breaks (Figure 4: "the Residual Flow was always stably invertible");
    the affine Glow breaks on some OOD set (Glow "was non-invertible on all datasets except
    SVHN") while it reconstructs the in-distribution test data. With ``pct_failed`` (% of images
    whose round trip fails: error above :data:`FAIL_ERROR`, Inf or NaN), also: on some OOD set
    more of the affine Glow's round trips fail than of the Residual Flow's."""
    glow, res = pct_broken["affine"], pct_broken["resflow"]
    ood = [k for k in glow if k != in_distribution]
    worst = max(ood, key=lambda k: glow[k]) if ood else None
    most = f"most: {worst}" if ood and glow[worst] > 0 else "none broke"
    extra = []
    if pct_failed is not None and ood:
        gap = {k: pct_failed["affine"][k] - pct_failed["resflow"][k] for k in ood}
        most = max(ood, key=lambda k: gap[k])
        extra.append(claim_less_than(
            f"on some OOD set more affine Glow round trips fail (error > {FAIL_ERROR:g}, Inf or "
            f"NaN) than Residual Flow ones (largest gap: {most}, % failed)",
            pct_failed["resflow"][most], pct_failed["affine"][most]))
    return extra + [
        claim_at_least("the Residual Flow reconstructs every dataset (0 % Inf or NaN)",
                       0.0, max(res.values())),
        claim_at_least(f"the affine Glow breaks (Inf or NaN) on some OOD set ({most})",
                       glow[worst], 1e-12) if ood else Claim("affine breaks on OOD", None,
                                                            "no OOD set"),
        claim_at_least("the affine Glow reconstructs the in-distribution test data",
                       0.0, glow[in_distribution]),
    ]


def trained_on(shape: tuple[int, ...]) -> str:
    """The training data of the flows in words, from their input shape."""
    if tuple(shape) == (1, 8, 8):
        return "8x8 digits"
    return "images of shape " + " x ".join(str(int(d)) for d in shape) + " (full-scale presets)"


def _plot(rows: list[dict], settings: Settings) -> list[str]:
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = pyplot().subplots(1, 2, figsize=(12, 4))
    width = 0.4
    for i, model in enumerate(MODELS):
        mine = {r["dataset"]: r for r in rows if r["model"] == model}
        pos = np.arange(len(datasets)) + (i - 0.5) * width
        axes[0].bar(pos, [mine[d]["pct_inf"] + mine[d]["pct_nan"] + mine[d]["pct_over_1e-3"]
                          for d in datasets], width, label=model)
        errors = [mine[d]["mean_error"] for d in datasets]
        axes[1].bar(pos, [math.nan if e is None else e for e in errors], width, label=model)
    axes[0].set_ylim(0, 100)
    for ax, title in zip(axes, (f"% of round trips failed (error > {FAIL_ERROR:g}, Inf or NaN)",
                                "mean error over finite round trips (float32)"), strict=True):
        ax.set_xticks(np.arange(len(datasets)), datasets, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    return save_figure(fig, settings, "ood")


def run(settings: Settings) -> ExperimentResult:
    """Train (or reuse) the two flows and measure their round trips on every dataset."""
    n = settings.pick(16, 1000, 10000)
    gen = torch.Generator().manual_seed(settings.seed)
    flows = {name: digits_flow(name, settings) for name in MODELS}
    shape = flows["affine"].task.input_shape
    in_name = "digits (test)"
    centred = noise_datasets(n, shape, gen)  # the same draws for every model, in [-1/2, 1/2]
    if shape[0] == 1 and len(shape) == 3:
        for name, image in shipped_images().items():
            centred[name] = image_patches(image, n, shape[-1], 8, gen)
    rows, broken, failed = [], {m: {} for m in MODELS}, {m: {} for m in MODELS}
    for model_name, flow in flows.items():
        datasets = {in_name: flow.task.eval_data()[1].to(torch.float64)}
        datasets.update(in_model_range(centred, flow.offset))
        for data_name, x in datasets.items():
            device = next(flow.model.parameters()).device
            errors = reconstruction_stats(flow.model, x.to(device), "float32").errors.cpu()
            s = error_summary(errors)
            over = 100.0 * float((torch.isfinite(errors) & (errors > FAIL_ERROR)).sum()) / s["n"]
            rows.append({"model": model_name, "dataset": data_name, "n": s["n"],
                         "pct_inf": s["pct_inf"], "pct_nan": s["pct_nan"],
                         "pct_over_1e-3": over, "mean_error": s["mean"], "max_error": s["max"]})
            broken[model_name][data_name] = s["pct_inf"] + s["pct_nan"]
            failed[model_name][data_name] = broken[model_name][data_name] + over
    notes = [f"{f.name}: {f.description}, test {f.test_bpd:.3f} bpd"
             + (" (cached)" if f.cached else "") for f in flows.values()]
    return ExperimentResult(
        name="figure4_ood", title="Figure 4, Table 5 (appendix D): OOD reconstructions",
        scale=settings.scale,
        scale_note=f"flows trained on {trained_on(shape)}; {n} images per OOD set",
        paper=PAPER,
        ours={f"{r['model']}|{r['dataset']}|{k}": r[k] for r in rows
              for k in ("pct_inf", "pct_nan", "mean_error")},
        claims=ood_claims(broken, in_name, failed), rows=rows, files=_plot(rows, settings),
        notes=notes + ["The paper's models are pre-trained CIFAR-10 Glow and Residual Flow; "
                       f"ours are trained here on {trained_on(shape)}, and the OOD sets are "
                       "noise and images shipped inside scikit-learn and matplotlib."])
