"""Figure 18 (and the introduction figure) of the paper: the angle between true and memory-saving
gradients over training checkpoints, additive and affine classifiers, unregularized and with FD/NF.

Thin over :mod:`lipbound.reproduce.gradient_angles`. Usage::

    python paper_figures/figure18_gradient_angles.py [--full | --smoke] [--out DIR] [--pdf]
"""

import sys

from lipbound.reproduce import main
from lipbound.reproduce.gradient_angles import run

if __name__ == "__main__":
    sys.exit(main("figure18_gradient_angles", __doc__.split("\n\n")[0], run))
