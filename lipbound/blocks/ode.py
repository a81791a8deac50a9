r"""Neural ODE blocks: the time-``T`` flow of ``dx/dt = f(t, x)`` (Chen et al., 2018).

Table 3 of Behrmann et al. (2021) bounds both directions by :math:`e^{\mathrm{Lip}(f) T}`, with
``Lip(f)`` a Lipschitz constant in ``x`` that holds for all ``t`` in ``[0, T]``.

The block computes a *discrete* flow: a fixed-step solver (classical Runge-Kutta or Euler) with
``steps`` steps of size ``h = T / steps``. The inverse runs the same solver backward, from ``T``
to ``0`` with step ``-h``. The discrete backward solve is not the exact inverse of the discrete
forward solve: each is within the solver's truncation error of the exact flow (``O(h^4)`` for
RK4, ``O(h)`` for Euler), so the round trip ``F^-1(F(x))`` misses ``x`` by a truncation error of
that order (for RK4 the leading terms of the two solves cancel and the round trip error is
observed to fall like ``h^5``). The reference oracle integrates the exact flow to its own
precision, which separates this truncation error from rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import vjp, vmap

from ..autodiff import batch_jacobian
from ..errors import InputError
from .base import InvertibleBlock, check_input
from .numerics import check_probe, hutchinson_probes, probe_products, slogabsdet
from .subnets import make_activation

__all__ = ["NeuralODE", "ODEFunc"]

State = tuple[Tensor, ...]
Field = Callable[[float, State], State]


def _axpy(z: State, a: float, k: State) -> State:
    return tuple(zi + a * ki for zi, ki in zip(z, k, strict=True))


def _euler_step(fn: Field, t: float, h: float, z: State) -> State:
    return _axpy(z, h, fn(t, z))


def _rk4_step(fn: Field, t: float, h: float, z: State) -> State:
    k1 = fn(t, z)
    k2 = fn(t + h / 2, _axpy(z, h / 2, k1))
    k3 = fn(t + h / 2, _axpy(z, h / 2, k2))
    k4 = fn(t + h, _axpy(z, h, k3))
    return tuple(zi + (h / 6) * (a + 2 * b + 2 * c + d)
                 for zi, a, b, c, d in zip(z, k1, k2, k3, k4, strict=True))


#: Fixed-step methods by name, with their order.
_METHODS: dict[str, tuple[Callable[[Field, float, float, State], State], int]] = {
    "rk4": (_rk4_step, 4),
    "euler": (_euler_step, 1),
}


class NeuralODE(InvertibleBlock):
    r"""The discrete time-``T`` flow of ``dx/dt = f(t, x)``, see the module docstring.

    **Log-determinant.** ``"exact"``: ``slogdet`` of the Jacobian of the whole discrete solve,
    from ``torch.func.jacrev`` through the solver steps, so it is exact for the map that is
    computed. ``"cnf"``: the instantaneous change of variables (Chen et al., 2018),
    :math:`\log|\det \partial x(T)/\partial x(0)| = \int_0^T \operatorname{tr}
    \frac{\partial f}{\partial x}(t, x(t))\,dt`, integrated alongside ``x`` by the same solver; the
    trace is exact (per-sample Jacobian) when the per-sample dimension ``D <=
    exact_log_det_max_dim`` and a Hutchinson estimate with ``n_probes`` probes, fixed along the
    trajectory, otherwise. Both approximate the exact flow's log-determinant to the solver's order.
    ``"auto"``: ``"exact"`` when ``D <= exact_log_det_max_dim``, else ``"cnf"``. The inverse's
    log-determinant is computed the same way for the backward solve.

    Args:
        f: the vector field, a module called as ``f(t, x)`` with ``t`` a 0-dim tensor; it must
            act sample by sample and return a tensor shaped like ``x``.
        T: the end time, ``> 0``.
        steps: number of solver steps, ``>= 1``.
        method: ``"rk4"`` or ``"euler"``.
        log_det: ``"auto"``, ``"exact"`` or ``"cnf"``.
        exact_log_det_max_dim: the dimension threshold described above.
        n_probes: Hutchinson probes for the CNF trace estimate.
        probe: ``"rademacher"`` or ``"gaussian"``.
    """

    def __init__(self, f: nn.Module, T: float = 1.0, steps: int = 50, method: str = "rk4",
                 log_det: str = "auto", exact_log_det_max_dim: int = 64, n_probes: int = 1,
                 probe: str = "rademacher") -> None:
        super().__init__()
        if not T > 0:
            raise InputError(f"T must be > 0, got {T!r}")
        if int(steps) < 1:
            raise InputError(f"steps must be >= 1, got {steps!r}")
        if method not in _METHODS:
            raise InputError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
        if log_det not in ("auto", "exact", "cnf"):
            raise InputError(f"log_det must be 'auto', 'exact' or 'cnf', got {log_det!r}")
        if int(n_probes) < 1:
            raise InputError(f"n_probes must be >= 1, got {n_probes!r}")
        check_probe(probe)
        self.f = f
        self.T = float(T)
        self.steps = int(steps)
        self.method = method
        self.log_det = log_det
        self.exact_log_det_max_dim = int(exact_log_det_max_dim)
        self.n_probes = int(n_probes)
        self.probe = probe

    @property
    def order(self) -> int:
        """The convergence order of the solver."""
        return _METHODS[self.method][1]

    def _f(self, t: float, x: Tensor) -> Tensor:
        dx = self.f(torch.tensor(t, dtype=x.dtype, device=x.device), x)
        if dx.shape != x.shape:
            raise InputError(
                f"f(t, x) must have the shape of x: f maps {tuple(x.shape)} to {tuple(dx.shape)}"
            )
        return dx

    def _integrate(self, fn: Field, z: State, reverse: bool, steps: int | None = None) -> State:
        steps = self.steps if steps is None else steps
        step = _METHODS[self.method][0]
        h = -self.T / steps if reverse else self.T / steps
        t0 = self.T if reverse else 0.0
        for i in range(steps):
            z = step(fn, t0 + i * h, h, z)
        return z

    def _solve(self, x: Tensor, reverse: bool, steps: int | None = None) -> Tensor:
        return self._integrate(lambda t, z: (self._f(t, z[0]),), (x,), reverse, steps)[0]

    def _flow(self, x: Tensor, reverse: bool, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        if not with_log_det:
            return self._solve(x, reverse), None
        dim = x[0].numel()
        small = dim <= self.exact_log_det_max_dim
        if self.log_det == "exact" or (self.log_det == "auto" and small):
            jac = batch_jacobian(lambda xb: self._solve(xb, reverse), x)
            return self._solve(x, reverse), slogabsdet(jac)
        probes = None if small else hutchinson_probes(self.n_probes, x, self.probe)

        def augmented(t: float, z: State) -> State:
            return self._f_and_trace(t, z[0], probes)

        y, log_det = self._integrate(augmented, (x, x.new_zeros(x.shape[0])), reverse)
        return y, log_det

    def _f_and_trace(self, t: float, x: Tensor, probes: Tensor | None) -> State:
        """``f(t, x)`` and ``tr(df/dx)`` per sample: exact, or Hutchinson with ``probes``."""
        if probes is None:
            jac = batch_jacobian(lambda xb: self._f(t, xb), x)
            return self._f(t, x), jac.diagonal(dim1=1, dim2=2).sum(-1)
        dx, vjp_fn = vjp(lambda xb: self._f(t, xb), x)
        w = vmap(vjp_fn)(probes)[0]
        return dx, probe_products(w, probes).mean(0)

    def _forward(self, x: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        check_input(x, "x")
        return self._flow(x, False, with_log_det)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        check_input(y, "y")
        return self._flow(y, True, with_log_det)

    def truncation_estimate(self, x: Tensor) -> Tensor:
        """Richardson estimate of the forward solve's truncation error per sample,
        ``||y_h - y_{h/2}|| 2^p / (2^p - 1)`` for a method of order ``p``."""
        check_input(x, "x")
        diff = self._solve(x, False) - self._solve(x, False, 2 * self.steps)
        return torch.linalg.vector_norm(diff.reshape(x.shape[0], -1), dim=1) * (
            2**self.order / (2**self.order - 1))


class ODEFunc(nn.Module):
    """An MLP vector field ``f(t, x)``: ``[x, t] -> hidden -> ... -> hidden -> d``.

    Args:
        d: the state dimension.
        hidden: width of the hidden layers.
        n_layers: number of hidden layers (``n_layers + 1`` linear maps).
        activation: ``"tanh"`` (smooth, the default), ``"elu"``, ``"relu"`` or ``"lipswish"``.
        time_dependent: whether ``t`` is appended to the input.
    """

    def __init__(self, d: int, hidden: int = 32, n_layers: int = 2, activation: str = "tanh",
                 time_dependent: bool = True) -> None:
        super().__init__()
        if n_layers < 1:
            raise InputError(f"n_layers must be >= 1, got {n_layers!r}")
        self.d = int(d)
        self.time_dependent = bool(time_dependent)
        dims = [d + int(time_dependent)] + [hidden] * n_layers + [d]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            if i > 0:
                layers.append(make_activation(activation))
            layers.append(nn.Linear(dims[i], dims[i + 1]))
        self.net = nn.Sequential(*layers)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        """``f(t, x)`` for ``x`` of shape ``(B, d)`` and a 0-dim ``t``."""
        check_input(x, "x", (self.d,), ndims=(2,))
        if self.time_dependent:
            x = torch.cat([x, t.to(x.dtype).reshape(1, 1).expand(x.shape[0], 1)], dim=1)
        return self.net(x)
