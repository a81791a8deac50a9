"""What the diagnostics' plots share: a headless pyplot, and PNG (or PDF, from the suffix) files."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ..errors import InputError

__all__ = ["figure_path", "pyplot", "save_figure"]


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_path(path: str | Path) -> Path:
    """``path`` as a :class:`~pathlib.Path`; ``ValueError`` unless it ends in .png or .pdf."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".pdf"):
        raise InputError(f"path must end in .png or .pdf, got {str(path)!r}")
    return path


def save_figure(fig, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (100 dpi) and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path
