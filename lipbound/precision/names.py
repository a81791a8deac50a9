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

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError

__all__ = ["KINDS", "MANTISSA_BITS", "TORCH_DTYPES", "Precision", "describe_precisions",
           "parse_precision", "torch_dtype"]

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}

#: Significand bits (with the implicit bit) of each float name.
MANTISSA_BITS: dict[str, int] = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}


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


#: The kinds of precision names: torch floats, the mpmath reference, the arb reference.
KINDS = ("torch", "mp", "arb")

_KIND_NAMES = {"torch": list(TORCH_DTYPES), "mp": ["mp:<bits>"], "arb": ["arb:<bits>"]}


def describe_precisions(kinds: Sequence[str] = KINDS, also: Sequence[str] = ()) -> str:
    """The accepted names of ``kinds`` (and the extra names ``also``) as one phrase, for help
    texts and error messages alike: ``"one of float16, bfloat16, float32, float64, mp:<bits>
    or arb:<bits> (bits >= 2)"``, ``"arb:<bits> (bits >= 2)"``."""
    names = [n for k in kinds for n in _KIND_NAMES[k]] + list(also)
    phrase = names[0] if len(names) == 1 else "one of " + ", ".join(names[:-1]) + " or " + names[-1]
    return phrase + (" (bits >= 2)" if any(k != "torch" for k in kinds) else "")


def parse_precision(name: str, kinds: Sequence[str] = KINDS, argument: str = "precision",
                    also: Sequence[str] = ()) -> Precision:
    """Parse a precision name of one of ``kinds`` (default all: ``float16|bfloat16|float32|
    float64|mp:<bits>|arb:<bits>``).

    Raises :class:`InputError` naming ``argument`` (an API argument or a command-line option)
    and the accepted names (with the extra names ``also`` that the caller handles itself, such
    as the sweep's ``exact``) for anything else.
    """
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise InputError(f"kinds must be a non-empty subset of {list(KINDS)}, got {list(kinds)}")
    parsed = None
    if isinstance(name, str) and name in TORCH_DTYPES:
        parsed = Precision(name, "torch", MANTISSA_BITS[name])
    elif isinstance(name, str) and name.count(":") == 1:
        kind, bits = name.split(":")
        if kind in ("mp", "arb") and bits.isdigit() and int(bits) >= 2:
            parsed = Precision(name, kind, int(bits))
    if parsed is None or parsed.kind not in kinds:
        raise InputError(f"{argument} must be {describe_precisions(kinds, also)}, got {name!r}")
    return parsed


def torch_dtype(name: str, argument: str = "precision") -> torch.dtype:
    """The torch dtype of a float precision name; :class:`InputError` naming ``argument`` for
    anything else."""
    return TORCH_DTYPES[parse_precision(name, ("torch",), argument).name]
