"""Figures 6 and 13 of the paper (appendix F): unregularized vs NF-regularized affine Glow on the
2D toy regression; MSE, reconstruction error and condition number over training. Thin over
:mod:`lipbound.reproduce.regression`::

    python paper_figures/figure6_regression.py [--out DIR] [--smoke | --full]
"""

from __future__ import annotations

import sys

from lipbound.reproduce import main
from lipbound.reproduce.regression import run

if __name__ == "__main__":
    sys.exit(main("figure6_regression", __doc__.splitlines()[0], run))
