r"""Numbers for Table 3 from a concrete block: one :class:`BlockRule` per block type.

A rule turns a block with its real weights into its row (:mod:`.table`) with every symbol given a
certified number:

* ``Lip(t)``, ``Lip(s)``, ``Lip(g)``, ``Lip(f)``: products of certified layer norms and activation
  constants (:mod:`.layers`); for a neural ODE the first layer's time column is left out, as
  ``Lip(f)`` is in ``x`` only.
* ``c_g, c_{g'}, c_{1/g}, c_{(1/g)'}``, ``c_t`` and the per-coordinate sups ``m_x``, ``m_y``:
  the scale function's sups (:class:`~lipbound.blocks.scale.ScaleFunction`) over the range of the
  raw scale ``h = s(x_{I1})`` on the box, which interval bound propagation through ``s`` and ``t``
  gives coordinate by coordinate.
* ``max |D_ii|``, ``||W||``, ``||W^-1||``: rounded up from the stored parameters.

A rule also maps boxes through its block, forward (``[a, b]`` of the next block) and backward
(``[a*, b*]`` of the previous block's inverse). Coupling, linear and reshape blocks do this with
outward-rounded interval arithmetic. Iterative blocks (i-ResNet inverse, neural ODE) use a ball:
for ``x`` within ``rho`` of the box centre ``c`` (2-norm), ``F(x)`` is within ``Lip(F) rho`` of
``F(c)``, with ``F(c)`` computed by the block and widened by a rounding allowance (relative
``1e-9`` plus the fixed-point residual): this allowance is generous but, unlike the rest, not
derived from an error analysis.

Unknown block types get a ``TypeError`` that says how to register a rule (:func:`register_block`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..blocks.base import InvertibleBlock
from ..blocks.coupling import AdditiveCoupling, AffineCoupling
from ..blocks.linear import ActNorm, DiagonalScaling, Invertible1x1Conv
from ..blocks.ode import NeuralODE, ODEFunc
from ..blocks.partition import MaskPartition, Partition
from ..blocks.reshape import Permutation, Squeeze
from ..blocks.residual import InvertibleResidual, frozen_spectral_norm
from ..blocks.scale import (
    ExpScale,
    IdentityScale,
    ScaleFunction,
    SigmoidScale,
    SoftClampScale,
)
from . import table
from .interval import Box, affine_map, monotone_map
from .layers import ibp, lipschitz
from .norms import certified_inverse, spectral_norm_upper
from .rounding import LIB_ULPS, up, up_tensor, widen

__all__ = ["BlockContext", "BlockRule", "block_rule", "register_block"]

Shape = tuple[int, ...]
#: Relative rounding allowance for centres computed by iterative blocks (see module docstring).
ITERATIVE_ALLOWANCE = 1e-9


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


_RULES: dict[type, BlockRule] = {}


def register_block(block_type: type, rule: BlockRule) -> None:
    """Teach the bounds a new block type (subclasses inherit the rule)."""
    if not isinstance(rule, BlockRule):
        raise TypeError(f"rule must be a BlockRule, got {type(rule).__name__}")
    _RULES[block_type] = rule


def block_rule(block: nn.Module) -> BlockRule:
    """The rule registered for ``block``'s type or its nearest registered base class."""
    for cls in type(block).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    raise TypeError(
        f"no bound rule for block type {type(block).__name__}; register one with "
        "lipbound.bounds.register_block(BlockType, BlockRule(bound=..., forward_box=..., "
        "inverse_box=...))"
    )


# --- couplings ---------------------------------------------------------------------------------

def _cond_shape(partition: Partition, shape: Shape) -> Shape:
    return tuple(partition.cond(torch.zeros((1, *shape), dtype=torch.float64)).shape[1:])


def _active_mask(partition: Partition, active: Tensor) -> Tensor:
    """Which entries of ``partition.active(x)`` are coordinates of ``I2``."""
    if isinstance(partition, MaskPartition):
        return ~partition.mask.reshape(active.shape[1:])
    return torch.ones(active.shape[1:], dtype=torch.bool)


def _subnet_box(net: nn.Module, partition: Partition, box: Box, active_shape: torch.Size) -> Box:
    out = ibp(net, box.apply(partition.cond))
    return out.expand_as(active_shape)


def _lip(net: nn.Module, shape: Shape) -> float:
    return lipschitz(net, shape)[0]


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


_INCREASING_SCALES = (SigmoidScale, ExpScale, SoftClampScale, IdentityScale)


def _g_box(scale: ScaleFunction, h: Box) -> Box:
    if not isinstance(scale, _INCREASING_SCALES):
        raise TypeError(f"scale {type(scale).__name__} is not known to be increasing; bounds "
                        f"support {[c.__name__ for c in _INCREASING_SCALES]}")
    return monotone_map(h, scale)


def _affine_parts(block: AffineCoupling, box: Box) -> tuple[Box, Box, Box]:
    """Boxes of the active part, the raw scale ``h`` and the shift ``t`` (active layout)."""
    p = block.partition
    active = box.apply(p.active)
    return (active, _subnet_box(block.s, p, box, active.lo.shape),
            _subnet_box(block.t, p, box, active.lo.shape))


def _per_coordinate_sups(scale: ScaleFunction, h: Box, mask: Tensor,
                         names: tuple[str, ...]) -> dict[str, Tensor]:
    """``{name: tensor}`` of ``scale.sup_<name>(h_lo_i, h_hi_i)`` for the masked coordinates."""
    pairs = torch.stack([h.lo[0][mask], h.hi[0][mask]], dim=1)
    unique, where = torch.unique(pairs, dim=0, return_inverse=True)
    out = {}
    for name in names:
        fn = getattr(scale, f"sup_{name}")
        vals = torch.tensor([fn(lo, hi) for lo, hi in unique.tolist()],
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
    for direction, box, lost, fn in (
            ("forward", ctx.box, ctx.box_lost, _affine_forward_values),
            ("inverse", ctx.inverse_box, ctx.inverse_box_lost, _affine_inverse_values)):
        if box is None:
            refused[direction] = lost or _NEEDS_BOX
            continue
        try:
            values.update(fn(block, box))
        except ValueError as err:  # e.g. an IdentityScale whose h-range holds 0
            refused[direction] = f"no {direction} bound on this box: {err}"
    return table.affine(table.Symbols(ctx.index), values, per_coordinate=True,
                        refused_forward=refused["forward"], refused_inverse=refused["inverse"])


def _affine_forward_box(block: AffineCoupling, box: Box) -> Box:
    active, h, t = _affine_parts(block, box)
    new = active * _g_box(block.scale, h) + t
    return Box(block.partition.combine(box.lo, new.lo), block.partition.combine(box.hi, new.hi))


def _affine_inverse_box(block: AffineCoupling, box: Box) -> Box:
    active, h, t = _affine_parts(block, box)
    new = (active - t).divide(_g_box(block.scale, h), "the scale g(s(y_I1))")
    return Box(block.partition.combine(box.lo, new.lo), block.partition.combine(box.hi, new.hi))


# --- linear blocks -----------------------------------------------------------------------------

def _diag(block: DiagonalScaling) -> Tensor:
    return block.diag.detach().to(torch.float64)


def _diagonal_bound(block: DiagonalScaling, ctx: BlockContext) -> table.BlockBound:
    d = _diag(block).abs()
    return table.diagonal(table.Symbols(ctx.index),
                          {"max|D|": float(d.max()), "max|1/D|": up(1.0 / float(d.min()))})


def _diagonal_box(inverse: bool) -> Callable[[DiagonalScaling, Box], Box]:
    def rule(block: DiagonalScaling, box: Box) -> Box:
        d = Box.point(_diag(block).expand(box.shape).unsqueeze(0))
        return box.divide(d) if inverse else box * d
    return rule


def _log_scale(block: ActNorm) -> Tensor:
    return block.log_scale.detach().to(torch.float64)


def _actnorm_bound(block: ActNorm, ctx: BlockContext) -> table.BlockBound:
    ls = _log_scale(block)
    bound = table.actnorm(table.Symbols(ctx.index), {
        "max|D|": up(math.exp(float(ls.max())), LIB_ULPS),
        "max|1/D|": up(math.exp(-float(ls.min())), LIB_ULPS)})
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


def _matrix(block: Invertible1x1Conv) -> Tensor:
    return block.matrix().detach().to(torch.float64)


def _conv1x1_bound(block: Invertible1x1Conv, ctx: BlockContext) -> table.BlockBound:
    w = _matrix(block)
    return table.invertible_1x1_conv(table.Symbols(ctx.index), {
        "||W||": spectral_norm_upper(w), "||W^-1||": certified_inverse(w)[1]})


def _mix(x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    return torch.einsum("ij,bj...->bi...", w, x)


def _conv1x1_forward_box(block: Invertible1x1Conv, box: Box) -> Box:
    w = _matrix(block)
    return affine_map(box, _mix, w, None, w.shape[1])


def _conv1x1_inverse_box(block: Invertible1x1Conv, box: Box) -> Box:
    """``W^-1 y`` through the float inverse ``X``, widened by ``||(W^-1 - X) y||``, where
    ``W^-1 - X = W^-1 (I - W X)``."""
    x, inv_norm, residual = certified_inverse(_matrix(block))
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
        raise ValueError(f"Squeeze({f}) needs an input (C, H, W) with H, W divisible by {f}, "
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


def _ball_image(center: Tensor, radius: float, residual: float = 0.0) -> Box:
    slack = radius + residual
    return Box(*widen(center - slack, center + slack, ITERATIVE_ALLOWANCE, ITERATIVE_ALLOWANCE))


def _residual_inverse_box(block: InvertibleResidual, box: Box) -> Box:
    with frozen_spectral_norm(block.g), torch.no_grad():
        lip_g = _residual_lip(block, box.shape)
        if not lip_g < 1:
            raise ValueError(f"cannot carry a box through the i-ResNet inverse: Lip(g) <= "
                             f"{lip_g:.6g} is not < 1")
        c, rho = box.l2_radius()
        x = block.inverse(c.to(_dtype(block)))
        x64 = x.to(torch.float64)
        residual = float(torch.linalg.vector_norm(x64 + block.g(x).to(torch.float64) - c))
        inv_lip = up(1.0 / (1.0 - lip_g), 2)
        return _ball_image(x64, up(rho * inv_lip), up(residual * inv_lip * 2))


def _dtype(block: nn.Module) -> torch.dtype:
    p = next(iter(block.parameters()), None)
    return p.dtype if p is not None else torch.float64


def _ode_lip(block: NeuralODE, shape: Shape) -> float:
    """``Lip(f)`` in ``x``, uniform in ``t``: the time column of the first layer is left out."""
    f = block.f
    if not isinstance(f, ODEFunc):
        raise TypeError(f"NeuralODE.f of type {type(f).__name__} has no bound rule; use ODEFunc "
                        "or register a rule for NeuralODE")
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


def _ode_box(inverse: bool) -> Callable[[NeuralODE, Box], Box]:
    def rule(block: NeuralODE, box: Box) -> Box:
        row = _ode_bound(block, BlockContext(None, box.shape, None, None))
        lip = row.inverse.value if inverse else row.forward.value
        c, rho = box.l2_radius()
        with torch.no_grad():
            image = (block.inverse if inverse else block)(c.to(_dtype(block)))
        return _ball_image(image.to(torch.float64), up(rho * lip))
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
