"""Figure 1 of the paper (end of section 2): the depth sweep of additive and affine toy chains.

Thin over the library: ``lipbound sweep`` with an output folder. Usage::

    python paper_figures/figure1_depth_sweep.py [--out paper_figures/output/figure1] [...]

takes the options of ``lipbound sweep --help``.
"""

from __future__ import annotations

import sys

from lipbound.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args = ["--out", "paper_figures/output/figure1_depth_sweep"] + args
    sys.exit(main(["sweep", *args]))
