"""Table 1 and Figure 5 of the paper: additive, affine and modified-affine flows trained by maximum
likelihood; bits per dimension and whether samples z -> x -> z reconstruct.

Thin over :mod:`lipbound.reproduce.flows`. Usage::

    python paper_figures/table1_flows.py [--full | --smoke] [--out DIR] [--pdf] [--seed N]
"""

import sys

from lipbound.reproduce import main
from lipbound.reproduce.flows import run

if __name__ == "__main__":
    sys.exit(main("table1_flows", __doc__.split("\n\n")[0], run))
