r"""Invertible residual layers (i-ResNet) and the builders of their residual branches.

An invertible residual layer (Behrmann et al., 2019) is

.. math:: F(x) = x + g(x), \qquad \mathrm{Lip}(g) < 1,

and its row of Table 3 in Behrmann et al. (2021), "Understanding and Mitigating Exploding Inverses
in Invertible Neural Networks", reads

.. math:: \mathrm{Lip}(F) \le 1 + \mathrm{Lip}(g), \qquad
          \mathrm{Lip}(F^{-1}) \le \frac{1}{1 - \mathrm{Lip}(g)},

the inverse bound holding only when ``Lip(g) < 1``. The contraction is obtained as in Residual
Flows (Chen et al., 2019): ``g`` chains 1-Lipschitz activations and linear or convolutional layers
whose weights are softly spectrally normalised, ``W / max(1, sigma(W) / coeff)`` with
``coeff < 1``, so that ``Lip(g) <= prod(coeff)``; those layers live in :mod:`.spectral` and are
re-exported here.

The inverse is the Banach fixed-point iteration ``x_{k+1} = y - g(x_k)``; the log-determinant is
either exact (``slogdet(I + J_g)``) or the i-ResNet power series
``log det(I + J_g) = sum_k (-1)^{k+1} tr(J_g^k) / k`` with Hutchinson trace estimates.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import vjp, vmap

from ..autodiff import batch_jacobian
from ..errors import InputError
from .base import ConvergenceInfo, InvertibleBlock, check_input
from .numerics import (
    check_probe,
    hutchinson_probes,
    per_sample_norm,
    probe_products,
    slogabsdet,
)
from .spectral import (
    LIPSCHITZ_ACTIVATIONS,
    LipSwish,
    SpectralNormConv2d,
    SpectralNormLayer,
    SpectralNormLinear,
    frozen_spectral_norm,
    lipschitz_activation,
)

__all__ = [
    "InvertibleResidual",
    "LipSwish",
    "SpectralNormConv2d",
    "SpectralNormLinear",
    "frozen_spectral_norm",
    "LIPSCHITZ_ACTIVATIONS",
    "lipschitz_activation",
    "require_contraction",
    "residual_conv",
    "residual_mlp",
]


def residual_mlp(d: int, hidden: int, n_layers: int = 2, coeff: float = 0.97,
                 activation: str = "elu", exact: bool = False) -> nn.Sequential:
    """``g`` for a vector i-ResNet: ``d -> hidden -> ... -> hidden -> d`` with ``n_layers`` hidden
    layers (``n_layers + 1`` :class:`SpectralNormLinear` maps of norm ``<= coeff``) and 1-Lipschitz
    activations between them, so ``Lip(g) <= coeff ** (n_layers + 1)``."""
    if n_layers < 1:
        raise InputError(f"n_layers must be >= 1, got {n_layers!r}")
    dims = [d] + [hidden] * n_layers + [d]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        if i > 0:
            layers.append(lipschitz_activation(activation))
        layers.append(SpectralNormLinear(a, b, coeff=coeff, exact=exact))
    return nn.Sequential(*layers)


def residual_conv(channels: int, hidden: int, coeff: float = 0.97,
                  input_shape: tuple[int, int, int] | None = None, activation: str = "elu",
                  exact: bool = False) -> nn.Sequential:
    """``g`` for an image i-ResNet (Behrmann et al., 2019): 3x3, 1x1 and 3x3
    :class:`SpectralNormConv2d` layers ``channels -> hidden -> hidden -> channels`` with
    1-Lipschitz activations between them; ``Lip(g) <= coeff ** 3``."""
    spatial = tuple(input_shape[1:]) if input_shape is not None else None
    plan = [(channels, hidden, 3), (hidden, hidden, 1), (hidden, channels, 3)]
    layers: list[nn.Module] = []
    for i, (c_in, c_out, k) in enumerate(plan):
        if i > 0:
            layers.append(lipschitz_activation(activation))
        shape = (c_in, *spatial) if spatial is not None else None
        layers.append(SpectralNormConv2d(c_in, c_out, k, coeff=coeff, input_shape=shape,
                                         exact=exact))
    return nn.Sequential(*layers)


def require_contraction(g: nn.Module) -> None:
    """Raise ``ValueError`` unless every parametrised layer of ``g`` is spectrally normalised with
    ``coeff < 1`` (or is a :class:`LipSwish`).

    Together with 1-Lipschitz activations this gives ``Lip(g) <= prod(coeff) < 1`` when ``g`` is a
    chain of layers; branches that add up several paths are not covered by the check.
    """
    opt_out = "pass check_contraction=False to build the block anyway"
    for name, m in g.named_modules():
        label = f"g.{name}" if name else "g"
        if isinstance(m, SpectralNormLayer):
            if m.coeff >= 1:
                raise InputError(
                    f"{label}: coeff={m.coeff} must be < 1: an invertible residual layer requires "
                    f"a contraction, Lip(g) < 1, for its inverse to exist and the fixed-point "
                    f"iteration to converge; {opt_out}"
                )
        elif not isinstance(m, LipSwish) and any(True for _ in m.parameters(recurse=False)):
            raise InputError(
                f"{label} ({type(m).__name__}) has weights but is not spectrally normalised, so "
                f"Lip(g) < 1 cannot be guaranteed and the inverse may not exist or converge; use "
                f"SpectralNormLinear / SpectralNormConv2d with coeff < 1, or {opt_out}"
            )


class InvertibleResidual(InvertibleBlock):
    r"""Invertible residual layer ``F(x) = x + g(x)`` (Behrmann et al., 2019).

    With ``Lip(g) < 1`` (Behrmann et al., 2021, Table 3), ``Lip(F) <= 1 + Lip(g)`` and
    ``Lip(F^-1) <= 1 / (1 - Lip(g))``.

    **Inverse.** The fixed-point iteration ``x_{k+1} = y - g(x_k)``, ``x_0 = y``, converges
    linearly with rate ``Lip(g)`` (Banach). It stops when every sample's step satisfies
    ``||x_{k+1} - x_k||_2 <= tol (1 + ||x_k||_2)``, at which point the error is at most
    ``Lip(g) / (1 - Lip(g))`` times the step, or after ``max_iter`` iterations. The outcome is
    recorded in :attr:`last_convergence` (``residual`` is the largest per-sample
    ``||x + g(x) - y||_2``); non-convergence and non-finite iterates are reported there, never
    raised. The iteration runs in the caller's autograd mode, so gradients flow through the
    unrolled iterations; use ``torch.no_grad()`` when none are needed.

    **Log-determinant.** ``"exact"``: ``slogdet(I + J_g(x))`` per sample, the Jacobian of the
    flattened ``g`` from ``torch.func.jacrev``. ``"series"``: the i-ResNet estimate

    .. math:: \log\det(I + J_g) = \sum_{k=1}^{\infty} \frac{(-1)^{k+1}}{k} \operatorname{tr}(J_g^k)
              \approx \sum_{k=1}^{n} \frac{(-1)^{k+1}}{k} \, \varepsilon^\top J_g^k \varepsilon,

    averaged over ``n_probes`` Hutchinson probes (reproducible under ``torch.manual_seed``) with
    vector-Jacobian products; the truncation error is at most
    ``D Lip(g)^{n+1} / ((n+1)(1 - Lip(g)))`` for per-sample dimension ``D``. ``"auto"``: exact
    when ``D <= exact_log_det_max_dim``.
    The inverse's log-determinant is minus the forward one at the reconstructed ``x``.

    Args:
        g: the residual branch; it must preserve the input shape and act sample by sample.
        tol: relative step tolerance; ``None`` means ``4 eps`` of the input's dtype (the iteration's
            rounding floor is below ``1 eps`` in float16 to float64 for MLP and conv branches).
        max_iter: iteration cap of the inverse.
        log_det: ``"auto"``, ``"exact"`` or ``"series"``.
        exact_log_det_max_dim: largest per-sample dimension for which ``"auto"`` is exact.
        n_series_terms: terms ``n`` of the power series.
        n_probes: Hutchinson probes per sample.
        probe: ``"rademacher"`` or ``"gaussian"``.
        check_contraction: check on construction (and in :meth:`validate`) that ``g`` is built so
            that ``Lip(g) < 1``, see :func:`require_contraction`.
    """

    #: ``tol=None`` means this many machine epsilons of the input's dtype.
    DEFAULT_TOL_EPS = 4

    def __init__(self, g: nn.Module, tol: float | None = None, max_iter: int = 200,
                 log_det: str = "auto", exact_log_det_max_dim: int = 64, n_series_terms: int = 10,
                 n_probes: int = 1, probe: str = "rademacher",
                 check_contraction: bool = True) -> None:
        super().__init__()
        if tol is not None and not (math.isfinite(tol) and tol > 0):
            raise InputError(f"tol must be a finite number > 0 or None, got {tol!r}")
        for name, value in (("max_iter", max_iter), ("n_series_terms", n_series_terms),
                            ("n_probes", n_probes)):
            if int(value) < 1:
                raise InputError(f"{name} must be >= 1, got {value!r}")
        if log_det not in ("auto", "exact", "series"):
            raise InputError(f"log_det must be 'auto', 'exact' or 'series', got {log_det!r}")
        check_probe(probe)
        self.g = g
        self.tol = tol
        self.max_iter = int(max_iter)
        self.log_det = log_det
        self.exact_log_det_max_dim = int(exact_log_det_max_dim)
        self.n_series_terms = int(n_series_terms)
        self.n_probes = int(n_probes)
        self.probe = probe
        self.check_contraction = check_contraction
        if check_contraction:
            require_contraction(g)

    @property
    def is_iterative(self) -> bool:  # noqa: D102
        return True

    def validate(self) -> None:
        """Finite parameters and, when ``check_contraction``, a contractive ``g``."""
        super().validate()
        if self.check_contraction:
            require_contraction(self.g)

    def _g(self, x: Tensor) -> Tensor:
        gx = self.g(x)
        if gx.shape != x.shape:
            raise InputError(
                f"g must preserve the input shape: g maps {tuple(x.shape)} to {tuple(gx.shape)}"
            )
        return gx

    def _forward(self, x: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        check_input(x, "x")
        y = x + self._g(x)
        if not with_log_det:
            return y, None
        with frozen_spectral_norm(self.g):
            return y, self._log_det(x)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        check_input(y, "y")
        with frozen_spectral_norm(self.g):
            x = self._fixed_point(y)
            return x, (-self._log_det(x) if with_log_det else None)

    def inverse_with_info(self, y: Tensor) -> tuple[Tensor, ConvergenceInfo]:
        """``F^-1(y)`` and how the fixed-point iteration ended."""
        x = self.inverse(y)
        assert self.last_convergence is not None
        return x, self.last_convergence

    def _fixed_point(self, y: Tensor) -> Tensor:
        tol = self.tol if self.tol is not None else self.DEFAULT_TOL_EPS * torch.finfo(y.dtype).eps
        x, converged, iterations = y, False, 0
        while iterations < self.max_iter:
            iterations += 1
            x_next = y - self._g(x)
            if not bool(torch.isfinite(x_next).all()):
                x = x_next
                break
            step = per_sample_norm(x_next - x, None)
            scale = 1 + per_sample_norm(x, None)
            x = x_next
            if bool((step <= tol * scale).all()) and bool(torch.isfinite(step).all()):
                converged = True
                break
        with torch.no_grad():
            residual = per_sample_norm(x + self._g(x) - y, None).max()
        residual_value = float(residual) if bool(torch.isfinite(x).all()) else math.nan
        self.last_convergence = ConvergenceInfo(converged, iterations, residual_value, tol)
        return x

    def _log_det(self, x: Tensor) -> Tensor:
        dim = x[0].numel()
        mode = self.log_det
        if mode == "auto":
            mode = "exact" if dim <= self.exact_log_det_max_dim else "series"
        if mode == "exact":
            jac = batch_jacobian(self._g, x)
            eye = torch.eye(dim, dtype=jac.dtype, device=jac.device)
            return slogabsdet(eye + jac)
        _, vjp_fn = vjp(self._g, x)
        probes = hutchinson_probes(self.n_probes, x, self.probe)
        w, total = probes, x.new_zeros(self.n_probes, x.shape[0])
        for k in range(1, self.n_series_terms + 1):
            w = vmap(vjp_fn)(w)[0]  # eps^T J^k, probe by probe
            total = total + ((-1) ** (k + 1) / k) * probe_products(w, probes)
        return total.mean(0)
