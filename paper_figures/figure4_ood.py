"""Figure 4 and Table 5 of the paper (appendix D): flows trained here, their round trips on
in-distribution test data, noise and other images; % Inf and % NaN apart, mean error over the
finite ones. Thin over :mod:`lipbound.reproduce.ood`::

    python paper_figures/figure4_ood.py [--out DIR] [--smoke | --full]
"""

from __future__ import annotations

import sys

from lipbound.reproduce import main
from lipbound.reproduce.ood import run

if __name__ == "__main__":
    sys.exit(main("figure4_ood", __doc__.splitlines()[0], run))
