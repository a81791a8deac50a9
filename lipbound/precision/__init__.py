"""Precision names, runs at every precision, and the rounding-versus-instability decomposition.

* :mod:`.names`: ``float16``, ``bfloat16``, ``float32``, ``float64`` (torch), ``mp:<bits>``
  (mpmath) and ``arb:<bits>`` (python-flint) and their parsing (one parser for the API and the
  command line).
* :mod:`.cast`: the network at a float precision (:func:`cast_model`, used by the diagnostics
  too).
* :mod:`.run`: a model's forward or inverse at any of them (half precision emulated, and
  marked so, where a CPU kernel is missing).
* :mod:`.decompose`: the error decomposition of section 2 of the paper against the oracle, with
  a verdict (``lipbound verify``).
* :mod:`.samples`: the decomposition one sample at a time over a dataset, serially, on local
  processes or on a Dask cluster, with a resumable JSON-lines file (``lipbound verify --out``,
  ``--workers``, ``--scheduler``).
* :mod:`.sweep`: the Figure 1 depth sweep (``lipbound sweep``).
"""

from .cast import cast_model
from .names import (
    MANTISSA_BITS,
    TORCH_DTYPES,
    Precision,
    describe_precisions,
    parse_precision,
    torch_dtype,
)

__all__ = ["MANTISSA_BITS", "TORCH_DTYPES", "Precision", "cast_model", "describe_precisions",
           "parse_precision", "torch_dtype"]
