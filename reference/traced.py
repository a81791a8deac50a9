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
Iterative blocks stop on data, which no capture holds: for lipbound's ``InvertibleResidual`` and
``NeuralODE`` it captures their parts (the residual branch ``g``, the vector field ``f``) and
runs the hand-written oracle's iteration on them (:func:`reference.blocks.fixed_point_inverse`,
:class:`reference.ode.FlowSolver`), so that the two oracles compute the same map.

Captures are cached (:func:`trace`): per module object, method, input shapes and dtypes, valid
while the module's :func:`state_key` (its tensors' identities and version counters, its plain
attributes) is unchanged, so one capture serves every oracle, backend, precision and call of
a model until it changes.

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
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lipbound.errors import InputError, InputTypeError, LipboundError

from .backends import Backend
from .blocks import RefBlock, RefSequential, fixed_point_inverse
from .interp import Context, UndecidedComparisonError, lookup, op_name
from .model import ReferenceModel, as_backend
from .ode import FlowSolver
from .registry import UnknownLayerError, check_iterations
from .tensor import DualTensor, RTensor, Tensorish

__all__ = ["TraceError", "TracedFunction", "TracedModel", "clear_trace_cache", "compile_traced",
           "oracle", "state_key", "trace"]

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

    def forward(self, *inputs: Tensor) -> Any:
        if self.method is None:
            return self.fn(*inputs)
        return getattr(self.owner, self.method)(*inputs)


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


Captured = tuple[torch.fx.GraphModule, dict[str, Tensor], list[str], list[str], str]


def _capture(fn: Callable[..., Any], examples: tuple[Tensor, ...], capture: str = "auto"
             ) -> Captured:
    """``(graph module, tensors of the non-input placeholders and attributes, names of the user
    inputs, names of the user outputs, how it was captured)``."""
    if capture not in CAPTURES:
        raise InputError(f"capture must be one of {', '.join(CAPTURES)}, got {capture!r}")
    module = _Call(fn)
    with warnings.catch_warnings(), _quiet_torch():
        warnings.simplefilter("ignore")
        if capture == "make_fx":
            return _capture_make_fx(module, examples)
        try:
            ep = torch.export.export(module, examples, strict=False).run_decompositions()
        except Exception as export_error:  # noqa: BLE001 - any failure: try make_fx
            if capture == "export":
                raise TraceError(f"cannot capture the graph of {_describe(fn)} with torch.export: "
                                 f"{type(export_error).__name__}: {_first_line(export_error)}"
                                 ) from export_error
            try:
                return _capture_make_fx(module, examples)
            except Exception as fx_error:  # noqa: BLE001
                raise TraceError(
                    f"cannot capture the graph of {_describe(fn)}: torch.export failed with "
                    f"{type(export_error).__name__}: {_first_line(export_error)}; make_fx "
                    f"failed with {type(fx_error).__name__}: {_first_line(fx_error)}"
                ) from fx_error
    tensors: dict[str, Tensor] = {}
    inputs: list[str] = []
    kinds = torch.export.graph_signature.InputKind
    for spec in ep.graph_signature.input_specs:
        name = spec.arg.name
        if spec.kind == kinds.USER_INPUT:
            inputs.append(name)
        elif spec.kind in (kinds.PARAMETER, kinds.BUFFER):
            tensors[name] = ep.state_dict[spec.target] if spec.target in ep.state_dict \
                else ep.constants[spec.target]
        elif spec.kind == kinds.CONSTANT_TENSOR:
            tensors[name] = ep.constants[spec.target]
        elif spec.kind == kinds.TOKEN:
            tensors[name] = None
    out_kind = torch.export.graph_signature.OutputKind.USER_OUTPUT
    outputs = [s.arg.name for s in ep.graph_signature.output_specs if s.kind == out_kind]
    return ep.graph_module, tensors, inputs, outputs, "torch.export"


def _capture_make_fx(module: nn.Module, examples: tuple[Tensor, ...]) -> Captured:
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(module, tracing_mode="fake", decomposition_table=core_aten_decompositions(),
                 _allow_non_fake_inputs=True)(*examples)  # parameters: real constants
    tensors = {n.name: getattr(gm, n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    inputs = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    out = next(n for n in gm.graph.nodes if n.op == "output")
    outputs = [a.name for a in torch.fx.node.map_aggregate(out.args[0], lambda a: a)
               if isinstance(a, torch.fx.Node)] if isinstance(out.args[0], (tuple, list)) \
        else [out.args[0].name]
    return gm, tensors, inputs, outputs, "make_fx"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


class TracedFunction:
    """A captured ATen graph of a callable for one input shape (one per input: a vector field
    ``f(t, x)`` takes two), evaluated in a backend.

    Attributes:
        graph: the ``torch.fx`` graph (core ATen).
        captured_with: ``"torch.export"`` or ``"make_fx"``.
        input_shape: the shape the graph was captured for (a tuple of shapes, one per input,
            for several inputs).
    """

    def __init__(self, fn: Callable[..., Any], example_input: Tensor | tuple[Tensor, ...],
                 capture: str = "auto") -> None:
        examples = _examples(example_input)
        if not callable(fn):
            raise InputTypeError(f"fn must be callable (a module, method or function), got "
                                 f"{type(fn).__name__}")
        self.name = _describe(fn)
        self.input_shapes = tuple(tuple(e.shape) for e in examples)
        self.input_shape = self.input_shapes[0] if len(examples) == 1 else self.input_shapes
        zeros = tuple(torch.zeros_like(e) for e in examples)  # only shape and dtype matter
        gm, self._tensors, self._inputs, self._outputs, self.captured_with = _capture(
            fn, zeros, capture)
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

    def _arguments(self, x: Any, backend: Backend) -> list[Tensorish]:
        """The inputs as reference tensors, checked against the captured shapes."""
        values = list(x) if isinstance(x, (tuple, list)) else [x]
        if len(values) != len(self.input_shapes):
            raise InputError(f"{self.name} was traced for {len(self.input_shapes)} inputs, got "
                             f"{len(values)}")
        out = []
        for i, (v, shape) in enumerate(zip(values, self.input_shapes, strict=True)):
            if isinstance(v, Tensor):
                v = RTensor.from_array(v, backend)
            if not isinstance(v, (RTensor, DualTensor)):
                raise InputTypeError(f"x must be a torch.Tensor or RTensor, got "
                                     f"{type(v).__name__}")
            if tuple(v.shape) != shape:
                which = f"input {i + 1}'s shape" if len(values) > 1 else "input shape"
                raise InputError(f"{self.name} was traced for {which} {shape}, got "
                                 f"{tuple(v.shape)}; trace it again for this shape")
            out.append(v)
        return out

    def run(self, x: Any, backend: Backend | str) -> Any:
        """The graph at ``backend``'s precision (no retry): one RTensor for one output. ``x``:
        the input, or a tuple of inputs for a graph of several."""
        backend = as_backend(backend)
        arguments = dict(zip(self._inputs, self._arguments(x, backend), strict=True))
        constants = self._constants(backend)
        ctx = Context(backend)
        env: dict[str, Any] = {}
        with backend.active():
            for node in self.graph.nodes:
                if node.op == "placeholder":
                    env[node.name] = constants[node.name] if node.name in constants \
                        else arguments[node.name]
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


def _examples(example_input: Any) -> tuple[Tensor, ...]:
    """The example inputs as a tuple of floating-point tensors (:class:`InputTypeError`
    otherwise)."""
    examples = tuple(example_input) if isinstance(example_input, (tuple, list)) \
        else (example_input,)
    bad = [e for e in examples if not isinstance(e, Tensor) or not e.is_floating_point()]
    if bad or not examples:
        what = type(bad[0]).__name__ if bad else "an empty tuple"
        raise InputTypeError("example_input must be a floating-point torch.Tensor (or a tuple "
                             f"of them, one per input), got {what}")
    return examples


# -- the trace cache -------------------------------------------------------------------------

#: Captured graphs of module methods: module -> {(method, input shapes and dtypes, capture):
#: (the module's state when captured, the graph)}. Weak keys: a module's graphs go with it.
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], tuple[Any, TracedFunction]]]
_CACHE = weakref.WeakKeyDictionary()

_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device)


def _plain(value: Any) -> Any:
    """A comparable stand-in for a plain attribute value (floats by ``repr``, so that NaN
    equals itself); ``None`` for a value that is not plain (not part of the state)."""
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, _PLAIN):
        return ("value", value)
    if isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value):
        return ("tuple", tuple(_plain(v) for v in value))
    return None


def _tensor_state(t: Tensor | None) -> Any:
    if t is None:
        return None
    try:
        return (id(t), t.data_ptr(), t._version, t.dtype, tuple(t.shape), t.device)
    except RuntimeError:  # tensors without storage or version counter
        return (id(t), t.dtype, tuple(t.shape), t.device)


def state_key(module: nn.Module) -> tuple[Any, ...]:
    """What a captured graph of ``module`` may depend on besides its inputs: every submodule's
    type and training flag, its parameters and buffers (identity, storage, version counter,
    dtype, shape, device: an in-place change, ``load_state_dict``, ``.double()`` or a new
    tensor all change it) and its plain attributes (numbers, strings, flags, tuples of them,
    and tensors held as plain attributes). Attributes of other types (a recorded
    ``ConvergenceInfo``, hooks) are not part of it."""
    parts: list[Any] = []
    for name, m in module.named_modules():
        attrs = []
        for key, value in sorted(vars(m).items()):
            if isinstance(value, Tensor):
                attrs.append((key, _tensor_state(value)))
            elif (plain := _plain(value)) is not None:
                attrs.append((key, plain))
        tensors = [(k, _tensor_state(t)) for k, t in (*m._parameters.items(),
                                                     *m._buffers.items())]
        parts.append((name, type(m), tuple(attrs), tuple(tensors)))
    return tuple(parts)


def _owner(fn: Any) -> tuple[nn.Module, str] | None:
    """``(module, method name)`` of a module or a bound method of one; ``None`` otherwise."""
    if isinstance(fn, nn.Module):
        return fn, "forward"
    if inspect.ismethod(fn) and isinstance(fn.__self__, nn.Module):
        return fn.__self__, fn.__name__
    return None


def clear_trace_cache() -> None:
    """Forget every captured graph (the next :func:`trace` of each callable captures again)."""
    _CACHE.clear()


def trace(fn: Callable[..., Any], example_input: Tensor | tuple[Tensor, ...],
          capture: str = "auto", cache: bool = True) -> TracedFunction:
    """Capture ``fn`` (a module, bound method or function of one tensor, or of several given
    as a tuple of example inputs) for inputs of the examples' shapes and dtypes: see
    :class:`TracedFunction`. ``capture``: ``"auto"`` (``torch.export``, then ``make_fx`` where
    export fails), ``"export"`` or ``"make_fx"``.

    With ``cache`` (the default), the graph of a module or of a module's bound method is kept
    and returned again for the same method, input shapes, dtypes and ``capture``, as long as
    the module's :func:`state_key` is unchanged: changing a weight in place, loading a state
    dict, casting or changing a plain attribute (a clamp constant, a flag) captures again.
    Plain functions (closures) are captured every time. :func:`clear_trace_cache` empties it.

    >>> import torch, reference
    >>> f = reference.trace(torch.nn.Tanh(), torch.zeros(1, 2))
    >>> f.evaluate(torch.tensor([[0.5, -1.0]]), "arb:64").to_numpy().round(6).tolist()
    [[0.462117, -0.761594]]
    """
    owner = _owner(fn) if cache else None
    if owner is None:
        return TracedFunction(fn, example_input, capture)
    module, method = owner
    examples = _examples(example_input)
    key = (method, tuple((tuple(e.shape), e.dtype) for e in examples), capture)
    entries = _CACHE.setdefault(module, {})
    hit = entries.get(key)
    if hit is not None and hit[0] == state_key(module):
        return hit[1]
    traced = TracedFunction(fn, examples, capture)
    # the state after capturing: a first call may set attributes (a layer's "called" flag)
    entries[key] = (state_key(module), traced)
    return traced


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
    r"""The exact map of an invertible model from its captured graphs, with the interface of
    :class:`reference.ReferenceModel` (``forward``, ``inverse``, ``trace_forward``,
    ``jacobian``, ``at``, ...). Each leaf block's ``forward`` and ``inverse`` are traced for the
    input shape they are first called with (again for a new shape) with example inputs of the
    model's parameter dtype; graphs are shared through :func:`trace`'s cache (across backends,
    precisions, oracles of the same model and calls, until the model changes).

    The iterative blocks, whose loops stop on data (no graph captures them), run the
    hand-written oracle's iteration on captured graphs of their parts, so that both oracles
    compute the same map:

    * :class:`~lipbound.blocks.InvertibleResidual` ``F(x) = x + g(x)``: the forward is the
      captured ``forward``; the inverse is :func:`reference.blocks.fixed_point_inverse` (the
      fixed point ``x_{k+1} = y - g(x_k)``) on the captured graph of the residual branch ``g``,
      with the same stopping rule and a-posteriori widening (``"converged"``) or the float
      run's iteration count (``"as_float"``).
    * :class:`~lipbound.blocks.NeuralODE`: ``"converged"`` integrates the exact time-``T`` flow
      (:class:`reference.ode.FlowSolver`, extrapolated) of the captured vector field
      ``f(t, x)``; ``"as_float"`` evaluates the captured graphs of the block's own fixed-step
      solver (``forward``, ``inverse``). That graph is the hand-written fixed-step map
      (``FlowSolver(exact=False)``) except for the solver's constants, which the code rounds to
      float64 (``h = T / steps``, the times ``t_0 + i h``, ``h / 2``, ``h / 6``) and the
      hand-written oracle takes exactly: the two differ by that rounding (relative ~1e-16).

    Args:
        model: a lipbound :class:`~lipbound.blocks.InvertibleBlock` (an adapted foreign model
            included; see :func:`compile_traced`).
        backend: ``"arb:<bits>"``, ``"mp:<bits>"`` or a :class:`Backend`.
        max_prec: the cap of the retries of undecided comparisons.
        iterations: ``"converged"`` or ``"as_float"``, as for :class:`reference.ReferenceModel`.
    """

    def __init__(self, model: nn.Module, backend: Backend | str = "arb:256",
                 max_prec: int = MAX_PREC, iterations: str = "converged") -> None:
        from lipbound.blocks import require_block

        require_block(model, "model")
        check_iterations(iterations)
        self.model = model
        self.backend = as_backend(backend)
        self.iterations = iterations
        self.exact_constants = {}
        if not isinstance(max_prec, int) or max_prec < self.backend.prec:
            raise InputError(f"max_prec must be an integer >= the backend's {self.backend.prec} "
                             f"bits, got {max_prec!r}")
        self.max_prec = max_prec
        self.dtype = _dtype(model)
        # graphs by (callable's owner, method, input shapes), checked against the model's
        # state once per call of forward, inverse, ... (not per leaf call: an ODE solve
        # evaluates its field thousands of times)
        self._graphs: dict[tuple[Any, ...], TracedFunction] = {}
        self._state: tuple[Any, ...] | None = None
        self.root = RefSequential([self._block(leaf) for leaf in _leaves(model)])

    def __repr__(self) -> str:
        return f"TracedModel({type(self.model).__name__}, {self.backend.name})"

    def at(self, prec: int) -> TracedModel:
        return self.with_backend(self.backend.at(prec))

    def with_backend(self, backend: Backend | str) -> TracedModel:
        """The same model (sharing the captured graphs) in another backend."""
        backend = as_backend(backend)
        return TracedModel(self.model, backend, max(self.max_prec, backend.prec),
                           self.iterations)

    def traced(self, fn: Callable[..., Any], *shapes: tuple[int, ...]) -> TracedFunction:
        """The captured graph of ``fn`` (a leaf block's method or a module) for inputs of
        ``shapes``, in the model's dtype (through :func:`trace`'s cache)."""
        owner = _owner(fn)
        key = (id(owner[0]), owner[1], shapes) if owner is not None else None
        graph = self._graphs.get(key) if key is not None else None
        if graph is None:
            graph = trace(fn, tuple(torch.zeros(s, dtype=self.dtype) for s in shapes))
            if key is not None:
                self._graphs[key] = graph
        return graph

    def _check_state(self) -> None:
        """Forget this oracle's graphs when the model changed since the last call (weights,
        casts, plain attributes: :func:`state_key`); :func:`trace` then captures again."""
        state = state_key(self.model)
        if state != self._state:
            self._graphs.clear()
            self._state = state

    def forward(self, x: Any) -> RTensor:
        self._check_state()
        return super().forward(x)

    def inverse(self, y: Any) -> RTensor:
        self._check_state()
        return super().inverse(y)

    def trace_forward(self, x: Any) -> list[RTensor]:
        self._check_state()
        return super().trace_forward(x)

    def trace_inverse(self, y: Any) -> list[RTensor]:
        self._check_state()
        return super().trace_inverse(y)

    def jacobian(self, x: Any) -> list[list[Any]]:
        self._check_state()
        return super().jacobian(x)

    def _apply(self, fn: Callable[..., Any], *inputs: Tensorish,
               backend: Backend | None = None) -> Tensorish:
        f = self.traced(fn, *(tuple(v.shape) for v in inputs))
        return f.evaluate(inputs if len(inputs) > 1 else inputs[0], backend or self.backend,
                          self.max_prec)

    def _block(self, leaf: nn.Module) -> RefBlock:
        from lipbound.blocks import InvertibleResidual, NeuralODE

        if isinstance(leaf, InvertibleResidual):
            return self._residual(leaf)
        if isinstance(leaf, NeuralODE):
            return self._ode(leaf)
        return RefBlock(_leaf_name(leaf), lambda x: self._apply(leaf.forward, x),
                        lambda y: self._apply(leaf.inverse, y))

    def _residual(self, leaf: nn.Module) -> RefBlock:
        ref = RefBlock(_leaf_name(leaf), lambda x: self._apply(leaf.forward, x), lambda y: y,
                       iterative=True)

        def inverse(y: RTensor) -> RTensor:
            x, ref.last_convergence = fixed_point_inverse(
                lambda v: self._apply(leaf.g, v), y, self.backend, self.iterations, leaf)
            return x

        ref._inverse = inverse
        return ref

    def _ode(self, leaf: nn.Module) -> RefBlock:
        name = _leaf_name(leaf)
        if self.iterations == "as_float":
            return RefBlock(name, lambda x: self._apply(leaf.forward, x),
                            lambda y: self._apply(leaf.inverse, y), iterative=True)

        def field(t: RTensor, x: Tensorish) -> Tensorish:
            # at the solver's working precision (its guard bits), not the model's
            return self._apply(leaf.f, t, x, backend=self.backend.working())

        solver = FlowSolver(field, leaf.T, self.backend, leaf.method, leaf.steps, exact=True)
        return RefBlock(name, lambda x: solver.solve(x, reverse=False),
                        lambda y: solver.solve(y, reverse=True), iterative=True)


def compile_traced(model: Any, backend: Backend | str = "arb:256",
                   max_prec: int = MAX_PREC, iterations: str = "converged") -> TracedModel:
    """The traced oracle of ``model``: a lipbound block, or any model that
    :func:`lipbound.adapters.adapt` accepts (adapted first). See :class:`TracedModel`."""
    from lipbound.adapters import adapt

    return TracedModel(adapt(model), backend, max_prec, iterations)


def oracle(model: Any, backend: Backend | str = "arb:256", max_prec: int = MAX_PREC,
           iterations: str = "converged") -> ReferenceModel:
    """The oracle of ``model`` (adapted first, see :func:`lipbound.adapters.adapt`): the
    hand-written reference (:func:`reference.compile`) when every block type has one, else the
    traced one (:func:`compile_traced`)."""
    from lipbound.adapters import adapt

    model = adapt(model)
    try:
        return ReferenceModel(model, backend, iterations)
    except UnknownLayerError:
        return TracedModel(model, backend, max_prec, iterations)
