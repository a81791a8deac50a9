r"""Maps of a 2D model over a grid: reconstruction error, ``sigma_min`` and condition number.

The paper's 2D figures (section 4.1, appendix C) show ``||x - F^-1(F(x))||_2`` on a 320 x 320 grid
over ``[-8, 8]^2``, twice the data range of the checkerboard. Next to it, ``sigma_min(J_F(x))``
(the reciprocal of the local Lipschitz constant of ``F^-1``) and the condition number
``sigma_max / sigma_min`` of the Jacobian, from the exact 2 x 2 Jacobians in float64.

Positive values are coloured on a log scale (viridis); exact zeros (perfect reconstructions), NaN
and Inf each get a flat colour of their own outside that scale (:func:`map_colors`: white, magenta,
black), so that a zero error never looks like a tiny one, and each is counted in the panel's title.
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

__all__ = ["GridMaps", "grid_maps", "map_colors", "plot_grid_maps"]

#: RGBA of the pixels that the log colour scale cannot show: NaN, Inf and exact zero.
NAN_COLOR = (1.0, 0.0, 1.0, 1.0)
INF_COLOR = (0.0, 0.0, 0.0, 1.0)
ZERO_COLOR = (1.0, 1.0, 1.0, 1.0)
#: The log colour scale of the positive values.
COLORMAP = "viridis"


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
    error = reconstruction_stats(model, points, precision, batch_size=chunk, progress=progress,
                                 desc=f"grid round trips ({precision})").errors
    model64 = at_precision(model, "float64")
    starts = range(0, points.shape[0], chunk)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="grid Jacobians", unit="chunk")
    sv = torch.cat([singular_values(model64, points[s:s + chunk]) for s in starts])
    shape = (int(n), int(n))
    return GridMaps(xs, xs.clone(), error.reshape(shape), sv[:, -1].reshape(shape),
                    (sv[:, 0] / sv[:, -1]).reshape(shape), precision)


def map_colors(values: Tensor):
    """The RGBA image of one map, shape ``values.shape + (4,)``, and the log norm of its colour
    scale (a :class:`matplotlib.colors.LogNorm` from the smallest to the largest positive finite
    value; ``None`` when there is none).

    Positive finite values take :data:`COLORMAP` under that norm; exact zeros
    :data:`ZERO_COLOR`, NaN :data:`NAN_COLOR`, ``+-Inf`` :data:`INF_COLOR`, none of which the
    colour map contains. The maps hold errors, singular values and condition numbers: a negative
    finite value is an error.
    """
    import matplotlib
    import matplotlib.colors as mcolors
    import numpy as np

    v = values.detach().to(torch.float64).cpu().numpy()
    finite = np.isfinite(v)
    if bool((v[finite] < 0).any()):
        raise InputError("values must be >= 0 where finite (errors, singular values, condition "
                         "numbers)")
    positive = finite & (v > 0)
    rgba = np.zeros(v.shape + (4,))
    norm = None
    if positive.any():
        lo, hi = float(v[positive].min()), float(v[positive].max())
        norm = mcolors.LogNorm(vmin=lo, vmax=max(hi, lo * (1 + 1e-12)))
        rgba[positive] = matplotlib.colormaps[COLORMAP](norm(v[positive]))
    rgba[finite & (v == 0)] = ZERO_COLOR
    rgba[np.isnan(v)] = NAN_COLOR
    rgba[np.isinf(v)] = INF_COLOR
    return rgba, norm


def _draw(ax, values: Tensor, extent: list[float], title: str, fig) -> None:
    import matplotlib.cm as mcm
    import numpy as np

    rgba, norm = map_colors(values)
    v = values.numpy()
    ax.imshow(rgba, origin="lower", extent=extent, interpolation="nearest")
    if norm is not None:
        fig.colorbar(mcm.ScalarMappable(norm=norm, cmap=COLORMAP), ax=ax, shrink=0.8)
    ax.set_title(f"{title}\nNaN {int(np.isnan(v).sum())} (magenta), Inf "
                 f"{int(np.isinf(v).sum())} (black), zero {int((v == 0).sum())} (white)",
                 fontsize=8)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")


def plot_grid_maps(maps: GridMaps, path: str | Path, data: Tensor | None = None) -> Path:
    """Write the maps side by side as PNG (or PDF, from the suffix), ``data`` points overlaid
    (small red dots)."""
    path = figure_path(path)
    extent = [float(maps.xs[0]), float(maps.xs[-1]), float(maps.ys[0]), float(maps.ys[-1])]
    panels = maps.maps()
    fig, axes = pyplot().subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4))
    for ax, (title, values) in zip(axes, panels.items(), strict=True):
        _draw(ax, values, extent, title, fig)
        if data is not None:
            ax.scatter(data[:, 0], data[:, 1], s=1, c="red", alpha=0.3)
    return save_figure(fig, path)
