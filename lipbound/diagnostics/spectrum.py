r"""Singular values of a model's Jacobian: the local Lipschitz constants of ``F`` and ``F^-1``.

For ``F`` differentiable at ``x`` with invertible Jacobian ``J = J_F(x)``, the local Lipschitz
constant of ``F`` at ``x`` is ``sigma_max(J)`` and that of ``F^-1`` at ``F(x)`` is

.. math:: \sigma_{\max}(J_{F^{-1}}(F(x))) = \sigma_{\max}(J^{-1}) = 1 / \sigma_{\min}(J),

which is how the paper measures exploding inverses (section 2, Definition 1; appendix D reports
condition numbers ``sigma_max / sigma_min``).

Two methods, both in float64 on a copy of the model:

* **full**: the Jacobian from :mod:`torch.func` (``jacrev`` under ``vmap``, rows in chunks) and all
  its singular values (LAPACK), for ``d`` up to a few thousand. Models whose code cannot run under
  ``vmap`` (data-dependent control flow) fall back to one vector-Jacobian product per row.
* **matrix-free**: Lanczos (ARPACK through :func:`scipy.sparse.linalg.eigsh`) on ``J^T J``, applied
  as two vector-Jacobian products (``J v`` by differentiating ``u -> J^T u``), gives
  ``sigma_max(J)``;
  ``sigma_min(J) = 1 / sigma_max(J_{F^-1}(F(x)))`` comes from the same on the inverse. Cost: a few
  dozen products instead of ``d``. Accuracy is stated a posteriori (see :class:`SigmaEstimate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..autodiff import batch_jacobian, flat_sample_map
from ..blocks import InvertibleBlock
from ..errors import InputError
from .views import at_precision

__all__ = [
    "SigmaEstimate",
    "Spectrum",
    "jacobian",
    "jacobian_rowwise",
    "sigma_max",
    "sigma_min",
    "singular_values",
    "spectrum",
]

Fn = Callable[[Tensor], Tensor]


def jacobian_rowwise(fn: Fn, x: Tensor) -> Tensor:
    """``J_fn(x)`` of one sample ``x`` (no batch dimension), shape ``(m, d)``, one row at a time.

    One vector-Jacobian product per output coordinate, ``J[i] = e_i^T J``, reusing the forward
    pass: the method of the paper (appendix D, "gradient w.r.t. each dimension of the network
    output is computed sequentially"). It needs no ``vmap``, so it works on any differentiable code.
    """
    f = flat_sample_map(fn, tuple(x.shape))
    y, vjp_fn = torch.func.vjp(f, x.reshape(-1))
    eye = torch.eye(y.numel(), dtype=y.dtype, device=y.device)
    return torch.stack([vjp_fn(e)[0] for e in eye])


def jacobian(fn: Fn, x: Tensor, chunk_size: int | None = 256) -> Tensor:
    """Per-sample Jacobians of a batched map, shape ``(B, m, d)`` (inputs and outputs flattened).

    ``jacrev`` under ``vmap`` with ``chunk_size`` rows at a time; when ``fn`` cannot run under
    ``vmap`` (a fixed-point loop that tests convergence, in-place updates of unbatched tensors as
    in normflows' couplings), one row at a time with :func:`jacobian_rowwise`, whose own errors
    are raised.
    """
    try:
        return batch_jacobian(fn, x, chunk_size=chunk_size)
    except RuntimeError:
        return torch.stack([jacobian_rowwise(fn, xi) for xi in x])


def singular_values(fn: Fn, x: Tensor, chunk_size: int | None = 256) -> Tensor:
    """All singular values of every sample's Jacobian, descending, shape ``(B, min(m, d))``.

    A sample whose Jacobian has a NaN or Inf entry gets a row of NaN (its spectrum is undefined).
    """
    jac = jacobian(fn, x, chunk_size).detach()
    finite = torch.isfinite(jac).flatten(1).all(dim=1)
    out = jac.new_full((jac.shape[0], min(jac.shape[1:])), float("nan"))
    if bool(finite.any()):
        out[finite] = torch.linalg.svdvals(jac[finite])
    return out


@dataclass(frozen=True)
class SigmaEstimate:
    r"""A matrix-free singular value and its stated accuracy.

    Attributes:
        value: the estimate. For :func:`sigma_max` it is ``||J v||`` for the unit Ritz vector ``v``
            (a Rayleigh quotient, so never above the true ``sigma_max`` up to rounding).
        rel_accuracy: ``r = ||J^T J v - value^2 v|| / value^2``. By the residual bound for
            symmetric matrices some singular value ``s`` of ``J`` satisfies ``|value - s| <= r *
            value``; Lanczos from a random start finds the largest one except with negligible
            probability. For :func:`sigma_min` the bound becomes ``r / (1 - r)``. ``nan`` when
            the value is not finite.
        matvecs: products with ``J^T J`` used (each one Jacobian-vector and one vector-Jacobian
            product).
        converged: whether ARPACK met its tolerance.
    """

    value: float
    rel_accuracy: float
    matvecs: int
    converged: bool


def _nan_estimate(value: float, matvecs: int) -> SigmaEstimate:
    return SigmaEstimate(value, float("nan"), matvecs, False)


def sigma_max(fn: Fn, x: Tensor, tol: float = 1e-8, maxiter: int | None = None,
              seed: int = 0) -> SigmaEstimate:
    """``sigma_max(J_fn(x))`` of one sample ``x`` (no batch dimension), matrix-free.

    Lanczos (ARPACK ``eigsh``, largest algebraic eigenvalue) on ``J^T J`` applied as ``v -> J^T
    (J v)`` through :func:`torch.func.vjp` (``J v`` as the vector-Jacobian product of the linear
    map ``u -> J^T u``), from a seeded random start.

    Args:
        fn: a batched map (called on ``x[None]``); it must be differentiable at ``x``.
        x: one sample of any shape, float64 recommended.
        tol: ARPACK's relative tolerance on the eigenvalue ``sigma^2``.
        maxiter: ARPACK's cap on restarts (``None``: its default).
        seed: seed of the start vector.
    """
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

    f = flat_sample_map(fn, tuple(x.shape))
    x0 = x.detach().reshape(-1)
    y, vjp_fn = torch.func.vjp(f, x0)
    if not bool(torch.isfinite(y).all()):
        return _nan_estimate(float("nan"), 0)
    # J v as the vector-Jacobian product of the linear map u -> J^T u (any u; here 0): two
    # reverse passes over recorded graphs, no forward recomputation (faster than torch.func.jvp).
    _, transpose_vjp = torch.func.vjp(lambda u: vjp_fn(u)[0], torch.zeros_like(y))
    count = [0]

    def jvp(v: Tensor) -> Tensor:
        return transpose_vjp(v)[0]

    def normal(v: np.ndarray) -> np.ndarray:
        count[0] += 1
        t = torch.as_tensor(np.ascontiguousarray(v).reshape(-1), dtype=x0.dtype, device=x0.device)
        return vjp_fn(jvp(t))[0].detach().cpu().numpy()

    d = x0.numel()
    op = LinearOperator((d, d), matvec=normal, dtype=np.float64)
    start = np.random.default_rng(seed).standard_normal(d)
    try:
        _, vecs = eigsh(op, k=1, which="LA", tol=tol, maxiter=maxiter, v0=start)
        converged = True
    except ArpackNoConvergence as err:
        if err.eigenvectors.shape[1] == 0:
            return _nan_estimate(float("nan"), count[0])
        vecs, converged = err.eigenvectors, False
    except ArpackError:  # non-finite products
        return _nan_estimate(float("nan"), count[0])
    v = torch.as_tensor(vecs[:, 0], dtype=x0.dtype, device=x0.device)
    v = v / v.norm()
    jv = jvp(v).detach()
    value = float(jv.norm())
    if not np.isfinite(value) or value == 0.0:
        return _nan_estimate(value, count[0])
    residual = float((vjp_fn(jv)[0].detach() - value**2 * v).norm()) / value**2
    return SigmaEstimate(value, residual, count[0], converged)


def sigma_min(model: InvertibleBlock, x: Tensor, tol: float = 1e-8,
              maxiter: int | None = None, seed: int = 0) -> SigmaEstimate:
    """``sigma_min(J_F(x)) = 1 / sigma_max(J_{F^-1}(F(x)))`` of one sample, matrix-free.

    The inverse's Jacobian is the one of the inverse that is computed (for iterative inverses, the
    unrolled iteration), so this equals ``sigma_min(J_F(x))`` when the inverse is accurate.
    """
    with torch.no_grad():
        z = model(x.unsqueeze(0))[0]
    est = sigma_max(model.inverse, z, tol, maxiter, seed)
    r = est.rel_accuracy
    acc = r / (1 - r) if r < 1 else float("inf")
    return SigmaEstimate(1.0 / est.value if est.value != 0 else float("inf"),
                         acc if np.isfinite(r) else float("nan"), est.matvecs, est.converged)


@dataclass
class Spectrum:
    """Singular values of ``J_F(x)`` and ``J_{F^-1}(F(x))`` per sample (float64, shape ``(B,)``).

    Attributes:
        method: ``"full"`` (dense SVD; exact to float64 rounding) or ``"matrix_free"``.
        sigma_max, sigma_min: of ``J_F(x)``.
        inverse_sigma_max, inverse_sigma_min: of ``J_{F^-1}(F(x))``. Matrix-free, these are
            ``1 / sigma_min`` and ``1 / sigma_max`` (one Lanczos run per direction).
        rel_accuracy: matrix-free only: per sample, the larger stated relative accuracy of the two
            Lanczos runs (:class:`SigmaEstimate`).
        singular_values: full only: all singular values of ``J_F(x)``, ``(B, d)``.
    """

    method: str
    sigma_max: Tensor
    sigma_min: Tensor
    inverse_sigma_max: Tensor
    inverse_sigma_min: Tensor
    rel_accuracy: Tensor | None = None
    singular_values: Tensor | None = None

    @property
    def condition_forward(self) -> Tensor:
        """``sigma_max / sigma_min`` of ``J_F(x)``."""
        return self.sigma_max / self.sigma_min

    @property
    def condition_inverse(self) -> Tensor:
        """``sigma_max / sigma_min`` of ``J_{F^-1}(F(x))``."""
        return self.inverse_sigma_max / self.inverse_sigma_min


def _bar(n: int, desc: str, progress: bool):
    """A tqdm bar over ``n`` samples (disabled unless ``progress``)."""
    from tqdm import tqdm

    return tqdm(total=n, desc=desc, unit="sample", disable=not progress)


#: Jacobian entries (float64) the full method forms at once: samples are batched up to this.
FULL_BATCH_ENTRIES = 2**22


def _full_spectrum(model: InvertibleBlock, x: Tensor, chunk_size: int | None, progress: bool
                   ) -> Spectrum:
    d = x[0].numel()
    per_batch = max(1, FULL_BATCH_ENTRIES // (d * d))
    fwd, inv = [], []
    with _bar(x.shape[0], "Jacobian spectrum (full)", progress) as bar:
        for s in range(0, x.shape[0], per_batch):
            xb = x[s:s + per_batch]
            with torch.no_grad():
                z = model(xb)
            fwd.append(singular_values(model, xb, chunk_size))
            inv.append(singular_values(model.inverse, z, chunk_size))
            bar.update(xb.shape[0])
    f, i = torch.cat(fwd), torch.cat(inv)
    return Spectrum("full", f[:, 0], f[:, -1], i[:, 0], i[:, -1], singular_values=f)


def _matrix_free_spectrum(model: InvertibleBlock, x: Tensor, tol: float, progress: bool
                          ) -> Spectrum:
    rows = []
    with _bar(x.shape[0], "Jacobian spectrum (matrix-free)", progress) as bar:
        for b in range(x.shape[0]):
            top = sigma_max(model, x[b], tol, seed=b)
            low = sigma_min(model, x[b], tol, seed=b)
            rows.append((top.value, low.value, top.rel_accuracy, low.rel_accuracy))
            bar.update()
    smax, smin, acc_top, acc_low = torch.tensor(rows, dtype=torch.float64).unbind(dim=1)
    acc = torch.maximum(acc_top, acc_low)  # NaN if either is NaN
    return Spectrum("matrix_free", smax, smin, 1.0 / smin, 1.0 / smax, rel_accuracy=acc)


def spectrum(model: InvertibleBlock, x: Tensor, method: str = "auto", max_full_dim: int = 2048,
             tol: float = 1e-8, chunk_size: int | None = 256, progress: bool = False
             ) -> Spectrum:
    """Singular values of the forward and inverse Jacobians of ``model`` at every sample of ``x``.

    Args:
        model: an invertible model; a float64 copy in evaluation mode is used.
        x: a batch of inputs.
        method: ``"full"``, ``"matrix_free"`` or ``"auto"`` (full when the per-sample dimension is
            at most ``max_full_dim``).
        max_full_dim: the ``"auto"`` threshold.
        tol: ARPACK tolerance of the matrix-free method.
        chunk_size: Jacobian rows computed at once by the full method.
        progress: a tqdm bar over samples.
    """
    if method not in ("auto", "full", "matrix_free"):
        raise InputError(f"method must be 'auto', 'full' or 'matrix_free', got {method!r}")
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise InputError(f"x must be a batch (B, ...) tensor, got {getattr(x, 'shape', x)!r}")
    model = at_precision(model, "float64")
    x = x.detach().to(torch.float64)
    if method == "auto":
        method = "full" if x[0].numel() <= max_full_dim else "matrix_free"
    if method == "full":
        return _full_spectrum(model, x, chunk_size, progress)
    return _matrix_free_spectrum(model, x, tol, progress)
