"""The oracle: an independent arbitrary-precision implementation of every lipbound block.

It reads a torch model's stored parameters, converted exactly (every float is a dyadic
rational), and implements each block's map itself; it never calls the torch code it checks.
Models without a hand-written reference (those of other libraries) get the traced oracle:
:func:`compile_traced` captures their ATen graphs and evaluates them in the same arithmetic
(:mod:`reference.traced`, :mod:`reference.interp`). Two backends behind one interface:
python-flint ``arb`` balls (``"arb:<bits>"``, fast, each value with a certified radius)
and mpmath (``"mp:<bits>"``, pure Python, the independent cross-check).

>>> import torch, reference
>>> from lipbound.blocks import figure1_chain
>>> ref = reference.compile(figure1_chain(20, "affine").double(), "arb:256")
>>> sv = reference.singular_values(ref, torch.ones(1, 2, dtype=torch.float64))
>>> sv.values[-1]                   # sigma_min = fl(0.1)^20 of the stored float64 g
1.0000000000000011e-20
"""

from .backends import ArbBackend, Backend, MpBackend, make_backend
from .certify import CertificationError, Certified, certified_forward, certified_inverse
from .interp import UndecidedComparisonError, UnsupportedOpError, register_op, registered_ops
from .linalg import SingularValues, certified_singular_values, singular_values
from .model import ReferenceModel, as_backend, compile
from .registry import Compiler, UnknownLayerError, register, registered_types
from .tensor import DualTensor, Elementwise, RTensor
from .toy import figure1_reference
from .traced import (
    TracedFunction,
    TracedModel,
    TraceError,
    clear_trace_cache,
    compile_traced,
    oracle,
    state_key,
    trace,
)

__all__ = [
    "ArbBackend",
    "Backend",
    "CertificationError",
    "Certified",
    "Compiler",
    "DualTensor",
    "Elementwise",
    "MpBackend",
    "RTensor",
    "ReferenceModel",
    "SingularValues",
    "TraceError",
    "TracedFunction",
    "TracedModel",
    "UndecidedComparisonError",
    "UnknownLayerError",
    "UnsupportedOpError",
    "as_backend",
    "certified_forward",
    "certified_inverse",
    "certified_singular_values",
    "clear_trace_cache",
    "compile",
    "compile_traced",
    "figure1_reference",
    "make_backend",
    "oracle",
    "register",
    "register_op",
    "registered_ops",
    "registered_types",
    "singular_values",
    "state_key",
    "trace",
]
