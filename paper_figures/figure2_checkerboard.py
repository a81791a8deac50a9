"""Figures 2, 3 and 8 of the paper (appendix C): affine, modified affine and Residual Flow models
on the 2D checkerboard; maps of reconstruction error, density and condition number over
[-8, 8]^2 and the fraction of failing round trips outside the data. Thin over
:mod:`lipbound.reproduce.checkerboard`::

    python paper_figures/figure2_checkerboard.py [--out DIR] [--smoke | --full]
"""

from __future__ import annotations

import sys

from lipbound.reproduce import main
from lipbound.reproduce.checkerboard import run

if __name__ == "__main__":
    sys.exit(main("figure2_checkerboard", __doc__.splitlines()[0], run))
