"""Histograms of per-sample reconstruction errors on a log scale, NaN and Inf counted apart."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError
from .figures import figure_path, pyplot, save_figure
from .reconstruction import ReconstructionStats

__all__ = ["plot_error_histograms"]


def plot_error_histograms(stats: list[ReconstructionStats], path: str | Path) -> Path:
    """One panel per direction with a ``log10`` error histogram per precision; the legend counts
    zero, NaN and Inf errors, which a log axis cannot show. PNG, or PDF from the suffix."""
    path = figure_path(path)
    if not stats:
        raise InputError("stats must hold at least one ReconstructionStats")
    directions = list(dict.fromkeys(s.direction for s in stats))
    fig, axes = pyplot().subplots(1, len(directions), figsize=(6 * len(directions), 4),
                                  squeeze=False)
    for ax, direction in zip(axes[0], directions, strict=True):
        for s in (s for s in stats if s.direction == direction):
            e = s.errors
            positive = e[torch.isfinite(e) & (e > 0)]
            summary = s.summary()
            label = (f"{s.precision}: zero {int((e == 0).sum())}, NaN {summary['n_nan']}, "
                     f"Inf {summary['n_inf']}")
            if positive.numel():
                ax.hist(torch.log10(positive).numpy(), bins=40, alpha=0.5, label=label)
            else:
                ax.plot([], [], label=label)
        ax.set_xlabel("log10 ||x - F^-1(F(x))||_2" if direction == "x->z->x"
                      else "log10 ||z - F(F^-1(z))||_2")
        ax.set_ylabel("samples")
        ax.set_title(f"round trip {direction}")
        ax.legend(fontsize=7)
    return save_figure(fig, path)
