r"""Certified numbers of the scale functions ``g`` of affine couplings (paper eq. 4, Lemma 6).

Lemma 6 needs, over the interval ``[lo, hi]`` that the raw scale ``h = s(x_{I_1})`` takes on the
input box,

* ``c_g = sup |g(h)|``, ``c_g' = sup |g'(h)|``, ``c_{1/g} = sup |1/g(h)|``,
  ``c_{(1/g)'} = sup |(1/g)'(h)|`` (:func:`scale_sup`),

and carrying a box through a coupling needs the image ``g([lo, hi])`` (:func:`g_box`). Both are
evaluated here in ``arb`` ball arithmetic (python-flint, :data:`~.evaluate.PREC` bits) from the
exact float endpoints, and the end of the ball is taken: no float64 closed form, so nothing
depends on how accurate ``exp`` or ``lo + shift`` are in float64, even for ``|lo|`` large. The
torch modules (:mod:`lipbound.blocks.scale`) only compute ``g``; a :class:`ScaleRule` per scale
type, in a registry (:func:`register_scale`), holds the math.

Each ``g`` here is increasing in ``h`` (so ``sup g`` is at ``hi``, ``sup 1/g`` at ``lo``), and
``|g'|`` and ``|(1/g)'|`` are unimodal: the sup over ``[lo, hi]`` is the value at the peak ``p``
clipped to the interval. Where the ball of ``p`` cannot be placed left or right of the interval
for certain, the peak value itself (the global sup) is taken.

=======================  ===========================  ===========================================
scale                    ``|g'|`` peaks at            ``|(1/g)'|`` peaks at
=======================  ===========================  ===========================================
``SigmoidScale``         ``h = -shift`` (``u = 1/2``)  ``u = low/(low+high)``, i.e.
                                                      ``h = log(low/high) - shift`` (``low > 0``;
                                                      decreasing for ``low = 0``)
``ExpScale``             increasing                   decreasing
``SoftClampScale``       ``h = alpha^2 / pi``         ``h = -alpha^2 / pi``
``IdentityScale``        constant 1                   at ``min |h|`` (refused when 0 is inside)
=======================  ===========================  ===========================================

**Batches of boxes** (input splitting, :mod:`.batched`) need ``g`` and ``g'`` on thousands of
intervals at once: for ``SigmoidScale`` and ``ExpScale`` the rule also has ``float_boxes``, the
same enclosures in vectorised float64 interval arithmetic (:mod:`.interval`: the argument
``h + shift`` rounded outward, ``sigmoid`` and ``exp`` trusted to :data:`~.rounding.LIB_ULPS`
ulps as for the activations, ``g'`` of the sigmoid, even in ``z = h + shift`` and decreasing in
``|z|``, by :func:`even_bump_box`), which :func:`g_box` and :func:`dg_box` use on batches.

(``SigmoidScale``: ``g = low + k u`` with ``u = sigmoid(h + shift)``, ``k = high - low``,
``g' = k u (1 - u)``, ``|(1/g)'| = k u (1 - u) / (low + k u)^2``. ``SoftClampScale``:
``g = e^{c}``, ``c = alpha (2/pi) atan(h/alpha)``, ``c' = (2/pi) / (1 + (h/alpha)^2)``,
``g' = e^{c} c'`` and ``|(1/g)'| = e^{-c} c'``; ``(e^{c} c')' = e^{c} (c'^2 + c'')`` has the sign
of ``2/pi - 2h/alpha^2``, and ``(e^{-c} c')' = e^{-c} (c'' - c'^2)`` that of
``-2/pi - 2h/alpha^2``.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from flint import arb
from torch import Tensor

from ..blocks.scale import ExpScale, IdentityScale, ScaleFunction, SigmoidScale, SoftClampScale
from ..errors import InputError
from .evaluate import ball_lower, ball_upper, working_precision
from .interval import UNDERFLOW, Box, monotone_map
from .registry import TypeRegistry
from .rounding import LIB_ULPS, U, widen

__all__ = ["SUPS", "ScaleRule", "dg_box", "even_bump_box", "g_box", "register_scale",
           "scale_rule", "scale_sup"]

#: The four sups of Lemma 6, by name: ``sup |g|``, ``sup |g'|``, ``sup |1/g|``, ``sup |(1/g)'|``.
SUPS = ("g", "dg", "inv_g", "d_inv_g")

ArbFn = Callable[[ScaleFunction, float, float], arb]


@dataclass(frozen=True)
class ScaleRule:
    """The math of one scale type, in ``arb``.

    Attributes:
        value: ``(scale, h) -> g(h)`` for an ``arb`` ball ``h``; ``g`` must be increasing.
        sup_g, sup_dg, sup_inv_g, sup_d_inv_g: ``(scale, lo, hi) -> ball`` whose ``|.|`` upper
            end bounds the sup of ``|g|``, ``|g'|``, ``|1/g|``, ``|(1/g)'|`` over ``[lo, hi]``
            (finite floats, ``lo <= hi``).
        dg: ``(scale, h) -> g'(h)`` for an ``arb`` ball ``h`` (``g' >= 0`` is unimodal, so its
            inf over ``[lo, hi]`` is at an end: :func:`dg_box`); ``None``: only ``g' >= 0``
            is used.
        float_boxes: ``(scale, box of h) -> (box of g, box of g')`` in float64 interval
            arithmetic, for batches of boxes (module docstring); ``None``: ``arb`` only.
    """

    value: Callable[[ScaleFunction, arb], arb]
    sup_g: ArbFn
    sup_dg: ArbFn
    sup_inv_g: ArbFn
    sup_d_inv_g: ArbFn
    dg: Callable[[ScaleFunction, arb], arb] | None = None
    float_boxes: Callable[[ScaleFunction, Box], tuple[Box, Box]] | None = None


_RULES = TypeRegistry(
    ScaleRule, "bound rule for scale type",
    "lipbound.bounds.register_scale(ScaleType, ScaleRule(value=..., sup_g=..., ...))")


def register_scale(scale_type: type, rule: ScaleRule) -> None:
    """Teach the bounds a new (increasing) scale function type."""
    _RULES.register(scale_type, rule)


def scale_rule(scale: ScaleFunction) -> ScaleRule:
    """The rule registered for ``scale``'s type or its nearest registered base class."""
    return _RULES.lookup(scale)


def _check_interval(lo: float, hi: float) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"interval [lo, hi] of the raw scale h must be finite, got [{lo}, {hi}]")
    if lo > hi:
        raise InputError(f"interval of the raw scale h needs lo <= hi, got [{lo}, {hi}]")


def scale_sup(scale: ScaleFunction, which: str, lo: float, hi: float) -> float:
    """A float upper bound on the sup over ``h`` in ``[lo, hi]`` of ``|g|`` (``which="g"``),
    ``|g'|`` (``"dg"``), ``|1/g|`` (``"inv_g"``) or ``|(1/g)'|`` (``"d_inv_g"``); ``inf`` where
    it exceeds the float range."""
    if which not in SUPS:
        raise InputError(f"which must be one of {list(SUPS)}, got {which!r}")
    lo, hi = float(lo), float(hi)
    _check_interval(lo, hi)
    fn = getattr(scale_rule(scale), f"sup_{which}")
    with working_precision():
        return ball_upper(abs(fn(scale, lo, hi)))


def _float_boxes(scale: ScaleFunction, h: Box) -> tuple[Box, Box] | None:
    """The rule's float enclosures of ``g`` and ``g'`` where ``h`` is a batch of boxes and the
    rule has them (module docstring)."""
    rule = scale_rule(scale)
    if rule.float_boxes is None or h.lo.shape[0] == 1:
        return None
    return rule.float_boxes(scale, h)


def g_box(scale: ScaleFunction, h: Box) -> Box:
    """A box holding ``g(h)`` for every ``h`` in the box: ``[g(lo), g(hi)]`` per coordinate
    (``g`` is increasing), each end evaluated in ``arb`` and rounded outward (batches of boxes:
    float interval arithmetic where the rule has it)."""
    fast = _float_boxes(scale, h)
    if fast is not None:
        return fast[0]
    value = scale_rule(scale).value

    def ends(t: Tensor, end: Callable[[arb], float]) -> Tensor:
        unique, where = torch.unique(t, return_inverse=True)
        with working_precision():
            out = [end(value(scale, arb(v))) for v in unique.tolist()]
        return torch.tensor(out, dtype=torch.float64)[where]

    return Box(ends(h.lo, ball_lower), ends(h.hi, ball_upper))


def dg_box(scale: ScaleFunction, h: Box) -> Box:
    """A box holding ``g'(h)`` for every ``h`` in the box: per coordinate ``[min(g'(lo),
    g'(hi)), sup g']`` (``g'`` is unimodal, so its inf is at an end; ``0`` where the rule has
    no ``dg``), each end in ``arb`` and rounded outward (batches of boxes: float interval
    arithmetic where the rule has it)."""
    fast = _float_boxes(scale, h)
    if fast is not None:
        return fast[1]
    rule = scale_rule(scale)
    pairs = torch.stack([h.lo.reshape(-1), h.hi.reshape(-1)], dim=1)
    unique, where = torch.unique(pairs, dim=0, return_inverse=True)
    lows, highs = [], []
    for lo, hi in unique.tolist():
        highs.append(scale_sup(scale, "dg", lo, hi))
        if rule.dg is None:
            lows.append(0.0)
            continue
        with working_precision():
            lows.append(max(0.0, min(ball_lower(rule.dg(scale, arb(lo))),
                                     ball_lower(rule.dg(scale, arb(hi))))))
    lo_t = torch.tensor(lows, dtype=torch.float64)[where].reshape(h.lo.shape)
    hi_t = torch.tensor(highs, dtype=torch.float64)[where].reshape(h.lo.shape)
    return Box(lo_t, hi_t)


def _unimodal_sup(f: Callable[[arb], arb], peak: arb | None, lo: float, hi: float) -> arb:
    """``sup f`` on ``[lo, hi]`` for ``f`` increasing left of ``peak`` and decreasing right of it
    (``peak=None``: decreasing everywhere)."""
    if peak is None or peak < arb(lo):
        return f(arb(lo))
    if peak > arb(hi):
        return f(arb(hi))
    return f(peak)  # inside, or too close to an end to tell: the global sup


def even_bump_box(fn: Callable[[Tensor], Tensor], z: Box, ulps: float) -> Box:
    """The range of an even function decreasing in ``|z|`` (``fn`` evaluates it, each value
    within ``ulps`` ulps) over the box ``z``: max at the point nearest 0, min at the farther
    end, widened."""
    near = torch.where((z.lo <= 0) & (z.hi >= 0), torch.zeros_like(z.lo),
                       torch.minimum(z.lo.abs(), z.hi.abs()))
    far = torch.maximum(z.lo.abs(), z.hi.abs())
    return Box(*widen(fn(far), fn(near), ulps * U, UNDERFLOW))


def _scalar(v: float) -> Box:
    return Box.scalar(v, v)


# --- SigmoidScale ------------------------------------------------------------------------------

def _logistic(z: arb) -> tuple[arb, arb]:
    """``(sigmoid(z), 1 - sigmoid(z))`` without cancellation (and without ``exp`` of a large
    positive argument)."""
    if z < 0:
        p = z.exp()
        return p / (1 + p), 1 / (1 + p)
    q = (-z).exp()
    return 1 / (1 + q), q / (1 + q)


def _sigmoid_parts(scale: SigmoidScale, h: arb) -> tuple[arb, arb, arb, arb]:
    """``(low, k, u, 1 - u)`` at ``h``."""
    low = arb(scale.low)
    u, v = _logistic(h + arb(scale.shift))
    return low, arb(scale.high) - low, u, v


def _sigmoid_value(scale: SigmoidScale, h: arb) -> arb:
    low, k, u, _ = _sigmoid_parts(scale, h)
    return low + k * u


def _sigmoid_dg(scale: SigmoidScale, h: arb) -> arb:
    _, k, u, v = _sigmoid_parts(scale, h)
    return k * u * v


def _sigmoid_d_inv(scale: SigmoidScale, h: arb) -> arb:
    low, k, u, v = _sigmoid_parts(scale, h)
    if scale.low == 0.0:  # (1 - u) / (k u) = e^{-(h + shift)} / high, no cancellation
        return v / (k * u)
    return k * u * v / (low + k * u) ** 2


def _sigmoid_d_inv_peak(scale: SigmoidScale) -> arb | None:
    if scale.low == 0.0:
        return None
    return (arb(scale.low) / arb(scale.high)).log() - arb(scale.shift)


def _sigmoid_float_boxes(scale: SigmoidScale, h: Box) -> tuple[Box, Box]:
    """``g = low + k sigmoid(z)`` and ``g' = k sigmoid(z) sigmoid(-z)``, ``z = h + shift``, in
    float interval arithmetic (``sigmoid`` within :data:`LIB_ULPS` ulps)."""
    z = h + _scalar(scale.shift)
    k = _scalar(scale.high) - _scalar(scale.low)
    u = monotone_map(z, torch.sigmoid)
    bump = even_bump_box(lambda v: torch.sigmoid(v) * torch.sigmoid(-v), z, 2 * LIB_ULPS + 4)
    return _scalar(scale.low) + k * u, k * bump


register_scale(SigmoidScale, ScaleRule(
    value=_sigmoid_value,
    sup_g=lambda s, lo, hi: _sigmoid_value(s, arb(hi)),
    sup_dg=lambda s, lo, hi: _unimodal_sup(lambda h: _sigmoid_dg(s, h), -arb(s.shift), lo, hi),
    sup_inv_g=lambda s, lo, hi: 1 / _sigmoid_value(s, arb(lo)),
    sup_d_inv_g=lambda s, lo, hi: _unimodal_sup(lambda h: _sigmoid_d_inv(s, h),
                                                _sigmoid_d_inv_peak(s), lo, hi),
    dg=_sigmoid_dg,
    float_boxes=_sigmoid_float_boxes,
))


# --- ExpScale ----------------------------------------------------------------------------------

register_scale(ExpScale, ScaleRule(
    value=lambda s, h: h.exp(),
    sup_g=lambda s, lo, hi: arb(hi).exp(),
    sup_dg=lambda s, lo, hi: arb(hi).exp(),
    sup_inv_g=lambda s, lo, hi: (-arb(lo)).exp(),
    sup_d_inv_g=lambda s, lo, hi: (-arb(lo)).exp(),
    dg=lambda s, h: h.exp(),
    float_boxes=lambda s, h: (monotone_map(h, torch.exp),) * 2,
))


# --- SoftClampScale ----------------------------------------------------------------------------

def _soft_clamp(scale: SoftClampScale, h: arb) -> tuple[arb, arb]:
    """``(c(h), c'(h))`` of the soft clamp ``c(h) = alpha (2/pi) atan(h / alpha)``."""
    alpha, two_over_pi = arb(scale.alpha), 2 / arb.pi()
    q = h / alpha
    return alpha * two_over_pi * q.atan(), two_over_pi / (1 + q * q)


def _soft_clamp_peak(scale: SoftClampScale, sign: int) -> arb:
    return sign * arb(scale.alpha) ** 2 / arb.pi()


def _soft_clamp_dg(scale: SoftClampScale, h: arb) -> arb:
    c, dc = _soft_clamp(scale, h)
    return c.exp() * dc


def _soft_clamp_d_inv(scale: SoftClampScale, h: arb) -> arb:
    c, dc = _soft_clamp(scale, h)
    return (-c).exp() * dc


register_scale(SoftClampScale, ScaleRule(
    value=lambda s, h: _soft_clamp(s, h)[0].exp(),
    sup_g=lambda s, lo, hi: _soft_clamp(s, arb(hi))[0].exp(),
    sup_dg=lambda s, lo, hi: _unimodal_sup(lambda h: _soft_clamp_dg(s, h),
                                           _soft_clamp_peak(s, +1), lo, hi),
    sup_inv_g=lambda s, lo, hi: (-_soft_clamp(s, arb(lo))[0]).exp(),
    sup_d_inv_g=lambda s, lo, hi: _unimodal_sup(lambda h: _soft_clamp_d_inv(s, h),
                                                _soft_clamp_peak(s, -1), lo, hi),
    dg=_soft_clamp_dg,
))


# --- IdentityScale -----------------------------------------------------------------------------

def _min_abs(lo: float, hi: float) -> arb:
    if lo <= 0.0 <= hi:
        raise InputError(f"IdentityScale: interval [{lo}, {hi}] of h contains 0, where g = 0")
    return arb(min(abs(lo), abs(hi)))


register_scale(IdentityScale, ScaleRule(
    value=lambda s, h: h,
    sup_g=lambda s, lo, hi: arb(max(abs(lo), abs(hi))),
    sup_dg=lambda s, lo, hi: arb(1),
    sup_inv_g=lambda s, lo, hi: 1 / _min_abs(lo, hi),
    sup_d_inv_g=lambda s, lo, hi: 1 / _min_abs(lo, hi) ** 2,
    dg=lambda s, h: arb(1),
))
