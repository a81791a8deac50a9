"""Training invertible networks that stay invertible (paper sections 3.3 and 4.2, appendices F, G).

Library pieces that work in any training loop:

* :func:`memory_saving`: memory-saving gradients (Gomez et al., 2017) that check their own
  reconstruction and fall back to ordinary autograd, raise or warn (:mod:`.memory`);
* :func:`gradient_agreement`: angle and relative norm difference between memory-saving and true
  gradients (:mod:`.agreement`);
* :func:`fd_regularizer`: the bi-directional finite-differences regularizer, eq. 6 and appendix G
  (:mod:`.regularizers`);
* :func:`nf_loss`: the normalizing-flow objective, eq. 7, as a loss or regularizer, with bits per
  dimension (:mod:`.losses`).
"""

from .agreement import GradientAgreement, gradient_agreement
from .losses import NFLoss, nf_loss
from .memory import (
    MemorySaving,
    MemorySavingError,
    MemorySavingWarning,
    ReconstructionCheck,
    memory_saving,
)
from .regularizers import FDResult, fd_regularizer

# The stability monitor (StabilityMonitor) is added here by its own module.

__all__ = [
    "FDResult",
    "GradientAgreement",
    "MemorySaving",
    "MemorySavingError",
    "MemorySavingWarning",
    "NFLoss",
    "ReconstructionCheck",
    "fd_regularizer",
    "gradient_agreement",
    "memory_saving",
    "nf_loss",
]
