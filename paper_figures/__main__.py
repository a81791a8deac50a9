"""``python -m paper_figures all [--full | --smoke]``, ``python -m paper_figures NAME``,
``python -m paper_figures results``: see :mod:`lipbound.reproduce.suite`."""

import sys

from lipbound.reproduce.suite import main

sys.exit(main())
