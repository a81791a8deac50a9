"""Figures 11 and 12 of the paper (appendix E): the invertibility attack inside the
dequantization cells on affine, modified affine and Residual Flow models trained here; the
Residual Flow with 5 and with converged fixed-point iterations. Thin over
:mod:`lipbound.reproduce.attack`::

    python paper_figures/figure11_attack.py [--out DIR] [--smoke | --full]
"""

from __future__ import annotations

import sys

from lipbound.reproduce import main
from lipbound.reproduce.attack import run

if __name__ == "__main__":
    sys.exit(main("figure11_attack", __doc__.splitlines()[0], run))
