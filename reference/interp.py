"""Ball-arithmetic evaluation of captured ATen graphs: the operation registry.

A captured graph (:mod:`reference.traced`) is a list of ATen calls. Each is evaluated here from its
documented mathematical definition, in the backend's arithmetic, on three kinds of values:

* floating-point tensors: :class:`~reference.tensor.RTensor` (or
  :class:`~reference.tensor.DualTensor`, for exact Jacobians);
* integer and boolean tensors: numpy arrays. They hold constant indices and masks (read from the
  graph's constants) and the results of comparisons, which are *decided*: a comparison whose ball
  straddles the threshold raises :class:`UndecidedComparisonError` (the caller retries at a higher
  precision, then refuses), it never guesses;
* Python scalars and lists, as in the graph.

Every layout operation (view, permute, expand, slice, select, index, gather, cat, flip, ...) is the
same numpy operation applied to the tensor's index grid followed by one
:meth:`~reference.tensor.RTensor.take`, so the oracle implements ATen's indexing rules through
numpy's, not by calling torch.

Continuous piecewise functions (``relu``, ``leaky_relu``, ``elu``, ``clamp``, ``abs``,
``softplus``) enclose both branches where a ball straddles the branch point (a valid enclosure of
a continuous function); only comparisons, whose results are discontinuous, must be decided.

Register an implementation for an ATen operation the oracle does not know::

    import torch, reference

    @reference.register_op(torch.ops.aten.sinh.default)
    def _(ctx, x):
        return ctx.elementwise(x, my_sinh)   # an Elementwise with its derivative
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import flint
import mpmath
import numpy as np
import torch

from lipbound.errors import InputTypeError, LipboundError

from . import functions as fn
from .backends import Backend, Scalar
from .layers import Conv2dMap
from .tensor import DualTensor, Elementwise, RTensor, Tensorish

__all__ = ["Context", "UndecidedComparisonError", "UnsupportedOpError", "register_op",
           "registered_ops"]

aten = torch.ops.aten
OpImpl = Callable[..., Any]
_OPS: dict[Any, OpImpl] = {}


class UnsupportedOpError(LipboundError, NotImplementedError):
    """A captured graph uses an ATen operation the oracle has no implementation of."""


class UndecidedComparisonError(LipboundError, ArithmeticError):
    """A comparison in a captured graph cannot be decided: its ball straddles the threshold.

    ``op`` names the ATen operation and ``node`` the graph node."""

    def __init__(self, message: str, op: str = "", node: str = "") -> None:
        super().__init__(message)
        self.op, self.node = op, node


def op_name(target: Any) -> str:
    """``aten.add.Tensor`` for an ATen overload; ``repr`` of anything else."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}.{target._overloadname}"
    name = getattr(target, "__name__", None)
    module = getattr(target, "__module__", None)
    return f"{module.lstrip('_')}.{name}" if name and module else str(name or target)


def register_op(*targets: Any) -> Callable[[OpImpl], OpImpl]:
    """Decorator: register ``impl(ctx, *args, **kwargs)`` for ATen operations.

    A target is an overload (``torch.ops.aten.add.Tensor``), a packet (``torch.ops.aten.add``,
    all its overloads) or any other graph call target (``operator.getitem``). ``ctx`` is the
    :class:`Context` (backend, helpers); arguments come as in the graph, tensors converted (see
    the module docstring)."""
    for t in targets:
        if not callable(t):
            raise InputTypeError(f"register_op needs ATen operations, got {t!r}")

    def decorate(impl: OpImpl) -> OpImpl:
        for t in targets:
            _OPS[t] = impl
        return impl

    return decorate


def registered_ops() -> list[str]:
    """Names of the operations the oracle implements."""
    return sorted(op_name(t) for t in _OPS)


def lookup(target: Any) -> OpImpl:
    """The implementation of a graph call target, or :class:`UnsupportedOpError`."""
    impl = _OPS.get(target)
    if impl is None and isinstance(target, torch._ops.OpOverload):
        impl = _OPS.get(target.overloadpacket)
    if impl is None:
        name = op_name(target)
        where = f"torch.ops.{name}" if isinstance(target, torch._ops.OpOverload) else name
        raise UnsupportedOpError(
            f"the traced oracle has no implementation of {name}; register one with "
            f"@reference.register_op({where}) on a function (ctx, *args, **kwargs) -> "
            "value written against ctx.backend (see reference.interp)")
    return impl


# -- the evaluation context ------------------------------------------------------------------

def _mp_undecided(bk: Backend, diff: Scalar, a: Scalar, b: Scalar) -> bool:
    """mpmath has no radius: a difference within ``2^(8 - prec)`` of the operands' size, 0
    included, is treated as undecided (the comparison could go either way after rounding; a
    difference of exactly 0 may be rounding too). An estimate, not a proof: arb decides with
    certainty."""
    size = max(abs(a), abs(b))
    return abs(diff) <= size * mpmath.ldexp(1, 8 - bk.prec)


class Context:
    """What an operation implementation gets: the backend and value helpers."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.node = ""  # the graph node being evaluated, for error messages
        self.op = ""

    # conversions
    def tensor(self, v: Any, like: Tensorish | None = None) -> Tensorish:
        """A float value: RTensors pass through, numpy arrays and Python numbers convert
        exactly."""
        if isinstance(v, (RTensor, DualTensor)):
            return v
        if isinstance(v, np.ndarray):
            return RTensor.from_array(v.astype(np.float64), self.backend)
        if isinstance(v, (bool, int, float)):
            return RTensor.from_floats([float(v)], (), self.backend)
        raise InputTypeError(f"{self.op}: expected a tensor or number, got {type(v).__name__}")

    @staticmethod
    def is_real(v: Any) -> bool:
        return isinstance(v, (RTensor, DualTensor))

    def elementwise(self, x: Any, f: Elementwise) -> Tensorish:
        return self.tensor(x).apply(f)

    def layout(self, x: Any, f: Callable[[np.ndarray], np.ndarray]) -> Any:
        """A layout operation ``f`` written on numpy arrays: on the index grid (then ``take``) for
        a real tensor, directly on an integer or boolean array."""
        if isinstance(x, np.ndarray):
            return np.asarray(f(x))
        return x.take(np.asarray(f(x.index_grid())))

    def decide(self, diff: Tensorish, a: Tensorish, b: Tensorish) -> np.ndarray:
        """The signs of ``diff`` (``a - b``) entry by entry: ``1``, ``0`` or ``-1``;
        :class:`UndecidedComparisonError` when a ball contains 0 and is not exactly 0."""
        bk = self.backend
        diff = diff.value if isinstance(diff, DualTensor) else diff
        a = a.value if isinstance(a, DualTensor) else a
        b = b.value if isinstance(b, DualTensor) else b
        out = np.empty(diff.numel, dtype=np.int8)
        av = _broadcast_data(a, diff.shape)
        bv = _broadcast_data(b, diff.shape)
        for k, v in enumerate(diff.data):
            if bk.kind == "arb":
                if v > 0:
                    out[k] = 1
                elif v < 0:
                    out[k] = -1
                elif v.is_exact() and v.is_zero():
                    out[k] = 0
                else:
                    out[k] = 2
            else:
                out[k] = 2 if _mp_undecided(bk, v, av[k], bv[k]) else (1 if v > 0 else -1)
        if (out == 2).any():
            k = int(np.argmax(out == 2))
            raise UndecidedComparisonError(
                f"{self.op} (graph node {self.node!r}) cannot be decided at "
                f"{bk.prec} bits: entry {k} ({bk.short(av[k])} against {bk.short(bv[k])}) "
                "straddles the threshold", self.op, self.node)
        return out.reshape(diff.shape)


def _broadcast_data(t: RTensor, shape: tuple[int, ...]) -> list[Scalar]:
    if t.shape == shape:
        return t.data
    grid = np.broadcast_to(t.index_grid(), shape).ravel().tolist()
    return [t.data[i] for i in grid]


def _is_int(v: Any) -> bool:
    return isinstance(v, np.ndarray)


def _numbers(*vals: Any) -> bool:
    return all(isinstance(v, (np.ndarray, bool, int, float)) for v in vals)


# -- bookkeeping -----------------------------------------------------------------------------

@register_op(aten._assert_tensor_metadata, aten._assert_scalar, aten.sym_constrain_range_for_size,
             aten.sym_constrain_range)
def _noop(ctx: Context, *args: Any, **kwargs: Any) -> None:
    return None


# Python arithmetic on sizes (symbolic shapes of data-dependent results)
for _f in (operator.ge, operator.gt, operator.le, operator.lt, operator.eq, operator.ne,
           operator.add, operator.sub, operator.mul, operator.floordiv, operator.mod,
           operator.neg, operator.truediv):
    register_op(_f)(lambda ctx, *args, _f=_f: _f(*args))


@register_op(operator.getitem)
def _getitem(ctx: Context, seq: Any, i: int) -> Any:
    return seq[i]


@register_op(torch.ops.higher_order.with_effects)
def _with_effects(ctx: Context, token: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    """An effectful call (an error check): evaluated, its token passed through."""
    if op is aten._linalg_check_errors.default:
        return (token, None)
    return (token, lookup(op)(ctx, *args, **kwargs))


@register_op(aten.clone, aten.alias, aten.detach, aten.lift_fresh_copy, aten.contiguous)
def _identity(ctx: Context, x: Any, **kwargs: Any) -> Any:
    return x


@register_op(aten._to_copy, aten.to)
def _to_copy(ctx: Context, x: Any, *args: Any, dtype: torch.dtype | None = None,
             **kwargs: Any) -> Any:
    """A dtype change. Between floating dtypes the oracle keeps the exact value (the float run
    rounds; the exact map does not). Integer and boolean arrays convert exactly to floats; a
    float tensor is never converted to integers (that would need a decided rounding)."""
    if dtype is None or not isinstance(dtype, torch.dtype):
        return x
    if dtype.is_floating_point:
        return ctx.tensor(x) if isinstance(x, np.ndarray) else x
    if isinstance(x, np.ndarray):
        return x.astype(np.bool_ if dtype == torch.bool else np.int64)
    raise UnsupportedOpError(f"{ctx.op}: converting a real tensor to {dtype} is not supported")


# -- construction ----------------------------------------------------------------------------

def _np_dtype(dtype: torch.dtype | None) -> Any:
    if dtype is None or dtype.is_floating_point:
        return None
    return np.bool_ if dtype == torch.bool else np.int64


def _filled(ctx: Context, shape: Sequence[int], value: float, dtype: torch.dtype | None) -> Any:
    npd = _np_dtype(dtype)
    if npd is not None:
        return np.full(tuple(shape), value, dtype=npd)
    return RTensor(ctx.backend.from_floats([float(value)]) * math.prod(shape), tuple(shape),
                   ctx.backend)


@register_op(aten.scalar_tensor)
def _scalar_tensor(ctx: Context, value: float, dtype: torch.dtype | None = None,
                   **kwargs: Any) -> Any:
    return _filled(ctx, (), value, dtype)


@register_op(aten.full)
def _full(ctx: Context, size: Sequence[int], value: float, dtype: torch.dtype | None = None,
          **kwargs: Any) -> Any:
    return _filled(ctx, size, value, dtype)


@register_op(aten.zeros, aten.ones)
def _zeros(ctx: Context, size: Sequence[int], dtype: torch.dtype | None = None,
           **kwargs: Any) -> Any:
    return _filled(ctx, size, 0.0 if ctx.op.startswith("aten.zeros") else 1.0, dtype)


@register_op(aten.arange)
def _arange(ctx: Context, *args: Any, dtype: torch.dtype | None = None, **kwargs: Any) -> Any:
    values = np.arange(*args)
    npd = _np_dtype(dtype) if dtype is not None else (
        np.int64 if all(isinstance(a, int) for a in args) else None)
    return values.astype(npd) if npd is not None else ctx.tensor(values.astype(np.float64))


# -- layout ----------------------------------------------------------------------------------

def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape)


def _resolve(shape: Sequence[int], numel: int) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        shape = tuple(numel // known if s == -1 else s for s in shape)
    return shape


@register_op(aten.view, aten._unsafe_view, aten.reshape)
def _view(ctx: Context, x: Any, shape: Sequence[int]) -> Any:
    shape = _resolve(shape, math.prod(_shape(x)))
    return x.reshape(shape) if not isinstance(x, np.ndarray) else x.reshape(shape)


@register_op(aten.permute)
def _permute(ctx: Context, x: Any, dims: Sequence[int]) -> Any:
    return ctx.layout(x, lambda g: np.transpose(g, dims))


@register_op(aten.t)
def _t(ctx: Context, x: Any) -> Any:
    return ctx.layout(x, lambda g: g.T)


@register_op(aten.transpose)
def _transpose(ctx: Context, x: Any, a: int, b: int) -> Any:
    return ctx.layout(x, lambda g: np.swapaxes(g, a, b))


@register_op(aten.expand)
def _expand(ctx: Context, x: Any, size: Sequence[int], **kwargs: Any) -> Any:
    def f(g: np.ndarray) -> np.ndarray:
        lead = len(size) - g.ndim
        target = tuple(g.shape[i - lead] if s == -1 else s for i, s in enumerate(size))
        return np.broadcast_to(g, target)
    return ctx.layout(x, f)


@register_op(aten.unsqueeze)
def _unsqueeze(ctx: Context, x: Any, dim: int) -> Any:
    return ctx.layout(x, lambda g: np.expand_dims(g, dim if dim >= 0 else dim + g.ndim + 1))


@register_op(aten.squeeze)
def _squeeze(ctx: Context, x: Any, dim: Any = None) -> Any:
    def f(g: np.ndarray) -> np.ndarray:
        dims = range(g.ndim) if dim is None else ([dim] if isinstance(dim, int) else dim)
        axes = tuple(d % g.ndim for d in dims if g.shape[d] == 1) if g.ndim else ()
        return np.squeeze(g, axis=axes)
    return ctx.layout(x, f)


@register_op(aten.flip)
def _flip(ctx: Context, x: Any, dims: Sequence[int]) -> Any:
    return ctx.layout(x, lambda g: np.flip(g, tuple(dims)))


@register_op(aten.slice)
def _slice(ctx: Context, x: Any, dim: int = 0, start: int | None = None, end: int | None = None,
           step: int = 1) -> Any:
    def f(g: np.ndarray) -> np.ndarray:
        index = [slice(None)] * g.ndim
        index[dim] = slice(start, min(end, g.shape[dim]) if end is not None else None, step)
        return g[tuple(index)]
    return ctx.layout(x, f)


@register_op(aten.select)
def _select(ctx: Context, x: Any, dim: int, index: int) -> Any:
    return ctx.layout(x, lambda g: np.take(g, index, axis=dim))


@register_op(aten.index_select)
def _index_select(ctx: Context, x: Any, dim: int, index: np.ndarray) -> Any:
    return ctx.layout(x, lambda g: np.take(g, _index(ctx, index), axis=dim))


def _index(ctx: Context, index: Any) -> np.ndarray:
    if not isinstance(index, np.ndarray):
        raise UnsupportedOpError(f"{ctx.op} (graph node {ctx.node!r}): indices computed from real "
                                 "values are not supported, only constant or decided ones")
    return index


@register_op(aten.index)
def _index_tensor(ctx: Context, x: Any, indices: Sequence[Any]) -> Any:
    key = tuple(slice(None) if i is None else _index(ctx, i) for i in indices)
    return ctx.layout(x, lambda g: g[key])


@register_op(aten.gather)
def _gather(ctx: Context, x: Any, dim: int, index: Any, **kwargs: Any) -> Any:
    return ctx.layout(x, lambda g: np.take_along_axis(g, _index(ctx, index), axis=dim))


def _combine(ctx: Context, parts: Sequence[Any]) -> tuple[Any, list[np.ndarray]]:
    """All parts' entries in one flat tensor, and each part's index grid into it."""
    if all(isinstance(p, np.ndarray) for p in parts):
        flat = np.concatenate([p.ravel() for p in parts])
    else:
        reals = _lift([ctx.tensor(p) for p in parts])
        flat = reals[0].reshape(reals[0].numel)
        for p in reals[1:]:
            flat = flat.stack_with(p)
    grids, offset = [], 0
    for p in parts:
        n = math.prod(_shape(p))
        grids.append(offset + np.arange(n).reshape(_shape(p)))
        offset += n
    return flat, grids


def _lift(values: list[Tensorish]) -> list[Tensorish]:
    """Constants as dual numbers with a zero tangent when any value is dual (so that they can be
    concatenated with it)."""
    duals = [v for v in values if isinstance(v, DualTensor)]
    if not duals:
        return values
    n = duals[0].directions
    out = []
    for v in values:
        if isinstance(v, RTensor):
            zero = v.backend.zero()
            v = DualTensor(v, RTensor([zero] * (n * v.numel), (n,) + v.shape, v.backend))
        out.append(v)
    return out


def _gather_flat(flat: Any, index: np.ndarray) -> Any:
    return flat[index] if isinstance(flat, np.ndarray) else flat.take(index)


@register_op(aten.cat)
def _cat(ctx: Context, tensors: Sequence[Any], dim: int = 0) -> Any:
    parts = [t for t in tensors if math.prod(_shape(t)) or len(_shape(t)) != 1]
    flat, grids = _combine(ctx, parts)
    return _gather_flat(flat, np.concatenate(grids, axis=dim))


@register_op(aten.stack)
def _stack(ctx: Context, tensors: Sequence[Any], dim: int = 0) -> Any:
    flat, grids = _combine(ctx, tensors)
    return _gather_flat(flat, np.stack(grids, axis=dim))


@register_op(aten.split_with_sizes)
def _split_with_sizes(ctx: Context, x: Any, sizes: Sequence[int], dim: int = 0) -> list[Any]:
    bounds = np.cumsum(sizes)[:-1].tolist()
    return [ctx.layout(x, lambda g, k=k: np.split(g, bounds, axis=dim)[k])
            for k in range(len(sizes))]


@register_op(aten.split)
def _split(ctx: Context, x: Any, size: int, dim: int = 0) -> list[Any]:
    n = _shape(x)[dim]
    return _split_with_sizes(ctx, x, [min(size, n - s) for s in range(0, n, size)], dim)


@register_op(aten.unbind)
def _unbind(ctx: Context, x: Any, dim: int = 0) -> list[Any]:
    return [_select(ctx, x, dim, k) for k in range(_shape(x)[dim])]


@register_op(aten.index_put)
def _index_put(ctx: Context, x: Any, indices: Sequence[Any], values: Any,
               accumulate: bool = False) -> Any:
    """``x`` with ``x[indices] = values`` (``accumulate``: ``x[indices] += values``)."""
    key = tuple(slice(None) if i is None else _index(ctx, i) for i in indices)
    if accumulate:
        raise UnsupportedOpError(f"{ctx.op}: accumulate=True is not supported")
    if isinstance(x, np.ndarray) and isinstance(values, np.ndarray):
        out = x.copy()
        out[key] = values
        return out
    x, values = _lift([ctx.tensor(x), ctx.tensor(values)])
    both = x.reshape(x.numel).stack_with(values.reshape(values.numel))
    index = x.index_grid().copy()
    target = index[key].shape
    index[key] = x.numel + np.broadcast_to(np.arange(values.numel).reshape(values.shape), target)
    return both.take(index)


@register_op(aten.where)
def _where(ctx: Context, cond: Any, a: Any, b: Any) -> Any:
    cond = np.asarray(_index(ctx, cond), dtype=bool)
    if _numbers(a, b):
        return np.where(cond, a, b)
    a, b = ctx.tensor(a), ctx.tensor(b)
    shape = np.broadcast_shapes(cond.shape, a.shape, b.shape)
    flat, (ga, gb) = _combine(ctx, [a, b])
    return _gather_flat(flat, np.where(np.broadcast_to(cond, shape),
                                       np.broadcast_to(ga, shape), np.broadcast_to(gb, shape)))


@register_op(aten.masked_fill)
def _masked_fill(ctx: Context, x: Any, mask: Any, value: Any) -> Any:
    return _where(ctx, mask, value, x)


# -- comparisons and logic -------------------------------------------------------------------

def _compare(test: Callable[[np.ndarray], np.ndarray],
             numpy_op: Callable[[Any, Any], Any]) -> OpImpl:
    def impl(ctx: Context, a: Any, b: Any) -> Any:
        if _numbers(a, b):
            return np.asarray(numpy_op(a, b))
        ta, tb = ctx.tensor(a), ctx.tensor(b)
        return test(ctx.decide(ta - tb, ta, tb))
    return impl


for _packet, _test, _np_op in (
        (aten.eq, lambda s: s == 0, operator.eq), (aten.ne, lambda s: s != 0, operator.ne),
        (aten.lt, lambda s: s < 0, operator.lt), (aten.le, lambda s: s <= 0, operator.le),
        (aten.gt, lambda s: s > 0, operator.gt), (aten.ge, lambda s: s >= 0, operator.ge)):
    register_op(_packet)(_compare(_test, _np_op))

register_op(aten.logical_not)(lambda ctx, a: np.logical_not(_index(ctx, a)))
register_op(aten.logical_and, aten.bitwise_and)(lambda ctx, a, b: np.logical_and(a, b))
register_op(aten.logical_or, aten.bitwise_or)(lambda ctx, a, b: np.logical_or(a, b))
register_op(aten.bitwise_not)(lambda ctx, a: np.logical_not(a) if a.dtype == bool else ~a)


# -- arithmetic ------------------------------------------------------------------------------

def _arith(numpy_op: Callable[[Any, Any], Any], op: Callable[[Any, Any], Any],
           with_alpha: bool = False) -> OpImpl:
    def impl(ctx: Context, a: Any, b: Any, alpha: float = 1) -> Any:
        if _numbers(a, b) and (isinstance(a, np.ndarray) or isinstance(b, np.ndarray)):
            return numpy_op(a, b * alpha)
        b = ctx.tensor(b)
        if alpha != 1:
            b = b * ctx.tensor(alpha)
        return op(ctx.tensor(a), b)
    return impl


register_op(aten.add)(_arith(operator.add, operator.add))
register_op(aten.sub)(_arith(operator.sub, operator.sub))
register_op(aten.rsub)(_arith(lambda a, b: b - a, lambda a, b: b - a))
register_op(aten.mul)(_arith(operator.mul, operator.mul))


@register_op(aten.div)
def _div(ctx: Context, a: Any, b: Any, rounding_mode: str | None = None) -> Any:
    if rounding_mode is not None:
        raise UnsupportedOpError(f"{ctx.op}: rounding_mode={rounding_mode!r} is not supported")
    return ctx.tensor(a) / ctx.tensor(b)


@register_op(aten.neg)
def _neg(ctx: Context, x: Any) -> Any:
    return -x


def _reciprocal(bk: Backend, v: Scalar) -> Scalar:
    return 1 / v


RECIPROCAL = Elementwise("reciprocal", _reciprocal, lambda bk, v: -1 / (v * v))
LOG = Elementwise("log", lambda bk, v: bk.log(v), lambda bk, v: 1 / v, method="log")
LOG1P = Elementwise("log1p", lambda bk, v: bk.log1p(v), lambda bk, v: 1 / (1 + v),
                    method="log1p")
SQRT = Elementwise("sqrt", lambda bk, v: bk.sqrt(v), lambda bk, v: 1 / (2 * bk.sqrt(v)),
                   method="sqrt")
RSQRT = Elementwise("rsqrt", lambda bk, v: 1 / bk.sqrt(v),
                    lambda bk, v: -1 / (2 * v * bk.sqrt(v)))
ABS = Elementwise("abs", lambda bk, v: bk.piecewise(v, lambda u: u, lambda u: -u),
                  lambda bk, v: bk.piecewise(v, lambda u: bk.one(), lambda u: -bk.one()))


def _expm1(bk: Backend, v: Scalar) -> Scalar:
    """``exp(v) - 1`` without cancellation near 0 (arb and mpmath have it)."""
    return v.expm1() if bk.kind == "arb" else mpmath.expm1(v)


EXPM1 = Elementwise("expm1", _expm1, lambda bk, v: bk.exp(v))

for _packet, _f in ((aten.exp, fn.EXP), (aten.log, LOG), (aten.log1p, LOG1P),
                    (aten.expm1, EXPM1), (aten.sigmoid, fn.SIGMOID), (aten.tanh, fn.TANH),
                    (aten.atan, fn.ATAN), (aten.sqrt, SQRT), (aten.rsqrt, RSQRT),
                    (aten.abs, ABS), (aten.relu, fn.RELU), (aten.silu, fn.SILU),
                    (aten.reciprocal, RECIPROCAL)):
    register_op(_packet)(lambda ctx, x, _f=_f: ctx.elementwise(x, _f))


@register_op(aten.leaky_relu)
def _leaky_relu(ctx: Context, x: Any, slope: float = 0.01) -> Any:
    return ctx.elementwise(x, fn.leaky_relu(float(slope)))


@register_op(aten.elu)
def _elu(ctx: Context, x: Any, alpha: float = 1.0, scale: float = 1.0,
         input_scale: float = 1.0) -> Any:
    if scale != 1 or input_scale != 1:
        raise UnsupportedOpError(f"{ctx.op}: scale/input_scale other than 1 are not supported")
    return ctx.elementwise(x, fn.elu(float(alpha)))


@register_op(aten.softplus)
def _softplus(ctx: Context, x: Any, beta: float = 1.0, threshold: float = 20.0) -> Any:
    return ctx.elementwise(x, fn.softplus(float(beta), float(threshold)))


def _clamp_one(bound: float, keep_above: bool) -> Elementwise:
    """``max(v, bound)`` (``keep_above``) or ``min(v, bound)``; both branches where undecided."""
    def f(bk: Backend, v: Scalar) -> Scalar:
        c = bk.from_floats([bound])[0]
        return (bk.greater(v, c, lambda u: u, lambda u: c) if keep_above
                else bk.greater(v, c, lambda u: c, lambda u: u))

    def df(bk: Backend, v: Scalar) -> Scalar:
        c = bk.from_floats([bound])[0]
        one, zero = bk.one(), bk.zero()
        return (bk.greater(v, c, lambda u: one, lambda u: zero) if keep_above
                else bk.greater(v, c, lambda u: zero, lambda u: one))

    return Elementwise(f"clamp({'min' if keep_above else 'max'}={bound})", f, df)


@register_op(aten.clamp)
def _clamp(ctx: Context, x: Any, min: float | None = None, max: float | None = None) -> Any:
    if isinstance(x, np.ndarray):
        return np.clip(x, min, max)
    for bound, above in ((min, True), (max, False)):
        if bound is not None:
            if not isinstance(bound, (int, float)):
                raise UnsupportedOpError(f"{ctx.op}: tensor bounds are not supported")
            x = ctx.elementwise(x, _clamp_one(float(bound), above))
    return x


@register_op(aten.clamp_min)
def _clamp_min(ctx: Context, x: Any, bound: float) -> Any:
    return _clamp(ctx, x, bound, None)


@register_op(aten.clamp_max)
def _clamp_max(ctx: Context, x: Any, bound: float) -> Any:
    return _clamp(ctx, x, None, bound)


@register_op(aten.pow)
def _pow(ctx: Context, base: Any, exponent: Any) -> Any:
    """``base ** exponent``: integer exponents by repeated products (any sign of ``base``),
    ``0.5`` as ``sqrt``, others as ``exp(exponent log(base))`` (positive ``base``)."""
    if isinstance(exponent, (int, float)) and not isinstance(base, (int, float)):
        e = float(exponent)
        x = ctx.tensor(base)
        if e == 0.5:
            return x.apply(SQRT)
        if e.is_integer() and abs(e) <= 64:
            out = ctx.tensor(1.0)
            for _ in range(int(abs(e))):
                out = out * x
            return out if e >= 0 else out.apply(RECIPROCAL)
        return (x.apply(LOG) * ctx.tensor(e)).apply(fn.EXP)
    return (ctx.tensor(exponent) * ctx.tensor(base).apply(LOG)).apply(fn.EXP)


# -- reductions and products -----------------------------------------------------------------

def _reduce_sum(ctx: Context, x: Any, dims: Sequence[int] | None, keepdim: bool) -> Any:
    if isinstance(x, np.ndarray):
        return np.sum(x, axis=None if not dims else tuple(dims), keepdims=keepdim)
    x = ctx.tensor(x)
    nd = len(x.shape)
    dims = sorted({d % nd for d in (range(nd) if not dims else dims)}) if nd else []
    keep = [d for d in range(nd) if d not in dims]
    grid = np.transpose(x.index_grid(), keep + dims)
    grid = grid.reshape(grid.shape[:len(keep)] + (-1,))
    out = x.take(grid[..., 0]) if grid.shape[-1] else _filled(ctx, grid.shape[:-1], 0.0, None)
    for k in range(1, grid.shape[-1]):
        out = out + x.take(grid[..., k])
    if keepdim:
        out = out.reshape(tuple(1 if d in dims else s for d, s in enumerate(x.shape)))
    return out


@register_op(aten.sum)
def _sum(ctx: Context, x: Any, dims: Sequence[int] | None = None, keepdim: bool = False,
         dtype: Any = None) -> Any:
    if isinstance(dims, torch.dtype):  # sum.default(x, dtype)
        dims = None
    return _reduce_sum(ctx, x, dims, keepdim)


@register_op(aten.mean)
def _mean(ctx: Context, x: Any, dims: Sequence[int] | None = None, keepdim: bool = False,
          dtype: Any = None) -> Any:
    if isinstance(dims, torch.dtype):
        dims = None
    shape = _shape(x)
    count = math.prod(shape[d] for d in dims) if dims else math.prod(shape)
    return _reduce_sum(ctx, x, dims, keepdim) / ctx.tensor(float(count))


def _matmul(ctx: Context, a: Any, b: Any) -> Tensorish:
    """``a @ b`` for a ``(..., k)`` ``a`` and a constant ``(k, n)`` matrix ``b``."""
    a, b = ctx.tensor(a), ctx.tensor(b)
    if isinstance(b, DualTensor):
        if isinstance(a, DualTensor):
            raise UnsupportedOpError(f"{ctx.op}: a product of two input-dependent matrices "
                                     "is not supported for Jacobians")
        # a b = (b^T a^T)^T with the constant a as the matrix
        a_t = a.take(a.index_grid().T)
        b_t = b.take(np.swapaxes(b.index_grid(), -1, -2))
        out = _matmul(ctx, b_t, a_t)
        return out.take(np.swapaxes(out.index_grid(), -1, -2))
    k, n = b.shape
    prepared = ctx.backend.prepare(b.data, k, n)
    return a.matmul(prepared, k, n)


@register_op(aten.mm)
def _mm(ctx: Context, a: Any, b: Any) -> Any:
    return _matmul(ctx, a, b)


@register_op(aten.addmm)
def _addmm(ctx: Context, bias: Any, a: Any, b: Any, beta: float = 1, alpha: float = 1) -> Any:
    prod = _matmul(ctx, a, b)
    if alpha != 1:
        prod = prod * ctx.tensor(alpha)
    bias = ctx.tensor(bias)
    if beta != 1:
        bias = bias * ctx.tensor(beta)
    return prod + bias if beta != 0 else prod


@register_op(aten.bmm)
def _bmm(ctx: Context, a: Any, b: Any) -> Any:
    a, b = ctx.tensor(a), ctx.tensor(b)
    outs = [_matmul(ctx, a.take(a.index_grid()[i]), b.take(b.index_grid()[i]))
            for i in range(a.shape[0])]
    return _stack(ctx, outs, 0)


@register_op(aten.linalg_inv_ex)
def _linalg_inv_ex(ctx: Context, a: Any, check_errors: bool = False) -> tuple[Any, Any]:
    """The inverse of each (constant) square matrix, in the backend's arithmetic; info 0."""
    a = ctx.tensor(a)
    if isinstance(a, DualTensor):
        raise UnsupportedOpError(f"{ctx.op}: the inverse of an input-dependent matrix")
    n = a.shape[-1]
    grid = a.index_grid().reshape(-1, n, n)
    data = []
    for g in grid:
        data.extend(ctx.backend.inverse_matrix([a.data[i] for i in g.ravel()], n))
    return RTensor(data, a.shape, ctx.backend), np.zeros(a.shape[:-2], dtype=np.int64)


@register_op(aten.convolution)
def _convolution(ctx: Context, x: Any, weight: Any, bias: Any, stride: Sequence[int],
                 padding: Sequence[int], dilation: Sequence[int], transposed: bool,
                 output_padding: Sequence[int], groups: int) -> Any:
    """2-D cross-correlation with a constant weight (groups 1, dilation 1, not transposed):
    see :class:`reference.layers.Conv2dMap`."""
    if transposed or groups != 1 or any(d != 1 for d in dilation) or len(stride) != 2:
        raise UnsupportedOpError(
            f"{ctx.op}: only 2-D convolutions with groups=1, dilation=1, not transposed are "
            f"supported, got stride={list(stride)}, groups={groups}, dilation={list(dilation)}, "
            f"transposed={transposed}")
    weight = ctx.tensor(weight)
    if isinstance(weight, DualTensor):
        raise UnsupportedOpError(f"{ctx.op}: an input-dependent convolution weight")
    conv = Conv2dMap(weight, None if bias is None else ctx.tensor(bias),
                     (int(stride[0]), int(stride[1])), (int(padding[0]), int(padding[1])))
    return conv(ctx.tensor(x))


@register_op(aten._softmax)
def _softmax(ctx: Context, x: Any, dim: int, half_to_float: bool = False) -> Any:
    """``exp(x) / sum(exp(x))`` along ``dim`` (no max shift is needed: the backends have no
    exponent range)."""
    e = ctx.elementwise(x, fn.EXP)
    return e / _reduce_sum(ctx, e, [dim], True)


@register_op(aten._log_softmax)
def _log_softmax(ctx: Context, x: Any, dim: int, half_to_float: bool = False) -> Any:
    """``x - log(sum(exp(x)))`` along ``dim``."""
    x = ctx.tensor(x)
    return x - _reduce_sum(ctx, x.apply(fn.EXP), [dim], True).apply(LOG)


# -- integer-only operations (constant indices and masks) ------------------------------------

def _integer_only(ctx: Context, *values: Any) -> None:
    for v in values:
        if not isinstance(v, np.ndarray):
            raise UnsupportedOpError(f"{ctx.op} (graph node {ctx.node!r}) on real values is not "
                                     "supported, only on constant integer or boolean tensors")


@register_op(aten.nonzero)
def _nonzero(ctx: Context, x: Any) -> np.ndarray:
    _integer_only(ctx, x)
    return np.argwhere(x)


@register_op(aten.sort)
def _sort(ctx: Context, x: Any, dim: int = -1, descending: bool = False) -> tuple[Any, Any]:
    _integer_only(ctx, x)
    order = np.argsort(-x if descending else x, axis=dim, kind="stable")
    return np.take_along_axis(x, order, axis=dim), order


@register_op(aten.sym_size)
def _sym_size(ctx: Context, x: Any, dim: int) -> int:
    return int(_shape(x)[dim])


@register_op(aten.sym_numel)
def _sym_numel(ctx: Context, x: Any) -> int:
    return math.prod(_shape(x))


@register_op(aten.full_like)
def _full_like(ctx: Context, x: Any, value: float, dtype: torch.dtype | None = None,
               **kwargs: Any) -> Any:
    if dtype is None and isinstance(x, np.ndarray):
        return np.full(x.shape, value, dtype=x.dtype)
    return _filled(ctx, _shape(x), value, dtype)


@register_op(aten.zeros_like, aten.ones_like)
def _zeros_like(ctx: Context, x: Any, dtype: torch.dtype | None = None, **kwargs: Any) -> Any:
    return _full_like(ctx, x, 0.0 if ctx.op.startswith("aten.zeros") else 1.0, dtype)


@register_op(aten.constant_pad_nd)
def _constant_pad_nd(ctx: Context, x: Any, pad: Sequence[int], value: float = 0.0) -> Any:
    """Padding ``pad = (last_before, last_after, second_last_before, ...)`` with ``value``
    (negative amounts crop)."""
    widths = [(0, 0)] * len(_shape(x))
    for k in range(len(pad) // 2):
        widths[-1 - k] = (pad[2 * k], pad[2 * k + 1])

    def f(g: np.ndarray) -> np.ndarray:
        out = np.pad(g, [(max(a, 0), max(b, 0)) for a, b in widths], constant_values=-1)
        crop = tuple(slice(max(-a, 0), out.shape[i] - max(-b, 0))
                     for i, (a, b) in enumerate(widths))
        return out[crop]

    if isinstance(x, np.ndarray):
        grid = f(np.arange(x.size).reshape(x.shape))
        return np.where(grid >= 0, x.ravel()[np.maximum(grid, 0)], value).astype(x.dtype)
    grid = f(x.index_grid())
    if value == 0:
        return x.take(grid)  # -1 takes an exact zero
    flat, (gx, gv) = _combine(ctx, [x, ctx.tensor(float(value))])
    return _gather_flat(flat, np.where(grid >= 0, grid, gv))


@register_op(aten.cumsum)
def _cumsum(ctx: Context, x: Any, dim: int, dtype: Any = None) -> Any:
    """Prefix sums along ``dim``: ``out_k = out_{k-1} + x_k``."""
    if isinstance(x, np.ndarray):
        return np.cumsum(x, axis=dim)
    n = _shape(x)[dim]
    parts = [_select(ctx, x, dim, 0)]
    for k in range(1, n):
        parts.append(parts[-1] + _select(ctx, x, dim, k))
    return _stack(ctx, parts, dim)


@register_op(aten.remainder)
def _remainder(ctx: Context, a: Any, b: Any) -> Any:
    """Integer remainder (floor convention, as torch's and numpy's)."""
    _integer_only(ctx, a)
    return np.remainder(a, b)


def _undefined(bk: Backend) -> Scalar:
    """NaN: the value of an entry of ``empty`` that is never written (it poisons any use)."""
    return flint.arb.nan() if bk.kind == "arb" else mpmath.nan


@register_op(aten.empty, aten.empty_like)
def _empty(ctx: Context, size: Any, dtype: torch.dtype | None = None, **kwargs: Any) -> Any:
    """Uninitialised storage: integers 0, floats NaN (an entry that is read before it is
    written makes the result NaN, never a silently wrong number)."""
    shape = _shape(size) if not isinstance(size, (list, tuple)) else tuple(size)
    if ctx.op.startswith("aten.empty_like") and dtype is None and isinstance(size, np.ndarray):
        dtype = torch.bool if size.dtype == bool else torch.int64
    npd = _np_dtype(dtype)
    if npd is not None:
        return np.zeros(shape, dtype=npd)
    return RTensor([_undefined(ctx.backend)] * math.prod(shape), shape, ctx.backend)


@register_op(aten.empty_permuted)
def _empty_permuted(ctx: Context, size: Sequence[int], physical_layout: Sequence[int],
                    dtype: torch.dtype | None = None, **kwargs: Any) -> Any:
    return _empty(ctx, size, dtype)


@register_op(aten.hardtanh)
def _hardtanh(ctx: Context, x: Any, min_val: float = -1.0, max_val: float = 1.0) -> Any:
    return _clamp(ctx, x, min_val, max_val)


def _extremum(take_larger: bool) -> OpImpl:
    def impl(ctx: Context, a: Any, b: Any) -> Any:
        """Entry by entry ``max(a, b)`` or ``min(a, b)``; both (united) where undecided: the
        result is continuous in ``a`` and ``b``, so the union encloses it."""
        if _numbers(a, b):
            return (np.maximum if take_larger else np.minimum)(a, b)
        a, b = ctx.tensor(a), ctx.tensor(b)
        if isinstance(a, DualTensor) or isinstance(b, DualTensor):
            raise UnsupportedOpError(f"{ctx.op}: Jacobians through minimum/maximum")
        bk = ctx.backend
        shape = np.broadcast_shapes(a.shape, b.shape)
        av, bv = _broadcast_data(a, shape), _broadcast_data(b, shape)
        out = [bk.greater(u, v, (lambda _, u=u, v=v: u if take_larger else v),
                          (lambda _, u=u, v=v: v if take_larger else u))
               for u, v in zip(av, bv, strict=True)]
        return RTensor(out, shape, bk)
    return impl


register_op(aten.maximum)(_extremum(True))
register_op(aten.minimum)(_extremum(False))


def _erf(bk: Backend, v: Scalar) -> Scalar:
    return v.erf() if bk.kind == "arb" else mpmath.erf(v)


def _gelu_exact(bk: Backend, v: Scalar) -> Scalar:
    """``x Phi(x) = x (1 + erf(x / sqrt 2)) / 2``."""
    return v * (1 + _erf(bk, v / bk.sqrt(bk.from_floats([2.0])[0]))) / 2


def _dgelu_exact(bk: Backend, v: Scalar) -> Scalar:
    """``Phi(x) + x phi(x)``."""
    two = bk.from_floats([2.0])[0]
    phi = bk.exp(-v * v / 2) / bk.sqrt(two * bk.pi())
    return (1 + _erf(bk, v / bk.sqrt(two))) / 2 + v * phi


GELU = Elementwise("gelu", _gelu_exact, _dgelu_exact)


@register_op(aten.gelu)
def _gelu(ctx: Context, x: Any, approximate: str = "none") -> Any:
    """torch's GELU, ``approximate="none"``: ``x Phi(x)``; ``"tanh"``:
    ``x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) / 2``."""
    if approximate == "none":
        return ctx.elementwise(x, GELU)
    x = ctx.tensor(x)
    bk = ctx.backend
    with bk.active():
        c = RTensor([bk.sqrt(2 / bk.pi())], (), bk)
    inner = c * (x + ctx.tensor(0.044715) * x * x * x)
    return x * (inner.apply(fn.TANH) + ctx.tensor(1.0)) / ctx.tensor(2.0)
