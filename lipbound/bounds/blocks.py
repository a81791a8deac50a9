r"""Numbers for Table 3 from a concrete block: one :class:`BlockRule` per block type.

A rule turns a block with its real weights into its row (:mod:`.table`) with every symbol given a
certified number:

* ``Lip(t)``, ``Lip(s)``, ``Lip(g)``, ``Lip(f)``: products of certified layer norms and activation
  constants (:mod:`.layers`); for a neural ODE the first layer's time column is left out, as
  ``Lip(f)`` is in ``x`` only.
* ``c_g, c_{g'}, c_{1/g}, c_{(1/g)'}``, ``c_t`` and the per-coordinate sups ``m_x``, ``m_y``:
  the scale function's sups (:mod:`.scales`, in ball arithmetic) over the range of the
  raw scale ``h = s(x_{I1})`` on the box, coordinate by coordinate: the linear relaxation of
  :mod:`.relax` intersected with interval bound propagation through ``s`` and ``t`` where it
  supports the sub-network (ReLU / LeakyReLU chains of linear and convolution layers), interval
  propagation alone otherwise; the affine row names the method in its assumptions.
* ``max |D_ii|``, ``||W||``, ``||W^-1||``: rounded up from the stored parameters; an LU-form
  ``W = P L U`` is formed in ball arithmetic, never from torch's rounded product.

A rule also maps boxes through its block, forward (``[a, b]`` of the next block) and backward
(``[a*, b*]`` of the previous block's inverse). Coupling, linear and reshape blocks do this with
outward-rounded interval arithmetic, and so do the others, rigorously:

* i-ResNet inverse: a ball of radius ``(rho + ||r||) / (1 - Lip(g))`` around the float fixed point
  ``x~`` of the box centre, ``r = x~ + g(x~) - c`` the residual enclosed in interval arithmetic,
  narrowed by the fixed-point equation ``x = y - g(x)`` (:func:`_residual_inverse_box`);
* neural ODE: the solver's steps in interval arithmetic from the box centre, widened by
  ``Lip rho``, intersected with the same from the whole box (:func:`_ode_box`). The map bounded
  is the block's fixed-step solve in exact arithmetic (see :func:`.table.neural_ode`).

A coupling needs the boxes of its sub-networks' outputs (the ranges of ``s`` and ``t`` above) three
times: to carry the box forward, for its forward row, and for its inverse row on
the forward image, whose conditioning part is the same box. Within :func:`shared_propagation`
(which :func:`.compose.bound_model` enters) each is computed once per sub-network and input box.

Unknown block types get a ``TypeError`` that says how to register a rule (:func:`register_block`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from flint import arb, arb_mat
from torch import Tensor, nn

from ..blocks.base import InvertibleBlock
from ..blocks.coupling import AdditiveCoupling, AffineCoupling
from ..blocks.linear import ActNorm, DiagonalScaling, Invertible1x1Conv
from ..blocks.ode import NeuralODE, ODEFunc
from ..blocks.partition import MaskPartition, Partition
from ..blocks.reshape import Permutation, Squeeze
from ..blocks.residual import InvertibleResidual, frozen_spectral_norm
from ..blocks.scale import ScaleFunction
from ..errors import InputError, InputTypeError
from . import table
from .evaluate import ball_upper, working_precision
from .interval import Box, affine_map, monotone_map
from .layers import ibp, lipschitz
from .norms import certified_inverse, spectral_norm_upper
from .registry import TypeRegistry
from .relax import METHOD as RELAX_METHOD
from .relax import relaxed_box
from .relax import supports as relax_supports
from .rounding import down, exp_up, up, up_tensor, widen
from .scales import g_box, scale_sup

__all__ = [
    "BlockContext",
    "BlockRule",
    "actnorm_numbers",
    "block_rule",
    "diagonal_numbers",
    "register_block",
    "shared_propagation",
]

Shape = tuple[int, ...]
#: Narrowing steps ``X <- X cap (Y - g(X))`` of the i-ResNet inverse box.
_FIXED_POINT_REFINEMENTS = 2


@dataclass(frozen=True)
class BlockContext:
    """Where a block sits: its index, per-sample input shape, and the boxes its two directions act
    on (``None`` when unknown): ``box`` for the forward's input ``x``, ``inverse_box`` for the
    inverse's input ``y``."""

    index: int | None
    shape: Shape
    box: Box | None
    inverse_box: Box | None
    #: Why ``box`` / ``inverse_box`` is missing although a box was given (it overflowed on the way).
    box_lost: str | None = None
    inverse_box_lost: str | None = None


@dataclass(frozen=True)
class BlockRule:
    """How to bound one block type.

    Attributes:
        bound: ``(block, context) -> BlockBound`` with numbers from the block's weights.
        forward_box: ``(block, box of x) -> box of F(x)``.
        inverse_box: ``(block, box of y) -> box of F^-1(y)``.
        out_shape: ``(block, input shape) -> output shape``.
    """

    bound: Callable[[InvertibleBlock, BlockContext], table.BlockBound]
    forward_box: Callable[[InvertibleBlock, Box], Box]
    inverse_box: Callable[[InvertibleBlock, Box], Box]
    out_shape: Callable[[InvertibleBlock, Shape], Shape] = lambda block, shape: shape


_RULES = TypeRegistry(
    BlockRule, "bound rule for block type",
    "lipbound.bounds.register_block(BlockType, BlockRule(bound=..., forward_box=..., "
    "inverse_box=...))")


def register_block(block_type: type, rule: BlockRule) -> None:
    """Teach the bounds a new block type (subclasses inherit the rule)."""
    _RULES.register(block_type, rule)


def block_rule(block: nn.Module) -> BlockRule:
    """The rule registered for ``block``'s type or its nearest registered base class."""
    return _RULES.lookup(block)


# --- couplings ---------------------------------------------------------------------------------

def _cond_shape(partition: Partition, shape: Shape) -> Shape:
    return tuple(partition.cond(torch.zeros((1, *shape), dtype=torch.float64)).shape[1:])


def _active_mask(partition: Partition, active: Tensor) -> Tensor:
    """Which entries of ``partition.active(x)`` are coordinates of ``I2``."""
    if isinstance(partition, MaskPartition):
        return ~partition.mask.reshape(active.shape[1:])
    return torch.ones(active.shape[1:], dtype=torch.bool)


#: Results shared within the outermost :func:`shared_propagation` scope: sub-network output
#: boxes keyed by ``("box", sub-network, input box contents)``, and the box-independent numbers
#: of a block (``("lip", net, shape)``, ``("inverse", block)``); ``None`` outside any scope.
_SUBNET_BOXES: ContextVar[dict[tuple, object] | None] = ContextVar("_SUBNET_BOXES", default=None)


@contextmanager
def shared_propagation() -> Iterator[None]:
    """Reuse the box of a coupling sub-network's outputs on an input box already propagated in
    this scope (the module docstring), and the Lipschitz constants and certified inverses of the
    blocks (the same for every box: :func:`.compose.local_bounds` bounds many boxes in one
    scope). Nested scopes share the outermost one. The scope must not outlive the weights it
    saw: the results are those of the weights at the first use."""
    if _SUBNET_BOXES.get() is not None:
        yield
        return
    token = _SUBNET_BOXES.set({})
    try:
        yield
    finally:
        _SUBNET_BOXES.reset(token)


def _shared(key: tuple, compute: Callable[[], object]) -> object:
    """``compute()``, once per ``key`` within a :func:`shared_propagation` scope (the objects in
    ``key`` themselves, not their ids, so none can be reused meanwhile)."""
    shared = _SUBNET_BOXES.get()
    if shared is None:
        return compute()
    if key not in shared:
        shared[key] = compute()
    return shared[key]


def _contents(box: Box) -> tuple:
    """A key equal for boxes with bitwise identical ends (then IBP gives the same box)."""
    return (box.lo.dtype, box.shape,
            *(t.detach().cpu().numpy().tobytes() for t in (box.lo, box.hi)))


def _subnet_box(net: nn.Module, partition: Partition, box: Box, active_shape: torch.Size) -> Box:
    cond = box.apply(partition.cond)
    out = _shared(("box", net, _contents(cond)), lambda: _ranges(net, cond))
    return out.expand_as(active_shape)


def _ranges(net: nn.Module, box: Box) -> Box:
    """The box of ``net``'s outputs on ``box``: the linear relaxation intersected with interval
    propagation where :mod:`.relax` supports ``net``, else interval propagation."""
    relaxed = relaxed_box(net, box)
    return ibp(net, box) if relaxed is None else relaxed


def _range_method(block: AffineCoupling, shape: Shape) -> str:
    """How the ranges of ``s`` and ``t`` on the boxes are found, as the row states it."""
    cond = _cond_shape(block.partition, shape)
    both = all(relax_supports(net, cond) for net in (block.s, block.t))
    return f"ranges of s and t on the boxes: {RELAX_METHOD if both else 'interval propagation'}"


def _lip(net: nn.Module, shape: Shape) -> float:
    return _shared(("lip", net, tuple(shape)), lambda: lipschitz(net, shape)[0])


def _additive_bound(block: AdditiveCoupling, ctx: BlockContext) -> table.BlockBound:
    lip_t = _lip(block.t, _cond_shape(block.partition, ctx.shape))
    return table.additive(table.Symbols(ctx.index), {"Lip(t)": lip_t})


def _additive_box(sign: int) -> Callable[[AdditiveCoupling, Box], Box]:
    def rule(block: AdditiveCoupling, box: Box) -> Box:
        p = block.partition
        active = box.apply(p.active)
        t = _subnet_box(block.t, p, box, active.lo.shape)
        new = active + t if sign > 0 else active - t
        return Box(p.combine(box.lo, new.lo), p.combine(box.hi, new.hi))
    return rule


def _affine_parts(block: AffineCoupling, box: Box) -> tuple[Box, Box, Box]:
    """Boxes of the active part, the raw scale ``h`` and the shift ``t`` (active layout)."""
    p = block.partition
    active = box.apply(p.active)
    return (active, _subnet_box(block.s, p, box, active.lo.shape),
            _subnet_box(block.t, p, box, active.lo.shape))


def _per_coordinate_sups(scale: ScaleFunction, h: Box, mask: Tensor,
                         names: tuple[str, ...]) -> dict[str, Tensor]:
    """``{name: tensor}`` of ``scale_sup(scale, name, h_lo_i, h_hi_i)`` for the masked
    coordinates."""
    pairs = torch.stack([h.lo[0][mask], h.hi[0][mask]], dim=1)
    unique, where = torch.unique(pairs, dim=0, return_inverse=True)
    out = {}
    for name in names:
        vals = torch.tensor([scale_sup(scale, name, lo, hi) for lo, hi in unique.tolist()],
                            dtype=torch.float64)
        out[name] = vals[where]
    return out


def _max_product(a: Tensor, b: Tensor) -> float:
    """``max_i a_i b_i`` of non-negative tensors, rounded up."""
    return float(up_tensor(a * b).max()) if a.numel() else 0.0


def _affine_forward_values(block: AffineCoupling, box: Box) -> dict[str, float]:
    active, h, _ = _affine_parts(block, box)
    mask = _active_mask(block.partition, active.lo)
    sups = _per_coordinate_sups(block.scale, h, mask, ("g", "dg"))
    a, b = box.hull()
    return {"c_g": float(sups["g"].max()), "c_g'": float(sups["dg"].max()), "a": a, "b": b,
            "m_x": _max_product(active.abs_max()[0][mask], sups["dg"])}


def _affine_inverse_values(block: AffineCoupling, box: Box) -> dict[str, float]:
    active, h, t = _affine_parts(block, box)
    mask = _active_mask(block.partition, active.lo)
    sups = _per_coordinate_sups(block.scale, h, mask, ("inv_g", "d_inv_g"))
    a, b = box.hull()
    return {"c_1/g": float(sups["inv_g"].max()), "c_(1/g)'": float(sups["d_inv_g"].max()),
            "c_t": float(t.abs_max()[0][mask].max()), "a*": a, "b*": b,
            "m_y": _max_product((active - t).abs_max()[0][mask], sups["d_inv_g"])}


_NEEDS_BOX = ("the affine coupling bound (Lemma 6) is local, there is no global one (Theorem 2 "
              "(ii)): give the input box (--box A B)")


def _affine_bound(block: AffineCoupling, ctx: BlockContext) -> table.BlockBound:
    cond = _cond_shape(block.partition, ctx.shape)
    values = {"Lip(s)": _lip(block.s, cond), "Lip(t)": _lip(block.t, cond)}
    refused: dict[str, str | None] = {"forward": None, "inverse": None}
    symbolic: dict[str, str | None] = {"forward": None, "inverse": None}
    for direction, box, lost, fn in (
            ("forward", ctx.box, ctx.box_lost, _affine_forward_values),
            ("inverse", ctx.inverse_box, ctx.inverse_box_lost, _affine_inverse_values)):
        if box is None:
            if lost:
                refused[direction] = lost
            else:
                symbolic[direction] = _NEEDS_BOX
            continue
        try:
            values.update(fn(block, box))
        except ValueError as err:  # e.g. an IdentityScale whose h-range holds 0
            refused[direction] = f"no {direction} bound on this box: {err}"
    row = table.affine(table.Symbols(ctx.index), values, per_coordinate=True,
                       refused_forward=refused["forward"], refused_inverse=refused["inverse"],
                       symbolic_forward=symbolic["forward"], symbolic_inverse=symbolic["inverse"])
    if ctx.box is None and ctx.inverse_box is None:
        return row
    return table.BlockBound(row.kind, row.scope, row.forward, row.inverse,
                            row.assumptions + (_range_method(block, ctx.shape),))


def _affine_forward_box(block: AffineCoupling, box: Box) -> Box:
    active, h, t = _affine_parts(block, box)
    new = active * g_box(block.scale, h) + t
    return Box(block.partition.combine(box.lo, new.lo), block.partition.combine(box.hi, new.hi))


def _affine_inverse_box(block: AffineCoupling, box: Box) -> Box:
    active, h, t = _affine_parts(block, box)
    new = (active - t).divide(g_box(block.scale, h), "the scale g(s(y_I1))")
    return Box(block.partition.combine(box.lo, new.lo), block.partition.combine(box.hi, new.hi))


# --- linear blocks -----------------------------------------------------------------------------

def _diag(block: DiagonalScaling) -> Tensor:
    return block.diag.detach().to(torch.float64)


def diagonal_numbers(diag: Tensor) -> dict[str, float]:
    """``max |D_ii|`` (exact) and ``max 1/|D_ii|`` (rounded up) of a diagonal; a zero entry gives
    ``inf``: no inverse bound."""
    d = diag.detach().to(torch.float64).abs()
    low = float(d.min())
    return {"max|D|": float(d.max()), "max|1/D|": up(1.0 / low) if low > 0 else math.inf}


def actnorm_numbers(log_scale: Tensor) -> dict[str, float]:
    """``max e^l`` and ``max e^-l`` of an ActNorm's log-scales, rounded up (``inf`` where
    ``exp`` overflows)."""
    ls = log_scale.detach().to(torch.float64)
    return {"max|D|": exp_up(float(ls.max())), "max|1/D|": exp_up(-float(ls.min()))}


def _diagonal_bound(block: DiagonalScaling, ctx: BlockContext) -> table.BlockBound:
    return table.diagonal(table.Symbols(ctx.index), diagonal_numbers(_diag(block)))


def _diagonal_box(inverse: bool) -> Callable[[DiagonalScaling, Box], Box]:
    def rule(block: DiagonalScaling, box: Box) -> Box:
        d = Box.point(_diag(block).expand(box.shape).unsqueeze(0))
        return box.divide(d) if inverse else box * d
    return rule


def _log_scale(block: ActNorm) -> Tensor:
    return block.log_scale.detach().to(torch.float64)


def _actnorm_bound(block: ActNorm, ctx: BlockContext) -> table.BlockBound:
    bound = table.actnorm(table.Symbols(ctx.index), actnorm_numbers(block.log_scale))
    if not bool(block.initialized):
        note = ("ActNorm not initialised: bounds are for its current parameters, which a "
                "training-mode forward pass would replace")
        bound = table.BlockBound(bound.kind, bound.scope, bound.forward, bound.inverse,
                                 bound.assumptions + (note,))
    return bound


def _per_channel(v: Tensor, box: Box) -> Box:
    shape = (1, -1) + (1,) * (len(box.shape) - 1)
    return Box(v.reshape(shape).expand_as(box.lo), v.reshape(shape).expand_as(box.lo))


def _actnorm_forward_box(block: ActNorm, box: Box) -> Box:
    bias = _per_channel(block.bias.detach().to(torch.float64), box)
    scale = monotone_map(_per_channel(_log_scale(block), box), torch.exp)
    return (box + bias) * scale


def _actnorm_inverse_box(block: ActNorm, box: Box) -> Box:
    bias = _per_channel(block.bias.detach().to(torch.float64), box)
    scale = monotone_map(_per_channel(-_log_scale(block), box), torch.exp)
    return box * scale - bias


def _matrix(block: Invertible1x1Conv) -> tuple[Tensor, float]:
    """A float matrix ``M`` and ``e`` with ``||W - M||_2 <= e`` for the block's exact ``W``:
    the stored weight (``e = 0``), or ``W = P L U`` with ``U``'s diagonal ``sign_s * exp(log_s)``
    formed in ball arithmetic (not torch's rounded products): ``M`` the balls' midpoints, ``e``
    the Frobenius norm of their radii, rounded up."""
    if not block.lu:
        return block.weight.detach().to(torch.float64), 0.0
    n = block.num_channels
    lower, upper, perm = (t.detach().to(torch.float64).tolist()
                          for t in (block.lower, block.upper, block.perm))
    sign, log_s = block.sign_s.tolist(), block.log_s.detach().tolist()
    with working_precision():
        l_mat = arb_mat([[arb(lower[i][j]) if j < i else arb(int(i == j)) for j in range(n)]
                       for i in range(n)])
        u_mat = arb_mat([[arb(upper[i][j]) if j > i else
                        (arb(sign[i]) * arb(log_s[i]).exp() if i == j else arb(0))
                        for j in range(n)] for i in range(n)])
        w = arb_mat([[arb(v) for v in row] for row in perm]) * l_mat * u_mat
        mid = [[float(w[i, j].mid()) for j in range(n)] for i in range(n)]
        err = arb(0)
        for i in range(n):
            for j in range(n):
                err += arb(ball_upper(abs(w[i, j] - arb(mid[i][j])))) ** 2
        e = ball_upper(err.sqrt())
    return torch.tensor(mid, dtype=torch.float64), e


def _conv1x1_inverse(block: Invertible1x1Conv) -> tuple[Tensor, float, Tensor, float, float]:
    """``M, e`` of :func:`_matrix` and :func:`.norms.certified_inverse` of ``M`` (once per
    :func:`shared_propagation` scope)."""
    def compute():
        m, e = _shared_matrix(block)
        return (m, e, *certified_inverse(m, error=e))
    return _shared(("inverse", block), compute)


def _shared_matrix(block: Invertible1x1Conv) -> tuple[Tensor, float]:
    return _shared(("matrix", block), lambda: _matrix(block))


def _conv1x1_bound(block: Invertible1x1Conv, ctx: BlockContext) -> table.BlockBound:
    m, e, _, inv_norm, _ = _conv1x1_inverse(block)
    return table.invertible_1x1_conv(table.Symbols(ctx.index), {
        "||W||": _shared(("norm", block), lambda: up(spectral_norm_upper(m) + e)),
        "||W^-1||": inv_norm})


def _mix(x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    return torch.einsum("ij,bj...->bi...", w, x)


def _conv1x1_forward_box(block: Invertible1x1Conv, box: Box) -> Box:
    """``W y = M y + (W - M) y``, the second term within ``e ||y||`` per coordinate."""
    m, e = _shared_matrix(block)
    out = affine_map(box, _mix, m, None, m.shape[1])
    return out if e == 0 else Box(*widen(out.lo, out.hi, 0.0, up(e * box.norm_upper())))


def _conv1x1_inverse_box(block: Invertible1x1Conv, box: Box) -> Box:
    """``W^-1 y`` through the float inverse ``X`` of ``M``, widened by ``||(W^-1 - X) y||``,
    where ``W^-1 - X = W^-1 (I - W X)`` (:func:`.norms.certified_inverse` bounds both norms for
    the exact ``W``)."""
    _, _, x, inv_norm, residual = _conv1x1_inverse(block)
    out = affine_map(box, _mix, x, None, x.shape[1])
    slack = up(up(inv_norm * residual) * box.norm_upper())
    return Box(*widen(out.lo, out.hi, 0.0, slack))


# --- reshapes ----------------------------------------------------------------------------------

def _reshape_bound(kind: str) -> Callable[[InvertibleBlock, BlockContext], table.BlockBound]:
    return lambda block, ctx: table.volume_preserving_reshape(kind)


def _rearranged(inverse: bool) -> Callable[[InvertibleBlock, Box], Box]:
    def rule(block: InvertibleBlock, box: Box) -> Box:
        with torch.no_grad():
            return box.apply(block.inverse if inverse else block)
    return rule


def _squeeze_shape(block: Squeeze, shape: Shape) -> Shape:
    f = block.factor
    if len(shape) != 3 or shape[1] % f or shape[2] % f:
        raise InputError(f"Squeeze({f}) needs an input (C, H, W) with H, W divisible by {f}, "
                         f"got {shape}")
    return (shape[0] * f * f, shape[1] // f, shape[2] // f)


# --- i-ResNet and neural ODE -------------------------------------------------------------------

def _residual_lip(block: InvertibleResidual, shape: Shape) -> float:
    return _lip(block.g, shape)


def _residual_bound(block: InvertibleResidual, ctx: BlockContext) -> table.BlockBound:
    with frozen_spectral_norm(block.g):
        return table.residual(table.Symbols(ctx.index),
                              {"Lip(g)": _residual_lip(block, ctx.shape)})


def _residual_forward_box(block: InvertibleResidual, box: Box) -> Box:
    with frozen_spectral_norm(block.g):
        return box + ibp(block.g, box)


def _ball_box(center: Box, radius: float) -> Box:
    """Every point within ``radius`` (2-norm) of a point of ``center``: per coordinate, ``center``
    widened by ``radius``, rounded outward."""
    return Box(*widen(center.lo, center.hi, 0.0, radius))


def _residual_inverse_box(block: InvertibleResidual, box: Box) -> Box:
    r"""A box holding the exact ``F^{-1}(y)`` for every ``y`` in ``box``.

    With ``c`` the box centre (``||y - c|| <= rho`` on the box), ``x~`` the float fixed point of
    ``c`` and ``r = F(x~) - c = x~ + g(x~) - c`` enclosed by interval arithmetic, the exact
    ``x* = F^{-1}(c)`` has ``||x~ - x*|| <= Lip(F^{-1}) ||F(x~) - F(x*)|| <= ||r|| / (1 - Lip(g))``,
    so for ``y`` in the box ``||F^{-1}(y) - x~|| <= (rho + ||r||) / (1 - Lip(g))``. The box of that
    ball is then narrowed by ``x in box - g(x)`` (the fixed-point equation, in interval
    arithmetic), which any enclosure ``X`` of the exact inverse satisfies: ``X <- X cap (box -
    g(X))`` keeps it an enclosure.
    """
    with frozen_spectral_norm(block.g), torch.no_grad():
        lip_g = _residual_lip(block, box.shape)
        if not lip_g < 1:
            raise InputError(f"cannot carry a box through the i-ResNet inverse: Lip(g) <= "
                             f"{lip_g:.6g} is not < 1")
        c, rho = box.l2_radius()
        # any float point serves as x~; a copy runs the inverse, which may refresh the model's
        # spectral-norm vectors (the bounds leave the model's state untouched)
        x = copy.deepcopy(block).inverse(c.to(_dtype(block))).to(torch.float64)
        if not bool(torch.isfinite(x).all()):
            return Box.everything(box.shape)
        point = Box.point(x)
        residual = (point + ibp(block.g, point) - Box.point(c)).norm_upper()
        radius = up(up(rho + residual) / down(1.0 - lip_g))
        enclosure = _ball_box(point, radius)
        for _ in range(_FIXED_POINT_REFINEMENTS):
            enclosure = enclosure.intersect(box - ibp(block.g, enclosure))
        return enclosure


def _dtype(block: nn.Module) -> torch.dtype:
    p = next(iter(block.parameters()), None)
    return p.dtype if p is not None else torch.float64


def _ode_lip(block: NeuralODE, shape: Shape) -> float:
    """``Lip(f)`` in ``x``, uniform in ``t``: the time column of the first layer is left out."""
    f = block.f
    if not isinstance(f, ODEFunc):
        raise InputTypeError(f"NeuralODE.f of type {type(f).__name__} has no bound rule; use "
                             "ODEFunc or register a rule for NeuralODE")
    layers = list(f.net)
    first = layers[0]
    x_only = nn.Linear(f.d, first.out_features, bias=False).to(torch.float64)
    with torch.no_grad():
        x_only.weight.copy_(first.weight.detach()[:, : f.d])
    return _lip(nn.Sequential(x_only, *layers[1:]), shape)


def _ode_bound(block: NeuralODE, ctx: BlockContext) -> table.BlockBound:
    return table.neural_ode(table.Symbols(ctx.index),
                            {"Lip(f)": _ode_lip(block, ctx.shape), "T": block.T},
                            method=block.method, steps=block.steps)


def _field_box(f: ODEFunc, t: Box, z: Box) -> Box:
    """A box holding ``f(t, z)`` for all ``t``, ``z`` in the boxes (IBP through ``f.net``)."""
    if f.time_dependent:
        z = Box(torch.cat([z.lo, t.lo], 1), torch.cat([z.hi, t.hi], 1))
    return ibp(f.net, z)


def _solver_box(block: NeuralODE, z: Box, reverse: bool) -> Box | None:
    """A box holding the block's fixed-step solve (forward, or backward with ``reverse``) in
    exact arithmetic with ``h = T / steps``, for every start in ``z``: the solver's steps
    (:mod:`lipbound.blocks.ode`) in interval arithmetic. ``None`` if it overflows."""
    q = block.T / block.steps  # correctly rounded: the exact h lies within one ulp
    h = Box.scalar(-up(q), -down(q)) if reverse else Box.scalar(down(q), up(q))
    t0 = Box.scalar(block.T, block.T) if reverse else Box.scalar(0.0, 0.0)
    half, sixth = Box.scalar(0.5, 0.5) * h, Box.scalar(down(1 / 6), up(1 / 6)) * h
    two = Box.scalar(2.0, 2.0)
    for i in range(block.steps):
        t = t0 + Box.scalar(i, i) * h
        k1 = _field_box(block.f, t, z)
        if block.method == "euler":
            z = z + h * k1
        else:
            k2 = _field_box(block.f, t + half, z + half * k1)
            k3 = _field_box(block.f, t + half, z + half * k2)
            k4 = _field_box(block.f, t + h, z + h * k3)
            z = z + sixth * (k1 + two * k2 + two * k3 + k4)
        if not z.is_finite():
            return None
    return z


def _ode_box(inverse: bool) -> Callable[[NeuralODE, Box], Box]:
    """The box of the solve's image: the enclosure of the solve from the box centre ``c``,
    widened by ``Lip rho`` (every start is within ``rho`` of ``c``, and the solve is
    ``Lip``-Lipschitz, :func:`.table.neural_ode`), intersected with the direct interval solve
    from the whole box (tighter for short times, overflowing for long ones)."""
    def rule(block: NeuralODE, box: Box) -> Box:
        row = _ode_bound(block, BlockContext(None, box.shape, None, None))
        lip = row.inverse.value if inverse else row.forward.value
        c, rho = box.l2_radius()
        with torch.no_grad():
            center = _solver_box(block, Box.point(c), inverse)
            if center is None:
                return Box.everything(box.shape)
            enclosure = _ball_box(center, up(rho * lip))
            direct = _solver_box(block, box, inverse)
        return enclosure if direct is None else enclosure.intersect(direct)
    return rule


register_block(AdditiveCoupling, BlockRule(_additive_bound, _additive_box(+1), _additive_box(-1)))
register_block(AffineCoupling, BlockRule(_affine_bound, _affine_forward_box, _affine_inverse_box))
register_block(DiagonalScaling, BlockRule(_diagonal_bound, _diagonal_box(False),
                                          _diagonal_box(True)))
register_block(ActNorm, BlockRule(_actnorm_bound, _actnorm_forward_box, _actnorm_inverse_box))
register_block(Invertible1x1Conv, BlockRule(_conv1x1_bound, _conv1x1_forward_box,
                                            _conv1x1_inverse_box))
register_block(Permutation, BlockRule(_reshape_bound("permutation"), _rearranged(False),
                                      _rearranged(True)))
register_block(Squeeze, BlockRule(_reshape_bound("squeeze"), _rearranged(False), _rearranged(True),
                                  _squeeze_shape))
register_block(InvertibleResidual, BlockRule(_residual_bound, _residual_forward_box,
                                             _residual_inverse_box))
register_block(NeuralODE, BlockRule(_ode_bound, _ode_box(False), _ode_box(True)))
