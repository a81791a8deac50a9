r"""Figures 11 and 12 (appendix E): the invertibility attack inside the dequantization cells.

Three flows trained here (:mod:`.digits_flows`; 8x8 digits at CPU scale, the CelebA64 presets at
``full`` where they exist): affine couplings with the standard scale, with the modified scale in
``(0.5, 1)``, and a Residual Flow. For training images ``x`` the attack
(:func:`lipbound.diagnostics.invertibility_attack`, eqs. 11-12) searches the dequantization cell
``||x' - x_hat||_inf <= 0.5 / levels`` around the cell centre ``x_hat`` -- every ``x'`` is a valid
sample of the training distribution -- by signed-gradient ascent on
``||x' - F^-1(F(x'))||_2`` (step ``5e-4``, 200 iterations as in the paper), in float32.

The Residual Flow's inverse is a fixed-point iteration. As in the paper (Figure 12), the attack
sees an inverse of at most 5 iterations, and the points it finds are then reconstructed with 5
iterations and with a converged iteration (the block's default tolerance ``4 eps``, up to 200
iterations): an error that drops when the iteration converges is truncation, not instability.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from ..blocks.residual import InvertibleResidual
from ..diagnostics import invertibility_attack, reconstruction_stats
from ..diagnostics.figures import pyplot
from .common import Claim, ExperimentResult, Settings, claim_at_least, claim_less_than, save_figure
from .digits_flows import DIGITS_MODELS, dequantization_centres, digits_flow

__all__ = ["TRUNCATED_ITERATIONS", "attack_claims", "run", "truncated", "worst_error"]

#: Fixed-point iterations of the Residual Flow's inverse under attack (appendix E).
TRUNCATED_ITERATIONS = 5
#: ">>" in the claims: at least this factor.
MUCH_LARGER = 100.0


def truncated(model, iterations: int = TRUNCATED_ITERATIONS):
    """A copy of ``model`` whose i-ResNet inverses stop after at most ``iterations``."""
    out = copy.deepcopy(model)
    for block in out.modules():
        if isinstance(block, InvertibleResidual):
            block.max_iter = int(iterations)
    return out


def worst_error(errors: Tensor) -> float:
    """The largest error, ``inf`` when any is NaN or Inf (a broken round trip)."""
    if not bool(torch.isfinite(errors).all()):
        return math.inf
    return float(errors.max())


def attack_claims(worst: dict[str, float], resflow_truncated: float,
                  resflow_converged: float) -> list[Claim]:
    """The paper's claims (appendix E, Figure 11: both affine models' reconstructions explode
    to NaN while the Residual Flow stays stable) from the worst attacked errors per model
    (``worst``, ``inf`` for Inf/NaN; the Residual Flow's at converged iterations) and the
    Residual Flow's worst error at the attacked points with 5 and with converged iterations."""
    claims = []
    stable = worst["resflow"]
    for name, label in (("affine", "affine"), ("modified-affine", "modified affine")):
        statement = (f"{label}'s attacked error >> the Residual Flow's converged one (at least "
                     f"{MUCH_LARGER:g}x; Inf/NaN count as infinite)")
        if math.isinf(stable):
            claims.append(Claim(statement, False, "the Residual Flow's round trip broke "
                                "(Inf/NaN)"))
        else:
            claims.append(claim_at_least(statement, worst[name], stable, MUCH_LARGER))
    claims.append(claim_less_than(
        f"the Residual Flow's error at {TRUNCATED_ITERATIONS} iterations is truncation: it drops "
        "at least 10x when the iteration converges", resflow_converged, resflow_truncated, 0.1))
    return claims


def _plot_images(panels: list[tuple[str, Tensor]], settings: Settings) -> list[str]:
    fig, axes = pyplot().subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6))
    for ax, (title, image) in zip(axes, panels, strict=True):
        img = image.detach().to(torch.float64).cpu()
        img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
        ax.imshow(torch.nan_to_num(img, nan=0.0).clamp(-0.5, 1.0).numpy(), cmap="gray")
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    return save_figure(fig, settings, "attack_images")


def run(settings: Settings) -> ExperimentResult:
    """Train (or reuse) the three flows and attack each inside the dequantization cells."""
    n = settings.pick(4, 32, 64)
    iterations = settings.pick(5, 200, 200)
    rows, worst, panels, notes = [], {}, [], []
    resflow_errors: dict[str, float] = {}
    for name in DIGITS_MODELS:
        flow = digits_flow(name, settings)
        notes.append(f"{name}: {flow.description}, test {flow.test_bpd:.3f} bpd"
                     + (" (cached)" if flow.cached else ""))
        model = flow.model  # on settings.device, like the task's data
        noise = torch.Generator(device=flow.task.device).manual_seed(settings.seed + 11)
        x = flow.task.batch(torch.arange(n), noise)[0]
        centres = dequantization_centres(x, flow.levels, flow.offset)
        attacked_model = truncated(model) if name == "resflow" else model
        result = invertibility_attack(attacked_model, centres, radius=0.5 / flow.levels,
                                      step=5e-4, iterations=iterations, precision="float32",
                                      seed=settings.seed)
        versions = {name: model} if name != "resflow" else {
            f"resflow ({TRUNCATED_ITERATIONS} iterations)": attacked_model,
            "resflow (converged)": model}
        for label, m in versions.items():
            stats = reconstruction_stats(m, result.x_worst, "float32")
            start = reconstruction_stats(m, result.start, "float32")
            s = stats.summary()
            rows.append({"model": label, "images": n, "start_max_error": worst_error(
                start.errors), "attacked_max_error": worst_error(stats.errors),
                "attacked_mean_error": s["mean"], "pct_inf": s["pct_inf"],
                "pct_nan": s["pct_nan"],
                "failed": sum(f is not None for f in stats.failures)})
            if name == "resflow":
                resflow_errors[label] = worst_error(stats.errors)
        worst[name] = rows[-1]["attacked_max_error"]
        i = result.worst_index
        panels.append((f"{name}: x_hat", result.start[i]))
        panels.append((f"{name}: attacked x'", result.x_worst[i]))
        for label, m in versions.items():
            with torch.no_grad():
                rec = m.inverse(m(result.x_worst[i:i + 1].to(torch.float32)))[0]
            panels.append((f"{label}: F^-1(F(x'))", rec))
    truncated_err = resflow_errors[f"resflow ({TRUNCATED_ITERATIONS} iterations)"]
    converged_err = resflow_errors["resflow (converged)"]
    return ExperimentResult(
        name="figure11_attack",
        title="Figures 11, 12 (appendix E): invertibility attack in the dequantization cells",
        scale=settings.scale,
        scale_note=f"{n} training images, {iterations} PGD steps of 5e-4, float32",
        paper={"affine": "NaN", "modified-affine": "NaN", "resflow (5 iterations)":
               "visible error (truncation)", "resflow (converged)": "reconstructs"},
        ours={r["model"]: r["attacked_max_error"] for r in rows},
        claims=attack_claims(worst, truncated_err, converged_err), rows=rows,
        files=_plot_images(panels, settings),
        notes=notes + ["The paper attacks CelebA64 models (5 bits, radius 0.5/32); the cpu "
                       "scale attacks digits flows (17 levels, radius 0.5/17)."])
