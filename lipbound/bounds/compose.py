r"""Composition of block bounds over a network (paper appendix B, Remarks 3 and 4).

For ``F = F_L o ... o F_1``,

.. math:: \mathrm{Lip}(F) \le \prod_k \mathrm{Lip}(F_k), \qquad
          \mathrm{Lip}(F^{-1}) \le \prod_k \mathrm{Lip}(F_k^{-1})

(the inverse applies ``F_L^{-1}`` first: the same product in reverse order). Cumulative values are
the bounds of the prefix ``F_k o ... o F_1`` and of its inverse. Remark 3 turns upper bounds into
lower bounds through eq. 9, ``Lip(F) >= 1 / L*`` and ``Lip(F^-1) >= 1 / L`` for ``L >= Lip(F)``,
``L* >= Lip(F^-1)``; a lower bound is never below 0, and one that is 0 (an infinite ``L``, or
``1 / L`` below the normal float range) says nothing and is reported as vacuous. Remark 4's
bi-Lipschitz constant is ``max(L, L*)``. Products are evaluated in ball arithmetic and rounded up,
lower bounds rounded down.

:func:`bound_model` builds the rows of a model made of :mod:`lipbound.blocks`, carrying the input
box forward block by block (``[a, b]`` of each forward) and, for the inverses, either the forward
images (each inverse then holds on the image of the input box, which is where a round trip uses it)
or a given output box carried backward (``[a*, b*]``). So by default the network's inverse bound
holds on ``F([a, b]^d)``; with an output box, on all of ``[a*, b*]^d``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import sympy as sp
import torch
from flint import arb
from tqdm import tqdm

from ..blocks.base import InvertibleBlock, require_block
from ..errors import InputError
from .blocks import BlockContext, block_rule, shared_propagation
from .evaluate import ball_lower, ball_upper, working_precision
from .interval import Box
from .jacobian import METHOD as JACOBIAN_METHOD
from .jacobian import JacobianBound, jacobian_bounds
from .rounding import format_bound, widen
from .table import BlockBound

__all__ = ["LocalBounds", "NetworkBound", "as_box", "bound_model", "compact_indices",
           "dequantization_radius", "linf_ball", "local_bounds", "remark3_lower"]

#: The name of the product of per-block bounds, as reports state it.
COMPOSED_METHOD = "product of per-block bounds (Table 3 rows)"

_LOST = ("the box carried to this block's input overflowed float64 (interval propagation "
         "through the blocks before it diverged), so there is no finite local bound here")
_LOST_INVERSE = ("the box carried to this block's inverse input overflowed float64 (interval "
                 "propagation diverged on the way), so there is no finite local bound here")


def _product(values: Sequence[float | None]) -> float | None:
    if any(v is None for v in values):
        return None
    if any(math.isinf(v) for v in values):
        return math.inf
    total = arb(1)
    for v in values:
        total = total * arb(v)
    return ball_upper(total)


def _symbolic_product(factors: Sequence[sp.Expr]) -> sp.Expr:
    """The product, equal factors gathered into powers, built without sympy's evaluation (fast
    for hundreds of blocks)."""
    counts: dict[sp.Expr, int] = {}
    for f in factors:
        if f != 1:  # reshapes
            counts[f] = counts.get(f, 0) + 1
    terms = [f if n == 1 else sp.Pow(f, n, evaluate=False) for f, n in counts.items()]
    if not terms:
        return sp.Integer(1)
    return terms[0] if len(terms) == 1 else sp.Mul(*terms, evaluate=False)


#: Smallest positive normal float64: a lower bound below it is reported as 0 (vacuous).
_TINY = 2.0 ** -1022


def remark3_lower(upper: float | None) -> float | None:
    """Remark 3's lower bound ``1 / L`` from an upper bound ``L``, rounded down; ``0`` (vacuous)
    when ``L`` is infinite or ``1 / L`` is below the normal float range, never negative or
    subnormal; ``None`` when ``L`` is not numeric."""
    if upper is None:
        return None
    if math.isinf(upper) or upper <= 0:
        return 0.0
    with working_precision():
        v = ball_lower(1 / arb(upper))
    return v if v >= _TINY else 0.0


def _cumulative(values: Sequence[float | None]) -> list[float | None]:
    return [_product(values[: k + 1]) for k in range(len(values))]


@dataclass(frozen=True, eq=False)
class NetworkBound:
    """Rows of a network, in forward order, and their composition.

    Attributes:
        blocks: the rows.
        boxes: for models, the box each block's forward was bounded on (``None``: no box).
        inverse_boxes: for models, the box each block's inverse was bounded on.
        jacobian: for models on a box, the whole-network interval Jacobian bounds
            (:mod:`.jacobian`; ``reason`` says why there are none).
    """

    blocks: tuple[BlockBound, ...]
    boxes: tuple[Box | None, ...] = ()
    inverse_boxes: tuple[Box | None, ...] = ()
    jacobian: JacobianBound | None = None

    def _direction(self, attr: str) -> list:
        return [getattr(b, attr) for b in self.blocks]

    @cached_property
    def forward_expr(self) -> sp.Expr:
        """The symbolic product of the tight forward bounds."""
        return _symbolic_product([b.tight for b in self._direction("forward")])

    @cached_property
    def inverse_expr(self) -> sp.Expr:
        """The symbolic product of the tight inverse bounds (reverse order, same product)."""
        return _symbolic_product([b.tight for b in reversed(self._direction("inverse"))])

    @cached_property
    def forward_paper_expr(self) -> sp.Expr:
        """The symbolic product of the paper's forward bounds."""
        return _symbolic_product([b.paper for b in self._direction("forward")])

    @cached_property
    def inverse_paper_expr(self) -> sp.Expr:
        """The symbolic product of the paper's inverse bounds."""
        return _symbolic_product([b.paper for b in reversed(self._direction("inverse"))])

    @cached_property
    def forward_folded(self) -> sp.Expr:
        """:attr:`forward_expr` with every block's known numbers folded in
        (:meth:`~.table.Bound.folded`)."""
        return _symbolic_product([b.folded() for b in self._direction("forward")])

    @cached_property
    def inverse_folded(self) -> sp.Expr:
        """:attr:`inverse_expr` with every block's known numbers folded in."""
        return _symbolic_product([b.folded() for b in reversed(self._direction("inverse"))])

    @cached_property
    def cumulative_forward(self) -> list[float | None]:
        """Bounds on ``Lip(F_k o ... o F_1)``, ``k = 1..L``."""
        return _cumulative([b.value for b in self._direction("forward")])

    @cached_property
    def cumulative_inverse(self) -> list[float | None]:
        """Bounds on ``Lip((F_k o ... o F_1)^-1)``, ``k = 1..L``."""
        return _cumulative([b.value for b in self._direction("inverse")])

    @property
    def forward_composed(self) -> float | None:
        """The product of the per-block forward bounds (``1`` for no blocks), or ``None``."""
        return self.cumulative_forward[-1] if self.blocks else 1.0

    @property
    def inverse_composed(self) -> float | None:
        """The product of the per-block inverse bounds, or ``None``."""
        return self.cumulative_inverse[-1] if self.blocks else 1.0

    def _best(self, direction: str) -> tuple[float | None, str]:
        composed = getattr(self, f"{direction}_composed")
        jac = None if self.jacobian is None else getattr(self.jacobian, direction)
        if jac is not None and (composed is None or jac < composed):
            return jac, JACOBIAN_METHOD
        return composed, COMPOSED_METHOD

    @property
    def forward(self) -> float | None:
        """The network's forward bound: the tightest of :attr:`forward_composed` and the
        whole-network Jacobian bound (:attr:`forward_method` names it); ``None`` if neither is
        numeric."""
        return self._best("forward")[0]

    @property
    def inverse(self) -> float | None:
        """The network's inverse bound, the tightest sound method (:attr:`inverse_method`)."""
        return self._best("inverse")[0]

    @property
    def forward_method(self) -> str:
        """Which method gave :attr:`forward`."""
        return self._best("forward")[1]

    @property
    def inverse_method(self) -> str:
        """Which method gave :attr:`inverse`."""
        return self._best("inverse")[1]

    @cached_property
    def forward_paper(self) -> float | None:
        """The product of the paper's forward bounds."""
        return _product([b.paper_value for b in self._direction("forward")])

    @cached_property
    def inverse_paper(self) -> float | None:
        """The product of the paper's inverse bounds."""
        return _product([b.paper_value for b in self._direction("inverse")])

    @property
    def forward_lower(self) -> float | None:
        """Remark 3: ``Lip(F) >= 1 / L*`` (:func:`remark3_lower`: ``0`` when vacuous)."""
        return remark3_lower(self.inverse)

    @property
    def inverse_lower(self) -> float | None:
        """Remark 3: ``Lip(F^-1) >= 1 / L`` (:func:`remark3_lower`: ``0`` when vacuous)."""
        return remark3_lower(self.forward)

    @property
    def bilipschitz(self) -> float | None:
        """Remark 4: ``biLip(F) <= max(L, L*)``."""
        if self.forward is None or self.inverse is None:
            return None
        return max(self.forward, self.inverse)

    def __repr__(self) -> str:
        def show(v: float | None) -> str:
            return "?" if v is None else format_bound(v)

        refused = self.refused_count
        return (f"NetworkBound({len(self.blocks)} blocks, Lip(F) <= {show(self.forward)}, "
                f"Lip(F^-1) <= {show(self.inverse)}"
                + (f", {refused} refused" if refused else "") + ")")

    def _reasons(self, attr: str) -> list[str]:
        """One line per distinct ``(kind, reason)`` of the bounds' ``attr`` (``refused`` or
        ``symbolic``), naming the blocks and directions it holds for."""
        where: dict[tuple[str, str], dict[str, list[int]]] = {}
        for k, b in enumerate(self.blocks):
            for name in ("forward", "inverse"):
                reason = getattr(getattr(b, name), attr)
                if reason:
                    where.setdefault((b.kind, reason), {}).setdefault(name, []).append(k)
        out = []
        for (kind, reason), directions in where.items():
            groups: dict[tuple[int, ...], list[str]] = {}
            for name, ks in directions.items():
                groups.setdefault(tuple(ks), []).append(name)
            for ks, names in groups.items():
                noun = "block" if len(ks) == 1 else "blocks"
                out.append(f"{noun} {compact_indices(ks)} ({kind}) {' and '.join(names)}: "
                           f"{reason}")
        return out

    def refusals(self) -> list[str]:
        """``"block k (kind) forward|inverse: reason"`` for every reason a bound is refused (no
        bound at all), blocks with the same kind and reason on one line."""
        return self._reasons("refused")

    def symbolic_reasons(self) -> list[str]:
        """The same for bounds that are symbolic only (a result without a number)."""
        return self._reasons("symbolic")

    @property
    def refused_count(self) -> int:
        """How many block bounds (forward and inverse counted apart) are refused."""
        return sum(bool(getattr(b, name).refused) for b in self.blocks
                   for name in ("forward", "inverse"))


def compact_indices(indices: Sequence[int]) -> str:
    """The indices, each maximal run of more than three with a common step written
    ``"a, b, ..., z"``: ``"0, 49, 98"``, ``"1, 4, ..., 46, 50, 53, ..., 95"``; after six parts,
    ``", ... (N in all)"``."""
    ks = list(indices)
    parts: list[str] = []
    i = 0
    while i < len(ks):
        j = i + 1
        if j < len(ks):
            step = ks[j] - ks[i]
            while j + 1 < len(ks) and ks[j + 1] - ks[j] == step:
                j += 1
        if j - i + 1 > 3:
            parts.append(f"{ks[i]}, {ks[i + 1]}, ..., {ks[j]}")
            i = j + 1
        else:
            parts.append(str(ks[i]))
            i += 1
    if len(parts) > 6:
        return ", ".join(parts[:6]) + f", ... ({len(ks)} in all)"
    return ", ".join(parts)


def _carry(blocks: Sequence[InvertibleBlock], start: Box | None, inverse: bool,
           progress: bool) -> list[Box | None]:
    """Boxes before each block, carried forward (``inverse=False``, from the input box) or
    backward (from the output box): ``len(blocks) + 1`` entries in forward order."""
    boxes: list[Box | None] = [start]
    order = list(reversed(blocks)) if inverse else list(blocks)
    for block in tqdm(order, desc="boxes", disable=not progress or start is None, leave=False):
        box = boxes[-1]
        if box is not None:
            rule = block_rule(block)
            box = rule.inverse_box(block, box) if inverse else rule.forward_box(block, box)
            if not box.is_finite():
                box = None  # the box overflowed: later local bounds are refused (_LOST)
        boxes.append(box)
    return list(reversed(boxes)) if inverse else boxes


BoxLike = tuple[float, float] | tuple[torch.Tensor, torch.Tensor] | Box


def as_box(box: BoxLike, shape: tuple[int, ...], name: str = "box") -> Box:
    """A :class:`Box` of per-sample shape ``shape`` from ``(a, b)`` (``[a, b]^d``), from
    ``(lower, upper)`` tensors of ``shape`` (or ``(1, *shape)``, or any shape with as many
    entries: per-coordinate bounds, taken exactly in float64), or a :class:`Box`."""
    if isinstance(box, Box):
        lo, hi = box.lo, box.hi
    else:
        if not isinstance(box, (tuple, list)) or len(box) != 2:
            raise InputError(f"{name} must be (a, b) or (lower, upper) tensors, got {box!r:.80}")
        a, b = box
        if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
            try:
                return Box.uniform(float(a), float(b), shape)
            except (TypeError, ValueError) as err:
                raise InputError(f"{name}: {err}") from err
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            raise InputError(f"{name} must be two numbers or two tensors, got "
                             f"{type(a).__name__} and {type(b).__name__}")
        lo, hi = a, b
    n = math.prod(shape)
    for end, which in ((lo, "lower"), (hi, "upper")):
        if end.numel() != n:
            raise InputError(f"{name}: the {which} tensor has {end.numel()} entries, the "
                             f"per-sample shape {shape} needs {n}")
        if not end.is_floating_point() and end.dtype != torch.int64:
            raise InputError(f"{name}: the {which} tensor must hold real numbers, got "
                             f"{end.dtype}")
        if not bool(torch.isfinite(end).all()):
            raise InputError(f"{name}: the {which} tensor must be finite")
    lo = lo.detach().to("cpu", torch.float64).reshape(1, *shape)
    hi = hi.detach().to("cpu", torch.float64).reshape(1, *shape)
    if not bool((lo <= hi).all()):
        raise InputError(f"{name} needs lower <= upper in every coordinate")
    return Box(lo, hi)


def bound_model(model: InvertibleBlock, shape: Sequence[int],
                box: BoxLike | None = None, output_box: BoxLike | None = None,
                progress: bool = False) -> NetworkBound:
    """Bounds of every leaf block of ``model`` and their composition.

    Args:
        model: an :class:`~lipbound.blocks.InvertibleBlock` (sequentials are flattened).
        shape: the per-sample input shape, e.g. ``(2,)`` or ``(3, 32, 32)``.
        box: inputs in the box: ``(a, b)`` for ``[a, b]^d``, or ``(lower, upper)`` tensors of
            the per-sample shape for ``prod_i [lower_i, upper_i]`` (:func:`as_box`). Local
            bounds (affine couplings) need it.
        output_box: the inverse's inputs in this box (the same forms, of the output shape),
            carried backward; by default the inverses are bounded on the forward images of
            ``box``.
        progress: show tqdm progress bars.
    """
    shape = tuple(int(s) for s in shape)
    if not shape or min(shape) < 1:
        raise InputError(f"shape must be a non-empty per-sample shape of positive sizes, "
                         f"got {shape}")
    require_block(model)
    blocks = model.flat_blocks()
    shapes = [shape]
    for block in blocks:
        shapes.append(tuple(block_rule(block).out_shape(block, shapes[-1])))
    start = None if box is None else as_box(box, shapes[0], "box")
    end = None if output_box is None else as_box(output_box, shapes[-1], "output_box")
    with shared_propagation():
        jac = jacobian_bounds(blocks, shapes, start, end)
        with torch.no_grad():
            if start is not None and jac.boxes:
                fwd = list(jac.boxes)  # zonotope and centred-form boxes, never wider than _carry's
            else:
                fwd = _carry(blocks, start, False, progress)
            if end is None:
                inv = fwd
            elif jac.inverse_boxes:
                inv = list(jac.inverse_boxes)
            else:
                inv = _carry(blocks, end, True, progress)
        rows = []
        for k, block in enumerate(tqdm(blocks, desc="bounds", disable=not progress, leave=False)):
            given_inverse = end is not None or start is not None
            ctx = BlockContext(k, shapes[k], fwd[k], inv[k + 1],
                               _LOST if start is not None and fwd[k] is None else None,
                               _LOST_INVERSE if given_inverse and inv[k + 1] is None else None)
            row = block_rule(block).bound(block, ctx)
            rows.append(BlockBound(row.kind, row.scope, row.forward, row.inverse,
                                   row.assumptions, f"{k}: {type(block).__name__}"))
    return NetworkBound(tuple(rows), tuple(fwd[:-1]), tuple(inv[1:]), jac)


def linf_ball(center: torch.Tensor, radius: float) -> Box:
    """The box ``[x - r, x + r]`` around one sample ``x`` (any per-sample shape), its ends
    rounded outward so that it holds the exact ball."""
    if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius >= 0):
        raise InputError(f"radius (--radius) must be a finite number >= 0, got {radius!r}")
    x = center.detach().to("cpu", torch.float64).unsqueeze(0)
    if not bool(torch.isfinite(x).all()):
        raise InputError("the input to bound around must be finite")
    return Box(*widen(x - radius, x + radius, 0.0))


def dequantization_radius(bits: int) -> float:
    """Half the width of the dequantization cell of ``bits``-bit data scaled to ``[0, 1]``:
    ``0.5 / 2^bits`` (``0.5 / 256`` for 8-bit images; exact)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 52:
        raise InputError(f"bits (--bits) must be an integer from 1 to 52, got {bits!r}")
    return 0.5 / 2**bits


@dataclass(frozen=True, eq=False)
class LocalBounds:
    """Bounds on L-inf balls around given inputs (paper section 3.3, appendix E): one
    :class:`NetworkBound` per input, each on ``[x - r, x + r]`` (the inverse on its forward
    image), and their maxima, which bound the local Lipschitz constants over all the balls."""

    radius: float
    bounds: tuple[NetworkBound, ...]

    def _max(self, attr: str) -> float | None:
        values = [getattr(b, attr) for b in self.bounds]
        return None if any(v is None for v in values) else max(values)

    @property
    def forward(self) -> float | None:
        """The largest forward bound over the inputs (``None`` if one is not numeric)."""
        return self._max("forward")

    @property
    def inverse(self) -> float | None:
        """The largest inverse bound over the inputs (``None`` if one is not numeric)."""
        return self._max("inverse")

    def refusals(self) -> list[str]:
        """``"input i: ..."`` for every refusal of every input."""
        return [f"input {i}: {r}" for i, b in enumerate(self.bounds) for r in b.refusals()]


def local_bounds(model: InvertibleBlock, inputs: torch.Tensor, radius: float | None = None,
                 bits: int = 8, shape: Sequence[int] | None = None,
                 progress: bool = False) -> LocalBounds:
    """:func:`bound_model` on the L-inf ball of ``radius`` around each input (batch first), by
    default the dequantization cell of ``bits``-bit data (:func:`dequantization_radius`).
    ``shape``: the per-sample shape (default ``inputs.shape[1:]``). The blocks' Lipschitz
    constants and certified inverses are computed once for all inputs."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2 or len(inputs) == 0:
        raise InputError("inputs must be a tensor of at least one sample, batch first "
                         f"(shape (n, ...)), got {getattr(inputs, 'shape', type(inputs))}")
    shape = tuple(inputs.shape[1:]) if shape is None else tuple(int(s) for s in shape)
    if math.prod(shape) != inputs[0].numel():
        raise InputError(f"inputs have {inputs[0].numel()} entries per sample, the shape "
                         f"{shape} needs {math.prod(shape)}")
    r = dequantization_radius(bits) if radius is None else radius
    linf_ball(inputs[0].reshape(shape), r)  # bad radius: an error before any work
    out = []
    with shared_propagation():
        for x in tqdm(inputs, desc="inputs", disable=not progress, leave=False):
            out.append(bound_model(model, shape, linf_ball(x.reshape(shape), r), None, False))
    return LocalBounds(float(r), tuple(out))
