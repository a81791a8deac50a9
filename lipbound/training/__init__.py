"""Training invertible networks that stay invertible (paper sections 3.3 and 4.2, appendices F, G).

Library pieces that work in any training loop:

* :func:`memory_saving`: memory-saving gradients (Gomez et al., 2017) that check their own
  reconstruction and fall back to ordinary autograd, raise or warn (:mod:`.memory`);
* :func:`gradient_agreement`: angle and relative norm difference between memory-saving and true
  gradients (:mod:`.agreement`);
* :func:`fd_regularizer`: the bi-directional finite-differences regularizer, eq. 6 and appendix G
  (:mod:`.regularizers`);
* :func:`nf_loss`: the normalizing-flow objective, eq. 7, as a loss or regularizer, with bits per
  dimension (:mod:`.losses`);
* :class:`StabilityMonitor`: round-trip errors, Jacobian singular values and condition number on a
  fixed batch every N steps, as JSON lines, with a warning before the inverse explodes
  (:mod:`.monitor`);
* atomic checkpoints with every random state, for exact resumption (:mod:`.checkpoint`).

Thin trainers for the paper's experiments use them: the INN classifier, the maximum-likelihood
flow, the 2D toy regression and the 2D checkerboard density (:mod:`.trainers`, :mod:`.tasks`,
:mod:`.presets`; ``lipbound train``).
"""

from .agreement import GradientAgreement, gradient_agreement
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .losses import NFLoss, nf_loss
from .memory import (
    MemorySaving,
    MemorySavingError,
    MemorySavingWarning,
    ReconstructionCheck,
    memory_saving,
)
from .monitor import JsonLinesLog, StabilityMonitor, StabilityWarning, default_cond_threshold
from .regularizers import FDResult, fd_regularizer

__all__ = [
    "FDResult",
    "GradientAgreement",
    "JsonLinesLog",
    "MemorySaving",
    "MemorySavingError",
    "MemorySavingWarning",
    "NFLoss",
    "ReconstructionCheck",
    "StabilityMonitor",
    "StabilityWarning",
    "default_cond_threshold",
    "fd_regularizer",
    "gradient_agreement",
    "load_checkpoint",
    "memory_saving",
    "nf_loss",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]
