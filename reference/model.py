"""``compile(model, backend)``: the reference (exact) face of a whole torch model.

>>> import torch, reference
>>> from lipbound.blocks import figure1_chain
>>> ref = reference.compile(figure1_chain(3, "affine").double(), "arb:128")
>>> y = ref.forward(torch.ones(1, 2, dtype=torch.float64))
>>> round(float(y.to_numpy()[0, 1]), 12)   # 0.001 + 0.123456789 * (1 + 0.1 + 0.01)
0.13803703579
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn

from lipbound.errors import InputError, InputTypeError

from . import blocks as _blocks  # noqa: F401  (registers the block references)
from . import layers as _layers  # noqa: F401  (registers the layer references)
from .backends import Backend, Scalar, make_backend
from .blocks import RefBlock
from .registry import Compiler
from .tensor import DualTensor, RTensor

__all__ = ["ReferenceModel", "compile", "as_backend"]


def as_backend(backend: Backend | str) -> Backend:
    """A backend object from a backend or a precision name ``"arb:<bits>"``/``"mp:<bits>"``."""
    return backend if isinstance(backend, Backend) else make_backend(backend)


class ReferenceModel:
    """The exact map of a torch invertible model, in a backend's arithmetic.

    Args:
        model: a :class:`lipbound.blocks.InvertibleBlock` (or any registered module).
        backend: ``"arb:<bits>"``, ``"mp:<bits>"`` or a :class:`Backend`.
        iterations: ``"converged"`` or ``"as_float"``, see :class:`reference.registry.Compiler`.
        exact_constants: stored float -> decimal for constants that stand for exact decimals.
    """

    def __init__(self, model: nn.Module, backend: Backend | str,
                 iterations: str = "converged",
                 exact_constants: dict[float, str] | None = None) -> None:
        self.model = model
        self.backend = as_backend(backend)
        self.iterations = iterations
        self.exact_constants = dict(exact_constants or {})
        with self.backend.active():
            root = Compiler(self.backend, iterations, self.exact_constants).compile(model)
        if not isinstance(root, RefBlock):
            raise InputTypeError(
                f"{type(model).__name__} compiled to a layer, not an invertible block")
        self.root = root

    def __repr__(self) -> str:
        return f"ReferenceModel({type(self.model).__name__}, {self.backend.name})"

    def at(self, prec: int) -> ReferenceModel:
        """The same model compiled at another precision."""
        return ReferenceModel(self.model, self.backend.at(prec), self.iterations,
                              self.exact_constants)

    def doubling(self, max_prec: int) -> Iterator[ReferenceModel]:
        """This model, then the same at twice its precision, four times, ..., while the
        precision stays within ``max_prec`` bits (this model itself always comes first): the
        retries of a result that is not yet accurate enough."""
        current = self
        while True:
            yield current
            prec = 2 * current.backend.prec
            if prec > max_prec:
                return
            current = current.at(prec)

    def convert(self, x: Any) -> RTensor:
        """Exact conversion of a torch tensor or numpy array (an RTensor passes through)."""
        if isinstance(x, RTensor):
            return x
        with self.backend.active():
            return RTensor.from_array(x, self.backend)

    def forward(self, x: Any) -> RTensor:
        """``F(x)``."""
        x = self.convert(x)
        with self.backend.active():
            return self.root.forward(x)

    def inverse(self, y: Any) -> RTensor:
        """``F^-1(y)``."""
        y = self.convert(y)
        with self.backend.active():
            return self.root.inverse(y)

    def leaves(self) -> list[RefBlock]:
        return self.root.leaves()

    def trace_forward(self, x: Any) -> list[RTensor]:
        """``[x, F_1(x), F_2(F_1(x)), ...]`` over the leaf blocks."""
        out = [self.convert(x)]
        with self.backend.active():
            for b in self.leaves():
                out.append(b.forward(out[-1]))
        return out

    def trace_inverse(self, y: Any) -> list[RTensor]:
        """``[y, F_L^-1(y), ..., F^-1(y)]``, last block first."""
        out = [self.convert(y)]
        with self.backend.active():
            for b in reversed(self.leaves()):
                out.append(b.inverse(out[-1]))
        return out

    def jacobian(self, x: Any) -> list[list[Scalar]]:
        """The exact Jacobian ``dF(x)/dx`` of one sample (``x`` of batch size 1), by forward
        mode: ``F`` applied to dual numbers seeded with the identity. Rows are outputs."""
        x = self.convert(x)
        if x.shape[0] != 1:
            raise InputError(f"jacobian needs a single sample (batch size 1), got shape {x.shape}")
        with self.backend.active():
            return self.root.forward(DualTensor.seed(x)).jacobian_rows()


def compile(model: nn.Module, backend: Backend | str = "arb:256",  # noqa: A001
            iterations: str = "converged",
            exact_constants: dict[float, str] | None = None) -> ReferenceModel:
    """The reference of ``model``: see :class:`ReferenceModel`."""
    return ReferenceModel(model, backend, iterations, exact_constants)
