r"""How far memory-saving gradients are from the true ones (paper introduction figure, Figure 18).

For each batch, the gradient ``g`` of ``loss_fn`` with respect to the model's parameters is taken
twice: with ordinary autograd (true) and through :func:`~lipbound.training.memory_saving` with its
fallback disabled (the raw memory-saving gradient ``g_ms``, however wrong). Reported per batch:

    angle between g and g_ms in degrees (computed stably near 0),
    relative norm difference = ||g_ms - g|| / ||g||,

both ``nan`` when either gradient holds NaN or Inf (marked, never dropped), together with whether
the memory-saving self-check flagged that backward. The RNG state is replayed so dropout draws
the same masks in both runs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..blocks import InvertibleBlock
from ..errors import InputError, InputTypeError
from .ddp import unwrap
from .memory import (
    MemorySaving,
    MemorySavingWarning,
    device_rng_state,
    fork_rng,
    set_device_rng_state,
)

__all__ = ["GradientAgreement", "gradient_agreement"]


@dataclass
class GradientAgreement:
    """Per-batch agreement of memory-saving and true gradients (lists in batch order).

    Attributes:
        angles_deg: angle between the gradients, degrees (``nan`` when not finite).
        rel_norm_diffs: ``||g_ms - g|| / ||g||`` (``nan`` when not finite).
        memsave_nonfinite: whether the memory-saving gradient held NaN or Inf.
        true_nonfinite: whether the true gradient held NaN or Inf.
        check_failed: whether the memory-saving self-check flagged the backward.
    """

    angles_deg: list[float] = field(default_factory=list)
    rel_norm_diffs: list[float] = field(default_factory=list)
    memsave_nonfinite: list[bool] = field(default_factory=list)
    true_nonfinite: list[bool] = field(default_factory=list)
    check_failed: list[bool] = field(default_factory=list)

    def summary(self) -> dict[str, float | int]:
        """Largest finite angle and relative difference, and how many batches were NaN."""
        finite = [a for a in self.angles_deg if math.isfinite(a)]
        finite_rel = [r for r in self.rel_norm_diffs if math.isfinite(r)]
        return {
            "batches": len(self.angles_deg),
            "max_angle_deg": max(finite, default=math.nan),
            "max_rel_norm_diff": max(finite_rel, default=math.nan),
            "nan_batches": len(self.angles_deg) - len(finite),
            "check_failures": sum(self.check_failed),
        }


def _flat_grad(loss: Tensor, params: list[Tensor]) -> Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).to(torch.float64)
                      for p, g in zip(params, grads)])


def _angle_deg(a: Tensor, b: Tensor) -> float:
    """The angle between ``a`` and ``b`` as ``2 atan2(||a' - b'||, ||a' + b'||)`` with unit
    ``a', b'``: accurate also near 0 degrees, where ``acos`` of the cosine loses half the digits."""
    na, nb = float(a.norm()), float(b.norm())
    if na == 0 or nb == 0:
        return math.nan
    a, b = a / na, b / nb
    return math.degrees(2 * math.atan2(float((a - b).norm()), float((a + b).norm())))


def _relative_difference(approx: Tensor, exact: Tensor) -> float:
    norm = float(exact.norm())
    return float((approx - exact).norm()) / norm if norm > 0 else math.nan


def gradient_agreement(model: InvertibleBlock,
                       loss_fn: Callable[[InvertibleBlock, object], Tensor],
                       batches: Iterable[object], tol: float | None = None,
                       check_every: int = 1) -> GradientAgreement:
    """Angle and relative norm difference between memory-saving and true gradients per batch.

    Args:
        model: the network (a plain model, or a :class:`MemorySaving` wrapper whose model is
            used, or either inside ``DistributedDataParallel``, whose module is used: the
            gradients compared are this process's own); parameters that require grad are
            compared.
        loss_fn: ``loss_fn(net, batch) -> scalar``, called with the plain model and with its
            memory-saving view, e.g. ``lambda net, x: nf_loss(net, x).loss``.
        batches: an iterable of batches handed to ``loss_fn`` as they are.
        tol, check_every: of the memory-saving check (see :func:`memory_saving`); the check
            only reports here, it never changes the gradient.
    """
    model = unwrap(model)  # the comparison is local to this process
    if isinstance(model, MemorySaving):
        model = model.model
    if not callable(loss_fn):
        raise InputTypeError(f"loss_fn must be callable as loss_fn(net, batch), got {loss_fn!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("model has no parameters that require grad: nothing to compare")
    raw = MemorySaving(model, policy="warn", tol=tol, check_every=check_every)
    out = GradientAgreement()
    device = params[0].device
    for batch in batches:
        with fork_rng(device):
            state = device_rng_state(device)
            true = _flat_grad(loss_fn(model, batch), params)
            set_device_rng_state(state, device)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MemorySavingWarning)
                failures = raw.failures
                ms = _flat_grad(loss_fn(raw, batch), params)
        ms_bad, true_bad = not bool(torch.isfinite(ms).all()), not bool(torch.isfinite(true).all())
        if ms_bad or true_bad:
            angle = rel = math.nan
        else:
            angle, rel = _angle_deg(true, ms), _relative_difference(ms, true)
        out.angles_deg.append(angle)
        out.rel_norm_diffs.append(rel)
        out.memsave_nonfinite.append(ms_bad)
        out.true_nonfinite.append(true_bad)
        out.check_failed.append(raw.failures > failures)
    return out
