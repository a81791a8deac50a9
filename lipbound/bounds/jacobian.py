r"""The Jacobian of a whole network bounded over a box by propagating bounds through the Jacobian
computation itself (after Shi et al., NeurIPS 2022), instead of the product of per-block norms.

For ``F = F_L o ... o F_1`` and ``x`` in a box ``X_0``, the chain rule gives
``J_F(x) = J_L(x_{L-1}) ... J_1(x_0)`` with ``x_k = F_k(x_{k-1})`` in the box ``X_k``. Each block
rule (:class:`JacobianRule`) encloses ``{J_k(z) : z in X_{k-1}}`` in an interval matrix
(:mod:`.intervalmatrix`), and their product ``P_k`` encloses the Jacobian of the prefix
``F_k o ... o F_1`` over all of ``X_0`` (:class:`ChainProduct`: the plain interval product
intersected with a telescoped enclosure around the product of the midpoints, which does not wrap
through the exact factors). The network bound is the norm bound of ``P_L`` (``||M||_2 + ||R||_2``
or ``|| |M| + R ||_2``, or ``||Pi|| + eps`` of the telescoped form, the smallest).

Where a map is not differentiable (a ReLU kink) the enclosures hold its Clarke generalized
Jacobian, for which the chain rule (as an inclusion) and the mean-value theorem below hold, and
whose norm bounds the Lipschitz constant.

**Boxes, centred form.** The boxes ``X_k`` are what make the block enclosures narrow, so they are
carried by the mean-value form rather than by interval propagation alone: with ``c`` the centre and
``r`` the radius of ``X_0``, each coordinate ``i`` of the prefix satisfies
``F_i(x) - F_i(c) = grad F_i(xi) (x - c)`` with ``xi`` on the segment, inside ``X_0``, so

.. math:: X_k \subseteq F_{1..k}(c) + (|M_k| + R_k)\,[-r, r]

(or ``|Pi_k| r + eps_k ||r||_2`` per coordinate from the telescoped form, the smaller), where
``F_{1..k}(c)`` is enclosed by interval propagation of the point ``c`` (widened by rounding only).
The box used is that intersected with the block rule's interval image of ``X_{k-1}``
(:attr:`.blocks.BlockRule.forward_box`): never wider than before, and with the box of the
zonotope pass (:mod:`.zonotope`, affine arithmetic through the whole network: it keeps the
dependence of every coordinate on the input, so on a dequantization cell its boxes stay within a
few times the sampled ranges where intervals grow by orders of magnitude per coupling); the
zonotope's pre-activation ranges inside the coupling sub-networks are intersected into theirs.
The per-block rows (Table 3) are then evaluated on these boxes too. The same centred form
(:class:`Centred`) narrows the ranges inside the blocks: the pre-activations of the coupling
sub-networks, ``h = s(.)`` and ``t``, as ``z(point) + |J_z P_{k-1}| [-r, r]``, which avoids the
hull of a rotated box that interval propagation through a 1x1 convolution takes. Once a prefix
bound passes :data:`GIVE_UP` (or a block has no rule) the product stops and later boxes are
carried by intervals alone.

**Inverse.** On the forward image, ``J_{F^-1}(F(x)) = J_F(x)^{-1}``, bounded two ways, the smaller
kept: from ``P_L`` itself (:meth:`.IntervalMatrix.inverse_norm_upper`: ``||X|| / (1 - ||I - M X||
- ||X|| ||R||)`` with ``X = fl(M^-1)``), and as the interval product of the blocks' inverse
Jacobians ``[J_1^{-1}] ... [J_L^{-1}]``, each over the box ``X_k`` its inverse acts on. With an
output box (``--output-box``) the inverse chain is run from that box, carried backward the same way.

**Block rules.** Couplings (``s``, ``t`` sub-networks: :func:`subnet_jacobian`, chains of
``nn.Linear`` / stride-1 ``nn.Conv2d`` as dense matrices and elementwise activations with the
interval of their derivative on the pre-activation ranges of :mod:`.relax`), ActNorm, diagonal
scalings, invertible 1x1 convolutions, permutations and squeezes. Other blocks (i-ResNet, neural
ODE) and networks over :data:`MAX_DIM` coordinates (dense ``d x d`` products) are left to the
composed bound, and the report names the method that gave each number.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..blocks.base import InvertibleBlock
from ..blocks.coupling import AdditiveCoupling, AffineCoupling
from ..blocks.linear import ActNorm, DiagonalScaling, Invertible1x1Conv
from ..blocks.reshape import Permutation, Squeeze
from ..blocks.subnets import Constant
from .blocks import _contents, _conv1x1_inverse, _shared, _shared_matrix, _subnet_box, block_rule
from .interval import Box, monotone_map
from .intervalmatrix import IntervalMatrix, _inflate, matvec
from .layers import ibp, lipschitz
from .norms import certified_inverse_each, spectral_norm_upper_each
from .registry import TypeRegistry
from .relax import dense_matrix, out_shape, relaxed_box
from .relax import supports as relax_supports
from .rounding import LIB_ULPS, U, up_tensor, widen
from .scales import dg_box, even_bump_box, g_box
from .zonotope import Ranges, zonotope_ranges

__all__ = ["MAX_DIM", "METHOD", "ChainProduct", "JacobianBound", "JacobianRule", "jacobian_bounds",
           "register_jacobian", "subnet_jacobian"]

#: Largest number of coordinates for which the dense interval Jacobian is formed.
MAX_DIM = 1024
#: The method's name, as reports state it.
METHOD = "interval Jacobian of the whole network (zonotope and centred-form boxes)"

Shape = tuple[int, ...]


class Unsupported(Exception):
    """The Jacobian method does not take this block or sub-network (the reason is the text)."""


def _spread(jac: IntervalMatrix, radius: Tensor) -> Tensor:
    """Per row, an upper bound on ``|(A v)_i|`` over ``A`` in ``jac`` and ``|v| <= radius``
    (``radius`` of shape ``(B, ...)``, one per box of a batch; ``(B, rows)``)."""
    r = radius.reshape(len(radius), -1)
    n = r.shape[-1]
    return up_tensor(matvec(jac.abs_upper(), r) * (1 + 3 * (n + 4) * U) + (n + 4) * 2.0 ** -1070)


@dataclass(frozen=True)
class Centred:
    """A block's input ``z = G(x)`` for ``x`` in the network's input box ``c +- r`` in
    mean-value form: ``point`` encloses ``G(c)`` and ``jac`` holds ``J_G`` over the box, so
    ``L z`` lies in ``L point + |L jac| [-r, r]`` for a linear ``L`` (:meth:`image`)."""

    point: Box
    jac: IntervalMatrix
    radius: Tensor

    def image(self, value: Box, linear: IntervalMatrix) -> Box:
        """``value`` (an enclosure of ``f(G(c))``) widened by ``|linear jac| r``, where
        ``linear`` holds ``J_f`` over the block's input box: an enclosure of ``f(G(x))``."""
        spread = _spread(linear @ self.jac, self.radius).reshape(value.lo.shape)
        return Box(*widen(value.lo - spread, value.hi + spread, 0.0))


@dataclass(frozen=True)
class JacobianRule:
    """How to enclose one block type's Jacobians.

    Attributes:
        forward: ``(block, box of x, shape, centred) -> IntervalMatrix`` holding ``J_F(x)`` for
            ``x`` in the box (flattened coordinates, row-major); ``centred`` (a
            :class:`Centred` or ``None``) may narrow the ranges it needs.
        inverse: ``(block, box of y, shape of y, centred) -> IntervalMatrix`` holding
            ``J_{F^-1}(y)``.
    """

    forward: Callable[[InvertibleBlock, Box, Shape, Centred | None], IntervalMatrix]
    inverse: Callable[[InvertibleBlock, Box, Shape, Centred | None], IntervalMatrix]


_RULES = TypeRegistry(
    JacobianRule, "Jacobian rule for block type",
    "lipbound.bounds.jacobian.register_jacobian(BlockType, JacobianRule(forward=..., "
    "inverse=...))")


def register_jacobian(block_type: type, rule: JacobianRule) -> None:
    """Teach the Jacobian method a new block type (subclasses inherit the rule)."""
    _RULES.register(block_type, rule)


def _rule(block: nn.Module) -> JacobianRule:
    try:
        return _RULES.lookup(block)
    except TypeError as err:
        raise Unsupported(f"no Jacobian rule for {type(block).__name__}") from err


# --- linear maps as matrices -------------------------------------------------------------------

def _matrix_of(fn: Callable[[Tensor], Tensor], shape: Shape) -> Tensor:
    """The matrix of a linear map on flattened samples of ``shape`` (exact for selections,
    permutations and single products: each column is the map of a one-hot input)."""
    n = math.prod(shape)
    with torch.no_grad():
        cols = fn(torch.eye(n, dtype=torch.float64).reshape(n, *shape))
    return cols.reshape(n, -1).T.contiguous().to(torch.float64)


def _rearrangement_matrix(block: InvertibleBlock, inverse: bool, shape: Shape) -> Tensor:
    """The exact 0/1 matrix of a permutation or squeeze (or its inverse) on ``shape``."""
    fn = block.inverse if inverse else block
    return _shared(("jac-perm", block, inverse, shape), lambda: _matrix_of(fn, shape))


def _rearrangement(inverse: bool) -> Callable[..., IntervalMatrix]:
    def rule(block: InvertibleBlock, box: Box, shape: Shape,
             centred: Centred | None = None) -> IntervalMatrix:
        return IntervalMatrix.point(_rearrangement_matrix(block, inverse, shape))
    return rule


def _per_channel_diag(v: Box, shape: Shape) -> IntervalMatrix:
    view = (-1,) + (1,) * (len(shape) - 1)
    lo = v.lo.reshape(view).expand(shape)
    hi = v.hi.reshape(view).expand(shape)
    return IntervalMatrix.diagonal(lo, hi)


def _actnorm(inverse: bool) -> Callable[..., IntervalMatrix]:
    def rule(block: ActNorm, box: Box, shape: Shape,
             centred: Centred | None = None) -> IntervalMatrix:
        ls = block.log_scale.detach().to(torch.float64).reshape(1, -1)
        return _per_channel_diag(monotone_map(Box.point(-ls if inverse else ls), torch.exp),
                                 shape)
    return rule


def _diagonal(inverse: bool) -> Callable[..., IntervalMatrix]:
    def rule(block: DiagonalScaling, box: Box, shape: Shape,
             centred: Centred | None = None) -> IntervalMatrix:
        d = block.diag.detach().to(torch.float64).expand(shape).reshape(1, -1)
        if inverse:
            inv = Box.scalar(1.0, 1.0).divide(Box.point(d), "the diagonal")
            return IntervalMatrix.diagonal(inv.lo, inv.hi)
        return IntervalMatrix.diagonal(d, d)
    return rule


def _mix(w: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda x: torch.einsum("ij,bj...->bi...", w, x)


def _conv1x1_dense(block: Invertible1x1Conv, m: Tensor, shape: Shape,
                   inverse: bool = False) -> Tensor:
    """The channel mixing by the float matrix ``m`` as a dense matrix on ``shape``."""
    return _shared(("jac-1x1", block, inverse, shape), lambda: _matrix_of(_mix(m), shape))


def _conv1x1(inverse: bool) -> Callable[..., IntervalMatrix]:
    """``M +- e`` on the entries the channel mixing reaches (``|W - M|_ij <= ||W - M||_2 <=
    e``), with ``M, e`` from :func:`.blocks._matrix` (forward) or ``X = fl(M^-1)`` and
    ``||W^-1 - X|| <= ||W^-1|| ||I - W X||`` (inverse)."""
    def rule(block: Invertible1x1Conv, box: Box, shape: Shape,
             centred: Centred | None = None) -> IntervalMatrix:
        if inverse:
            _, _, m, inv_norm, residual = _conv1x1_inverse(block)
            e = inv_norm * residual
        else:
            m, e = _shared_matrix(block)

        dense = _conv1x1_dense(block, m, shape, inverse)
        if e == 0:
            return IntervalMatrix.point(dense)
        support = _shared(("jac-1x1-support", block, shape),
                          lambda: _matrix_of(_mix(torch.ones_like(m)), shape) != 0)
        rad = torch.where(support, torch.full_like(dense, e), torch.zeros_like(dense))
        return IntervalMatrix(dense, up_tensor(rad, 2))
    return rule


# --- sub-networks ------------------------------------------------------------------------------

def _sigmoid_prime(z: Tensor) -> Tensor:
    return torch.sigmoid(z) * torch.sigmoid(-z)


def _even_bump(fn: Callable[[Tensor], Tensor]) -> Callable[[nn.Module, Box], Box]:
    """Derivative ranges of activations whose derivative is even and decreasing in ``|z|``
    (``fn`` evaluates it): max at the point of ``[lo, hi]`` nearest 0, min at the farther end;
    each value relatively accurate to a few ulps, widened (:func:`.scales.even_bump_box`)."""
    return lambda layer, z: even_bump_box(fn, z, 2 * LIB_ULPS + 4)


def _piecewise_linear(layer: nn.Module, z: Box) -> Box:
    """ReLU / LeakyReLU(a): ``1`` on ``z > 0``, ``a`` on ``z < 0``, and both (the Clarke
    derivative ``[min(a, 1), max(a, 1)]``, which the mean-value theorem for Lipschitz maps
    needs) where the range reaches the kink at 0."""
    a = 0.0 if type(layer) is nn.ReLU else float(layer.negative_slope)
    low, high = min(a, 1.0), max(a, 1.0)
    # float64 tensors: torch.where of two python numbers is float32 (0.01 -> 0.0099999998)
    one, slope = (torch.full(z.lo.shape, v, dtype=torch.float64) for v in (1.0, a))
    lo = torch.where(z.lo > 0, one, torch.where(z.hi < 0, slope, low))
    hi = torch.where(z.lo > 0, one, torch.where(z.hi < 0, slope, high))
    return Box(lo, hi)


#: Derivative ranges ``(layer, pre-activation box) -> box of sigma'`` by activation type; others
#: get ``[-Lip, Lip]`` from their Lipschitz constant (:mod:`.layers`).
_DERIVATIVES: dict[type, Callable[[nn.Module, Box], Box]] = {
    nn.ReLU: _piecewise_linear,
    nn.LeakyReLU: _piecewise_linear,
    nn.Sigmoid: _even_bump(_sigmoid_prime),
    nn.Tanh: _even_bump(lambda z: 4 * _sigmoid_prime(2 * z)),
    nn.Identity: lambda layer, z: Box(torch.ones_like(z.lo), torch.ones_like(z.hi)),
}


def _derivative_box(layer: nn.Module, z: Box) -> Box:
    rule = _DERIVATIVES.get(type(layer))
    if rule is not None:
        return rule(layer, z)
    lip = lipschitz(layer, z.shape)[0]
    return Box(torch.full_like(z.lo, -lip), torch.full_like(z.hi, lip))


def _pre_activation_box(layers: list[nn.Module], box: Box) -> Box:
    """The range of ``layers`` (a prefix ending with a linear layer) on ``box``: the linear
    relaxation intersected with intervals where :mod:`.relax` takes it."""
    net = nn.Sequential(*layers)
    relaxed = relaxed_box(net, box) if relax_supports(net, box.shape) else None
    return ibp(net, box) if relaxed is None else relaxed


def subnet_jacobian(net: nn.Module, box: Box, centred: Centred | None = None
                    ) -> tuple[IntervalMatrix, Box]:
    r"""An interval matrix holding ``J_net(x)`` for every ``x`` in ``box``, and a box of the
    outputs: for ``net = W_k o sigma o ... o sigma o W_1`` (``nn.Linear`` / stride-1 zero-padded
    ``nn.Conv2d`` as exact dense matrices), the product ``W_k [D_{k-1}] W_{k-1} ... [D_1] W_1``
    (:class:`ChainProduct`) with ``[D_j] = diag(sigma'(z_j))`` over the range of the
    pre-activation ``z_j``: the linear relaxation of :mod:`.relax` (or intervals) on ``box``,
    or, when ``centred`` says how ``box``'s points depend on the network input, intervals
    intersected with the mean-value form ``z_j(point) + |J_{z_j} J_G| [-r, r]``
    (:class:`Centred`; cheaper, and tighter on small boxes). Raises
    :class:`Unsupported` for other networks."""
    def compute() -> tuple[IntervalMatrix, Box]:
        if type(net) is not nn.Sequential or len(net) % 2 == 0:
            raise Unsupported(f"sub-network {type(net).__name__} is not a chain of linear layers "
                              "and activations")
        layers, shape = list(net), box.shape
        chain = ChainProduct(math.prod(shape), norms=False)

        def value_range(i: int) -> Box:
            if centred is None:
                return _pre_activation_box(layers[:i], box)
            prefix = nn.Sequential(*layers[:i])
            at_point = ibp(prefix, centred.point)
            out = ibp(prefix, box).intersect(centred.image(at_point, chain.best))
            known = _known_range(net, i)
            return out if known is None else out.intersect(known)

        for i, layer in enumerate(layers):
            if i % 2 == 0:
                shape_out = out_shape(layer, shape)
                if shape_out is None:
                    raise Unsupported(f"layer {layer} is not a plain linear or stride-1 "
                                      "convolution layer")
                w = _shared(("jac-dense", layer, shape),
                            lambda lay=layer, sh=shape: dense_matrix(lay, sh)[0])
                chain.push(IntervalMatrix.point(w))
                shape = shape_out
            else:
                d = _derivative_box(layer, value_range(i))
                chain.push(IntervalMatrix.diagonals(d.lo, d.hi))
        return chain.best, value_range(len(layers))
    if centred is not None:
        return compute()
    return _shared(("jac-subnet", net, _contents(box)), compute)


#: The zonotope ranges (:mod:`.zonotope`) of the forward pass being bounded, while it runs.
_RANGES: ContextVar[Ranges | None] = ContextVar("_RANGES", default=None)


@contextmanager
def using_ranges(ranges: Ranges | None) -> Iterator[None]:
    """``ranges`` (of the boxes being bounded) as the zonotope ranges the sub-network rules
    intersect in, within the scope."""
    token = _RANGES.set(ranges)
    try:
        yield
    finally:
        _RANGES.reset(token)


def _known_range(net: nn.Module, i: int) -> Box | None:
    """The zonotope range of the output of ``net``'s first ``i`` layers on the current box."""
    ranges = _RANGES.get()
    return None if ranges is None else ranges.range_of(net, i)


# --- couplings ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    """The coupling's linear bookkeeping as 0/1 matrices on flattened samples: ``cond``
    (``x -> x_{I1}``), ``active`` (``x -> x_{I2}`` layout), and ``y = keep x + put y2``."""

    cond: Tensor
    active: Tensor
    keep: Tensor
    put: Tensor
    cond_shape: Shape
    active_shape: Shape


def _layout(block: AdditiveCoupling | AffineCoupling, shape: Shape) -> _Layout:
    def compute() -> _Layout:
        p = block.partition
        zero = torch.zeros((1, *shape), dtype=torch.float64)
        c_shape = tuple(p.cond(zero).shape[1:])
        a_shape = tuple(p.active(zero).shape[1:])
        n_a = math.prod(a_shape)
        return _Layout(
            _matrix_of(p.cond, shape), _matrix_of(p.active, shape),
            _matrix_of(lambda x: p.combine(x, torch.zeros((len(x), *a_shape),
                                                          dtype=torch.float64)), shape),
            _matrix_of(lambda y2: p.combine(torch.zeros((n_a, *shape), dtype=torch.float64), y2),
                       a_shape),
            c_shape, a_shape)
    return _shared(("jac-layout", block, shape), compute)


def _net_parts(net: nn.Module, cond: Box, layout: _Layout, centred: Centred | None
               ) -> tuple[IntervalMatrix, Box]:
    """``J_net cond`` (the sub-network's Jacobian as a map from all coordinates) and the box of
    its outputs in the active part's layout."""
    n_a = math.prod(layout.active_shape)
    if isinstance(net, Constant):
        value = net.value.detach().to(torch.float64).expand((1, *layout.active_shape))
        return (IntervalMatrix.point(torch.zeros(n_a, layout.cond.shape[1],
                                                 dtype=torch.float64)), Box.point(value))
    inner = None
    if centred is not None:
        inner = Centred(centred.point, IntervalMatrix.point(layout.cond) @ centred.jac,
                        centred.radius)
    jac, out = subnet_jacobian(net, cond, inner)
    if jac.shape[-2] != n_a:
        raise Unsupported("sub-network output is broadcast, not of the active part's shape")
    return jac @ layout.cond, Box(out.lo.reshape(-1, *layout.active_shape),
                                  out.hi.reshape(-1, *layout.active_shape))


def _coupling(inverse: bool) -> Callable[..., IntervalMatrix]:
    r"""``J = keep + put J_2`` with, for ``x_{I1} = y_{I1}`` (``a`` the active part of the box,
    ``h = s(.)``, ``S = J_s cond``, ``T = J_t cond``, ``A = active``):

    * additive: ``J_2 = A + T`` (inverse ``A - T``);
    * affine forward: ``J_2 = diag(g(h)) A + diag(a g'(h)) S + T``;
    * affine inverse (on ``y``): ``J_2 = diag(1/g) A - diag(1/g) T - diag((a - t) g'/g^2) S``.

    The ranges of ``h`` and ``t`` are those of :func:`.blocks._subnet_box` intersected with the
    mean-value form of :func:`subnet_jacobian`.
    """
    def rule(block: InvertibleBlock, box: Box, shape: Shape,
             centred: Centred | None = None) -> IntervalMatrix:
        layout = _layout(block, shape)
        p = block.partition
        cond = box.apply(p.cond)
        if centred is not None:
            centred = Centred(centred.point.apply(p.cond), centred.jac, centred.radius)
        active = box.apply(p.active)
        t_jac, t_box = _net_parts(block.t, cond, layout, centred)
        eye_a = IntervalMatrix.point(layout.active)
        if isinstance(block, AdditiveCoupling):
            j2 = eye_a + (-t_jac if inverse else t_jac)
        else:
            s_jac, h = _net_parts(block.s, cond, layout, centred)
            h = h.intersect(_subnet_box(block.s, p, box, active.lo.shape))
            g, dg = g_box(block.scale, h), dg_box(block.scale, h)
            if inverse:
                t = t_box.intersect(_subnet_box(block.t, p, box, active.lo.shape))
                inv_g = Box.scalar(1.0, 1.0).divide(g, "the scale g(s(y_I1))")
                slope = ((active - t) * dg).divide(g * g, "the scale g(s(y_I1))")
                j2 = (eye_a + -t_jac).scale_rows(inv_g.lo, inv_g.hi) + \
                    -s_jac.scale_rows(slope.lo, slope.hi)
            else:
                slope = active * dg
                j2 = eye_a.scale_rows(g.lo, g.hi) + s_jac.scale_rows(slope.lo, slope.hi) + t_jac
        return IntervalMatrix.point(layout.keep) + layout.put @ j2
    return rule


register_jacobian(AdditiveCoupling, JacobianRule(_coupling(False), _coupling(True)))
register_jacobian(AffineCoupling, JacobianRule(_coupling(False), _coupling(True)))
register_jacobian(ActNorm, JacobianRule(_actnorm(False), _actnorm(True)))
register_jacobian(DiagonalScaling, JacobianRule(_diagonal(False), _diagonal(True)))
register_jacobian(Invertible1x1Conv, JacobianRule(_conv1x1(False), _conv1x1(True)))
register_jacobian(Permutation, JacobianRule(_rearrangement(False), _rearrangement(True)))
register_jacobian(Squeeze, JacobianRule(_rearrangement(False), _rearrangement(True)))


# --- the network -------------------------------------------------------------------------------

@dataclass(frozen=True)
class JacobianBound:
    """Bounds from the interval Jacobian of the whole network over a box.

    Attributes:
        forward: an upper bound on ``||J_F(x)||_2`` over the input box (``None``: not run).
        inverse: an upper bound on ``||J_{F^-1}(y)||_2`` over the inverse's box (the forward
            image of the input box, or the output box).
        boxes: the boxes before each block and after the last (forward order), carried in
            centred form while the product lasts, by intervals after (``None`` once one
            overflowed); ``inverse_boxes`` the boxes the inverses act on.
        reason: why a direction has no number (not run, or stopped at a block).
    """

    forward: float | None
    inverse: float | None
    boxes: tuple[Box | None, ...] = ()
    inverse_boxes: tuple[Box | None, ...] = ()
    reason: str | None = None


class ChainProduct:
    r"""Enclosures of ``J_k ... J_1`` for ``J_j`` in interval matrices ``[M_j +- R_j]`` (any
    compatible shapes), pushed in the order the maps apply. With ``Pi_k = M_k ... M_1`` and the
    telescoping identity

    .. math:: J_k \cdots J_1 - M_k \cdots M_1
              = \sum_{j \le k} (M_k \cdots M_{j+1}) (J_j - M_j) (J_{j-1} \cdots J_1),

    three enclosures are kept, and the first two intersected (:attr:`best`):

    * the plain interval product ``[J_k] best_{k-1}`` (its radius wraps: it grows with
      ``|M_k|``);
    * entrywise, ``|J_k ... J_1 - Pi_k| <= sum_j |M_k ... M_{j+1}| R_j |best_{j-1}|``: no
      wrapping through the exact factors, which matters where few entries are uncertain (the
      derivative of a ReLU at an unstable neuron);
    * in 2-norm, ``||J_k ... J_1 - Pi_k|| <= eps_k = sum_j ||M_k ... M_{j+1}|| ||R_j||
      beta_{j-1}`` with ``beta_j`` a bound on ``||J_j ... J_1||``.

    Terms older than ``window`` factors are merged and carried on as ``|M_k| E`` and
    ``||M_k|| e`` (``|M S| <= |M| |S|``, ``||M S|| <= ||M|| ||S||``), so ``k`` pushes cost
    ``O(k window)`` products. Every product of exact factors is itself enclosed
    (:class:`IntervalMatrix` products carry their rounding error).

    Factors may be batches (``(B, m, n)``, one per box, :mod:`.batched`): the product is then a
    batch too, ``eps`` and ``beta`` are tensors with one entry per box (0-dimensional without a
    batch), and the ``*_each`` bounds give one number per box. With ``norms=False`` only the
    enclosure :attr:`best` is kept (no ``eps``: the norm bounds and :meth:`spread` use the
    entrywise enclosure alone).
    """

    def __init__(self, n: int, window: int = 32, norms: bool = True) -> None:
        eye = IntervalMatrix.point(torch.eye(n, dtype=torch.float64))
        self.best = eye
        self.mid = eye
        #: (M_k .. M_{j+1} or None for I, R_j |best_{j-1}|, ||R_j|| beta_{j-1}) per recent j
        self.suffixes: list[tuple[IntervalMatrix | None, Tensor, Tensor | None]] = []
        #: the terms of older j, carried as |M_k| old and ||M_k|| old (window: O(k) products)
        self.window = window
        self.old_err: Tensor | None = None
        zero = torch.zeros((), dtype=torch.float64)
        self.old_eps = zero
        self.beta = zero + 1.0
        self.eps = zero if norms else zero + math.inf  # untracked: the telescoped forms are off
        self.norms = norms

    def push(self, jac: IntervalMatrix) -> None:
        """Append ``[J_{k+1}]``."""
        mid = jac.midpoint()
        self.mid = mid @ self.mid
        if self.old_err is not None:
            self.old_err = _inflate(mid.abs_upper() @ self.old_err, jac.shape[-1])
            if self.norms:
                self.old_eps = up_tensor(self.old_eps * mid.cheap_norm_upper_each())
        self.suffixes = [(mid if s is None else mid @ s, g, w) for s, g, w in self.suffixes]
        if bool(jac.rad.any()):
            g = _inflate(jac.rad @ self.best.abs_upper(), jac.shape[-1])
            w = None
            if self.norms:
                a = IntervalMatrix(torch.zeros_like(jac.rad), jac.rad).cheap_norm_upper_each()
                w = up_tensor(a * self.beta)
            self.suffixes.append((None, g, w))
        while len(self.suffixes) > self.window:
            s, g, w = self.suffixes.pop(0)
            term = _inflate(s.abs_upper() @ g, g.shape[-2])
            self.old_err = term if self.old_err is None else up_tensor(self.old_err + term)
            if self.norms:
                self.old_eps = up_tensor(self.old_eps + up_tensor(s.cheap_norm_upper_each() * w))
        plain = jac @ self.best
        err = self.mid.rad if self.old_err is None else self.mid.rad + self.old_err
        eps = self.old_eps
        for s, g, w in self.suffixes:
            err = err + (g if s is None else _inflate(s.abs_upper() @ g, g.shape[-2]))
            if self.norms:
                eps = up_tensor(eps + up_tensor((1.0 if s is None else s.cheap_norm_upper_each())
                                                * w))
        err = up_tensor(err * (1 + 4 * (len(self.suffixes) + 2) * U))
        self.best = plain.intersect(IntervalMatrix(*torch.broadcast_tensors(self.mid.mid, err)))
        if not self.best.is_finite():
            raise Unsupported("the interval Jacobian overflowed")
        if self.norms:
            self.eps = eps
            if not bool(torch.isfinite(eps).all()):
                raise Unsupported("the interval Jacobian overflowed")
            self.beta = torch.minimum(self.best.cheap_norm_upper_each(),
                                      up_tensor(self.mid.cheap_norm_upper_each() + eps))

    def select(self, keep: Tensor) -> ChainProduct:
        """The chain of the boxes ``keep`` (an index or mask) of a batch."""
        def rows(v: Tensor) -> Tensor:  # one number per box, or one for all
            return v[keep] if v.dim() else v

        out = copy.copy(self)
        out.best, out.mid = self.best.select(keep), self.mid.select(keep)
        out.suffixes = [(None if m is None else m.select(keep), g if g.dim() < 3 else g[keep],
                         None if w is None else rows(w)) for m, g, w in self.suffixes]
        if self.old_err is not None and self.old_err.dim() > 2:
            out.old_err = self.old_err[keep]
        out.old_eps, out.beta, out.eps = rows(self.old_eps), rows(self.beta), rows(self.eps)
        return out

    def spread(self, radius: Tensor) -> Tensor:
        """Per output coordinate, a bound on ``|(J (x - c))_i|`` for ``|x - c| <= radius``
        (``radius`` of shape ``(B, ...)``, one per box; ``(B, rows)``)."""
        r = radius.reshape(len(radius), -1)
        n = r.shape[-1]
        inflate = 1 + 3 * (n + 4) * U
        entrywise = matvec(self.best.abs_upper(), r)
        if not self.norms:
            return up_tensor(entrywise * inflate + (n + 4) * 2.0 ** -1070)
        r2 = torch.linalg.vector_norm(r, dim=-1) * inflate
        telescoped = matvec(self.mid.abs_upper(), r) + up_tensor(self.eps * r2).unsqueeze(-1)
        return up_tensor(torch.minimum(entrywise, telescoped) * inflate + (n + 4) * 2.0 ** -1070)

    def norm_upper(self) -> float:
        """An upper bound on ``||J_k ... J_1||_2`` (the largest over a batch)."""
        return float(self.norm_upper_each().max())

    def norm_upper_each(self) -> Tensor:
        """:meth:`norm_upper` per box of a batch."""
        return torch.minimum(self.best.norm_upper_each(),
                             up_tensor(self.mid.norm_upper_each() + self.eps))

    def inverse_norm_upper(self) -> float:
        """An upper bound on ``||(J_k ... J_1)^-1||_2`` (``inf`` when not certified; the largest
        over a batch)."""
        return float(self.inverse_norm_upper_each().max())

    def inverse_norm_upper_each(self) -> Tensor:
        """:meth:`inverse_norm_upper` per box of a batch."""
        err = up_tensor(spectral_norm_upper_each(self.mid.rad) + self.eps)
        return torch.minimum(self.best.inverse_norm_upper_each(),
                             certified_inverse_each(self.mid.mid, error=err)[1])


#: A prefix bound above this is of no use: the chain stops (the boxes go on by intervals).
GIVE_UP = 1e100


@dataclass
class _Chained:
    """What :func:`_chain` found: the product (``None`` once the method stopped, ``reason``
    says why), the boxes between the maps (``None`` after one overflowed), the centred forms
    after each map while the product lasted."""

    chain: ChainProduct | None
    boxes: list[Box | None]
    forms: list[Centred]
    reason: str | None = None


def _chain(steps: Sequence[tuple[Callable[[Box, Centred], IntervalMatrix],
                                  Callable[[Box], Box]]], box: Box,
           known: Sequence[Box | None] = ()) -> _Chained:
    """The Jacobian of a chain of maps over ``box`` and the boxes between them: the centred form
    intersected with the interval image while the product lasts, the interval image alone after
    it stops (a block without a rule, a scale interval reaching 0, a prefix bound above
    :data:`GIVE_UP`); each step is ``(jacobian over a box and centred form, interval image of a
    box)``. ``known[k]``, where given and not ``None``, is another enclosure of the box before
    step ``k`` (the zonotope pass), intersected in."""
    c, r = box.center_radius()
    point = Box.point(c)
    out = _Chained(ChainProduct(c.numel()), [box], [])
    for jac, image in steps:
        current = out.boxes[-1]
        if current is None:
            out.boxes.append(None)
            continue
        nxt = image(current)
        if out.chain is not None:
            try:
                out.chain.push(jac(current, Centred(point, out.chain.best, r)))
                if out.chain.beta > GIVE_UP:
                    raise Unsupported(f"the prefix bound exceeded {GIVE_UP:g}")
                point = image(point)
                out.forms.append(Centred(point, out.chain.best, r))
                spread = out.chain.spread(r).reshape(point.lo.shape)
                centred = Box(*widen(point.lo - spread, point.hi + spread, 0.0))
                nxt = centred.intersect(nxt) if nxt.is_finite() else centred
            except (Unsupported, ValueError) as err:
                out.chain, out.reason = None, f"{err} (at block {len(out.boxes) - 1})"
        k = len(out.boxes)
        if k < len(known) and known[k] is not None:
            nxt = nxt.intersect(known[k])
        out.boxes.append(nxt if nxt.is_finite() else None)
    return out


def _inverse_product(blocks: Sequence[InvertibleBlock], shapes: Sequence[Shape],
                     out_boxes: Sequence[Box], forms: Sequence[Centred]) -> ChainProduct:
    """``[J_1^{-1}] ... [J_L^{-1}]``, block ``k``'s inverse over ``out_boxes[k]``, its input
    ``F_k o ... o F_1`` of the network input in the centred form ``forms[k]`` (the inverse
    applies block ``L``'s inverse first)."""
    chain = ChainProduct(math.prod(shapes[0]))
    for k in reversed(range(len(blocks))):
        chain.push(_rule(blocks[k]).inverse(blocks[k], out_boxes[k], shapes[k + 1], forms[k]))
    return chain


def _attempt(fn: Callable[[], object]) -> tuple[object, str | None]:
    """``(fn(), None)``, or ``(None, reason)`` where the method does not take the network or the
    enclosures do not stay finite (a scale interval reaching 0, an overflow)."""
    try:
        with torch.no_grad():
            return fn(), None
    except (Unsupported, ValueError) as err:
        return None, str(err)


def jacobian_bounds(blocks: Sequence[InvertibleBlock], shapes: Sequence[Shape], box: Box | None,
                    output_box: Box | None = None) -> JacobianBound:
    """The whole-network bounds of the module docstring for ``blocks`` (per-sample shapes
    ``shapes``, one more than blocks) on ``box`` and, for the inverse, on the forward image or
    ``output_box``. Never raises for a block or network it does not take: the direction then
    has no number and ``reason`` says why."""
    d = math.prod(shapes[0])
    if box is None and output_box is None:
        return JacobianBound(None, None, reason="no box")
    if d > MAX_DIM:
        return JacobianBound(None, None, reason=f"{d} coordinates, more than the {MAX_DIM} of "
                                                "dense interval Jacobians")
    forward = inverse = None
    boxes: tuple[Box | None, ...] = ()
    inverse_boxes: tuple[Box | None, ...] = ()
    reasons = []
    if box is not None:
        steps = [(lambda x, f, b=b, s=s: _rule(b).forward(b, x, s, f),
                  lambda x, b=b: block_rule(b).forward_box(b, x))
                 for b, s in zip(blocks, shapes, strict=False)]
        ranges = zonotope_ranges(blocks, shapes, box)
        with using_ranges(ranges):
            with torch.no_grad():
                done = _chain(steps, box, ranges.boxes)
            boxes = inverse_boxes = tuple(done.boxes)
            if done.chain is None:
                reasons.append(f"forward: {done.reason}")
            else:
                forward = done.chain.norm_upper()
                if output_box is None:
                    inverse = done.chain.inverse_norm_upper()
                    product, why = _attempt(lambda: _inverse_product(
                        blocks, shapes, done.boxes[1:], done.forms))
                    if product is not None:
                        inverse = min(inverse, product.norm_upper())
                    elif not math.isfinite(inverse):
                        reasons.append(f"inverse: {why}")
    if output_box is not None:
        order = list(reversed(range(len(blocks))))
        steps = [(lambda y, f, k=k: _rule(blocks[k]).inverse(blocks[k], y, shapes[k + 1], f),
                  lambda y, k=k: block_rule(blocks[k]).inverse_box(blocks[k], y))
                 for k in order]
        with torch.no_grad():
            done = _chain(steps, output_box)
        inverse_boxes = tuple(reversed(done.boxes))
        if done.chain is None:
            reasons.append(f"inverse: {done.reason}")
        else:
            inverse = done.chain.norm_upper()
    return JacobianBound(forward, inverse, boxes, inverse_boxes, "; ".join(reasons) or None)
