r"""Certified upper bounds on operator 2-norms: matrices, their inverses, and convolutions.

**Matrices** (:func:`spectral_norm_upper`). For ``W`` (``m x n``, real or complex) let
``G = W^H W``, so ``||W||_2^2 = lambda_max(G) = rho(G)``. With ``B_0 = fl(G)`` and
``B_{j+1} = fl(B_j^2)`` (each squaring preceded by an exact scaling by a power of two and followed
by a symmetrisation that copies the upper triangle),

.. math:: \rho(B_j)^2 = \|B_j^2\|_2 \le \rho(B_{j+1}) + \gamma \|B_j\|_F^2,
          \qquad \rho(B_J) \le \|B_J\|_F,
          \qquad \lambda_{\max}(G) \le \rho(B_0) + \gamma_m \|W\|_F^2,

using Weyl's inequality for the symmetric error of each product, whose entries are at most
``gamma |B_j| |B_j|`` (see :mod:`.rounding`). Unrolled, the bound is
``||B_J||_F^{1/2^J}`` up to the small error terms, which exceeds ``rho(G)`` by at most the factor
``n^{1/2^{J+1}}``: squarings continue until the bound is within ``rtol`` of the float64 SVD
estimate (or ``max_squarings``). All scalar work is rounded upward.

**Inverses** (:func:`certified_inverse`). With ``X = fl(W^-1)`` and ``R = I - W X``,
``W^-1 = X (I - R)^-1`` gives ``||W^-1||_2 <= ||X||_2 / (1 - ||R||_2)`` when ``||R||_2 < 1``; ``R``
is bounded by its computed value plus the product's error bound. The value also bounds
``||X||_2``, the matrix the block's float inverse actually applies.

**Convolutions** (:func:`conv2d_norm_upper`). A stride-1 convolution with kernel ``k x k`` and zero
padding ``p <= k - 1`` on an ``H x W`` input equals ``P_out C P_in``, where ``P_in`` embeds the
input into a zero grid of size ``N1 x N2 = (H + p) x (W + p)`` (an isometry), ``C`` is the
*circular* convolution on that grid, and ``P_out`` keeps the ``H + 2p - k + 1`` valid output rows
and columns (norm 1). Indeed the taps of output ``i`` read input indices ``i + a - p`` in
``[-p, H + p - 1]``; modulo ``N1 = H + p`` the negative ones land on ``[H, H + p - 1]`` and the
large ones stay there, all in the zero region, so no tap wraps onto real data, and every output
index is below ``N1``. Hence ``||conv|| <= ||C||``, and ``C`` is block-diagonalised by the 2-D
DFT: ``||C|| = max_w ||K(w)||_2`` with ``K(w) = sum_{a,b} w[:, :, a, b] e^{-2 pi i (a w1/N1 +
b w2/N2)}`` (Sedghi et al., 2019). ``K(w)`` is computed tap by tap with exactly reduced phases,
its error bounded entrywise by ``eps sum_{a,b} |w[:, :, a, b]|``, and each ``||K(w)||`` bounded as
above. The reshaped-kernel norm is never used: it is no bound.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InputError
from .rounding import ETA, U, gamma, up, up_tensor

__all__ = [
    "certified_inverse",
    "certified_inverse_each",
    "conv2d_norm_upper",
    "frobenius_upper",
    "spectral_norm_upper",
    "spectral_norm_upper_each",
]

#: Largest number of matrix entries squared at once (memory bound of the batched squarings).
_CHUNK_ENTRIES = 1 << 23
#: Convolutions whose input has at most this many entries are also bounded through their dense
#: matrix (exact for zero padding), and the smaller bound is kept.
_DENSE_MAX_DIM = 1024


def frobenius_upper(x: Tensor) -> Tensor:
    """Upper bounds on ``||x[i]||_F`` for a batch ``(..., m, n)``: the float norm inflated by its
    summation error, plus the absolute error of squares that underflow."""
    n = x.shape[-1] * x.shape[-2]
    f = torch.linalg.matrix_norm(x, "fro")
    return up_tensor(f * (1 + 2 * gamma(n + 4)) + math.sqrt(n) * 2.0 ** -510)


def _symmetrize(b: Tensor) -> Tensor:
    """The Hermitian matrix with ``b``'s upper triangle (entrywise errors are preserved)."""
    out = torch.triu(b) + torch.triu(b, 1).mH
    if out.is_complex():
        out = torch.complex(out.real, out.imag - torch.diag_embed(out.imag.diagonal(0, -2, -1)))
    return out


def _product_gamma(n: int, complex_: bool) -> float:
    """Entrywise relative error factor of a length-``n`` (complex) inner product, generous."""
    return up(2 * gamma(n + 4)) if complex_ else gamma(n)


def _norm_upper_batch(w: Tensor, rtol: float, max_squarings: int, each: bool = False) -> Tensor:
    """Certified upper bounds on ``||w[i]||_2`` for a batch ``(P, m, n)`` in float64/complex128;
    squarings stop when the largest bound is within ``rtol`` of the largest estimate (``each``:
    when every bound is within ``rtol`` of its own estimate)."""
    if w.shape[-2] < w.shape[-1]:
        w = w.mH
    m, n = w.shape[-2:]
    cplx = w.is_complex()
    estimate = torch.linalg.matrix_norm(w, 2)
    zero = (w == 0).flatten(1).all(dim=1)
    fw = frobenius_upper(w)
    if bool((fw > 2.0 ** 500).any()):
        raise InputError("matrix entries are too large (Frobenius norm > 2^500) to bound in "
                         "float64")
    err0 = up_tensor(fw * fw * _product_gamma(m, cplx) + n * n * 4 * ETA)
    b = _symmetrize(w.mH @ w)
    g_sq = _product_gamma(n, cplx)
    scales: list[Tensor] = []
    errs: list[Tensor] = []
    while True:
        fb = frobenius_upper(b)
        rho = fb
        for e, err in zip(reversed(scales), reversed(errs), strict=True):
            rho = torch.ldexp(up_tensor(up_tensor(torch.sqrt(up_tensor(rho + err))) + n * ETA), e)
            rho = up_tensor(rho)
        bound = up_tensor(torch.sqrt(up_tensor(rho + err0)))
        bound = torch.where(zero, torch.zeros_like(bound), bound)
        if each:
            done = bool((bound <= estimate * (1 + rtol)).all())
        else:
            done = float(bound.max()) <= float(estimate.max()) * (1 + rtol)
        if done or len(scales) >= max_squarings:
            return bound
        e = torch.floor(torch.log2(fb.clamp_min(2.0 ** -1000))).to(torch.int64)
        scales.append(e)
        scale = torch.ldexp(torch.ones_like(fb), -e)
        b = b * scale.reshape(-1, 1, 1).to(b.dtype)
        fs = torch.ldexp(fb, -e)
        errs.append(up_tensor(fs * fs * g_sq + n * n * 4 * ETA))
        b = _symmetrize(b @ b)


def spectral_norm_upper(w: Tensor, rtol: float = 1e-4, max_squarings: int = 40) -> float:
    """A certified upper bound on ``max_i ||w[i]||_2`` for a matrix ``(m, n)`` or a batch
    ``(..., m, n)`` (real or complex), within about ``rtol`` of the true value.

    The bound holds for the float entries of ``w`` exactly as stored (converted exactly to
    float64); see the module docstring.
    """
    if not isinstance(w, Tensor) or w.dim() < 2:
        raise InputError(f"w must be a matrix or a batch of matrices, got {type(w).__name__}")
    if not bool(torch.isfinite(w).all()):
        raise InputError("w must be finite to bound its norm (found NaN or Inf)")
    if w.numel() == 0:
        return 0.0
    dtype = torch.complex128 if w.is_complex() else torch.float64
    w = w.detach().to(dtype).reshape(-1, *w.shape[-2:])
    per = max(1, _CHUNK_ENTRIES // max(1, min(w.shape[-2:]) ** 2 + w.shape[-1] * w.shape[-2]))
    best = 0.0
    for chunk in torch.split(w, per):
        best = max(best, float(_norm_upper_batch(chunk, rtol, max_squarings).max()))
    return best


def spectral_norm_upper_each(w: Tensor, rtol: float = 1e-4, max_squarings: int = 40) -> Tensor:
    """Certified upper bounds on ``||w[i]||_2``, one per matrix of a batch ``(..., m, n)`` (shape
    ``(...)``), each within about ``rtol`` of its own norm (:func:`spectral_norm_upper` stops
    when the largest is); ``inf`` for a matrix that is not finite or too large to bound."""
    w = w.detach().to(torch.complex128 if w.is_complex() else torch.float64)
    flat = w.reshape(-1, *w.shape[-2:])
    finite = torch.isfinite(flat).flatten(1).all(dim=1)
    finite = finite & (frobenius_upper(torch.where(finite[:, None, None], flat, 0)) <= 2.0 ** 500)
    out = torch.full(finite.shape, math.inf, dtype=torch.float64)
    if flat.shape[-1] * flat.shape[-2] == 0:
        out.zero_()
    elif bool(finite.any()):
        out[finite] = _norm_upper_batch(flat[finite], rtol, max_squarings, each=True)
    return out.reshape(w.shape[:-2])


def certified_inverse_each(w: Tensor, rtol: float = 1e-4, error: Tensor | float = 0.0
                           ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`certified_inverse` for a batch of square matrices ``(..., n, n)`` (``error`` a
    float or one per matrix): the float inverses ``X`` and, per matrix, the bounds on
    ``||W^-1||_2`` (``inf`` where not certified) and on ``||I - W X||_2`` (``inf`` where ``w``
    is singular or not finite)."""
    w = w.detach().to(torch.float64)
    n = w.shape[-1]
    x, info = torch.linalg.inv_ex(w)
    ok = (info == 0) & torch.isfinite(x).flatten(-2).all(-1) & \
        torch.isfinite(w).flatten(-2).all(-1)
    x = torch.where(ok[..., None, None], x, torch.zeros_like(x))
    w = torch.where(ok[..., None, None], w, torch.zeros_like(w))
    r = torch.eye(n, dtype=w.dtype) - w @ x
    err_r = up_tensor(gamma(n + 1) * up_tensor(frobenius_upper(w.abs() @ x.abs()) + math.sqrt(n)))
    r_norm = up_tensor(spectral_norm_upper_each(r, rtol=1e-2) + err_r)
    x_norm = spectral_norm_upper_each(x, rtol)
    r_norm = torch.where(torch.as_tensor(error) > 0, up_tensor(r_norm + up_tensor(error * x_norm)),
                         r_norm)
    inf = torch.full_like(r_norm, math.inf)
    r_norm = torch.where(ok, r_norm, inf)
    inv = up_tensor(up_tensor(x_norm) / (1.0 - r_norm), 2)
    return x, torch.where(r_norm < 1, inv, inf), r_norm


def certified_inverse(w: Tensor, rtol: float = 1e-4,
                      error: float = 0.0) -> tuple[Tensor, float, float]:
    """The float inverse ``X`` of a square matrix, a certified upper bound on ``||W^-1||_2`` (which
    also bounds ``||X||_2``), and one on ``||I - W X||_2`` (see the module docstring).

    With ``error = e > 0`` the two bounds hold for every matrix ``W`` with ``||W - w||_2 <= e``
    (``X`` stays the inverse of ``w``): ``||I - W X|| <= ||I - w X|| + e ||X||``.

    Raises ``ValueError`` when ``w`` is singular or so ill-conditioned that ``||I - W X|| >= 1``.
    """
    if w.dim() != 2 or w.shape[0] != w.shape[1]:
        raise InputError(f"w must be a square matrix, got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise InputError("w must be finite to bound its inverse (found NaN or Inf)")
    x, inv, r_norm = certified_inverse_each(w, rtol, error)
    if math.isinf(float(r_norm)):
        raise InputError("w is singular, no inverse norm bound")
    if not float(r_norm) < 1:
        raise InputError(
            f"w is too ill-conditioned for a certified inverse bound (||I - W W^-1|| <= "
            f"{float(r_norm)})")
    return x, float(inv), float(r_norm)


def _phases(k: int, size: int) -> Tensor:
    """``exp(-2 pi i a w / size)`` for taps ``a < k`` and frequencies ``w < size``, shape
    ``(k, size)``; the argument is reduced exactly (integers) before scaling by ``2 pi``."""
    a = torch.arange(k).reshape(-1, 1)
    w = torch.arange(size).reshape(1, -1)
    frac = ((a * w) % size).to(torch.float64) / size
    return torch.polar(torch.ones_like(frac), -2 * math.pi * frac)


def conv2d_norm_upper(weight: Tensor, input_hw: tuple[int, int],
                      padding: tuple[int, int], rtol: float = 1e-4) -> float:
    """A certified upper bound on the operator 2-norm of a stride-1, zero-padded 2-D convolution
    with ``weight`` ``(C_out, C_in, kh, kw)`` on inputs of spatial size ``input_hw``.

    Needs ``0 <= padding <= kernel size - 1`` in each dimension (see the module docstring).
    """
    if weight.dim() != 4:
        raise InputError(f"weight must be (C_out, C_in, kh, kw), got shape {tuple(weight.shape)}")
    c_out, c_in, kh, kw = weight.shape
    (h, w_), (ph, pw) = (int(v) for v in input_hw), (int(v) for v in padding)
    if not (0 <= ph <= kh - 1 and 0 <= pw <= kw - 1):
        raise InputError(
            f"padding {padding} must lie in [0, kernel size - 1] = [0, {kh - 1}] x [0, {kw - 1}] "
            "for the circular-embedding bound"
        )
    if kh == 1 and kw == 1:
        return spectral_norm_upper(weight.reshape(c_out, c_in), rtol)
    wt = weight.detach().to(torch.float64)
    circular = _circular_norm_upper(wt, (h + ph, w_ + pw), rtol)
    if c_in * h * w_ > _DENSE_MAX_DIM:
        return circular
    return min(circular, _dense_conv_norm_upper(wt, (h, w_), (ph, pw), rtol))


def _dense_conv_norm_upper(wt: Tensor, input_hw: tuple[int, int], padding: tuple[int, int],
                           rtol: float) -> float:
    """The certified norm of the convolution's dense matrix, built by applying it to the identity
    basis: each entry is a single weight or zero, so the matrix is exact."""
    n = wt.shape[1] * input_hw[0] * input_hw[1]
    basis = torch.eye(n, dtype=torch.float64).reshape(n, wt.shape[1], *input_hw)
    dense = torch.nn.functional.conv2d(basis, wt, padding=padding).reshape(n, -1).T
    return spectral_norm_upper(dense, rtol)


def _circular_norm_upper(wt: Tensor, grid: tuple[int, int], rtol: float) -> float:
    """``max_w ||K(w)||_2`` of the circular convolution on ``grid``, plus the DFT's error bound."""
    c_out, c_in, kh, kw = wt.shape
    n1, n2 = grid
    p1, p2 = _phases(kh, n1), _phases(kw, n2)  # (kh, n1), (kw, n2)
    taps = wt.permute(2, 3, 0, 1).reshape(kh * kw, c_out * c_in).to(torch.complex128)
    eps = up(2 * gamma(kh * kw + 4) + 64 * U)
    err = up(eps * float(frobenius_upper(wt.abs().sum(dim=(2, 3)))))
    per = max(1, _CHUNK_ENTRIES // (c_out * c_in))
    best = 0.0
    freqs = torch.cartesian_prod(torch.arange(n1), torch.arange(n2))
    for chunk in torch.split(freqs, per):
        phase = (p1[:, chunk[:, 0]].unsqueeze(1) * p2[:, chunk[:, 1]].unsqueeze(0))  # kh, kw, F
        k_hat = (phase.reshape(kh * kw, -1).T @ taps).reshape(-1, c_out, c_in)
        best = max(best, spectral_norm_upper(k_hat, rtol))
    return up(best + err)
