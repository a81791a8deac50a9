r"""Table 1 and Figure 5 (section 4.1.2, appendix D): additive, affine and modified-affine flows
trained by maximum likelihood; bits per dimension, and whether the model's own samples invert.

Each flow is trained on uniformly dequantised data (``digits-flow`` at CPU scale, ``cifar10-glow``
with ``--full``). Then, for ``n`` base samples ``z ~ N(0, I)``, the sample ``x = F^{-1}(z)`` and its
round trip ``z -> x -> z`` are computed at the network's precision
(:func:`~lipbound.diagnostics.reconstruction_stats`): a sample *fails* when the round trip holds
Inf or NaN (counted apart) or its relative error ``||z - F(F^{-1}(z))|| / ||z||`` exceeds
:data:`FAIL_RTOL`. The paper's rows read from these numbers:

* "Reliable sample BPD": every sample ``F^{-1}(z)`` is finite and their bits per dimension
  (eq. 7 on the samples, :func:`~.runs.dataset_bpd`) is finite;
* "No visible sample reconstruction error": no sample fails.

Train BPD is measured on the whole training set with one fresh dequantisation, test BPD on the
test set dequantised once (as the trainer evaluates it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..diagnostics import reconstruction_stats
from ..training.tasks import eval_mode
from .common import Claim, ExperimentResult, Settings, claim_less_than, format_value, save_figure
from .runs import dataset_bpd, pick_preset, run_overrides, train_run

__all__ = ["FAIL_RTOL", "MODELS", "PAPER", "claims", "run"]

#: Relative round-trip error above which a sample counts as not reconstructed.
FAIL_RTOL = 1e-3

#: Table 1's columns: name -> TrainConfig overrides.
MODELS: dict[str, dict[str, Any]] = {
    "additive": {"coupling": "additive"},
    "affine": {"coupling": "affine", "scale": "sigmoid"},
    "modified affine": {"coupling": "affine", "scale": "modified"},
}

#: Table 1 of the paper (CIFAR-10, 100k updates).
PAPER: dict[str, dict[str, Any]] = {
    "additive": {"train_bpd": 3.29, "test_bpd": 3.55, "reliable_sample_bpd": True,
                 "samples_reconstruct": True},
    "affine": {"train_bpd": 3.27, "test_bpd": 3.51, "reliable_sample_bpd": False,
               "samples_reconstruct": False},
    "modified affine": {"train_bpd": 3.25, "test_bpd": 3.50, "reliable_sample_bpd": True,
                        "samples_reconstruct": True},
}


def _fails(fail_pct: float, label: str, expect_fail: bool) -> Claim:
    verb = "do not reconstruct" if expect_fail else "reconstruct"
    statement = f"The {label} flow's samples {verb} (z -> x -> z)"
    evidence = f"{format_value(fail_pct)} % of samples fail"
    if math.isnan(fail_pct):
        return Claim(statement, None, evidence + " (NaN: undecided)")
    return Claim(statement, bool(fail_pct > 0) if expect_fail else bool(fail_pct == 0), evidence)


def claims(ours: dict[str, dict[str, Any]]) -> list[Claim]:
    """Table 1's claims from our numbers: the affine flow's samples fail to reconstruct, the
    additive and modified-affine flows' do, and the three reach similar test BPD (spread below
    5% of the best)."""
    out = [_fails(float(ours[m]["sample_fail_pct"]), m, m == "affine") for m in MODELS]
    bpds = [float(ours[m]["test_bpd"]) for m in MODELS]
    out.append(claim_less_than("The three flows reach similar test BPD (spread < 5% of the best)",
                               max(bpds) - min(bpds), min(bpds), 0.05))
    return out


def _to_rgb(x: np.ndarray) -> np.ndarray:
    """Images ``(N, C, H, W)`` in [-0.5, 0.5] as RGB ``(N, H, W, 3)`` in [0, 1], non-finite
    pixels cyan (Figure 5)."""
    bad = ~np.isfinite(x).all(axis=1)
    img = np.clip(np.nan_to_num(x, nan=0.0, posinf=0.5, neginf=-0.5) + 0.5, 0.0, 1.0)
    img = np.repeat(img, 3, axis=1) if img.shape[1] == 1 else img[:, :3]
    img = img.transpose(0, 2, 3, 1).copy()
    img[bad] = (0.0, 1.0, 1.0)
    return img


def _figure(data: np.ndarray, samples: dict[str, np.ndarray], settings: Settings) -> list[str]:
    import matplotlib.pyplot as plt

    rows = {"data": data, **samples}
    n = data.shape[0]
    fig, axes = plt.subplots(len(rows), 1, figsize=(n * 0.6, len(rows) * 1.1))
    for ax, (label, images) in zip(axes, rows.items()):
        ax.imshow(np.concatenate(list(_to_rgb(images)), axis=1), interpolation="nearest")
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Samples F^-1(z), z ~ N(0, I), non-finite ones first; non-finite pixels in "
                 "cyan (Figure 5)")
    return save_figure(fig, settings, "figure5_samples")


@torch.no_grad()
def _samples(flow: torch.nn.Module, z: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    with eval_mode(flow):
        return torch.cat([flow.inverse(z[s:s + batch_size])
                          for s in range(0, z.shape[0], batch_size)])


def run(settings: Settings) -> ExperimentResult:
    """Train the three flows and measure Table 1's rows (module docstring)."""
    preset = pick_preset(settings, "digits-flow", ["cifar10-glow"])
    common = run_overrides(settings, settings.pick(6, 1000, None))
    n_samples = settings.pick(64, 10000, 10000)
    ours: dict[str, dict[str, Any]] = {}
    rows, samples = [], {}
    for label, overrides in MODELS.items():
        trainer, result = train_run(preset, {**overrides, **common},
                                    settings.out / "runs" / label.replace(" ", "_"), settings)
        flow, task = trainer.flow, trainer.task
        gen = torch.Generator(device=trainer.device).manual_seed(settings.seed + 7)
        train_x, _ = task.batch(torch.arange(task.n_train), gen)
        _, test_x, _ = task.eval_data()
        with torch.no_grad(), eval_mode(flow):
            shape = flow(test_x[:1]).shape[1:]
        z = torch.randn((n_samples, *shape), generator=torch.Generator().manual_seed(
            settings.seed + 8), dtype=torch.float64).to(trainer.device, trainer.dtype)
        stats = reconstruction_stats(flow, z, trainer.config.dtype, "z->x->z")
        x = _samples(flow, z)
        finite = torch.isfinite(x.reshape(n_samples, -1)).all(dim=1)
        sample_bpd = (dataset_bpd(flow, x[finite], task.n_bins) if bool(finite.any())
                      else math.nan)
        summary = stats.summary()
        failed = ~(stats.relative_errors <= FAIL_RTOL)  # NaN and Inf fail as well
        ours[label] = {
            "train_bpd": dataset_bpd(flow, train_x, task.n_bins),
            "test_bpd": dataset_bpd(flow, test_x, task.n_bins),
            "reliable_sample_bpd": bool(finite.all()) and math.isfinite(sample_bpd),
            "samples_reconstruct": not bool(failed.any()),
            "sample_bpd": sample_bpd,
            "sample_nonfinite_pct": 100.0 * float((~finite).double().mean()),
            "sample_fail_pct": 100.0 * float(failed.double().mean()),
            "sample_inf_pct": summary["pct_inf"],
            "sample_nan_pct": summary["pct_nan"],
            "sample_error_mean": math.nan if summary["mean"] is None else summary["mean"],
            "sample_error_max": math.nan if summary["max"] is None else summary["max"],
            "status": result.status,
            "steps": result.step,
        }
        rows.append({"model": label, **ours[label]})
        # Figure 5 shows broken samples: the non-finite ones first, then the others
        order = torch.cat([torch.nonzero(~finite).flatten()[:8], torch.nonzero(finite).flatten()])
        samples[f"{label}\n{int((~finite).sum())} of {n_samples}\nnon-finite"] = (
            x[order[:16].to(x.device)].double().cpu().numpy())
    files = _figure(test_x[:16].double().cpu().numpy(), samples, settings)
    return ExperimentResult(
        name="table1_flows", title="Table 1 and Figure 5 (section 4.1.2, appendix D)",
        scale=settings.scale,
        scale_note=(f"preset {preset}, {rows[0]['steps']} steps, {n_samples} samples"),
        paper=PAPER, ours=ours, claims=claims(ours), rows=rows, files=files,
        notes=[f"A sample fails when its z -> x -> z round trip is Inf or NaN or its relative "
               f"error exceeds {FAIL_RTOL:g}; errors are ||z - F(F^-1(z))|| at the network's "
               f"precision ({trainer.config.dtype}).",
               "Paper: CIFAR-10, 3 levels x 32 blocks, 100k updates; CPU scale: 8x8 digits "
               "(17 grey levels) with the digits-flow preset."])
