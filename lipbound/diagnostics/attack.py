r"""The invertibility attack (paper appendix E, eqs. 11 and 12).

Projected gradient ascent with signed gradients (Madry et al., 2018) on the reconstruction error
inside an L-inf box around the input:

.. math:: \max_{\|x' - \hat x\|_\infty \le \varepsilon} L(x') = \|x' - F^{-1}(F(x'))\|_2,
          \qquad x'_{k+1} = \Pi_{\hat x, \varepsilon}\big(x'_k + \alpha\,
          \mathrm{sign}(\nabla_{x'} L(x'_k))\big),

starting from ``x'_0 = x_hat``. With uniform dequantization of data with ``levels`` levels
(``2^bits``; ``x = (k + u) / levels``), ``x_hat = (k + 1/2) / levels`` is the centre of the
dequantization cell of ``x`` and ``eps = 0.5 / levels`` (eq. 12), so every ``x'`` is a valid sample
of the training distribution. The paper's defaults: ``alpha = 5e-4``, 200 iterations, 8 bits (5
bits on CelebA64).

The model runs at a float precision (float32 by default, as in training) and gradients flow
through its inverse (for iterative inverses, through the unrolled iteration). A sample whose
reconstruction turns NaN or Inf has been broken: it is kept as found and no longer updated.

One departure from eq. 12: where ``sign(grad L)`` is zero in every coordinate (``L`` is often
exactly 0 in float arithmetic, and its gradient then vanishes), the paper's update cannot move;
there the step takes a random sign vector instead (seeded), a random search until the gradient
has a direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from ..blocks import InvertibleBlock
from ..errors import InputError
from ..precision import torch_dtype
from .views import at_precision, default_tol, mark_non_finite, per_sample_norm

__all__ = ["AttackResult", "dequantization_cell", "invertibility_attack"]


@dataclass
class AttackResult:
    """Outcome of :func:`invertibility_attack`, per sample.

    Attributes:
        x_worst: the input in the box with the largest error found (non-finite beats finite).
        errors: ``||x' - F^-1(F(x'))||_2`` at ``x_worst`` (float64; NaN and Inf kept), as
            evaluated in the attack's batch. Rounding can differ in another batch (BLAS kernels
            depend on the batch size), and at an ill-conditioned input the amplified error of a
            rerun can differ severalfold.
        initial_errors: the same at the start point.
        flagged: the worst error is non-finite or above ``tol (1 + ||x'||_2)``.
        start: the start points ``x_hat`` (the box centres), in ``precision``.
        radius, step, iterations, precision, tol: the settings used.
    """

    x_worst: Tensor
    errors: Tensor
    initial_errors: Tensor
    flagged: Tensor
    start: Tensor
    radius: float
    step: float
    iterations: int
    precision: str
    tol: float

    @property
    def flagged_at_start(self) -> Tensor:
        """The test of ``flagged`` at the start points: what the attack added is ``flagged &
        ~flagged_at_start``."""
        return _flag(self.initial_errors, self.start, self.tol)

    @property
    def worst_index(self) -> int:
        """The sample whose attack found the largest error (a non-finite one if any)."""
        key = torch.where(torch.isfinite(self.errors), self.errors,
                          torch.full_like(self.errors, float("inf")))
        return int(torch.argmax(key))


def _loss_and_error(model: InvertibleBlock, x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample ``||x - F^-1(F(x))||`` in the model dtype (differentiable) and in float64 (with
    NaN where the reconstruction holds NaN, Inf where it holds Inf)."""
    rec = model.inverse(model(x))
    diff = (x - rec).reshape(x.shape[0], -1)
    err = mark_non_finite(per_sample_norm(diff.detach()), rec.detach(), x.detach())
    return torch.linalg.vector_norm(diff, dim=1), err


def _flag(errors: Tensor, x: Tensor, tol: float) -> Tensor:
    """Non-finite, or above ``tol (1 + ||x||_2)``."""
    return ~torch.isfinite(errors) | (errors > tol * (1 + per_sample_norm(x)))


def _worse(new: Tensor, old: Tensor) -> Tensor:
    """Whether ``new`` is a worse error than ``old``: non-finite beats finite, else larger."""
    new_bad, old_bad = ~torch.isfinite(new), ~torch.isfinite(old)
    return (new_bad & ~old_bad) | (~new_bad & ~old_bad & (new > old))


def dequantization_cell(x: Tensor, levels: int) -> tuple[Tensor, float]:
    """The centre ``(floor(levels x) + 1/2) / levels`` of the dequantization cell holding each
    coordinate of ``x`` (float64), and the cell's half-width ``0.5 / levels`` (eq. 12)."""
    if int(levels) < 2:
        raise InputError(f"levels must be >= 2, got {levels}")
    centre = (torch.floor(x.detach().to(torch.float64) * int(levels)) + 0.5) / int(levels)
    return centre, 0.5 / int(levels)


def invertibility_attack(model: InvertibleBlock, x: Tensor, radius: float | None = None,
                         bits: int = 8, step: float = 5e-4, iterations: int = 200,
                         precision: str = "float32", tol: float | None = None,
                         progress: bool = False, levels: int | None = None, seed: int = 0
                         ) -> AttackResult:
    """Search the box ``||x' - x_hat||_inf <= radius`` for inputs that ``model`` fails to
    reconstruct (eqs. 11 and 12).

    Args:
        model: an invertible model; a copy rounded to ``precision`` is attacked.
        x: the data, batch first (dequantised, or the cell centres).
        radius: the box half-width ``eps`` around ``x_hat = x``; ``None`` means the
            dequantization cell of ``x``: centre ``x_hat`` and ``eps = 0.5 / levels``
            (:func:`dequantization_cell`).
        bits: bits of the quantised data: ``levels = 2^bits`` (used when ``radius`` is ``None``).
        step: the signed-gradient step ``alpha``.
        iterations: number of steps.
        precision: float precision of the model and of ``x'``.
        tol: relative tolerance of ``flagged``; ``None`` means ``sqrt(eps)`` of ``precision``.
        progress: show a tqdm bar over iterations.
        levels: quantisation levels of the data instead of ``2^bits`` (17 for the 8x8 digits).
        seed: seed of the random directions taken where the gradient vanishes.
    """
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise InputError(f"x must be a batch (B, ...) tensor, got {getattr(x, 'shape', type(x))}")
    if radius is None:
        if levels is None:
            if int(bits) < 1:
                raise InputError(f"bits must be >= 1, got {bits}")
            levels = 2 ** int(bits)
        x, radius = dequantization_cell(x, levels)
    if not radius > 0:
        raise InputError(f"radius must be > 0, got {radius}")
    if not step > 0:
        raise InputError(f"step must be > 0, got {step}")
    if int(iterations) < 0:
        raise InputError(f"iterations must be >= 0, got {iterations}")
    if tol is not None and not tol > 0:
        raise InputError(f"tol must be > 0, got {tol}")
    tol = default_tol(precision) if tol is None else float(tol)
    run = at_precision(model, precision).requires_grad_(False)
    center = x.detach().to(torch_dtype(precision))
    gen = torch.Generator(device=center.device).manual_seed(seed)
    lo, hi = center - radius, center + radius
    x_adv = center.clone()
    best_x = center.clone()
    best_err = torch.full((x.shape[0],), -1.0, dtype=torch.float64, device=x.device)
    initial = None
    # updated by hand after each evaluation: iterating a tqdm and breaking out of the loop
    # leaves the bar one step short (50/51)
    with tqdm(total=int(iterations) + 1, desc=f"invertibility attack ({precision})",
              unit="step", disable=not progress) as bar:
        for k in range(int(iterations) + 1):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                loss, err = _loss_and_error(run, x_adv)
            if initial is None:
                initial = err.clone()
            better = _worse(err, best_err)
            best_x[better], best_err[better] = x_adv.detach()[better], err[better]
            alive = torch.isfinite(err)
            bar.update()
            if k == int(iterations) or not bool(alive.any()):
                break
            (grad,) = torch.autograd.grad(loss[alive].sum(), x_adv)
            move = torch.nan_to_num(torch.sign(grad), nan=0.0)
            stuck = (move == 0).reshape(move.shape[0], -1).all(dim=1)
            if bool(stuck.any()):
                coin = torch.randint(0, 2, move.shape, generator=gen, device=move.device)
                move[stuck] = (2 * coin - 1).to(move.dtype)[stuck]
            move[~alive] = 0
            x_adv = torch.minimum(torch.maximum(x_adv.detach() + step * move, lo), hi)
    return AttackResult(best_x, best_err, initial, _flag(best_err, best_x, tol), center,
                        float(radius), float(step), int(iterations), precision, tol)
