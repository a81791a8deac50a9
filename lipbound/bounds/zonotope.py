r"""Value ranges through a whole network by affine arithmetic (zonotopes), rigorous in floating
point: the boxes between the blocks and the pre-activation ranges inside the coupling
sub-networks, for :mod:`.jacobian`.

A zonotope ``Z = {c + G eps + delta : |eps|_inf <= 1, |delta| <= e}`` (``c`` the centre, ``G`` the
generators, ``e >= 0`` an independent error per coordinate) holds a vector that depends on the
network input ``x in c_0 +- r``: it starts as ``c_0 + diag(r) eps``, and every coordinate after
any number of blocks stays an affine function of the *same* ``eps`` plus small error terms. Interval
propagation forgets that two coordinates depend on the same input, so its boxes widen block after
block; the zonotope keeps the dependence (``x_2 g(s(x_1)) + t(x_1)``: ``x_2``, ``s`` and ``t`` share
their generators), and its box ``c +- (|G| 1 + e)`` stays close to the true range on small input
boxes (the dequantization cell of a data point).

**Operations** (each exact in real arithmetic, as sets containing the true values):

* affine maps ``W z + b`` (linear and stride-1 convolution layers as dense matrices, couplings'
  selections, permutations, squeezes, 1x1 convolutions): ``(W c + b, W G, |W| e)``;
* sums and coordinatewise products of two zonotopes over the same generators:
  ``(a_0 + A eps)(b_0 + B eps) = a_0 b_0 + a_0 B eps + b_0 A eps + q`` with
  ``|q| <= rad(a) rad(b)``, a new generator per coordinate;
* ReLU / LeakyReLU(``a``) on ``[l, u]`` (the zonotope's own range): exact where stable; on an
  unstable coordinate the chord slope ``lambda`` (any float in ``[a, 1]``) leaves
  ``sigma(z) - lambda z in [0, M]``, ``M = max((a - lambda) l, (1 - lambda) u)``, so
  ``sigma(z) = lambda z + M/2 + (M/2) eps_new`` (Singh et al., 2018, DeepZ);
* any other differentiable elementwise map ``f`` (tanh, sigmoid, the coupling scale ``g`` of eq. 4)
  by the mean-value form ``f(z) = f(c) + f'(xi)(z - c)``: with ``f'`` enclosed in ``[lambda - rho,
  lambda + rho]`` over the range, ``f(z) = f(c) + lambda (z - c) + d``, ``|d| <= rho rad(z)``, a new
  generator per coordinate (second order in the radius on small boxes); where the interval image
  of the range is less than half as wide (large boxes: the mean-value form grows without limit,
  ``f`` does not), the coordinate is that interval instead, a fresh generator
  (:meth:`Zonotope.clipped`).

After each block the error terms ``e`` that are more than 0.1% of their coordinate's radius become
generators (:meth:`Zonotope.errors_as_generators`): carried as ``e`` they would grow by ``|W|``
at every later layer (on a 97-block Glow-like model, 1e171 times the sampled spread after 48
blocks; as generators, 9 times).

**Floating point.** Every float product and sum is charged its error bound (Higham, eq. 3.5:
``|fl(W G) - W G| <= gamma(k) |W| |G|``, so the set moves by at most ``gamma(k) |W| (|G| 1)`` per
row), added to ``e`` and rounded up, as in :mod:`.relax`. Values of library functions at the
centre come from enclosures (:func:`.interval.monotone_map`, :func:`.scales.g_box` in ``arb``).

Generators are capped at :data:`MAX_GENERATORS` between blocks, and before a coupling at an
eighth of what its widest sub-network layer allows within :data:`MAX_ENTRIES` (for a batch of 512
sub-boxes of a 4-coordinate input that keeps 122 per box, a quarter of the time of a fourfold cap
for splitting that ends tighter in the same time): beyond it the smallest are folded
into ``e`` (sound, a little looser); new generators are appended last, so zonotopes derived from a
common one inside a block share their first columns. All of it runs on a batch of boxes at once
(a leading dimension). Blocks without a zonotope rule (i-ResNet, neural ODE) end the pass: the
boxes after them are ``None`` and :mod:`.jacobian` carries them by its own means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor, nn

from ..blocks.base import InvertibleBlock
from ..blocks.coupling import AdditiveCoupling, AffineCoupling
from ..blocks.linear import ActNorm, DiagonalScaling, Invertible1x1Conv
from ..blocks.reshape import Permutation, Squeeze
from ..blocks.subnets import Constant
from .blocks import _shared, _shared_matrix
from .interval import Box, monotone_map
from .relax import dense_matrix
from .relax import out_shape as layer_out_shape
from .rounding import ETA, U, gamma, up_tensor
from .scales import dg_box, g_box

__all__ = ["MAX_GENERATORS", "Ranges", "Zonotope", "zonotope_ranges"]

#: Most generators a zonotope keeps; the smallest beyond it are folded into the error term.
MAX_GENERATORS = 16384
#: Largest generator matrix (entries) the pass builds; larger networks are left to the other
#: methods (the pass stops with a reason).
MAX_ENTRIES = 16_000_000

Shape = tuple[int, ...]


class Unsupported(Exception):
    """No zonotope rule for a block or layer (the reason is the text)."""


def _inflate(t: Tensor, k: int) -> Tensor:
    """``t`` (a float sum of non-negative terms of length ``k``) moved up to cover its own
    rounding and underflow."""
    return up_tensor(t * (1 + gamma(k + 4)) + (k + 4) * ETA)


@dataclass(frozen=True)
class Zonotope:
    """``{c + G eps + delta : |eps| <= 1, |delta| <= e}`` on flattened coordinates, for a batch
    of ``B`` independent input boxes: ``c`` and ``e`` are ``(B, n)``, ``G`` is ``(B, n, m)``
    (the generator columns are aligned across the batch: column ``j`` comes from the same
    operation in every box)."""

    c: Tensor
    g: Tensor
    e: Tensor

    @classmethod
    def of_box(cls, box: Box) -> Zonotope:
        """The box ``[lo, hi]`` itself (batch first): one generator per coordinate."""
        lo = box.lo.reshape(len(box.lo), -1).to(torch.float64)
        hi = box.hi.reshape(len(box.hi), -1).to(torch.float64)
        c = (lo + hi) / 2
        r = up_tensor(torch.maximum(hi - c, c - lo))
        return cls(c, torch.diag_embed(r), torch.zeros_like(c))

    @property
    def n_gens(self) -> int:
        return self.g.shape[-1]

    @cached_property
    def rows(self) -> Tensor:
        """``sum_j |G_ij|`` per coordinate (computed once)."""
        return self.g.abs().sum(-1)

    def radius(self) -> Tensor:
        """An upper bound on ``|z - c|`` per coordinate."""
        return _inflate(self.rows + self.e, self.n_gens + 1)

    def mag(self) -> Tensor:
        """An upper bound on ``|z|`` per coordinate."""
        return _inflate(self.c.abs() + self.radius(), 2)

    def box(self, shape: Shape | None = None) -> Box:
        """The enclosing box (rounded outward), per-sample ``shape`` (default: flat) with the
        batch first; :class:`Unsupported` once it is not finite (an overflow)."""
        r = self.radius()
        inf = torch.full_like(r, math.inf)
        lo = torch.nextafter(self.c - r, -inf)
        hi = torch.nextafter(self.c + r, inf)
        if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise Unsupported("the zonotope overflowed")
        shape = (self.c.shape[-1],) if shape is None else shape
        return Box(lo.reshape(-1, *shape), hi.reshape(-1, *shape))

    def clipped(self, box: Box, factor: float = 0.5) -> Zonotope:
        """The same values, each coordinate whose other enclosure ``box`` is narrower than
        ``factor`` times the zonotope's own range replaced by that interval (a fresh generator
        of its radius; the dependence on the input is lost there, hence the factor): not an
        affine operation, but sound, and it stops the mean-value form of a bounded map from
        growing past the map's range."""
        lo, hi = (t.reshape(self.c.shape) for t in (box.lo, box.hi))
        mid = (lo + hi) / 2
        rad = up_tensor(torch.maximum(hi - mid, mid - lo))
        swap = rad < factor * self.radius()
        if not bool(swap.any()):
            return self
        c = torch.where(swap, mid, self.c)
        g = torch.where(swap[..., None], torch.zeros_like(self.g), self.g)
        e = torch.where(swap, torch.zeros_like(self.e), self.e)
        return Zonotope(c, g, e).with_new(torch.where(swap, rad, torch.zeros_like(rad)))

    def errors_as_generators(self, share: float = 0.001) -> Zonotope:
        """The error terms ``e`` that are more than ``share`` of their coordinate's radius as
        generators of their own (the same set): through later linear maps ``W diag(e)`` keeps
        its signs where ``|W| e`` would not, so ``e`` does not grow by ``|W|`` block after
        block. The rest (rounding charges) stay in ``e``."""
        move = self.e > share * self.rows
        if not bool(move.any()):
            return self
        zero = torch.zeros_like(self.e)
        return Zonotope(self.c, self.g, torch.where(move, zero, self.e)).with_new(
            torch.where(move, self.e, zero))

    def pad(self, m: int) -> Zonotope:
        """The same set with zero generators up to ``m`` (new generators are appended last, so
        zonotopes derived from a common one share the first columns)."""
        return self.insert(self.n_gens, m - self.n_gens)

    def insert(self, at: int, k: int) -> Zonotope:
        """The same set with ``k`` zero generators inserted before column ``at``."""
        if not k:
            return self
        extra = self.g.new_zeros(*self.c.shape, k)
        out = Zonotope(self.c, torch.cat([self.g[..., :at], extra, self.g[..., at:]], -1),
                       self.e)
        if "rows" in self.__dict__:  # zero columns change no row sum
            out.__dict__["rows"] = self.rows
        return out

    def with_new(self, magnitude: Tensor) -> Zonotope:
        """Each coordinate ``i`` widened by its own new generator of size ``magnitude_i``
        (``(B, n)``). The boxes of a batch are independent zonotopes, so each box packs its new
        generators into the first of the new columns (as many columns as the box that needs
        the most)."""
        need = magnitude > 0
        k = int(need.sum(-1).max()) if need.numel() else 0
        if not k:
            return self
        slot = need.cumsum(-1) - 1
        b, i = torch.nonzero(need, as_tuple=True)
        cols = self.g.new_zeros(*self.c.shape, k)
        cols[b, i, slot[b, i]] = up_tensor(magnitude[b, i])
        return Zonotope(self.c, torch.cat([self.g, cols], -1), self.e)


def _reduced(z: Zonotope, most: int = MAX_GENERATORS) -> Zonotope:
    """At most ``most`` generators: beyond it each box keeps its largest three quarters (its
    columns reordered: only between blocks, where no other zonotope shares them) and folds the
    rest into ``e``."""
    if z.n_gens <= most:
        return z
    size = z.g.abs().sum(-2)
    order = torch.argsort(size, dim=-1, descending=True)
    keep, drop = order[:, : max(1, most * 3 // 4)], order[:, max(1, most * 3 // 4):]
    n = z.c.shape[-1]
    kept = torch.gather(z.g, -1, keep[:, None, :].expand(-1, n, -1))
    dropped = torch.gather(z.g, -1, drop[:, None, :].expand(-1, n, -1))
    folded = _inflate(z.e + dropped.abs().sum(-1), drop.shape[-1] + 1)
    return Zonotope(z.c, kept, folded)


def linear(z: Zonotope, w: Tensor, b: Tensor | None = None) -> Zonotope:
    """``W z + b`` (the same ``W``, ``b`` for every box of the batch)."""
    k = w.shape[1]
    aw = w.abs()
    c = z.c @ w.T + (0 if b is None else b)
    g = torch.matmul(w, z.g)
    spread = z.rows * (1 + gamma(z.n_gens + 1))
    charge = gamma(k + 2) * ((z.c.abs() + spread) @ aw.T + (0 if b is None else b.abs()))
    return Zonotope(c, g, _inflate(z.e @ aw.T + charge, (k + 4) * (z.n_gens + 1)))


def add(a: Zonotope, b: Zonotope) -> Zonotope:
    """``a + b`` (the same generators, padded to the longer)."""
    m = max(a.n_gens, b.n_gens)
    a, b = a.pad(m), b.pad(m)
    c, g = a.c + b.c, a.g + b.g
    charge = U * (c.abs() + (a.rows + b.rows) * (1 + gamma(m + 1)))
    return Zonotope(c, g, _inflate(a.e + b.e + charge, 4))


def scale(z: Zonotope, lam: Tensor, mu: Tensor | None = None) -> Zonotope:
    """``lam * z + mu`` per coordinate (float ``lam``, ``mu``: ``(n,)`` or ``(B, n)``)."""
    c = lam * z.c + (0 if mu is None else mu)
    g = lam[..., None] * z.g
    charge = 2 * U * ((lam * z.c).abs() + (0 if mu is None else mu.abs())) \
        + U * lam.abs() * z.rows * (1 + gamma(z.n_gens + 1))
    return Zonotope(c, g, _inflate(lam.abs() * z.e + charge, 4))


def multiply(a: Zonotope, b: Zonotope) -> Zonotope:
    """``a * b`` per coordinate: the bilinear term ``|q| <= rad(a) rad(b)`` as new generators."""
    m = max(a.n_gens, b.n_gens)
    a, b = a.pad(m), b.pad(m)
    c = a.c * b.c
    g = a.c[..., None] * b.g + b.c[..., None] * a.g
    ga, gb = a.rows, b.rows
    charge = U * c.abs() + 2 * U * (a.c.abs() * gb + b.c.abs() * ga) * (1 + gamma(m + 1))
    e = _inflate(a.c.abs() * b.e + b.c.abs() * a.e + charge, 4)
    return Zonotope(c, g, e).with_new(_inflate(a.radius() * b.radius(), 2))


def mean_value(z: Zonotope, value: Box, derivative: Box) -> Zonotope:
    """``f(z)`` for an elementwise ``f`` with ``f(c)`` in ``value`` and ``f'`` in ``derivative``
    over the range of ``z`` (module docstring)."""
    vlo, vhi = (t.reshape(z.c.shape) for t in (value.lo, value.hi))
    dlo, dhi = (t.reshape(z.c.shape) for t in (derivative.lo, derivative.hi))
    if not bool(torch.isfinite(torch.cat([vlo, vhi, dlo, dhi])).all()):
        raise Unsupported("a value or derivative enclosure is not finite")
    vmid = (vlo + vhi) / 2
    lam = (dlo + dhi) / 2
    rho = up_tensor(torch.maximum(dhi - lam, lam - dlo), 2)
    vrad = up_tensor(torch.maximum(vhi - vmid, vmid - vlo), 2)
    g = lam[..., None] * z.g
    charge = U * lam.abs() * z.rows * (1 + gamma(z.n_gens + 1))
    e = _inflate(lam.abs() * z.e + charge, 4)
    return Zonotope(vmid, g, e).with_new(_inflate(vrad + rho * z.radius(), 2))


def piecewise_linear(z: Zonotope, a: float) -> Zonotope:
    """``max(z, a z)`` for ``0 <= a <= 1`` (ReLU, LeakyReLU): exact on stable coordinates, the
    chord relaxation on the others (module docstring)."""
    if a == 1.0:
        return z
    r = z.radius()
    lo, hi = z.c - r, z.c + r
    neg, pos = hi <= 0, lo >= 0
    unstable = ~(neg | pos)
    width = torch.where(unstable, hi - lo, torch.ones_like(lo))
    chord = ((torch.maximum(hi, a * hi) - torch.maximum(lo, a * lo)) / width).clamp(a, 1.0)
    lam = torch.where(pos, 1.0, torch.where(neg, a, chord)).to(torch.float64)
    gap = torch.maximum((a - lam) * lo, (1 - lam) * hi)
    gap = up_tensor(gap * (1 + 4 * U) + 4 * ETA)
    half = torch.where(unstable, up_tensor(gap / 2), torch.zeros_like(gap))
    return scale(z, lam, half).with_new(half)


def _activation(layer: nn.Module, z: Zonotope) -> Zonotope:
    if type(layer) is nn.ReLU:
        return piecewise_linear(z, 0.0)
    if type(layer) is nn.LeakyReLU and 0.0 <= layer.negative_slope <= 1.0:
        return piecewise_linear(z, float(layer.negative_slope))
    if type(layer) is nn.Identity:
        return z
    from .jacobian import _DERIVATIVES  # the derivative ranges of the Jacobian method
    fns = {nn.Tanh: torch.tanh, nn.Sigmoid: torch.sigmoid}
    if type(layer) not in fns:
        raise Unsupported(f"no zonotope rule for the activation {type(layer).__name__}")
    rng = z.box()
    value = monotone_map(Box.point(z.c), fns[type(layer)])
    out = mean_value(z, value, _DERIVATIVES[type(layer)](layer, rng))
    return out.clipped(monotone_map(rng, fns[type(layer)]))


@dataclass
class Ranges:
    """What :func:`zonotope_ranges` found.

    Attributes:
        boxes: the boxes before each block and after the last (``None`` after a block without a
            rule); per-sample shapes with the batch of boxes first (of all the boxes, also in a
            selection).
        pre: ``(sub-network, i) -> Box``: the range of the output of the sub-network's first
            ``i`` layers, for the couplings reached; a sub-network used in several places (one
            block twice, tied weights) gets the hull of its ranges over all its uses, or none if
            its input shapes differ.
        nets: the sub-networks of ``pre`` (holding them keeps their ``id`` keys unique).
        reason: why the pass stopped early (``None``: it went through).
        index: the boxes of the batch that :meth:`range_of` answers for (``None``: all).
    """

    boxes: list[Box | None]
    pre: dict[tuple[int, int], Box | None] = field(default_factory=dict)
    nets: list[nn.Module] = field(default_factory=list)
    reason: str | None = None
    index: Tensor | None = None

    def range_of(self, net: nn.Module, i: int) -> Box | None:
        """The range of ``net``'s first ``i`` layers over every use of ``net`` (or ``None``),
        for the selected boxes."""
        box = self.pre.get((id(net), i))
        if box is None or self.index is None:
            return box
        return Box(box.lo[self.index], box.hi[self.index])

    def select(self, index: Tensor) -> Ranges:
        """The same ranges, :meth:`range_of` answering for the boxes ``index`` of the current
        selection (a view: nothing is copied)."""
        index = index if self.index is None else self.index[index]
        return Ranges(self.boxes, self.pre, self.nets, self.reason, index)

    def record(self, net: nn.Module, i: int, box: Box) -> None:
        key = (id(net), i)
        if key not in self.pre:
            self.pre[key] = box
            return
        old = self.pre[key]
        if old is None or old.lo.shape != box.lo.shape:
            self.pre[key] = None
            return
        self.pre[key] = Box(torch.minimum(old.lo, box.lo), torch.maximum(old.hi, box.hi))


def _subnet(net: nn.Module, z: Zonotope, shape: Shape, out: Ranges) -> Zonotope:
    """``net(z)`` for a chain of linear / stride-1 convolution layers and activations, recording
    the range after every prefix in ``out.pre``."""
    if type(net) is not nn.Sequential:
        raise Unsupported(f"sub-network {type(net).__name__} is not an nn.Sequential")
    out.nets.append(net)  # keeps the id() keys valid while the ranges live
    for i, layer in enumerate(net):
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nxt = layer_out_shape(layer, shape)
            if nxt is None:
                raise Unsupported(f"layer {layer} is not a plain linear or stride-1 convolution")
            if math.prod(nxt) * max(math.prod(shape), len(z.c) * z.n_gens) > MAX_ENTRIES:
                raise Unsupported(f"layer {layer} on {shape} is too large for the zonotope pass "
                                  f"({len(z.c)} box(es), {z.n_gens} generators: more than "
                                  f"{MAX_ENTRIES} entries)")
            w, b, _ = _shared(("zono-dense", layer, shape),
                              lambda lay=layer, sh=shape: dense_matrix(lay, sh))
            z, shape = linear(z, w, b), nxt
        else:
            z = _activation(layer, z)
        out.record(net, i + 1, z.box(shape))
    return z


def _coupling(block: AdditiveCoupling | AffineCoupling, z: Zonotope, shape: Shape,
              out: Ranges) -> Zonotope:
    from .jacobian import _layout
    lay = _layout(block, shape)
    cond, active = linear(z, lay.cond), linear(z, lay.active)
    n_a = math.prod(lay.active_shape)

    def part(net: nn.Module, base: Zonotope) -> Zonotope:
        if isinstance(net, Constant):
            value = net.value.detach().to(torch.float64).expand(lay.active_shape).reshape(-1)
            batch = len(base.c)
            return Zonotope(value.expand(batch, n_a).clone(), base.g.new_zeros(batch, n_a,
                                                                               base.n_gens),
                            base.c.new_zeros(batch, n_a))
        res = _subnet(net, base, lay.cond_shape, out)
        if res.c.shape[-1] != n_a:
            raise Unsupported("sub-network output is broadcast, not of the active part's shape")
        return res

    t = part(block.t, cond)
    if isinstance(block, AdditiveCoupling):
        y2 = add(active, t)
    else:
        h = part(block.s, cond)
        # columns: cond's, then t's new ones, then s's new ones (s ran without t's, all zero)
        h = h.insert(cond.n_gens, t.n_gens - cond.n_gens)
        rng = h.box()
        gz = mean_value(h, g_box(block.scale, Box.point(h.c)), dg_box(block.scale, rng))
        gz = gz.clipped(g_box(block.scale, rng))
        y2 = add(multiply(active, gz), t)
    return add(linear(z, lay.keep), linear(y2, lay.put))


def _per_channel(v: Tensor, shape: Shape) -> Tensor:
    view = (-1,) + (1,) * (len(shape) - 1)
    return v.reshape(view).expand(shape).reshape(-1)


def _widest(block: AdditiveCoupling | AffineCoupling, shape: Shape) -> int:
    """The most outputs of one layer in the block's sub-networks (1 if none)."""
    from .jacobian import _layout
    widest, cond_shape = 1, _layout(block, shape).cond_shape
    for net in (block.t, getattr(block, "s", None)):
        sub = cond_shape
        for layer in net if isinstance(net, nn.Sequential) else ():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                sub = layer_out_shape(layer, sub) or sub
                widest = max(widest, math.prod(sub))
    return widest


def _block(block: InvertibleBlock, z: Zonotope, shape: Shape, out: Ranges) -> Zonotope:
    if isinstance(block, (AdditiveCoupling, AffineCoupling)):
        # room for the generators the sub-networks add (at most one per neuron)
        z = _reduced(z, max(1, MAX_ENTRIES // (8 * _widest(block, shape) * len(z.c))))
        return _coupling(block, z, shape, out)
    if isinstance(block, ActNorm):
        ls = block.log_scale.detach().to(torch.float64).reshape(1, -1)
        factor = monotone_map(Box.point(ls), torch.exp)
        flo, fhi = (_per_channel(t, shape) for t in (factor.lo, factor.hi))
        bias = _per_channel(block.bias.detach().to(torch.float64), shape)
        shifted = scale(z, torch.ones_like(bias), bias)
        mid = (flo + fhi) / 2
        rad = up_tensor(torch.maximum(fhi - mid, mid - flo))
        res = scale(shifted, mid)
        return Zonotope(res.c, res.g, _inflate(res.e + rad * shifted.mag(), 2))
    if isinstance(block, DiagonalScaling):
        d = block.diag.detach().to(torch.float64).expand(shape).reshape(-1)
        return scale(z, d.clone())
    if isinstance(block, Invertible1x1Conv):
        from .jacobian import _conv1x1_dense
        m, e = _shared_matrix(block)
        res = linear(z, _conv1x1_dense(block, m, shape))
        if e == 0:
            return res
        norm = torch.linalg.vector_norm(z.mag(), dim=-1, keepdim=True)
        extra = up_tensor(e * norm * (1 + gamma(z.c.shape[-1] + 4)), 2)
        return Zonotope(res.c, res.g, _inflate(res.e + extra, 2))
    if isinstance(block, (Permutation, Squeeze)):
        from .jacobian import _rearrangement_matrix
        return linear(z, _rearrangement_matrix(block, False, shape))
    raise Unsupported(f"no zonotope rule for {type(block).__name__}")


def zonotope_ranges(blocks: Sequence[InvertibleBlock], shapes: Sequence[Shape],
                    box: Box) -> Ranges:
    """The boxes between ``blocks`` (per-sample shapes ``shapes``, one more than blocks) for
    inputs in ``box``, and the pre-activation ranges inside their coupling sub-networks, by the
    zonotope pass of the module docstring. Never raises for a block it does not take: the boxes
    after it are ``None`` and ``reason`` says why."""
    out = Ranges([box])
    with torch.no_grad():
        z = Zonotope.of_box(box)
        for k, block in enumerate(blocks):
            try:
                z = _block(block, z, tuple(shapes[k]), out).errors_as_generators()
                z = _reduced(z, min(MAX_GENERATORS, MAX_ENTRIES // z.c.numel()))
                nxt = z.box(tuple(shapes[k + 1]))
            except (Unsupported, ValueError) as err:
                out.reason = f"{err} (at block {k})"
                out.boxes += [None] * (len(blocks) - k)
                return out
            out.boxes.append(nxt)
    return out
