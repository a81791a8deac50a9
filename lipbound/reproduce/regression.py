r"""Figures 6 and 13 (section 4.2, appendix F): the 2D toy regression with and without the
normalizing-flow regularizer.

An affine Glow (the ``regression-2d`` preset: ActNorm, reverse permutations, MLP couplings) is
fitted to ``x -> y = (y1, x2)`` with ``var(y1) = 1e-24`` (eqs. 13-14), so the fit squeezes the
plane onto a line and the inverse explodes. Runs: unregularized; NF-regularized with the paper's
coefficient ``1e-8`` and with ``1e-6`` (what the authors' code used); and, at the CPU scale, the
coefficient ``1e-3`` that :mod:`lipbound.training.presets` found necessary for runs this short.

Over training, from the run's ``log.jsonl`` (the :class:`~lipbound.training.StabilityMonitor`'s
``"monitor"`` records and the ``"train"`` records): the MSE, the float32 round-trip error
``||x - F^-1(F(x))||_2`` on the monitor's batch of training inputs (mean over the finite ones;
NaN and Inf counted apart) and the largest condition number of ``J_F`` on its first samples
(float64). The claims compare the last measurement of each regularized run with the
unregularized one: the paper reports a reconstruction error four orders of magnitude smaller and
a condition number six orders smaller with coefficient ``1e-8``; the factors we measure are
reported beside them.
"""

from __future__ import annotations

import math
from typing import Any

from ..diagnostics.figures import pyplot
from ..training.presets import load_config
from .common import Claim, ExperimentResult, Settings, claim_less_than, save_figure
from .trained import log_records, trained_model

__all__ = ["RUNS", "reconstruction_error", "regularizer_claims", "run"]

#: Run name -> (regularizer, coefficient); ``"nf 1e-3"`` only below the full scale.
RUNS: dict[str, tuple[str, float]] = {
    "none": ("none", 0.0),
    "nf 1e-8": ("nf", 1e-8),
    "nf 1e-6": ("nf", 1e-6),
    "nf 1e-3": ("nf", 1e-3),
}
#: Orders of magnitude the paper reports (appendix F), coefficient 1e-8.
PAPER_ERROR_ORDERS, PAPER_CONDITION_ORDERS = 4, 6


def reconstruction_error(summary: dict[str, Any]) -> float:
    """The round-trip error of a monitor summary as one number: Inf when any sample's round trip
    is non-finite (NaN or Inf), else the mean over the samples."""
    if summary["n_nan"] or summary["n_inf"]:
        return math.inf
    return float(summary["mean"])


def _ratio_text(a: float, b: float) -> str:
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0 or b <= 0:
        return f"{a:.3g} vs {b:.3g}"
    return f"{math.log10(b / a):.1f} orders"


def regularizer_claims(label: str, error: float, error_none: float, condition: float,
                       condition_none: float) -> list[Claim]:
    """The paper's two claims for a regularized run ``label`` against the unregularized one:
    reconstruction error ``1e-4`` times and condition number ``1e-6`` times smaller (or less)."""
    claims = [
        claim_less_than(f"{label}: reconstruction error {PAPER_ERROR_ORDERS} orders of magnitude "
                        "smaller than unregularized", error, error_none,
                        10.0 ** -PAPER_ERROR_ORDERS),
        claim_less_than(f"{label}: condition number {PAPER_CONDITION_ORDERS} orders of magnitude "
                        "smaller than unregularized", condition, condition_none,
                        10.0 ** -PAPER_CONDITION_ORDERS),
    ]
    claims[0].evidence += f" (ours: {_ratio_text(error, error_none)})"
    claims[1].evidence += f" (ours: {_ratio_text(condition, condition_none)})"
    return claims


def _config(regularizer: str, coeff: float, settings: Settings):
    sizes = settings.pick(
        {"steps": 10, "n_train": 500, "batch_size": 500, "monitor_every": 10,
         "monitor_samples": 4, "monitor_batch": 64},
        {},
        {"levels": 3, "blocks": 8, "hidden": 128, "lr": 1e-4, "steps": 40000,
         "monitor_every": 1000})
    return load_config("regression-2d", {**sizes, "regularizer": regularizer, "coeff": coeff,
                                         "eval_every": 0, "checkpoint_every": 0,
                                         "seed": settings.seed})


def _history(folder) -> dict[str, list]:
    monitors = log_records(folder, "monitor")
    train = log_records(folder, "train")
    return {
        "train_step": [r["step"] for r in train], "mse": [r["mse"] for r in train],
        "step": [r["step"] for r in monitors],
        "error": [r["reconstruction"]["x->z->x"]["mean"] for r in monitors],
        "nonfinite": [r["reconstruction"]["x->z->x"]["n_nan"]
                      + r["reconstruction"]["x->z->x"]["n_inf"] for r in monitors],
        "condition": [r.get("condition", math.nan) for r in monitors],
        "last": monitors[-1],
    }


def _plot(histories: dict[str, dict], settings: Settings) -> list[str]:
    fig, axes = pyplot().subplots(1, 3, figsize=(15, 4))
    for name, h in histories.items():
        axes[0].plot(h["train_step"], h["mse"], label=name)
        err = [math.nan if e is None else e for e in h["error"]]
        axes[1].plot(h["step"], err, marker=".", label=name)
        broken = [s for s, n in zip(h["step"], h["nonfinite"], strict=True) if n]
        axes[1].plot(broken, [1.0] * len(broken), "x", color="red")
        axes[2].plot(h["step"], h["condition"], marker=".", label=name)
    for ax, title in zip(axes, ("training MSE", "reconstruction error x -> z -> x (float32, "
                                "mean; x: NaN/Inf)", "condition number of J_F (float64)"),
                         strict=True):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    return save_figure(fig, settings, "regression_training")


def run(settings: Settings) -> ExperimentResult:
    """Train the runs (or reuse them from ``out/models``) and compare their last measurements."""
    runs = {k: v for k, v in RUNS.items() if not (settings.scale == "full" and k == "nf 1e-3")}
    histories, rows, notes = {}, [], []
    for name, (regularizer, coeff) in runs.items():
        folder = settings.out / "models" / name.replace(" ", "_")
        config = _config(regularizer, coeff, settings)
        _, cached = trained_model(config, folder, settings.device, settings.progress)
        if cached:
            notes.append(f"{name}: the run cached in {folder.name} was reused")
        h = histories[name] = _history(folder)
        recon = h["last"]["reconstruction"]["x->z->x"]
        rows.append({"run": name, "steps": config.steps, "mse": h["mse"][-1],
                     "error_mean": recon["mean"], "error_max": recon["max"],
                     "pct_nan": recon["pct_nan"], "pct_inf": recon["pct_inf"],
                     "error": reconstruction_error(recon),
                     "condition": h["last"].get("condition", math.nan)})
    by = {r["run"]: r for r in rows}
    claims = []
    for name in runs:
        if name != "none":
            claims += regularizer_claims(name, by[name]["error"], by["none"]["error"],
                                         by[name]["condition"], by["none"]["condition"])
    config = _config("none", 0.0, settings)
    return ExperimentResult(
        name="figure6_regression",
        title="Figures 6, 13 (appendix F): 2D toy regression, NF regularizer",
        scale=settings.scale,
        scale_note=(f"affine Glow {config.levels} x {config.blocks} blocks, width "
                    f"{config.hidden}, {config.steps} full-batch steps, lr {config.lr:g}"),
        paper={"error_orders_smaller": PAPER_ERROR_ORDERS,
               "condition_orders_smaller": PAPER_CONDITION_ORDERS},
        ours={f"{r['run']}_{k}": r[k] for r in rows for k in ("mse", "error", "condition")},
        claims=claims, rows=rows, files=_plot(histories, settings),
        notes=notes + ["error: mean float32 round-trip error on the monitor's batch of "
                       "training inputs, Inf when any is non-finite; condition: the largest "
                       "over the monitor's samples; both at the last measurement."])
