"""Table 11 of the paper: time per step with the bi-directional finite-differences regularizer every
K = 1, 5, 10 steps, as ratios to unregularized memory-saving training.

Thin over :mod:`lipbound.reproduce.fd_overhead`. Usage::

    python paper_figures/table11_fd_overhead.py [--full | --smoke] [--out DIR] [--pdf] [--seed N]
"""

import sys

from lipbound.reproduce import main
from lipbound.reproduce.fd_overhead import run

if __name__ == "__main__":
    sys.exit(main("table11_fd_overhead", __doc__.split("\n\n")[0], run))
