"""The Figure 1 toy (end of section 2) with its constants as exact decimals.

``lipbound.blocks.figure1_chain`` stores ``t = 0.123456789`` and ``g = 0.1`` as float64 numbers,
which are not those decimals. :func:`figure1_reference` compiles the same chain with the stored
constants replaced by the decimals themselves, so its Jacobian has singular values exactly
``0.1^L`` and ``1`` (affine) or ``1`` and ``1`` (additive).
"""

from __future__ import annotations

import torch

from lipbound.blocks import figure1_chain
from lipbound.errors import InputTypeError

from .backends import Backend
from .model import ReferenceModel

__all__ = ["figure1_reference"]


def figure1_reference(depth: int, coupling: str = "affine", t: str = "0.123456789",
                      g: str = "0.1", alternate: bool = False,
                      backend: Backend | str = "arb:256") -> ReferenceModel:
    """The exact-decimal reference of ``figure1_chain(depth, coupling, t, g, alternate)``."""
    for name, text in (("t", t), ("g", g)):
        if not isinstance(text, str):
            raise InputTypeError(f"{name} must be a decimal string such as '0.1', got {text!r}")
    model = figure1_chain(depth, coupling, float(t), float(g), alternate).to(torch.float64)
    return ReferenceModel(model, backend, exact_constants={float(t): t, float(g): g})
