"""Precision names, the same in the API and on the command line (DESIGN.md "Precision names").

=============  ==========================================================================
name           meaning
=============  ==========================================================================
``float16``    torch, IEEE half (11-bit significand, exponent range 2^-24 .. 65504)
``bfloat16``   torch, bfloat16 (8-bit significand, the exponent range of float32)
``float32``    torch, IEEE single (24 bits)
``float64``    torch, IEEE double (53 bits)
``mp:<bits>``  the reference on mpmath, every operation rounded to ``<bits>`` bits (each dot
               product of a matrix product rounded once, by ``mpmath.fdot``)
``arb:<bits>`` the reference on python-flint balls at ``<bits>`` bits, with certified radii
=============  ==========================================================================

``mp:11``, ``mp:8``, ``mp:24`` and ``mp:53`` have the significand of float16, bfloat16, float32 and
float64 but no exponent range (no overflow, no underflow, no subnormals): holding a float run
against the ``mp`` run of the same significand separates rounding from overflow and underflow.
The rounding is of the same size, not bit for bit the float kernel's (a float matrix product
rounds every addition, in an order the kernel chooses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError

__all__ = ["MANTISSA_BITS", "TORCH_DTYPES", "Precision", "parse_precision", "torch_dtype"]

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}

#: Significand bits (with the implicit bit) of each float name.
MANTISSA_BITS: dict[str, int] = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a float precision name; ``ValueError`` for anything else."""
    if name not in TORCH_DTYPES:
        raise InputError(f"precision must be one of {sorted(TORCH_DTYPES)}, got {name!r}")
    return TORCH_DTYPES[name]


@dataclass(frozen=True)
class Precision:
    """A parsed precision name.

    Attributes:
        name: the name as given (``"float32"``, ``"arb:256"``, ...).
        kind: ``"torch"``, ``"mp"`` or ``"arb"``.
        bits: significand bits (53 for float64, ``<bits>`` for the reference backends).
    """

    name: str
    kind: str
    bits: int

    @property
    def is_float(self) -> bool:
        return self.kind == "torch"

    @property
    def unit_roundoff(self) -> float:
        """``2^-bits``, the relative rounding error of one operation."""
        return 2.0 ** -self.bits

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype (float names only)."""
        return torch_dtype(self.name)

    def same_mantissa_reference(self) -> str:
        """``mp:<bits>`` with this precision's significand (float names only)."""
        if not self.is_float:
            raise InputError(f"{self.name} is not a float precision")
        return f"mp:{self.bits}"


def parse_precision(name: str) -> Precision:
    """Parse ``float16|bfloat16|float32|float64|mp:<bits>|arb:<bits>``; ``ValueError`` else."""
    if isinstance(name, str) and name in TORCH_DTYPES:
        return Precision(name, "torch", MANTISSA_BITS[name])
    if isinstance(name, str) and name.count(":") == 1:
        kind, bits = name.split(":")
        if kind in ("mp", "arb") and bits.isdigit() and int(bits) >= 2:
            return Precision(name, kind, int(bits))
    raise InputError(
        f"precision must be one of float16, bfloat16, float32, float64, mp:<bits>, arb:<bits> "
        f"(bits >= 2), got {name!r}"
    )
