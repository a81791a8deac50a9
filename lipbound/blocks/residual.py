r"""Invertible residual layers (i-ResNet) and the spectrally normalised layers they are built from.

An invertible residual layer (Behrmann et al., 2019) is

.. math:: F(x) = x + g(x), \qquad \mathrm{Lip}(g) < 1,

and its row of Table 3 in Behrmann et al. (2021), "Understanding and Mitigating Exploding Inverses
in Invertible Neural Networks", reads

.. math:: \mathrm{Lip}(F) \le 1 + \mathrm{Lip}(g), \qquad
          \mathrm{Lip}(F^{-1}) \le \frac{1}{1 - \mathrm{Lip}(g)},

the inverse bound holding only when ``Lip(g) < 1``. The contraction is obtained as in Residual
Flows (Chen et al., 2019): ``g`` chains 1-Lipschitz activations and linear or convolutional layers
whose weights are softly spectrally normalised, ``W / max(1, sigma(W) / coeff)`` with
``coeff < 1``, so that ``Lip(g) <= prod(coeff)``.

The inverse is the Banach fixed-point iteration ``x_{k+1} = y - g(x_k)``; the log-determinant is
either exact (``slogdet(I + J_g)``) or the i-ResNet power series
``log det(I + J_g) = sum_k (-1)^{k+1} tr(J_g^k) / k`` with Hutchinson trace estimates.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vjp, vmap

from ..autodiff import batch_jacobian
from ..errors import InputError
from .base import ConvergenceInfo, InvertibleBlock, check_input
from .numerics import check_probe, hutchinson_probes, linalg_dtype, probe_products, slogabsdet
from .subnets import make_activation

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

#: Iteration cap of the power iteration run to convergence when the weight has changed.
_REFRESH_MAX_ITER = 1000
_GOLDEN_ANGLE = math.pi * (3 - math.sqrt(5))


def _normalize(t: Tensor) -> Tensor:
    return t / t.norm().clamp_min(torch.finfo(t.dtype).tiny)


def _per_sample_norm(v: Tensor) -> Tensor:
    """Per-sample 2-norm, scaled by the largest entry so that the squares cannot overflow."""
    flat = v.reshape(v.shape[0], -1)
    peak = flat.abs().amax(dim=1, keepdim=True)
    safe = peak.clamp_min(torch.finfo(v.dtype).tiny)
    return peak.squeeze(1) * torch.linalg.vector_norm(flat / safe, dim=1)


class _SpectralNormLayer(nn.Module):
    r"""Shared machinery of the softly spectrally normalised layers.

    The layer applies the linear operator :math:`A(W)` (a matrix product or a convolution) with the
    effective weight :math:`W / \max(1, \sigma / c)`, where :math:`\sigma = u^\top A(W) v` and
    ``(u, v)`` are persistent estimates of the top singular vectors of the operator:

    * ``exact=False``: power iteration. In training mode every forward call first runs
      ``n_power_iterations`` steps from the stored vectors (Residual Flows); otherwise the stored
      vectors are used as they are. Power iteration approaches ``sigma`` from below, so the
      effective operator norm may exceed ``coeff`` by the iteration's remaining error.
    * ``exact=True``: ``(u, v)`` are the top singular vectors of the dense operator (from the
      eigendecomposition of its Gram matrix), so ``sigma`` is the operator 2-norm up to rounding.

    Whenever the weight has changed since the vectors were last computed (detected by the weight's
    storage, dtype and ``_version``; in-place edits through ``weight.data`` are not seen) and no
    training-mode step has updated them, they are recomputed: exactly, or by power iteration run
    until ``sigma`` changes by at most ``4 eps`` relative (at most 1000 iterations; convolutions
    with clustered spectra may stop at the cap, some ``1e-6`` below ``sigma``). ``sigma`` is
    differentiable in the weight (``d sigma / dW = u v^T``).
    """

    _input_ndim: int

    def __init__(self, weight_shape: tuple[int, ...], coeff: float, n_power_iterations: int,
                 exact: bool, bias: bool, input_shape: tuple[int, ...] | None) -> None:
        super().__init__()
        if not (isinstance(coeff, (int, float)) and math.isfinite(coeff) and coeff > 0):
            raise InputError(f"coeff must be a finite number > 0, got {coeff!r}")
        if int(n_power_iterations) < 1:
            raise InputError(f"n_power_iterations must be >= 1, got {n_power_iterations!r}")
        self.coeff = float(coeff)
        self.n_power_iterations = int(n_power_iterations)
        self.exact = bool(exact)
        self.weight = nn.Parameter(torch.empty(weight_shape))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # the torch.nn default
        if bias:
            bound = 1.0 / math.sqrt(math.prod(weight_shape[1:]))
            self.bias = nn.Parameter(torch.empty(weight_shape[0]).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.register_buffer("u", None)
        self.register_buffer("v", None)
        self._key: tuple | None = None
        self._frozen = False
        if self.input_shape is not None:
            self._init_vectors(self.input_shape)

    # the operator, defined by subclasses
    def _op(self, w: Tensor, x: Tensor, bias: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def _adjoint(self, w: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def _init_vectors(self, input_shape: tuple[int, ...]) -> None:
        # A deterministic, equidistributed start (cosines of multiples of the golden angle): no
        # random numbers, so that the first call may happen inside torch.func.vmap.
        w, n = self.weight, math.prod(input_shape)
        angles = torch.arange(1, n + 1, dtype=w.dtype, device=w.device) * _GOLDEN_ANGLE
        self.v = _normalize(torch.cos(angles).reshape(1, *input_shape))
        self.u = _normalize(self._op(w, self.v))

    def _weight_key(self) -> tuple | None:
        w = self.weight
        try:
            return (w.data_ptr(), w._version, w.dtype, w.device)
        except RuntimeError:  # tensors without storage or version (functorch wrappers)
            return self._key

    @torch.no_grad()
    def _power_iterate(self, n: int, rtol: float | None = None) -> None:
        w, u, v = self.weight, self.u, self.v
        previous = 0.0
        for _ in range(n):
            v = _normalize(self._adjoint(w, u))
            wv = self._op(w, v)
            u = _normalize(wv)
            if rtol is not None:
                estimate = float(wv.norm())
                if abs(estimate - previous) <= rtol * estimate:
                    break
                previous = estimate
        self.u, self.v = u, v  # rebinding, not copy_, works inside torch.func transforms
        self._key = self._weight_key()

    @torch.no_grad()
    def _refresh(self) -> None:
        if not self.exact:
            self._power_iterate(_REFRESH_MAX_ITER, rtol=4 * torch.finfo(self.weight.dtype).eps)
            return
        # The top singular pair from the smaller Gram matrix of the dense operator A, built from
        # the smaller side: rows A^T e_i = A* e_i, or columns A e_j. eigh is robust where LAPACK's
        # SVD can fail to converge (large, clustered conv spectra), and sigma = ||A v|| is
        # accurate to rounding even when the top singular value is repeated.
        w, u, v = self.weight, self.u, self.v
        from_inputs = v.numel() <= u.numel()
        small, large = (v, u) if from_inputs else (u, v)
        k = small.numel()
        basis = torch.eye(k, dtype=w.dtype, device=w.device).reshape(k, *small.shape[1:])
        apply = self._op if from_inputs else self._adjoint
        rows = linalg_dtype(apply(w, basis).reshape(k, -1))  # A^T, or A
        top = torch.linalg.eigh(rows @ rows.T).eigenvectors[:, -1]
        small = _normalize(top).reshape(small.shape).to(w.dtype)
        large = _normalize(rows.T @ top).reshape(large.shape).to(w.dtype)
        self.v, self.u = (small, large) if from_inputs else (large, small)
        self._key = self._weight_key()

    def sigma(self) -> Tensor:
        """The current spectral-norm estimate ``u^T A(W) v`` (0-dim, differentiable in ``W``).

        A forward call divides the weight by ``max(1, sigma / coeff)``, after advancing the power
        iteration when in training mode."""
        if self.v is None:
            raise InputError(
                f"{type(self).__name__}: the input shape is unknown; pass input_shape or call the "
                "layer once before asking for sigma"
            )
        if self._key is None or self._key != self._weight_key():
            self._refresh()
        return (self.u * self._op(self.weight, self.v)).sum()

    def effective_weight(self) -> Tensor:
        r"""The normalised weight :math:`W / \max(1, \sigma / c)`."""
        return self.weight / torch.clamp(self.sigma() / self.coeff, min=1.0)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - the class docstring says it
        check_input(x, "x", self.input_shape, ndims=(self._input_ndim,))
        if x.shape[1] != self.weight.shape[1]:
            raise InputError(
                f"x must have {self.weight.shape[1]} channels, got shape {tuple(x.shape)}"
            )
        if self.v is None:
            self.input_shape = tuple(x.shape[1:])
            self._init_vectors(self.input_shape)
        if self.training and not self._frozen and not self.exact and self._key is not None:
            self._power_iterate(self.n_power_iterations)
        return self._op(self.effective_weight(), x, self.bias)

    def extra_repr(self) -> str:
        return (f"weight={tuple(self.weight.shape)}, coeff={self.coeff}, exact={self.exact}, "
                f"n_power_iterations={self.n_power_iterations}, input_shape={self.input_shape}")


class SpectralNormLinear(_SpectralNormLayer):
    r"""Linear layer ``y = W_eff x + b`` with :math:`\|W_{\mathrm{eff}}\|_2 \le` ``coeff``.

    Args:
        in_features: input dimension.
        out_features: output dimension.
        coeff: the target norm ``c > 0``; ``W_eff = W / max(1, sigma(W) / c)``.
        n_power_iterations: power-iteration steps per training-mode forward call.
        exact: compute ``sigma`` exactly (the top singular pair of ``W``) instead.
        bias: whether to add a learnable bias (it does not affect the Lipschitz constant).
    """

    _input_ndim = 2

    def __init__(self, in_features: int, out_features: int, coeff: float = 0.97,
                 n_power_iterations: int = 5, exact: bool = False, bias: bool = True) -> None:
        super().__init__((out_features, in_features), coeff, n_power_iterations, exact, bias,
                         (in_features,))

    def _op(self, w: Tensor, x: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.linear(x, w, bias)

    def _adjoint(self, w: Tensor, y: Tensor) -> Tensor:
        return F.linear(y, w.T)


class SpectralNormConv2d(_SpectralNormLayer):
    r"""Stride-1 zero-padded convolution whose operator norm on ``input_shape`` is ``<= coeff``.

    The norm is that of the linear map ``R^{C x H x W} -> R^{C' x H' x W'}`` the convolution defines
    on inputs of the given shape (zero padding makes it depend on ``H`` and ``W``). Power iteration
    uses the convolution and its adjoint (the transposed convolution); ``exact=True`` builds the
    dense matrix of the operator by applying it to the identity basis and takes its top singular
    pair, which costs ``O((C H W)^3)`` and is meant for small inputs.

    Args:
        in_channels: input channels ``C``.
        out_channels: output channels.
        kernel_size: odd kernel sizes with the default padding preserve ``H`` and ``W``.
        coeff: the target norm ``c > 0``.
        input_shape: ``(C, H, W)``; taken from the first input when omitted.
        padding: zero padding on each side, ``kernel_size // 2`` by default.
        n_power_iterations: power-iteration steps per training-mode forward call.
        exact: compute ``sigma`` exactly from the dense operator.
        bias: whether to add a learnable bias.
    """

    _input_ndim = 4

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, coeff: float = 0.97,
                 input_shape: tuple[int, int, int] | None = None, padding: int | None = None,
                 n_power_iterations: int = 5, exact: bool = False, bias: bool = True) -> None:
        if input_shape is not None and (len(input_shape) != 3 or input_shape[0] != in_channels):
            raise InputError(
                f"input_shape must be (C, H, W) with C = in_channels = {in_channels}, "
                f"got {input_shape!r}"
            )
        self.padding = kernel_size // 2 if padding is None else int(padding)
        super().__init__((out_channels, in_channels, kernel_size, kernel_size), coeff,
                         n_power_iterations, exact, bias, input_shape)

    def _op(self, w: Tensor, x: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.conv2d(x, w, bias, padding=self.padding)

    def _adjoint(self, w: Tensor, y: Tensor) -> Tensor:
        return F.conv_transpose2d(y, w, padding=self.padding)


@contextmanager
def frozen_spectral_norm(module: nn.Module) -> Iterator[None]:
    """Within the context, training-mode forward calls of the spectrally normalised layers in
    ``module`` do not advance their power iteration, so the map stays the same across calls."""
    layers = [m for m in module.modules() if isinstance(m, _SpectralNormLayer)]
    previous = [m._frozen for m in layers]
    for m in layers:
        m._frozen = True
    try:
        yield
    finally:
        for m, state in zip(layers, previous, strict=True):
            m._frozen = state


class LipSwish(nn.Module):
    r"""``x * sigmoid(beta x) / 1.1`` with ``beta = softplus(b) > 0`` (Chen et al., 2019).

    ``d/dx [x sigmoid(beta x)] = s(t) + t s'(t)`` with ``t = beta x`` is at most ``1.0998`` for
    every ``beta``, so the layer is 1-Lipschitz.
    """

    def __init__(self) -> None:
        super().__init__()
        self.raw_beta = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return x * torch.sigmoid(x * F.softplus(self.raw_beta)) / 1.1


#: Names of the 1-Lipschitz activations allowed in a residual branch.
LIPSCHITZ_ACTIVATIONS = ("elu", "relu", "tanh", "lipswish")


def lipschitz_activation(name: str) -> nn.Module:
    """A new 1-Lipschitz activation module: ``"elu"``, ``"relu"``, ``"tanh"`` or ``"lipswish"``."""
    if name not in LIPSCHITZ_ACTIVATIONS:
        raise InputError(f"activation must be one of {list(LIPSCHITZ_ACTIVATIONS)}, got {name!r}")
    return LipSwish() if name == "lipswish" else make_activation(name)


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
        if isinstance(m, _SpectralNormLayer):
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
            step = _per_sample_norm(x_next - x)
            scale = 1 + _per_sample_norm(x)
            x = x_next
            if bool((step <= tol * scale).all()) and bool(torch.isfinite(step).all()):
                converged = True
                break
        with torch.no_grad():
            residual = _per_sample_norm(x + self._g(x) - y).max()
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
