"""Training invertible networks that stay invertible (paper sections 3.3 and 4.2, appendices F, G).

Pieces that work in any training loop, and thin trainers for the paper's experiments:

* :class:`StabilityMonitor` (:mod:`.monitor`): round-trip errors, Jacobian singular values and
  condition number on a fixed batch every N steps, as JSON lines, with a warning before the
  inverse explodes.
* :mod:`.checkpoint`: atomic checkpoints with every random state, for exact resumption.
* :mod:`.trainers` and :mod:`.presets`: the INN classifier, the maximum-likelihood flow, the 2D
  toy regression and the 2D checkerboard density (``lipbound train``).
"""

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .monitor import JsonLinesLog, StabilityMonitor, StabilityWarning, default_cond_threshold

__all__ = [
    "JsonLinesLog",
    "StabilityMonitor",
    "StabilityWarning",
    "default_cond_threshold",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]
