"""The traced oracle: any PyTorch callable, captured as an ATen graph and run in ball arithmetic.

:func:`trace` captures a callable (an ``nn.Module``, a bound method such as an adapted model's
``forward`` or ``inverse``, a function) for one example input with :func:`torch.export.export`,
lowered to core ATen (``run_decompositions()``); where export cannot, with
:func:`torch.fx.experimental.proxy_tensor.make_fx` on fake tensors. Capturing runs the callable
on fake tensors only: no number of the model is computed by torch. Parameters, buffers and
constants become inputs of the graph, read exactly as dyadic rationals
(:meth:`reference.tensor.RTensor.from_array`); each ATen call is then evaluated from its definition
by :mod:`reference.interp` in the backend's arithmetic (``arb:<bits>`` balls, certified;
``mp:<bits>``, the cross-check).

A comparison whose ball straddles its threshold (a spline bin edge, a ``where`` condition) is
recomputed at twice the precision, up to ``max_prec`` bits, then refused with
:class:`~reference.interp.UndecidedComparisonError` naming the operation.

:func:`compile_traced` is the oracle of a whole invertible model (a lipbound block or any model
:func:`lipbound.adapters.adapt` accepts) with the interface of :func:`reference.compile`: every
leaf block's forward and inverse are traced (once per input shape) and evaluated as above.

>>> import torch, reference
>>> from lipbound.blocks import figure1_chain
>>> traced = reference.compile_traced(figure1_chain(2, "additive").double(), "arb:128")
>>> x = traced.inverse(torch.zeros(1, 2, dtype=torch.float64))   # x_2 = -2 t exactly
>>> x.to_numpy().tolist(), float(x.radii().max())
([[0.0, -0.246913578]], 0.0)
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lipbound.errors import InputError, InputTypeError, LipboundError

from .backends import Backend
from .blocks import RefBlock, RefSequential
from .interp import Context, UndecidedComparisonError, lookup, op_name
from .model import ReferenceModel, as_backend
from .registry import UnknownLayerError
from .tensor import DualTensor, RTensor, Tensorish

__all__ = ["TraceError", "TracedFunction", "TracedModel", "compile_traced", "oracle", "trace"]

#: Default precision cap of the retries of an undecided comparison.
MAX_PREC = 4096


class TraceError(LipboundError, RuntimeError):
    """Neither ``torch.export`` nor ``make_fx`` could capture the callable's graph."""


class _Call(nn.Module):
    """A callable as a module, so that export sees a bound method's module as a submodule (its
    parameters and buffers become graph inputs, not anonymous constants)."""

    def __init__(self, fn: Callable[[Tensor], Any]) -> None:
        super().__init__()
        self.method = None
        if isinstance(fn, nn.Module):
            self.owner, self.method = fn, "forward"
        elif inspect.ismethod(fn) and isinstance(fn.__self__, nn.Module):
            self.owner, self.method = fn.__self__, fn.__name__
        else:
            self.fn = fn

    def forward(self, x: Tensor) -> Any:
        if self.method is None:
            return self.fn(x)
        return getattr(self.owner, self.method)(x)


def _describe(fn: Any) -> str:
    if isinstance(fn, nn.Module):
        return type(fn).__name__
    if inspect.ismethod(fn):
        return f"{type(fn.__self__).__name__}.{fn.__name__}"
    return getattr(fn, "__qualname__", repr(fn))


CAPTURES = ("auto", "export", "make_fx")


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """torch's own messages (a failed export prints the partial graph and log records) held
    back while capturing: a failure reaches the caller as one :class:`TraceError`."""
    previous = logging.root.manager.disable
    with contextlib.redirect_stderr(io.StringIO()):
        logging.disable(logging.CRITICAL)
        try:
            yield
        finally:
            logging.disable(previous)


def _capture(fn: Callable[[Tensor], Any], example: Tensor, capture: str = "auto"
             ) -> tuple[torch.fx.GraphModule, dict[str, Tensor], list[str], str]:
    """``(graph module, tensors of the non-input placeholders and attributes, names of the user
    outputs, how it was captured)``."""
    if capture not in CAPTURES:
        raise InputError(f"capture must be one of {', '.join(CAPTURES)}, got {capture!r}")
    module = _Call(fn)
    with warnings.catch_warnings(), _quiet_torch():
        warnings.simplefilter("ignore")
        if capture == "make_fx":
            return _capture_make_fx(module, example)
        try:
            ep = torch.export.export(module, (example,), strict=False).run_decompositions()
        except Exception as export_error:  # noqa: BLE001 - any failure: try make_fx
            if capture == "export":
                raise TraceError(f"cannot capture the graph of {_describe(fn)} with torch.export: "
                                 f"{type(export_error).__name__}: {_first_line(export_error)}"
                                 ) from export_error
            try:
                return _capture_make_fx(module, example)
            except Exception as fx_error:  # noqa: BLE001
                raise TraceError(
                    f"cannot capture the graph of {_describe(fn)}: torch.export failed with "
                    f"{type(export_error).__name__}: {_first_line(export_error)}; make_fx "
                    f"failed with {type(fx_error).__name__}: {_first_line(fx_error)}"
                ) from fx_error
    tensors: dict[str, Tensor] = {}
    kinds = torch.export.graph_signature.InputKind
    for spec in ep.graph_signature.input_specs:
        name = spec.arg.name
        if spec.kind in (kinds.PARAMETER, kinds.BUFFER):
            tensors[name] = ep.state_dict[spec.target] if spec.target in ep.state_dict \
                else ep.constants[spec.target]
        elif spec.kind == kinds.CONSTANT_TENSOR:
            tensors[name] = ep.constants[spec.target]
        elif spec.kind == kinds.TOKEN:
            tensors[name] = None
    out_kind = torch.export.graph_signature.OutputKind.USER_OUTPUT
    outputs = [s.arg.name for s in ep.graph_signature.output_specs if s.kind == out_kind]
    return ep.graph_module, tensors, outputs, "torch.export"


def _capture_make_fx(module: nn.Module, example: Tensor
                     ) -> tuple[torch.fx.GraphModule, dict[str, Tensor], list[str], str]:
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(module, tracing_mode="fake", decomposition_table=core_aten_decompositions(),
                 _allow_non_fake_inputs=True)(example)  # parameters: real constants
    tensors = {n.name: getattr(gm, n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    out = next(n for n in gm.graph.nodes if n.op == "output")
    outputs = [a.name for a in torch.fx.node.map_aggregate(out.args[0], lambda a: a)
               if isinstance(a, torch.fx.Node)] if isinstance(out.args[0], (tuple, list)) \
        else [out.args[0].name]
    return gm, tensors, outputs, "make_fx"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


class TracedFunction:
    """A captured ATen graph of a callable for one input shape, evaluated in a backend.

    Attributes:
        graph: the ``torch.fx`` graph (core ATen).
        captured_with: ``"torch.export"`` or ``"make_fx"``.
        input_shape: the shape the graph was captured for.
    """

    def __init__(self, fn: Callable[[Tensor], Any], example_input: Tensor,
                 capture: str = "auto") -> None:
        if not isinstance(example_input, Tensor) or not example_input.is_floating_point():
            raise InputTypeError("example_input must be a floating-point torch.Tensor, got "
                                 f"{type(example_input).__name__}")
        if not callable(fn):
            raise InputTypeError(f"fn must be callable (a module, method or function), got "
                                 f"{type(fn).__name__}")
        self.name = _describe(fn)
        self.input_shape = tuple(example_input.shape)
        example = torch.zeros_like(example_input)  # only its shape and dtype matter (fake run)
        gm, self._tensors, self._outputs, self.captured_with = _capture(fn, example, capture)
        self.graph = gm.graph
        self._converted: dict[str, tuple[tuple[int, ...], dict[str, Any]]] = {}

    def __repr__(self) -> str:
        return (f"TracedFunction({self.name}, input_shape={self.input_shape}, "
                f"{len(self.ops())} ATen ops, via {self.captured_with})")

    def ops(self) -> list[str]:
        """The distinct operations of the graph."""
        return sorted({op_name(n.target) for n in self.graph.nodes if n.op == "call_function"})

    def _constants(self, backend: Backend) -> dict[str, Any]:
        """Parameters, buffers and constants, exactly: floats as RTensors (exact at any
        precision of the backend kind, so converted once per kind and reconverted when a
        tensor changed in place since), integers and booleans as numpy arrays."""
        versions = tuple(t._version for t in self._tensors.values() if isinstance(t, Tensor))
        cached = self._converted.get(backend.kind)
        if cached is None or cached[0] != versions:
            values: dict[str, Any] = {}
            for name, t in self._tensors.items():
                if t is None or not isinstance(t, Tensor):
                    values[name] = t
                elif t.is_floating_point():
                    values[name] = RTensor.from_array(t, backend)
                elif t.is_complex():
                    raise InputTypeError(f"{self.name}: complex tensor {name} is not supported")
                else:
                    values[name] = t.detach().cpu().numpy().copy()
            cached = self._converted[backend.kind] = (versions, values)
        return cached[1]

    def run(self, x: Any, backend: Backend | str) -> Any:
        """The graph at ``backend``'s precision (no retry): one RTensor for one output."""
        backend = as_backend(backend)
        if isinstance(x, Tensor):
            x = RTensor.from_array(x, backend)
        if not isinstance(x, (RTensor, DualTensor)):
            raise InputTypeError(f"x must be a torch.Tensor or RTensor, got {type(x).__name__}")
        if tuple(x.shape) != self.input_shape:
            raise InputError(f"{self.name} was traced for input shape {self.input_shape}, got "
                             f"{tuple(x.shape)}; trace it again for this shape")
        constants = self._constants(backend)
        ctx = Context(backend)
        env: dict[str, Any] = {}
        with backend.active():
            for node in self.graph.nodes:
                if node.op == "placeholder":
                    env[node.name] = constants[node.name] if node.name in constants else x
                elif node.op == "get_attr":
                    env[node.name] = constants[node.name]
                elif node.op == "call_function":
                    args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs),
                                                         lambda n: env[n.name])
                    ctx.op, ctx.node = op_name(node.target), node.name
                    env[node.name] = lookup(node.target)(ctx, *args, **kwargs)
        outs = [env[name] for name in self._outputs]
        outs = [ctx.tensor(o) if isinstance(o, np.ndarray) else o for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def evaluate(self, x: Any, backend: Backend | str = "arb:256", max_prec: int = MAX_PREC
                 ) -> Any:
        """The graph at ``backend``'s precision; where a comparison cannot be decided, again at
        twice the precision, up to ``max_prec`` bits, then
        :class:`~reference.interp.UndecidedComparisonError`."""
        backend = as_backend(backend)
        current = backend
        while True:
            try:
                return self.run(x, current)
            except UndecidedComparisonError as err:
                if 2 * current.prec > max_prec:
                    raise UndecidedComparisonError(
                        f"{self.name}: {err} (tried up to {current.prec} bits, the cap "
                        f"max_prec={max_prec}); the oracle refuses to guess the branch",
                        err.op, err.node) from err
                current = current.at(2 * current.prec)


def trace(fn: Callable[[Tensor], Any], example_input: Tensor, capture: str = "auto"
          ) -> TracedFunction:
    """Capture ``fn`` (a module, bound method or function of one tensor) for inputs of
    ``example_input``'s shape and dtype: see :class:`TracedFunction`. ``capture``: ``"auto"``
    (``torch.export``, then ``make_fx`` where export fails), ``"export"`` or ``"make_fx"``.

    >>> import torch, reference
    >>> f = reference.trace(torch.nn.Tanh(), torch.zeros(1, 2))
    >>> f.evaluate(torch.tensor([[0.5, -1.0]]), "arb:64").to_numpy().round(6).tolist()
    [[0.462117, -0.761594]]
    """
    return TracedFunction(fn, example_input, capture)


def _leaves(model: nn.Module) -> list[nn.Module]:
    from lipbound.blocks import InvertibleSequential

    if isinstance(model, InvertibleSequential):
        return list(model.flat_blocks())
    return [model]


def _leaf_name(leaf: nn.Module) -> str:
    """``FrEIABlock(AllInOneBlock)`` for an adapted module, the class name otherwise."""
    inner = getattr(leaf, "module", None)
    from lipbound.adapters.base import ForeignBlock

    if isinstance(leaf, ForeignBlock) and inner is not None:
        return f"{type(leaf).__name__}({type(inner).__name__})"
    return type(leaf).__name__


def _dtype(model: nn.Module) -> torch.dtype:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float64


class TracedModel(ReferenceModel):
    """The exact map of an invertible model from its captured graphs, with the interface of
    :class:`reference.ReferenceModel` (``forward``, ``inverse``, ``trace_forward``,
    ``jacobian``, ``at``, ...). Each leaf block's ``forward`` and ``inverse`` are traced for the
    input shape they are first called with (again for a new shape) with example inputs of the
    model's parameter dtype.

    Args:
        model: a lipbound :class:`~lipbound.blocks.InvertibleBlock` (an adapted foreign model
            included; see :func:`compile_traced`).
        backend: ``"arb:<bits>"``, ``"mp:<bits>"`` or a :class:`Backend`.
        max_prec: the cap of the retries of undecided comparisons.
    """

    def __init__(self, model: nn.Module, backend: Backend | str = "arb:256",
                 max_prec: int = MAX_PREC,
                 _traces: dict[tuple[Any, ...], TracedFunction] | None = None) -> None:
        from lipbound.blocks import require_block

        require_block(model, "model")
        self.model = model
        self.backend = as_backend(backend)
        self.iterations = "converged"
        self.exact_constants = {}
        if not isinstance(max_prec, int) or max_prec < self.backend.prec:
            raise InputError(f"max_prec must be an integer >= the backend's {self.backend.prec} "
                             f"bits, got {max_prec!r}")
        self.max_prec = max_prec
        self._traces = {} if _traces is None else _traces
        self.dtype = _dtype(model)
        blocks = [RefBlock(_leaf_name(leaf),
                           lambda x, leaf=leaf: self._apply(leaf, "forward", x),
                           lambda y, leaf=leaf: self._apply(leaf, "inverse", y))
                  for leaf in _leaves(model)]
        self.root = RefSequential(blocks)

    def __repr__(self) -> str:
        return f"TracedModel({type(self.model).__name__}, {self.backend.name})"

    def at(self, prec: int) -> TracedModel:
        return self.with_backend(self.backend.at(prec))

    def with_backend(self, backend: Backend | str) -> TracedModel:
        """The same model (sharing the captured graphs) in another backend."""
        backend = as_backend(backend)
        return TracedModel(self.model, backend, max(self.max_prec, backend.prec), self._traces)

    def traced(self, leaf: nn.Module, direction: str, shape: tuple[int, ...]) -> TracedFunction:
        """The captured graph of ``leaf.<direction>`` for inputs of ``shape`` (cached)."""
        key = (id(leaf), direction, shape)
        if key not in self._traces:
            example = torch.zeros(shape, dtype=self.dtype)
            self._traces[key] = trace(getattr(leaf, direction), example)
        return self._traces[key]

    def _apply(self, leaf: nn.Module, direction: str, x: Tensorish) -> Tensorish:
        return self.traced(leaf, direction, tuple(x.shape)).evaluate(x, self.backend,
                                                                      self.max_prec)


def compile_traced(model: Any, backend: Backend | str = "arb:256",
                   max_prec: int = MAX_PREC) -> TracedModel:
    """The traced oracle of ``model``: a lipbound block, or any model that
    :func:`lipbound.adapters.adapt` accepts (adapted first). See :class:`TracedModel`."""
    from lipbound.adapters import adapt

    return TracedModel(adapt(model), backend, max_prec)


def oracle(model: Any, backend: Backend | str = "arb:256", max_prec: int = MAX_PREC
           ) -> ReferenceModel:
    """The oracle of ``model`` (adapted first, see :func:`lipbound.adapters.adapt`): the
    hand-written reference (:func:`reference.compile`) when every block type has one, else the
    traced one (:func:`compile_traced`)."""
    from lipbound.adapters import adapt

    model = adapt(model)
    try:
        return ReferenceModel(model, backend)
    except UnknownLayerError:
        return TracedModel(model, backend, max_prec)
