r"""The 1-Lipschitz layers an invertible residual branch is built from.

* :class:`SpectralNormLinear` and :class:`SpectralNormConv2d`: softly spectrally normalised
  layers (Residual Flows, Chen et al., 2019) applying the linear operator ``A(W)`` with the
  effective weight

  .. math:: W_{\mathrm{eff}} = W / \max(1, \sigma / c), \qquad \sigma = u^\top A(W) v,

  ``(u, v)`` stored estimates of the operator's top singular vectors, so that
  ``||A(W_eff)||_2 <= c`` up to the estimate's error;
* :class:`LipSwish` and :func:`lipschitz_activation`: 1-Lipschitz activations.

With ``c < 1`` a chain of these layers is a contraction, ``Lip(g) <= prod(c) < 1``, the
condition of the i-ResNet row of Table 3 (Behrmann et al., 2021).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from .base import check_input
from .numerics import linalg_dtype
from .subnets import make_activation

__all__ = [
    "LIPSCHITZ_ACTIVATIONS",
    "LipSwish",
    "SpectralNormConv2d",
    "SpectralNormLinear",
    "SpectralNormLayer",
    "frozen_spectral_norm",
    "lipschitz_activation",
    "refresh_spectral_norm",
]

#: Iteration cap of the power iteration run to convergence when the weight has changed.
_REFRESH_MAX_ITER = 1000
_GOLDEN_ANGLE = math.pi * (3 - math.sqrt(5))


def _normalize(t: Tensor) -> Tensor:
    return t / t.norm().clamp_min(torch.finfo(t.dtype).tiny)


class SpectralNormLayer(nn.Module):
    r"""Shared machinery of the softly spectrally normalised layers.

    The layer applies the linear operator :math:`A(W)` (a matrix product or a convolution) with the
    effective weight :math:`W / \max(1, \sigma / c)`, where :math:`\sigma = u^\top A(W) v` and
    ``(u, v)`` are stored estimates of the top singular vectors of the operator (buffers ``u``,
    ``v``):

    * ``exact=False``: power iteration. In training mode every forward call but the first runs
      ``n_power_iterations`` steps from the stored vectors (Residual Flows); otherwise the stored
      vectors are used as they are. Power iteration approaches ``sigma`` from below, so the
      effective operator norm may exceed ``coeff`` by the iteration's remaining error.
    * ``exact=True``: ``(u, v)`` are the top singular vectors of the dense operator (from the
      eigendecomposition of its Gram matrix), so ``sigma`` is the operator 2-norm up to rounding.

    **Which weight the vectors belong to.** The layer keeps the weight its vectors were computed
    for (the non-persistent buffer ``weight_seen``, cast, copied and moved with the module).
    ``.double()``, ``.to(float16)`` or a deep copy keep the stored vectors (the same network at
    another precision has the same stored parameters; a float32-built layer cast to float64 keeps
    vectors of float32 accuracy until ``refresh_vectors(force=True)``), and loading a state dict
    with ``weight``, ``u`` and ``v`` marks them as belonging together (a layer that has not seen
    an input takes its input shape from the stored ``v``; training-mode calls after the load
    continue the stored power iteration, as the saved layer would, so training resumes exactly).
    When the weight differs from it (an optimizer step,
    :func:`~lipbound.blocks.randomize_parameters`, a state dict without ``u`` and ``v``) and
    no training-mode step has updated them, the vectors are stale:
    the next forward call recomputes and stores them, exactly or by power iteration run until
    ``sigma`` changes by at most ``4 eps`` relative (at most 1000 iterations; convolutions with
    clustered spectra may stop at the cap, some ``1e-6`` below ``sigma``). A new layer whose
    input shape is known starts with current vectors. :meth:`sigma` and :meth:`effective_weight`
    never change the layer: on stale vectors they compute what the next forward call will store,
    without storing it. ``sigma`` is differentiable in the weight (``d sigma / dW = u v^T``).
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
        self.register_buffer("weight_seen", None, persistent=False)
        self._key: tuple | None = None
        self._frozen = False
        self._called = False  # training-mode steps start after the first forward call
        if self.input_shape is not None:
            self._init_vectors(self.input_shape)
            self.refresh_vectors()

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

    def _store(self, u: Tensor, v: Tensor) -> None:
        """Store ``(u, v)`` as the vectors of the current weight."""
        self.u, self.v = u, v  # rebinding, not copy_, works inside torch.func transforms
        self.weight_seen = self.weight.detach().clone()
        self._key = self._weight_key()

    def vectors_current(self) -> bool:
        """Whether the stored ``u``, ``v`` belong to the current weight (see the class
        docstring); ``False`` while the input shape is unknown."""
        if self.v is None:
            return False
        if self._key is not None and self._key == self._weight_key():
            return True
        seen, w = self.weight_seen, self.weight
        return (seen is not None and seen.shape == w.shape and seen.dtype == w.dtype
                and seen.device == w.device and bool(torch.equal(seen, w.detach())))

    @torch.no_grad()
    def _power_iterate(self, n: int, rtol: float | None = None) -> tuple[Tensor, Tensor]:
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
        return u, v

    @torch.no_grad()
    def _refreshed(self) -> tuple[Tensor, Tensor]:
        """The vectors for the current weight, recomputed (not stored)."""
        if not self.exact:
            return self._power_iterate(_REFRESH_MAX_ITER,
                                       rtol=4 * torch.finfo(self.weight.dtype).eps)
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
        return (large, small) if from_inputs else (small, large)

    def _require_shape(self) -> None:
        if self.v is None:
            raise InputError(
                f"{type(self).__name__}: the input shape is unknown; pass input_shape or call the "
                "layer once before asking for sigma"
            )

    def refresh_vectors(self, force: bool = False) -> None:
        """Recompute and store stale vectors now, as the next forward call would (no-op when
        they are current, unless ``force``: e.g. after ``.double()``, to converge the vectors of
        a float32-built layer to float64 accuracy)."""
        self._require_shape()
        if force or not self.vectors_current():
            self._store(*self._refreshed())
        elif self._key != self._weight_key():
            self._key = self._weight_key()  # same values, new storage: remember it

    def sigma(self) -> Tensor:
        """The spectral-norm estimate ``u^T A(W) v`` of the next forward call (0-dim,
        differentiable in ``W``); the layer is left unchanged.

        A forward call divides the weight by ``max(1, sigma / coeff)``, after advancing the power
        iteration when in training mode."""
        self._require_shape()
        u, v = (self.u, self.v) if self.vectors_current() else self._refreshed()
        return (u * self._op(self.weight, v)).sum()

    def effective_weight(self) -> Tensor:
        r"""The normalised weight :math:`W / \max(1, \sigma / c)` (the layer is left unchanged)."""
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
        if self.training and not self._frozen and not self.exact and self._called:
            self._store(*self._power_iterate(self.n_power_iterations))
        self.refresh_vectors()
        self._called = True
        return self._op(self.effective_weight(), x, self.bias)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any
                              ) -> None:
        u, v = state_dict.get(prefix + "u"), state_dict.get(prefix + "v")
        if self.v is None and isinstance(u, Tensor) and isinstance(v, Tensor) and v.dim() >= 2:
            # a layer that has not seen an input yet takes its input shape from the stored
            # vectors (a saved layer that had run): allocate them for the load to fill in
            self.input_shape = tuple(v.shape[1:])
            w = self.weight
            self.u = torch.empty(u.shape, dtype=w.dtype, device=w.device)
            self.v = torch.empty(v.shape, dtype=w.dtype, device=w.device)
        super()._load_from_state_dict(state_dict, prefix, *args)
        if self.v is not None and all(prefix + k in state_dict for k in ("weight", "u", "v")):
            self.weight_seen = self.weight.detach().clone()  # loaded together: they belong
            self._key = self._weight_key()
            # stored vectors of a layer that ran: training-mode calls continue its power
            # iteration, as the saved layer's next call would (exact resumption)
            self._called = True

    def extra_repr(self) -> str:
        return (f"weight={tuple(self.weight.shape)}, coeff={self.coeff}, exact={self.exact}, "
                f"n_power_iterations={self.n_power_iterations}, input_shape={self.input_shape}")


class SpectralNormLinear(SpectralNormLayer):
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


class SpectralNormConv2d(SpectralNormLayer):
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
    layers = [m for m in module.modules() if isinstance(m, SpectralNormLayer)]
    previous = [m._frozen for m in layers]
    for m in layers:
        m._frozen = True
    try:
        yield
    finally:
        for m, state in zip(layers, previous, strict=True):
            m._frozen = state


def refresh_spectral_norm(module: nn.Module, force: bool = False) -> nn.Module:
    """Bring the stored power-iteration vectors of every spectrally normalised layer in
    ``module`` up to date with its weight (what each layer's next forward call would do; layers
    whose input shape is still unknown are skipped); ``force`` recomputes current ones too, in
    the layers' present dtype (see :meth:`SpectralNormLayer.refresh_vectors`). Returns
    ``module``."""
    for m in module.modules():
        if isinstance(m, SpectralNormLayer) and m.v is not None:
            m.refresh_vectors(force)
    return module


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
