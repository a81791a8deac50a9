"""Training runs shared by the reproductions that train networks (Tables 1, 2, 9, 10, Figure 18):
the preset for a scale, one run in its own folder, figures measured on a trained network.

CPU scale trains the digits presets of :mod:`lipbound.training.presets` with overrides; ``--full``
uses the CIFAR-10 presets when this lipbound has them (an :class:`InputError` says so when not).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from ..training import StabilityMonitor, StabilityWarning, nf_loss
from ..training.presets import PRESETS, load_config
from ..training.tasks import eval_mode
from ..training.trainers import Callback, TrainConfig, Trainer, TrainResult
from .common import Settings

__all__ = ["SMOKE", "dataset_bpd", "memory_efficient", "pick_preset", "run_overrides",
           "stability_figures", "train_run"]

#: TrainConfig overrides of every run at smoke scale: a tiny network, no monitoring during
#: training, a checkpoint only at the end.
SMOKE: dict[str, Any] = {"levels": 1, "blocks": 2, "hidden": 8, "monitor_every": 0,
                         "monitor_samples": 0, "checkpoint_every": 0}


def memory_efficient(regularizer: str) -> bool:
    """Whether the paper trained a classifier with ``regularizer`` memory-efficiently (footnote
    3 of section 4.2: the FD runs were, the None and NF runs used standard backprop)."""
    return regularizer == "fd"


def pick_preset(settings: Settings, cpu: str, full: Sequence[str]) -> str:
    """The preset of this scale: ``cpu`` at smoke and CPU scale; at full scale the first of the
    names ``full`` that :data:`PRESETS` holds (a name ending in ``*`` matches by prefix)."""
    if settings.scale != "full":
        return cpu
    for name in full:
        found = sorted(p for p in PRESETS if (p.startswith(name[:-1]) if name.endswith("*")
                                              else p == name))
        if found:
            return found[0]
    raise InputError(f"--full needs the CIFAR-10 preset {' or '.join(map(repr, full))}, which "
                     f"this lipbound lacks (presets: {', '.join(PRESETS)}); run without --full "
                     "for the CPU scale on digits")


def run_overrides(settings: Settings, steps: int | None) -> dict[str, Any]:
    """Overrides of this scale: ``steps`` (``None``: the preset's length, at full scale) and,
    at smoke scale, :data:`SMOKE`."""
    out: dict[str, Any] = {} if steps is None else {"steps": steps}
    return {**out, **SMOKE} if settings.scale == "smoke" else out


def train_run(preset: str, overrides: dict[str, Any], folder: Path, settings: Settings,
              callbacks: tuple[Callback, ...] = ()) -> tuple[Trainer, TrainResult]:
    """Train ``preset`` with ``overrides`` (and the settings' seed) in a fresh ``folder`` (an
    earlier run there is replaced); returns the finished :class:`Trainer` and its result. A run
    whose loss went non-finite stops early, which is a result (``status == "stopped"``)."""
    config: TrainConfig = load_config(preset, {**overrides, "seed": settings.seed})
    if folder.exists():
        shutil.rmtree(folder)
    trainer = Trainer(config, folder, settings.device, settings.progress, callbacks)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StabilityWarning)  # logged in log.jsonl
            result = trainer.fit()
    finally:
        trainer.close()
    return trainer, result


@torch.no_grad()
def dataset_bpd(flow: torch.nn.Module, x: Tensor, n_bins: int, batch_size: int = 500) -> float:
    """Bits per dimension of the dataset ``x`` under ``flow`` (evaluation mode), the mean over
    batches of :func:`~lipbound.training.nf_loss`'s figure weighted by batch size (bpd is affine
    in the NLL, so this is the bpd of the whole set)."""
    total = 0.0
    with eval_mode(flow):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            total += float(nf_loss(flow, xb, n_bins=n_bins).bits_per_dim) * xb.shape[0]
    return total / x.shape[0]


def stability_figures(flow: torch.nn.Module, x: Tensor, spectrum_samples: int,
                      seed: int = 0) -> dict[str, Any]:
    """The :class:`~lipbound.training.StabilityMonitor` record of ``flow`` on ``x``: round trips
    ``x -> z -> x`` (and ``z -> x -> z`` on base samples) at the network's precision, and the
    Jacobian's ``sigma_max``, ``sigma_min`` and condition number on the first
    ``spectrum_samples`` samples (float64)."""
    monitor = StabilityMonitor(flow, x, spectrum_samples=spectrum_samples, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StabilityWarning)
        return monitor.measure(0)
