"""The four-panel Figure 1 plot and the CSV/JSON files of a depth sweep.

Panels, all against depth on a log scale: reconstruction error (with the bound
``Lip(F^-1) ||delta|| + ||delta2||`` overlaid, dotted), ``sigma_min``, ``sigma_max`` and the
condition number. Points that are Inf or NaN are not dropped: they are drawn as markers on the top
edge of their panel (``^`` for Inf, ``x`` for NaN), and exact zeros on the bottom edge (``v``).
The parallel lines of one chain at different precisions show the same growth rate
(instability), their vertical offsets the precision (rounding).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..jsonio import dump_json  # noqa: E402
from .sweep import SweepRecord  # noqa: E402

__all__ = ["plot_sweep", "sweep_table", "write_csv", "write_json"]

_COLORS = {"float16": "tab:red", "bfloat16": "tab:orange", "float32": "tab:green",
           "float64": "tab:blue", "exact": "black"}
_STYLES = {"additive": "--", "affine": "-"}


def _series(records: Sequence[SweepRecord], chain: str, precision: str, key: str
            ) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in records if r.chain == chain and r.precision == precision]
    return np.array([r.depth for r in rows]), np.array([getattr(r, key) for r in rows], float)


def _draw(ax, depth: np.ndarray, y: np.ndarray, label: str, color: str, style: str,
          width: float = 1.5) -> None:
    good = np.isfinite(y) & (y > 0)
    yy = np.where(good, y, np.nan)
    ax.plot(depth, yy, style, color=color, label=label, linewidth=width)


def _mark_special(ax, depth: np.ndarray, y: np.ndarray, color: str, lo: float, hi: float
                  ) -> None:
    for mask, where, marker in ((np.isinf(y), hi, "^"), (np.isnan(y), hi, "x"),
                                (y == 0, lo, "v")):
        if mask.any():
            ax.plot(depth[mask], np.full(mask.sum(), where), marker, color=color,
                    markersize=4, clip_on=False, linestyle="none")


def plot_sweep(records: Sequence[SweepRecord], path: str | Path, bound: bool = True) -> None:
    """Write the four-panel figure to ``path`` (PNG, or PDF by the suffix)."""
    chains = sorted({r.chain for r in records})
    precisions = [p for p in _COLORS if any(r.precision == p for r in records)]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.8))
    panels = [("recon_error", "reconstruction error ||x - F^-1(F(x))||"),
              ("sigma_min", "min singular value"), ("sigma_max", "max singular value"),
              ("cond", "condition number")]
    for ax, (key, title) in zip(axes, panels):
        for c in chains:
            for p in precisions:
                d, y = _series(records, c, p, key)
                _draw(ax, d, y, f"{c} {p}", _COLORS[p], _STYLES[c])
                if key == "recon_error" and bound and p != "exact":
                    d, b = _series(records, c, p, "bound")
                    _draw(ax, d, b, None, _COLORS[p], ":", 1.0)
        ax.set_yscale("log")
        ax.set_xlabel("number of blocks")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        lo, hi = ax.get_ylim()
        for c in chains:
            for p in precisions:
                d, y = _series(records, c, p, key)
                _mark_special(ax, d, y, _COLORS[p], lo, hi)
        ax.set_ylim(lo, hi)
    axes[0].legend(fontsize=7, ncol=2, loc="upper left")
    fig.suptitle("Figure 1: t = 0.123456789, g = 0.1, x = (1, 1). Dotted: Lip(F^-1)||delta|| + "
                 "||delta2||; markers on the edges: ^ Inf, x NaN, v zero", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_csv(records: Sequence[SweepRecord], path: str | Path) -> None:
    """One row per record, Inf and NaN written as ``inf`` and ``nan``."""
    with Path(path).open("w", newline="") as fh:
        keys = list(records[0].to_dict()) if records else []
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in records:
            w.writerow({k: (repr(v) if isinstance(v, float) and math.isfinite(v) else
                            str(v).lower() if isinstance(v, float) else v)
                        for k, v in r.to_dict().items()})


def write_json(records: Sequence[SweepRecord], path: str | Path) -> None:
    """The list of records ``{"chain", "depth", "precision", "recon_error", "sigma_min",
    "sigma_max", "cond"}``, Inf as ``"inf"`` and NaN as ``"nan"``."""
    dump_json([r.to_json_record() for r in records], path)


def sweep_table(records: Sequence[SweepRecord], depths: Sequence[int] = (1, 10, 20, 50, 100)
                ) -> str:
    """Reconstruction error by chain and precision at a few depths, and the exact ``cond``."""
    chains = sorted({r.chain for r in records})
    precisions = [p for p in _COLORS if any(r.precision == p for r in records)]
    shown = [d for d in depths if any(r.depth == d for r in records)]
    lines = []
    for c in chains:
        lines.append(f"{c} chain: reconstruction error ||x - F^-1(F(x))|| by depth")
        lines.append("  " + f"{'depth':>9}" + "".join(f"{d:>11}" for d in shown))
        for p in precisions:
            vals = {r.depth: r.recon_error for r in records if r.chain == c and r.precision == p}
            lines.append("  " + f"{p:>9}" + "".join(f"{vals[d]:>11.2e}" for d in shown))
        conds = {r.depth: r.cond for r in records if r.chain == c and r.precision == "exact"}
        if conds:
            lines.append("  " + f"{'cond':>9}" + "".join(f"{conds[d]:>11.2e}" for d in shown))
    return "\n".join(lines)
