"""``python -m lipbound``: the ``lipbound`` command (:mod:`lipbound.cli`)."""

import sys

from .cli import main

sys.exit(main())
