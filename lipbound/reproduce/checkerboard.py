r"""Figures 2, 3 and 8 (section 4.1.1, appendix C): three flows trained on the 2D checkerboard,
and where their round trips fail outside the data.

The models (the ``checkerboard`` preset of :mod:`lipbound.training.presets`, with overrides):
affine couplings with the standard sigmoid scale ``sigmoid(h + 2)`` in ``(0, 1)``; the modified
affine scale ``0.5 sigmoid(h + 2) + 0.5`` in ``(0.5, 1)``; a Residual Flow with spectral
normalisation ``c = 0.8``. At ``full`` scale the 100-block presets ``checkerboard-affine``,
``checkerboard-modified-affine`` and ``checkerboard-resflow`` are used where they exist, else the
paper's Table 4 written out (100 blocks, width 128, Adam 1e-3, weight decay 1e-5, batch 500).

Over an ``n x n`` grid of ``[-8, 8]^2`` (twice the data range) each model gets three maps
(:func:`lipbound.diagnostics.grid_maps` and the density): the float32 round-trip error
``||x - F^-1(F(x))||_2``, the learned density ``p(x) = N(F(x); 0, I) |det J_F(x)|`` in float32
(Figure 8: the affine model's density turns NaN outside the data), and the condition number of
``J_F`` in float64; the data box ``[-4, 4]^2`` is drawn on each. The numbers behind the claim:
the fraction of grid points outside ``[-4, 4]^2`` whose round trip fails -- error above
``1e-3`` (finite), Inf, NaN, counted apart -- per model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..diagnostics import checkerboard, grid_maps
from ..diagnostics.figures import pyplot
from ..diagnostics.maps import _draw
from ..diagnostics.views import at_precision
from ..training.losses import standard_normal_log_prob
from ..training.presets import load_config
from .common import Claim, ExperimentResult, Settings, claim_less_than, save_figure
from .trained import preset_config, trained_model

__all__ = ["FAIL_ERROR", "MODELS", "condition_summary", "failure_fractions",
           "instability_claims", "model_config", "run"]

#: A round trip with a finite error above this fails (the paper's figures' threshold).
FAIL_ERROR = 1e-3
#: The half-width of the data box and of the grid.
DATA_LIM, GRID_LIM = 4.0, 8.0
#: Model name -> (full-size preset name, overrides of the ``checkerboard`` preset).
MODELS: dict[str, tuple[str, dict]] = {
    "affine": ("checkerboard-affine", {"scale": "sigmoid"}),
    "modified-affine": ("checkerboard-modified-affine", {"scale": "modified"}),
    "resflow": ("checkerboard-resflow", {"arch": "residual"}),
}
#: The paper's Table 4 where no full-size preset exists.
PAPER_SETTINGS = {"blocks": 100, "hidden": 128, "steps": 20000, "batch_size": 500, "lr": 1e-3,
                  "weight_decay": 1e-5, "actnorm": False}


def model_config(name: str, settings: Settings):
    """The training config of model ``name`` at the scale of ``settings``."""
    preset, overrides = MODELS[name]
    iterative = overrides.get("arch") == "residual"
    sizes = settings.pick(
        {"blocks": 2, "hidden": 16, "steps": 3, "n_train": 500},
        {"blocks": 4, "hidden": 64, "steps": 500} if iterative
        else {"blocks": 16, "hidden": 64, "steps": 1500},
        PAPER_SETTINGS)
    common = {"monitor_every": 0, "eval_every": 0, "checkpoint_every": 0, "monitor_samples": 0,
              "monitor_batch": 16}
    if settings.scale == "full":
        return preset_config(preset, "checkerboard", {**overrides, **sizes, **common},
                             settings.seed)
    return load_config("checkerboard", {**overrides, **sizes, **common, "seed": settings.seed})


@torch.no_grad()
def density_map(model, xs: Tensor, chunk: int = 4096) -> Tensor:
    """``p(x) = N(F(x); 0, I) |det J_F(x)|`` on the grid ``xs x xs`` (indexed ``[iy, ix]``),
    evaluated in float32 as the model was trained; NaN and Inf kept."""
    run = at_precision(model, "float32")
    gy, gx = torch.meshgrid(xs, xs, indexing="ij")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1).to(torch.float32)
    out = []
    for s in range(0, points.shape[0], chunk):
        z, log_det = run.forward_and_log_det(points[s:s + chunk])
        out.append(torch.exp(standard_normal_log_prob(z) + log_det).to(torch.float64))
    return torch.cat(out).reshape(len(xs), len(xs))


def outside_mask(xs: Tensor, lim: float = DATA_LIM) -> Tensor:
    """Grid points ``[iy, ix]`` outside ``[-lim, lim]^2``."""
    gy, gx = torch.meshgrid(xs, xs, indexing="ij")
    return (gx.abs() > lim) | (gy.abs() > lim)


def failure_fractions(errors: Tensor, threshold: float = FAIL_ERROR) -> dict[str, float]:
    """Of ``errors``: the fractions above ``threshold`` (finite), Inf and NaN, and their sum
    ``failed``; the largest finite error ``max_finite`` and the ``worst`` error, ``inf`` when
    any round trip gave Inf or NaN (a broken round trip, as :func:`.attack.worst_error`)."""
    n = errors.numel()
    finite = torch.isfinite(errors)
    over = float((finite & (errors > threshold)).sum()) / n
    inf, nan = float(torch.isinf(errors).sum()) / n, float(torch.isnan(errors).sum()) / n
    largest = float(errors[finite].max()) if bool(finite.any()) else math.nan
    return {"over": over, "inf": inf, "nan": nan, "failed": over + inf + nan,
            "max_finite": largest, "worst": math.inf if inf + nan > 0 else largest}


def condition_summary(condition: Tensor) -> dict[str, float | int]:
    """The largest finite condition number of a map (NaN when none is finite) and how many
    entries are not finite (Inf or NaN: a singular or non-finite Jacobian)."""
    finite = torch.isfinite(condition)
    largest = float(condition[finite].max()) if bool(finite.any()) else math.nan
    return {"max_finite": largest, "nonfinite": int((~finite).sum())}


def instability_claims(failed: dict[str, float], worst: dict[str, float]) -> list[Claim]:
    """The paper's claims from the fractions of failing grid points outside the data
    (``failed``) and the worst errors outside (``worst``: ``inf`` for a model with an Inf or
    NaN round trip there), keyed by model. When both affine models have Inf/NaN round trips
    their worst errors do not compare (the last claim is undecided)."""
    a, m, r = "affine", "modified-affine", "resflow"
    larger = "the affine model's largest error outside the data exceeds the modified affine model's"
    if math.isinf(worst[a]) and math.isinf(worst[m]):
        last = Claim(larger, None, "both have Inf/NaN round trips outside the data (undecided)")
    else:
        last = claim_less_than(larger, worst[m], worst[a])
    return [
        claim_less_than("affine fails outside the data more often than modified affine",
                        failed[m], failed[a]),
        claim_less_than("affine fails outside the data more often than the Residual Flow",
                        failed[r], failed[a]),
        claim_less_than("the Residual Flow reconstructs outside the data (largest finite "
                        f"error < {FAIL_ERROR:g}, no Inf or NaN)",
                        worst[r] if failed[r] == 0 else math.inf, FAIL_ERROR),
        last,
    ]


def _plot(maps: dict, xs: Tensor, settings: Settings) -> list[str]:
    plt = pyplot()
    names = list(maps)
    fig, axes = plt.subplots(len(names), 3, figsize=(15.6, 4.4 * len(names)), squeeze=False)
    extent = [float(xs[0]), float(xs[-1]), float(xs[0]), float(xs[-1])]
    for row, name in zip(axes, names, strict=True):
        for ax, (title, values) in zip(row, maps[name].items(), strict=True):
            _draw(ax, values, extent, f"{name}: {title}", fig)
            ax.add_patch(plt.Rectangle((-DATA_LIM, -DATA_LIM), 2 * DATA_LIM, 2 * DATA_LIM,
                                       fill=False, edgecolor="lime", linewidth=1.5))
    fig.tight_layout()
    return save_figure(fig, settings, "checkerboard_maps")


def _plot_samples(settings: Settings) -> list[str]:
    data = checkerboard(2000, torch.Generator().manual_seed(settings.seed))
    fig, ax = pyplot().subplots(figsize=(4, 4))
    ax.scatter(data[:, 0], data[:, 1], s=1)
    ax.set_xlim(-GRID_LIM, GRID_LIM)
    ax.set_ylim(-GRID_LIM, GRID_LIM)
    ax.set_title("checkerboard samples (Figure 3)")
    return save_figure(fig, settings, "checkerboard_samples")


def run(settings: Settings) -> ExperimentResult:
    """Train the three models (or reuse them from ``out/models``), map them, count failures."""
    n = settings.pick(24, 320, 320)
    maps, rows, failed, worst, notes = {}, [], {}, {}, []
    for name in MODELS:
        config = model_config(name, settings)
        model, cached = trained_model(config, settings.out / "models" / name, settings.device,
                                      settings.progress)
        if cached:
            notes.append(f"{name}: the model cached in models/{name} was reused")
        grid = grid_maps(model.cpu(), n=n, lim=GRID_LIM, precision="float32",
                         progress=settings.progress)
        density = density_map(model.cpu(), grid.xs)
        maps[name] = {"reconstruction error (float32)": grid.error,
                      "learned density (float32)": density,
                      "condition number of J_F (float64)": grid.condition}
        outside = outside_mask(grid.xs)
        frac = failure_fractions(grid.error[outside])
        failed[name], worst[name] = frac["failed"], frac["worst"]
        condition = condition_summary(grid.condition)
        dens_out = density[outside]
        rows.append({
            "model": name, "blocks": config.levels * config.blocks, "steps": config.steps,
            "outside_failed": frac["failed"], "outside_over_1e-3": frac["over"],
            "outside_inf": frac["inf"], "outside_nan": frac["nan"],
            "outside_max_error": frac["max_finite"],
            "inside_max_error": failure_fractions(grid.error[~outside])["max_finite"],
            "density_nan_outside": float(torch.isnan(dens_out).float().mean()),
            "max_condition": condition["max_finite"],
            "nonfinite_condition": condition["nonfinite"],
        })
    files = _plot(maps, grid.xs, settings)
    files += _plot_samples(settings)
    return ExperimentResult(
        name="figure2_checkerboard", title="Figures 2, 3, 8 (appendix C): 2D checkerboard",
        scale=settings.scale,
        scale_note=(f"{n} x {n} grid over [-8, 8]^2; " + ", ".join(
            f"{r['model']} {r['blocks']} blocks x {r['steps']} steps" for r in rows)),
        paper={"affine": "Inf/NaN outside the data", "modified-affine":
               "more stable, still exploding inverses in OOD areas",
               "resflow": "low reconstruction error globally"},
        ours={f"{r['model']}_outside_failed": r["outside_failed"] for r in rows}
        | {f"{r['model']}_outside_max_error": r["outside_max_error"] for r in rows},
        claims=instability_claims(failed, worst), rows=rows, files=files,
        notes=notes + ["The paper's models have 100 blocks of 4 x 128 swish units (Table 4); "
                       "the cpu scale trains far smaller ones (scale_note)."])
