r"""Maps of a 2D model over a grid: reconstruction error, ``sigma_min`` and condition number.

The paper's 2D figures (section 4.1, appendix C) show ``||x - F^-1(F(x))||_2`` on a 320 x 320 grid
over ``[-8, 8]^2``, twice the data range of the checkerboard. Next to it, ``sigma_min(J_F(x))``
(the reciprocal of the local Lipschitz constant of ``F^-1``) and the condition number
``sigma_max / sigma_min`` of the Jacobian, from the exact 2 x 2 Jacobians in float64.

Colours use a log scale; NaN and Inf are drawn in their own flat colours and counted in the legend,
and exact zeros (perfect reconstructions) are drawn at the bottom of the scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..blocks import InvertibleBlock
from ..errors import InputError
from .figures import figure_path, pyplot, save_figure
from .reconstruction import reconstruction_stats
from .spectrum import singular_values
from .views import at_precision

__all__ = ["GridMaps", "grid_maps", "plot_grid_maps"]

#: RGBA of the NaN and Inf markers.
NAN_COLOR = (1.0, 0.0, 1.0, 1.0)
INF_COLOR = (0.0, 0.0, 0.0, 1.0)


@dataclass
class GridMaps:
    """Values on the grid ``xs x ys``; every map has shape ``(n, n)``, indexed ``[iy, ix]``."""

    xs: Tensor
    ys: Tensor
    error: Tensor
    sigma_min: Tensor
    condition: Tensor
    precision: str

    def maps(self) -> dict[str, Tensor]:
        """Title -> map."""
        return {
            f"reconstruction error ({self.precision})": self.error,
            "sigma_min of J_F (float64)": self.sigma_min,
            "condition number of J_F (float64)": self.condition,
        }


def grid_maps(model: InvertibleBlock, n: int = 320, lim: float = 8.0, precision: str = "float32",
              chunk: int = 4096, progress: bool = False) -> GridMaps:
    """Evaluate the three maps of ``model`` (inputs of shape ``(B, 2)``) on an ``n x n`` grid
    over ``[-lim, lim]^2``."""
    if int(n) < 2:
        raise InputError(f"n must be >= 2, got {n}")
    if not lim > 0:
        raise InputError(f"lim must be > 0, got {lim}")
    xs = torch.linspace(-lim, lim, int(n), dtype=torch.float64)
    gy, gx = torch.meshgrid(xs, xs, indexing="ij")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    error = reconstruction_stats(model, points, precision, batch_size=chunk,
                                 progress=progress).errors
    model64 = at_precision(model, "float64")
    starts = range(0, points.shape[0], chunk)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="grid Jacobians", unit="chunk")
    sv = torch.cat([singular_values(model64, points[s:s + chunk]) for s in starts])
    shape = (int(n), int(n))
    return GridMaps(xs, xs.clone(), error.reshape(shape), sv[:, -1].reshape(shape),
                    (sv[:, 0] / sv[:, -1]).reshape(shape), precision)


def _draw(ax, values: Tensor, extent: list[float], title: str, fig) -> None:
    import matplotlib.colors as mcolors
    import numpy as np

    v = values.numpy()
    nan, inf = np.isnan(v), np.isinf(v)
    positive = v[np.isfinite(v) & (v > 0)]
    lo = float(positive.min()) if positive.size else 1e-300
    hi = float(positive.max()) if positive.size else 1.0
    shown = np.where(np.isfinite(v), np.clip(v, lo, None), np.nan)
    image = ax.imshow(shown, origin="lower", extent=extent, cmap="viridis",
                      norm=mcolors.LogNorm(vmin=lo, vmax=max(hi, lo * (1 + 1e-12))))
    marks = np.zeros(v.shape + (4,))
    marks[nan], marks[inf] = NAN_COLOR, INF_COLOR
    ax.imshow(marks, origin="lower", extent=extent)
    fig.colorbar(image, ax=ax, shrink=0.8)
    n_zero = int((v == 0).sum())
    ax.set_title(f"{title}\nNaN {int(nan.sum())} (magenta), Inf {int(inf.sum())} (black), "
                 f"zero {n_zero}", fontsize=8)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")


def plot_grid_maps(maps: GridMaps, path: str | Path, data: Tensor | None = None) -> Path:
    """Write the maps side by side as PNG (or PDF, from the suffix), ``data`` points overlaid."""
    path = figure_path(path)
    extent = [float(maps.xs[0]), float(maps.xs[-1]), float(maps.ys[0]), float(maps.ys[-1])]
    panels = maps.maps()
    fig, axes = pyplot().subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4))
    for ax, (title, values) in zip(axes, panels.items(), strict=True):
        _draw(ax, values, extent, title, fig)
        if data is not None:
            ax.scatter(data[:, 0], data[:, 1], s=1, c="white", alpha=0.3)
    return save_figure(fig, path)
