"""Tables 2, 9 and 10 of the paper: Glow-like INN classifiers, additive/affine x 1x1 conv/shuffle x
no regularizer/FD/NF; Inv?, test accuracy, reconstruction error, condition number, singular values.

Thin over :mod:`lipbound.reproduce.classifiers`. Usage::

    python paper_figures/table2_classifiers.py [--full | --smoke] [--out DIR] [--pdf] [--seed N]
"""

import sys

from lipbound.reproduce import main
from lipbound.reproduce.classifiers import run

if __name__ == "__main__":
    sys.exit(main("table2_classifiers", __doc__.split("\n\n")[0], run))
