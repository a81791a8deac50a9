"""The Figure 1 plot and the CSV/JSON files of a depth sweep.

Panels, all against depth on log axes (see :func:`plot_sweep`): the float precisions'
reconstruction error with the bound ``Lip(F^-1) ||delta|| + ||delta2||``, the exact rows on
their own axis, ``sigma_min``, ``sigma_max`` and the condition number. Inf, NaN and zero values
are kept as distinct markers in bands at the edges of their panel. The parallel lines of one
chain at different precisions show the same growth rate (instability), their vertical offsets
the precision (rounding).
"""
from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from ..jsonio import dump_json  # noqa: E402
from .sweep import SweepRecord  # noqa: E402

__all__ = ["SPECIAL_MARKERS", "SweepPlot", "plot_sweep", "sweep_table", "write_csv", "write_json"]

_COLORS = {"float16": "tab:red", "bfloat16": "tab:orange", "float32": "tab:green",
           "float64": "tab:blue", "exact": "black"}
_STYLES = {"additive": "--", "affine": "-"}

#: The marker of each value a log axis cannot show.
SPECIAL_MARKERS = {"inf": "^", "nan": "X", "zero": "v"}


@dataclass
class SweepPlot:
    """What :func:`plot_sweep` drew.

    Attributes:
        markers: the marker of each special category (``inf``, ``nan``, ``zero``).
        marked: per category, the ``(panel, chain, precision, depth)`` points drawn as that
            marker.
        ylim_decades: the y limits of each panel (``recon_error``, ``exact``, ``sigma_min``,
            ``sigma_max``, ``cond``) in decades (``log10``; the panels plot ``log10`` of the
            values on a linear axis, labelled as powers of ten).
        legend: the labels of the figure's legend.
    """

    markers: dict[str, str]
    marked: dict[str, list[tuple[str, str, str, int]]]
    ylim_decades: dict[str, tuple[float, float]] = field(default_factory=dict)
    legend: list[str] = field(default_factory=list)


def _series(records: Sequence[SweepRecord], chain: str, precision: str, key: str
            ) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in records if r.chain == chain and r.precision == precision]
    return np.array([r.depth for r in rows]), np.array([getattr(r, key) for r in rows], float)


def _category(y: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of the values a log axis cannot show: Inf, NaN and exact zeros."""
    return {"inf": np.isinf(y), "nan": np.isnan(y), "zero": y == 0}


def _decades(y: np.ndarray) -> np.ndarray:
    """``log10(y)`` where ``y`` is finite and positive, NaN elsewhere (not drawn)."""
    good = np.isfinite(y) & (y > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(good, np.log10(np.where(good, y, 1.0)), np.nan)


def _decade_limits(values: list[np.ndarray], bottom: float, top: float) -> tuple[float, float]:
    """Limits, in decades, of an axis on which the finite positive ``values`` fill the part
    between the fractions ``bottom`` and ``1 - top`` of the height (the bands keep the
    markers)."""
    v = np.concatenate([_decades(np.asarray(a, float)).ravel() for a in values] + [np.empty(0)])
    v = v[~np.isnan(v)]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (-1.0, 1.0)
    if hi - lo < 2:  # at least two decades: integer ticks
        lo, hi = (lo + hi) / 2 - 1, (lo + hi) / 2 + 1
    total = (hi - lo) / (1 - bottom - top)
    return lo - bottom * total, hi + top * total


def _power_of_ten(v: float, _pos: int) -> str:
    """The tick label of ``log10`` value ``v``."""
    return f"$10^{{{v:.0f}}}$" if v == round(v) else f"$10^{{{v:.2g}}}$"


#: Height (fraction of the axes) of one row of markers in a band.
_SLOT = 0.035


class _Panel:
    """One log-scale panel: lines, and the values a log axis cannot show as markers in a band
    at the top (Inf, NaN) or the bottom (zero), one row per series."""

    def __init__(self, ax, key: str, title: str, result: SweepPlot) -> None:
        self.ax, self.key, self.result = ax, key, result
        self.series: list[tuple[str, str, np.ndarray, np.ndarray]] = []
        self.extra: list[np.ndarray] = []
        ax.set_title(title, fontsize=10)
        # log10 of the values on a linear axis: a log axis overflows near 10^308
        ax.yaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
        ax.yaxis.set_major_formatter(FuncFormatter(_power_of_ten))

    def add(self, chain: str, precision: str, depth: np.ndarray, y: np.ndarray) -> None:
        self.series.append((chain, precision, depth, y))
        self.ax.plot(depth, _decades(y), _STYLES[chain], color=_COLORS[precision],
                     linewidth=1.5, label=f"{chain} {precision}", zorder=3)

    def add_bound(self, precision: str, depth: np.ndarray, y: np.ndarray) -> None:
        """The bound as a wide pale band under the measured line (they coincide where the bound
        is tight)."""
        self.extra.append(y)
        self.ax.plot(depth, _decades(y), "-", color=_COLORS[precision],
                     linewidth=6, alpha=0.25, solid_capstyle="butt", zorder=2)

    def finish(self) -> None:
        """Set the limits (every finite positive value inside, bands left free) and draw the
        markers."""
        ax = self.ax
        ax.set_xlabel("number of blocks")
        ax.grid(True, which="major", alpha=0.3)
        slots = {"top": [], "bottom": []}
        for chain, precision, _, y in self.series:
            cats = _category(y)
            if cats["inf"].any() or cats["nan"].any():
                slots["top"].append((chain, precision))
            if cats["zero"].any():
                slots["bottom"].append((chain, precision))
        top = 0.02 + _SLOT * len(slots["top"])
        bottom = 0.02 + _SLOT * len(slots["bottom"])
        limits = _decade_limits([y for *_, y in self.series] + self.extra, bottom, top)
        ax.set_ylim(*limits)
        self.result.ylim_decades[self.key] = limits
        for chain, precision, depth, y in self.series:
            for category, mask in _category(y).items():
                if not mask.any():
                    continue
                band = "bottom" if category == "zero" else "top"
                i = slots[band].index((chain, precision))
                where = (0.01 + _SLOT * (i + 0.5) if band == "bottom"
                         else 1 - 0.01 - _SLOT * (i + 0.5))
                ax.plot(depth[mask], np.full(mask.sum(), where), SPECIAL_MARKERS[category],
                        color=_COLORS[precision], markersize=5, linestyle="none",
                        markerfacecolor="none" if chain == "additive" else _COLORS[precision],
                        transform=ax.get_xaxis_transform(), zorder=4)
                self.result.marked[category] += [(self.key, chain, precision, int(d))
                                                 for d in depth[mask]]


def plot_sweep(records: Sequence[SweepRecord], path: str | Path, bound: bool = True,
               subtitle: str = "") -> SweepPlot:
    """Write the Figure 1 plot to ``path`` (PNG, or PDF by the suffix) and return what was
    drawn (:class:`SweepPlot`).

    Panels, all against depth on log axes: the float precisions' reconstruction error with the
    bound ``Lip(F^-1) ||delta|| + ||delta2||`` (a wide pale band under each line), the exact
    rows' certified round-trip error on their own axis (tens of decades below any float),
    ``sigma_min``, ``sigma_max`` and the condition number. Values a log axis cannot show are
    not dropped: Inf (``^``) and NaN (``X``) are markers in a band at the top of their panel,
    exact zeros (``v``) in a band at the bottom, one row per chain and precision (filled for
    the affine chain, hollow for the additive one). ``subtitle`` (the sweep's constants) goes
    into the title."""
    chains = sorted({r.chain for r in records})
    precisions = [p for p in _COLORS if any(r.precision == p for r in records)]
    floats = [p for p in precisions if p != "exact"]
    result = SweepPlot(dict(SPECIAL_MARKERS), {k: [] for k in SPECIAL_MARKERS}, {}, [])
    fig = plt.figure(figsize=(16, 8.5))
    grid = fig.add_gridspec(2, 6)
    axes = {"recon_error": fig.add_subplot(grid[0, :4]), "exact": fig.add_subplot(grid[0, 4:]),
            "sigma_min": fig.add_subplot(grid[1, :2]), "sigma_max": fig.add_subplot(grid[1, 2:4]),
            "cond": fig.add_subplot(grid[1, 4:])}
    titles = {"recon_error": "float reconstruction error ||x - F_p^-1(F_p(x))||",
              "exact": "exact rows: certified bound on the oracle's own round trip",
              "sigma_min": "min singular value", "sigma_max": "max singular value",
              "cond": "condition number"}
    for key, ax in axes.items():
        panel = _Panel(ax, key, titles[key], result)
        field_ = "recon_error" if key == "exact" else key
        shown = (floats if key == "recon_error" else ["exact"] if key == "exact"
                 else precisions)
        for c in chains:
            for p in shown:
                d, y = _series(records, c, p, field_)
                if not len(d):
                    continue
                panel.add(c, p, d, y)
                if key == "recon_error" and bound:
                    panel.add_bound(p, *_series(records, c, p, "bound"))
        if not panel.series:
            ax.text(0.5, 0.5, "not swept", ha="center", va="center", transform=ax.transAxes)
        panel.finish()
    handles, labels = axes["recon_error"].get_legend_handles_labels()
    if bound and floats:
        handles.append(Line2D([], [], color="gray", linewidth=6, alpha=0.25))
        labels.append("bound Lip(F^-1)||delta|| + ||delta2||")
    for category, text in (("inf", "Inf (top band)"), ("nan", "NaN (top band)"),
                           ("zero", "exactly 0 (bottom band)")):
        handles.append(Line2D([], [], marker=SPECIAL_MARKERS[category], color="gray",
                              linestyle="none"))
        labels.append(text)
    fig.legend(handles, labels, fontsize=8, ncol=8, loc="lower center")
    result.legend = labels
    fig.suptitle("Figure 1 depth sweep" + (f": {subtitle}" if subtitle else "")
                 + ". Solid: affine chain, dashed: additive; markers filled: affine, hollow: "
                 "additive", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) // 8), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return result


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
