"""Table 3 of the paper (appendix A): every block's Lipschitz bounds, the paper's form beside the
tighter proved form, as markdown and LaTeX. Thin over :mod:`lipbound.reproduce.table3`::

    python paper_figures/table3.py [--out DIR] [--smoke | --full]
"""

from __future__ import annotations

import sys

from lipbound.reproduce import main
from lipbound.reproduce.table3 import run

if __name__ == "__main__":
    sys.exit(main("table3", __doc__.splitlines()[0], run))
