r"""Figure 18 and the introduction figure (section 1, appendix G): the angle between true and
memory-saving gradients over training, for additive and affine INN classifiers with 1x1
convolutions, unregularized and with the FD (eq. 6) or NF (eq. 7) regularizer.

As in the paper (footnote 3 of section 4.2), the FD models train with memory-saving gradients
and the unregularized and NF ones with ordinary backprop; every ``every`` steps the network and
head are saved. Afterwards each checkpoint is loaded and
:func:`~lipbound.training.gradient_agreement` takes, on a fixed set of training mini-batches,
the true gradient and the raw memory-saving gradient (no fallback) of the task loss and the
angle between them. Per checkpoint the mean angle over the batches is reported; it
is NaN when any batch's gradient was not finite (as the paper's curve becomes NaN), and such
checkpoints are marked in the figure and kept in the table, never dropped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..training import gradient_agreement
from ..training.tasks import eval_mode
from .common import (
    Claim,
    ExperimentResult,
    Settings,
    claim_at_least,
    claim_less_than,
    format_value,
    save_figure,
)
from .runs import memory_efficient, pick_preset, run_overrides, train_run

__all__ = ["MODELS", "SMALL_ANGLE_DEG", "claims", "curve_summary", "run"]

#: Run name -> (coupling, regularizer).
MODELS: dict[str, tuple[str, str]] = {f"{c} {r}": (c, r) for c in ("additive", "affine")
                                      for r in ("none", "fd", "nf")}

#: An angle below this many degrees counts as "small" (memory-saving gradient usable).
SMALL_ANGLE_DEG = 1.0

#: What the paper shows (Figure 18, introduction figure); it gives no numbers.
PAPER = {
    "additive none": {"behaviour": "small throughout (introduction figure)"},
    "affine none": {"behaviour": "grows rapidly at the start, then NaN (Figure 18)"},
    "affine fd": {"behaviour": "small throughout (Figure 18)"},
    "affine nf": {"behaviour": "small throughout (Figure 18)"},
}


def curve_summary(steps: list[int], angles: list[float]) -> dict[str, Any]:
    """One run's curve of mean angles (NaN where a gradient was not finite) in numbers: the
    first angle, the largest finite one, the last one, how many checkpoints were NaN and the
    first NaN step, ``worst`` (the largest angle, ``inf`` once any is NaN) and the behaviour in
    words."""
    finite = [a for a in angles if math.isfinite(a)]
    nan_steps = [s for s, a in zip(steps, angles) if math.isnan(a)]
    worst = math.inf if nan_steps else max(finite, default=math.nan)
    if nan_steps:
        behaviour = f"NaN from step {nan_steps[0]}"
    elif finite and max(finite) < SMALL_ANGLE_DEG:
        behaviour = f"small throughout (max {format_value(max(finite))} deg)"
    else:
        behaviour = (f"from {format_value(angles[0])} to {format_value(angles[-1])} deg "
                     f"(max {format_value(worst)})") if angles else "no checkpoints"
    return {"first_angle_deg": angles[0] if angles else math.nan,
            "max_finite_angle_deg": max(finite, default=math.nan),
            "final_angle_deg": angles[-1] if angles else math.nan,
            "nan_checkpoints": len(nan_steps),
            "first_nan_step": nan_steps[0] if nan_steps else None,
            "worst_angle_deg": worst, "behaviour": behaviour}


def claims(ours: dict[str, dict[str, Any]]) -> list[Claim]:
    """Figure 18's claims from the curves' summaries (:func:`curve_summary`): the unregularized
    affine angle grows (at least 10x from its first checkpoint) or turns NaN; FD and NF keep
    the affine angle below :data:`SMALL_ANGLE_DEG`; the unregularized affine angle ends at
    least 10x above the regularized ones'; the unregularized additive angle stays small."""
    none = ours["affine none"]
    regularized = max((float(ours[k]["worst_angle_deg"]) for k in ("affine fd", "affine nf")),
                      key=lambda v: math.inf if math.isnan(v) else v)
    small = f"below {SMALL_ANGLE_DEG:g} degree"
    return [
        claim_at_least("The unregularized affine model's angle grows during training or turns "
                       "NaN (worst >= 10x the first checkpoint's)",
                       float(none["worst_angle_deg"]), float(none["first_angle_deg"]), 10.0),
        claim_less_than(f"FD and NF keep the affine model's angle small ({small})",
                        regularized, SMALL_ANGLE_DEG),
        claim_at_least("The unregularized affine angle is far above the regularized ones' "
                       "(worst angles, 10x)", float(none["worst_angle_deg"]), regularized, 10.0),
        claim_less_than(f"The unregularized additive model's angle stays small ({small})",
                        float(ours["additive none"]["worst_angle_deg"]), SMALL_ANGLE_DEG),
    ]


def _figure(curves: dict[str, tuple[list[int], list[float]]], settings: Settings) -> list[str]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    finite_all = [a for _, angles in curves.values() for a in angles if math.isfinite(a)]
    top = max(finite_all, default=1.0) * 3 if finite_all else 1.0
    for ax, coupling in zip(axes, ("additive", "affine")):
        for name, (steps, angles) in curves.items():
            if not name.startswith(coupling):
                continue
            line, = ax.plot(steps, [a if math.isfinite(a) else math.nan for a in angles],
                            marker="o", ms=3, label=name.split()[1])
            nan_steps = [s for s, a in zip(steps, angles) if math.isnan(a)]
            if nan_steps:
                ax.plot(nan_steps, [top] * len(nan_steps), "x", color=line.get_color(),
                        label=f"{name.split()[1]}: NaN")
                ax.axvline(nan_steps[0], color=line.get_color(), ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_title(f"{coupling} coupling, 1x1 conv")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("angle true vs memory-saving (deg)")
    fig.suptitle("Angle between true and memory-saving gradients (Figure 18); x: NaN")
    return save_figure(fig, settings, "figure18_gradient_angles")


def run(settings: Settings) -> ExperimentResult:
    """Train the six classifiers with checkpoints and measure the angles (module docstring)."""
    preset = pick_preset(settings, "digits-classifier", ["cifar10-classifier*"])
    steps = settings.pick(4, 600, None)
    every = settings.pick(2, 50, 2000)
    n_batches = settings.pick(2, 10, 40)
    common = {**run_overrides(settings, steps), "mixing": "1x1conv"}
    coeffs = {"none": (0.0, 1), "fd": (1e-4, 10),
              "nf": settings.pick((1e-3, 1), (1e-3, 1), (1e-5, 1))}
    curves: dict[str, tuple[list[int], list[float]]] = {}
    ours: dict[str, dict[str, Any]] = {}
    rows = []
    for name, (coupling, reg) in MODELS.items():
        folder = settings.out / "runs" / name.replace(" ", "_")
        saved: list[tuple[int, Path]] = []

        def keep(trainer: Any, step: int, record: dict[str, Any], saved=saved) -> None:
            if step % every == 0:
                path = trainer.out / "checkpoints" / f"step_{step:07d}.pt"
                path.parent.mkdir(exist_ok=True)
                torch.save({"flow": trainer.flow.state_dict(),
                            "head": trainer.head.state_dict()}, path)
                saved.append((step, path))

        overrides = {**common, "coupling": coupling, "regularizer": reg,
                     "coeff": coeffs[reg][0], "every": coeffs[reg][1],
                     "memory_saving": memory_efficient(reg)}
        trainer, result = train_run(preset, overrides, folder, settings, callbacks=(keep,))
        task, flow, head = trainer.task, trainer.flow, trainer.head
        bs = min(trainer.config.batch_size, task.n_train // n_batches)
        gen = torch.Generator(device=trainer.device).manual_seed(settings.seed + 5)
        batches = [task.batch(torch.arange(i * bs, (i + 1) * bs), gen) for i in range(n_batches)]

        def loss_fn(net: Any, batch: Any, task=task, head=head) -> torch.Tensor:
            with eval_mode(head):
                return task.loss(net, head, *batch)[0]

        steps_done, angles = [], []
        for step, path in saved:
            state = torch.load(path, map_location=trainer.device)
            flow.load_state_dict(state["flow"])
            head.load_state_dict(state["head"])
            agreement = gradient_agreement(flow, loss_fn, batches)
            finite = [a for a in agreement.angles_deg if math.isfinite(a)]
            nan_batches = len(agreement.angles_deg) - len(finite)
            mean = math.nan if nan_batches or not finite else sum(finite) / len(finite)
            steps_done.append(step)
            angles.append(mean)
            rows.append({"model": name, "step": step, "mean_angle_deg": mean,
                         "max_angle_deg": max(finite, default=math.nan),
                         "nan_batches": nan_batches, "batches": len(agreement.angles_deg),
                         "check_failures": sum(agreement.check_failed)})
        curves[name] = (steps_done, angles)
        ours[name] = {**curve_summary(steps_done, angles), "fallbacks": result.fallbacks,
                      "status": result.status}
    return ExperimentResult(
        name="figure18_gradient_angles",
        title="Figure 18 and the introduction figure (appendix G)", scale=settings.scale,
        scale_note=(f"preset {preset}, 1x1 conv, {steps or 'preset'} steps, a checkpoint every "
                    f"{every} steps, {n_batches} mini-batches per checkpoint"),
        paper=PAPER, ours=ours, claims=claims(ours), rows=rows,
        files=_figure(curves, settings),
        notes=[f"FD coefficient {coeffs['fd'][0]:g} every {coeffs['fd'][1]} steps, NF "
               f"{coeffs['nf'][0]:g} every step; FD runs train with memory-saving gradients, "
               "unregularized and NF ones with ordinary backprop (paper, footnote 3).",
               "A checkpoint's angle is the mean over the mini-batches, NaN when any batch's "
               "gradient held NaN or Inf (nan_batches counts them)."])
