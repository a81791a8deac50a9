"""The registry linking torch layer and block types to their reference implementations.

A reference builder takes the torch module and a :class:`Compiler` and returns the reference
object; it reads the module's stored parameters (converted exactly with
:meth:`Compiler.param`) and never calls the module. Register your own::

    import reference

    @reference.register(MyLayer)
    def _(module, compiler):
        w = compiler.param(module.weight)          # an exact RTensor
        return lambda x: x * w                      # any callable on RTensor / DualTensor

Types are matched exactly (a subclass may change the math, so it needs its own entry).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from lipbound.errors import InputError, InputTypeError

from .backends import Backend
from .tensor import RTensor

__all__ = ["Compiler", "ITERATIONS", "UnknownLayerError", "check_iterations", "register",
           "registered_types"]

Builder = Callable[[nn.Module, "Compiler"], Any]

_REGISTRY: dict[type, Builder] = {}


class UnknownLayerError(InputTypeError):
    """A module type without a reference implementation."""


def register(module_type: type) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(module, compiler)`` as the reference of ``module_type``."""
    if not isinstance(module_type, type):
        raise InputTypeError(f"module_type must be a class, got {module_type!r}")

    def decorate(builder: Builder) -> Builder:
        _REGISTRY[module_type] = builder
        return builder

    return decorate


def registered_types() -> list[type]:
    """The module types that have a reference."""
    return list(_REGISTRY)


ITERATIONS = ("converged", "as_float")


def check_iterations(iterations: str) -> None:
    """:class:`InputError` unless ``iterations`` is ``"converged"`` or ``"as_float"``."""
    if iterations not in ITERATIONS:
        raise InputError(f"iterations must be 'converged' or 'as_float', got {iterations!r}")


class Compiler:
    """Builds reference objects for a backend, converting parameters exactly.

    Args:
        backend: the arithmetic.
        iterations: ``"converged"`` (fixed points iterated and ODE flows integrated to the
            backend's precision) or ``"as_float"`` (the torch block's own iteration count or
            solver steps, run exactly; isolates truncation from rounding).
        exact_constants: stored float -> decimal string, for :class:`Constant` sub-networks whose
            stored value stands for an exact decimal (the Figure 1 toy's ``0.1``); the decimal
            replaces the stored float. Empty by default: stored values are used exactly.
    """

    def __init__(self, backend: Backend, iterations: str = "converged",
                 exact_constants: dict[float, str] | None = None) -> None:
        check_iterations(iterations)
        self.backend = backend
        self.iterations = iterations
        self.exact_constants = dict(exact_constants or {})

    def param(self, tensor: Tensor | None) -> RTensor | None:
        """The stored values of a parameter or buffer, exactly (``None`` passes through)."""
        if tensor is None:
            return None
        if not tensor.is_floating_point():
            raise InputTypeError(f"expected a floating-point parameter, got dtype {tensor.dtype}")
        return RTensor.from_array(tensor, self.backend)

    def number(self, value: float) -> RTensor:
        """A Python float, exactly, as a 0-dim tensor."""
        return RTensor.from_floats([float(value)], (), self.backend)

    def constant(self, tensor: Tensor) -> RTensor:
        """A stored constant: its decimal from ``exact_constants`` if listed, else exact."""
        value = float(tensor)
        if value in self.exact_constants:
            return RTensor([self.backend.from_decimal(self.exact_constants[value])], (),
                           self.backend)
        return self.number(value)

    def compile(self, module: nn.Module) -> Any:
        """The reference of ``module`` (exact type lookup in the registry)."""
        builder = _REGISTRY.get(type(module))
        if builder is None:
            t = type(module)
            raise UnknownLayerError(
                f"no reference implementation for {t.__module__}.{t.__qualname__}; register one "
                f"with @reference.register({t.__name__}) on a function (module, compiler) -> "
                "reference object (see reference.registry)"
            )
        return builder(module, self)
