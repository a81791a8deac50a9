r"""Reference implementations of the invertible blocks (paper eqs. 3 and 4, Table 3).

Every builder returns a :class:`RefBlock` with ``forward`` and ``inverse`` on
:class:`~reference.tensor.RTensor` (``forward`` also on dual tensors, for Jacobians). The maps are
written from the blocks' documented formulas:

* couplings: ``y_{I1} = x_{I1}``, ``y_{I2} = x_{I2} * g(s(x_{I1})) + t(x_{I1})`` (affine, eq. 4) or
  ``x_{I2} + t(x_{I1})`` (additive, eq. 3); inverse ``x_{I2} = (y_{I2} - t) / g``. Channel
  partitions select along dimension 1; mask partitions feed ``x * mask`` to the sub-networks and
  keep ``x`` where the mask is set;
* scales ``g``: ``low + (high - low) sigmoid(h + shift)``, ``exp(h)``,
  ``exp(alpha (2 / pi) atan(h / alpha))``, ``h``;
* ``DiagonalScaling`` ``y = x D``; ``ActNorm`` ``y = (x + b) exp(l)``; ``Invertible1x1Conv``
  ``y = W x`` per pixel with ``W`` (plain, or ``P L (U + diag(sign exp(log_s)))``) and its exact
  inverse matrix;
* ``Permutation`` ``y[:, i] = x[:, perm[i]]``; ``Squeeze``: output channel ``c f^2 + i f + j`` at
  ``(h, w)`` holds input channel ``c`` at ``(h f + i, w f + j)``;
* ``InvertibleResidual`` ``y = x + g(x)``, inverse by the fixed point ``x <- y - g(x)`` iterated
  to the backend's precision;
* ``NeuralODE``: the exact time-``T`` flow (:mod:`reference.ode`);
* ``InvertibleSequential``: composition.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from lipbound.blocks.base import ConvergenceInfo
from lipbound.blocks.coupling import AdditiveCoupling, AffineCoupling
from lipbound.blocks.linear import ActNorm, DiagonalScaling, Invertible1x1Conv
from lipbound.blocks.ode import NeuralODE
from lipbound.blocks.partition import ChannelPartition, MaskPartition, Partition
from lipbound.blocks.reshape import Permutation, Squeeze
from lipbound.blocks.residual import InvertibleResidual
from lipbound.blocks.scale import (
    ExpScale,
    IdentityScale,
    ScaleFunction,
    SigmoidScale,
    SoftClampScale,
)
from lipbound.blocks.sequential import InvertibleSequential
from lipbound.errors import InputError, InputTypeError

from . import functions as fn
from .backends import Backend
from .ode import FlowSolver
from .registry import Compiler, register
from .tensor import RTensor, Tensorish, midpoint_norm

__all__ = ["MAX_FIXED_POINT_ITERATIONS", "RefBlock", "RefSequential", "fixed_point_inverse",
           "squeeze_index"]

#: Iteration cap of the converged reference fixed point.
MAX_FIXED_POINT_ITERATIONS = 100_000

Map = Callable[[Tensorish], Tensorish]


class RefBlock:
    """A reference block: ``forward`` and ``inverse`` maps and a name."""

    def __init__(self, name: str, forward: Map, inverse: Callable[[RTensor], RTensor],
                 iterative: bool = False) -> None:
        self.name, self._forward, self._inverse = name, forward, inverse
        self.iterative = iterative
        self.last_convergence: ConvergenceInfo | None = None

    def __repr__(self) -> str:
        return f"RefBlock({self.name})"

    def forward(self, x: Tensorish) -> Tensorish:
        return self._forward(x)

    def inverse(self, y: RTensor) -> RTensor:
        return self._inverse(y)

    def leaves(self) -> list[RefBlock]:
        return [self]


class RefSequential(RefBlock):
    """Composition ``F_L o ... o F_1``; the inverse runs the inverses in reverse order."""

    def __init__(self, blocks: list[RefBlock]) -> None:
        self.blocks = blocks
        super().__init__("InvertibleSequential", self._run_forward, self._run_inverse,
                         any(b.iterative for b in blocks))

    def _run_forward(self, x: Tensorish) -> Tensorish:
        for b in self.blocks:
            x = b.forward(x)
        return x

    def _run_inverse(self, y: RTensor) -> RTensor:
        for b in reversed(self.blocks):
            y = b.inverse(y)
        return y

    def leaves(self) -> list[RefBlock]:
        return [leaf for b in self.blocks for leaf in b.leaves()]


# -- partitions ------------------------------------------------------------------------------

class _RefPartition:
    """``cond``, ``active`` and ``combine`` of a partition, as layout operations."""

    def __init__(self, partition: Partition, c: Compiler) -> None:
        if isinstance(partition, ChannelPartition):
            self.kind = "channel"
            self.cond_index = partition.cond_index.tolist()
            self.active_index = partition.active_index.tolist()
        elif isinstance(partition, MaskPartition):
            self.kind = "mask"
            self.mask_bool = partition.mask.cpu().numpy().astype(bool)
            self.mask = RTensor.from_array(self.mask_bool.astype(np.float64), c.backend)
        else:
            raise InputTypeError(f"no reference for partition {type(partition).__name__}; "
                            "use ChannelPartition or MaskPartition")

    def _select(self, x: Tensorish, index: list[int]) -> Tensorish:
        return x.take(x.index_grid()[:, index])

    def cond(self, x: Tensorish) -> Tensorish:
        if self.kind == "channel":
            return self._select(x, self.cond_index)
        return x * self.mask.reshape((1,) + self.mask.shape)

    def active(self, x: Tensorish) -> Tensorish:
        return self._select(x, self.active_index) if self.kind == "channel" else x

    def combine(self, x: Tensorish, y2: Tensorish) -> Tensorish:
        """``x`` with its active part replaced by ``y2``."""
        both = x.stack_with(y2)
        grid = x.index_grid()
        if self.kind == "channel":
            index = grid.copy()
            index[:, self.active_index] = x.numel + np.arange(y2.numel).reshape(y2.shape)
        else:
            index = np.where(self.mask_bool[None], grid, x.numel + grid)
        return both.take(index)


# -- scale functions g -----------------------------------------------------------------------

def _scale(scale: ScaleFunction, c: Compiler) -> Map:
    if type(scale) is SigmoidScale:
        low, high, shift = (c.number(v) for v in (scale.low, scale.high, scale.shift))
        return lambda h: low + (high - low) * (h + shift).apply(fn.SIGMOID)
    if type(scale) is ExpScale:
        return lambda h: h.apply(fn.EXP)
    if type(scale) is SoftClampScale:
        alpha = c.number(scale.alpha)
        bk = c.backend
        with bk.active():
            two_over_pi = RTensor([2 / bk.pi()], (), bk)
        return lambda h: (alpha * two_over_pi * (h / alpha).apply(fn.ATAN)).apply(fn.EXP)
    if type(scale) is IdentityScale:
        return lambda h: h
    raise InputTypeError(f"no reference for scale function {type(scale).__name__}")


# -- blocks ----------------------------------------------------------------------------------

@register(AdditiveCoupling)
def _additive(block: AdditiveCoupling, c: Compiler) -> RefBlock:
    p, t = _RefPartition(block.partition, c), c.compile(block.t)

    def forward(x: Tensorish) -> Tensorish:
        return p.combine(x, p.active(x) + t(p.cond(x)))

    def inverse(y: RTensor) -> RTensor:
        return p.combine(y, p.active(y) - t(p.cond(y)))

    return RefBlock("AdditiveCoupling", forward, inverse)


@register(AffineCoupling)
def _affine(block: AffineCoupling, c: Compiler) -> RefBlock:
    p, t, s = _RefPartition(block.partition, c), c.compile(block.t), c.compile(block.s)
    g = _scale(block.scale, c)

    def forward(x: Tensorish) -> Tensorish:
        cond = p.cond(x)
        return p.combine(x, p.active(x) * g(s(cond)) + t(cond))

    def inverse(y: RTensor) -> RTensor:
        cond = p.cond(y)
        return p.combine(y, (p.active(y) - t(cond)) / g(s(cond)))

    return RefBlock("AffineCoupling", forward, inverse)


def _lead_channel(v: RTensor, ndim: int) -> RTensor:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


@register(DiagonalScaling)
def _diagonal(block: DiagonalScaling, c: Compiler) -> RefBlock:
    d = c.param(block.diag)
    return RefBlock("DiagonalScaling", lambda x: x * d, lambda y: y / d)


@register(ActNorm)
def _actnorm(block: ActNorm, c: Compiler) -> RefBlock:
    """``y = (x + b) exp(l)``, ``x = y exp(-l) - b`` per channel. An ActNorm that has not been
    initialised would initialise itself from data in training mode: the reference refuses it."""
    if block.training and not bool(block.initialized):
        raise InputError("ActNorm is uninitialised and in training mode (its first forward would "
                         "set its parameters from data); initialise it or call model.eval()")
    bias = c.param(block.bias)
    with c.backend.active():
        scale = c.param(block.log_scale).apply(fn.EXP)
        inv_scale = (-c.param(block.log_scale)).apply(fn.EXP)

    def forward(x: Tensorish) -> Tensorish:
        n = len(x.shape)
        return (x + _lead_channel(bias, n)) * _lead_channel(scale, n)

    def inverse(y: RTensor) -> RTensor:
        n = len(y.shape)
        return y * _lead_channel(inv_scale, n) - _lead_channel(bias, n)

    return RefBlock("ActNorm", forward, inverse)


def _one_by_one_matrix(block: Invertible1x1Conv, c: Compiler) -> RTensor:
    """``W``: the stored weight, or ``P L (U + diag(sign exp(log_s)))`` (LU form)."""
    if not block.lu:
        return c.param(block.weight)
    bk, n = c.backend, block.num_channels
    perm, sign = c.param(block.perm), c.param(block.sign_s)
    lower, upper, log_s = (c.param(t) for t in (block.lower, block.upper, block.log_s))
    zero, one = bk.zero(), bk.one()
    s = sign * log_s.apply(fn.EXP)
    low = [one if i == j else (lower.data[i * n + j] if j < i else zero)
           for i in range(n) for j in range(n)]
    up = [s.data[i] if i == j else (upper.data[i * n + j] if j > i else zero)
          for i in range(n) for j in range(n)]
    lu = bk.matmul(low, n, n, bk.prepare(up, n, n), n)
    return RTensor(bk.matmul(perm.data, n, n, bk.prepare(lu, n, n), n), (n, n), bk)


def _channel_mix(matrix: RTensor) -> Map:
    """``y[:, i, ...] = sum_j M[i, j] x[:, j, ...]``."""
    n = matrix.shape[0]
    m_t = matrix.take(matrix.index_grid().T)
    prepared = matrix.backend.prepare(m_t.data, n, n)

    def mix(x: Tensorish) -> Tensorish:
        grid = x.index_grid()
        to_last = np.moveaxis(grid, 1, -1)  # (B, ..., C)
        y = x.take(to_last).matmul(prepared, n, n)
        return y.take(np.moveaxis(y.index_grid(), -1, 1))

    return mix


@register(Invertible1x1Conv)
def _one_by_one(block: Invertible1x1Conv, c: Compiler) -> RefBlock:
    with c.backend.active():
        w = _one_by_one_matrix(block, c)
        w_inv = RTensor(c.backend.inverse_matrix(w.data, w.shape[0]), w.shape, c.backend)
    return RefBlock("Invertible1x1Conv", _channel_mix(w), _channel_mix(w_inv))


@register(Permutation)
def _permutation(block: Permutation, c: Compiler) -> RefBlock:
    perm = block.perm.tolist()
    inv = np.argsort(perm).tolist()
    return RefBlock("Permutation", lambda x: x.take(x.index_grid()[:, perm]),
                    lambda y: y.take(y.index_grid()[:, inv]))


def squeeze_index(shape: tuple[int, ...], f: int) -> np.ndarray:
    """Index of the squeeze: ``out[b, c f^2 + i f + j, h, w] = in[b, c, h f + i, w f + j]``."""
    b, ch, hh, ww = shape
    if hh % f or ww % f:
        raise InputError(f"spatial size {(hh, ww)} must be divisible by factor {f}")
    bi, ci, i, j, h, w = np.ix_(range(b), range(ch), range(f), range(f), range(hh // f),
                                range(ww // f))
    src = ((bi * ch + ci) * hh + h * f + i) * ww + w * f + j
    return src.reshape(b, ch * f * f, hh // f, ww // f)


@register(Squeeze)
def _squeeze(block: Squeeze, c: Compiler) -> RefBlock:
    f = block.factor

    def forward(x: Tensorish) -> Tensorish:
        return x.take(squeeze_index(x.shape, f))

    def inverse(y: RTensor) -> RTensor:
        b, cf, h, w = y.shape
        shape = (b, cf // (f * f), h * f, w * f)
        index = np.empty(math.prod(shape), dtype=np.int64)
        index[squeeze_index(shape, f).ravel()] = np.arange(y.numel)
        return y.take(index.reshape(shape))

    return RefBlock("Squeeze", forward, inverse)


def fixed_point_inverse(g: Map, y: RTensor, backend: Backend, iterations: str,
                        block: InvertibleResidual) -> tuple[RTensor, ConvergenceInfo]:
    """``x = F^-1(y)`` of ``F(x) = x + g(x)`` by the fixed point ``x_{k+1} = y - g(x_k)`` from
    ``x_0 = y``, in the working precision ``2^-prec`` of ``y``'s backend; with how it ended.

    ``iterations="converged"`` iterates on midpoints until the step is below
    ``2^-prec (1 + ||x||)`` (at most :data:`MAX_FIXED_POINT_ITERATIONS`), widens the result's
    radius by the a-posteriori estimate ``step r / (1 - r)`` (``r`` the observed contraction of
    the last steps) and applies one step ``y - g(x)`` in ball arithmetic, so that the radius of
    ``y`` is carried too: an enclosure if the estimate holds, not a proof, as ``Lip(g)`` is not
    certified. ``"as_float"`` runs exactly as many iterations as the torch ``block`` ran in its
    last inverse (or its ``max_iter``) and returns the last iterate: the truncated map.

    One implementation for both oracles: the hand-written one passes its own ``g``, the traced
    one (:class:`reference.TracedModel`) the captured graph of ``block.g``."""
    if iterations == "as_float":
        info = block.last_convergence
        cap, tol = (info.iterations if info is not None else block.max_iter), 0.0
    else:
        cap, tol = MAX_FIXED_POINT_ITERATIONS, 2.0 ** -backend.prec
    x, step, previous, k = y, math.inf, math.inf, 0
    while k < cap:
        k += 1
        x_next = (y - g(x)).midpoint()
        previous, step = step, midpoint_norm(x_next - x)
        x = x_next
        if step <= tol * (1 + midpoint_norm(x)):
            break
    converged = iterations == "as_float" or step <= tol * (1 + midpoint_norm(x))
    info = ConvergenceInfo(converged, k, step, tol)
    if iterations == "as_float":
        return x, info  # k iterations exactly: the midpoints are the iterates
    rate = step / previous if 0 < step < previous else 0.5
    # a posteriori estimate ||x* - x_k|| <= step r / (1 - r), r the observed contraction;
    # one ball step y - g(ball) then carries y's own radius into the result
    return y - g(x.widen(step * rate / (1 - rate) if step > 0 else 0.0)), info


@register(InvertibleResidual)
def _residual(block: InvertibleResidual, c: Compiler) -> RefBlock:
    """``y = x + g(x)``; inverse by :func:`fixed_point_inverse` (``c.iterations`` decides
    converged or as many iterations as the float run)."""
    g = c.compile(block.g)
    ref = RefBlock("InvertibleResidual", lambda x: x + g(x), lambda y: y, iterative=True)

    def inverse(y: RTensor) -> RTensor:
        x, ref.last_convergence = fixed_point_inverse(g, y, c.backend, c.iterations, block)
        return x

    ref._inverse = inverse
    return ref


@register(NeuralODE)
def _ode(block: NeuralODE, c: Compiler) -> RefBlock:
    f = c.compile(block.f)
    solver = FlowSolver(f, block.T, c.backend, block.method, block.steps,
                        exact=c.iterations == "converged")
    return RefBlock("NeuralODE", lambda x: solver.solve(x, reverse=False),
                    lambda y: solver.solve(y, reverse=True), iterative=True)


@register(InvertibleSequential)
def _sequential(block: InvertibleSequential, c: Compiler) -> RefSequential:
    return RefSequential([c.compile(b) for b in block.flat_blocks()])
