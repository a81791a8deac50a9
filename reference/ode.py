r"""The time-``T`` flow of ``dx/dt = f(t, x)`` in the reference arithmetic.

Two modes:

* ``exact=False``: the torch block's own fixed-step solver (RK4 or Euler, ``steps`` steps of
  ``h = T / steps``; backward from ``T`` with ``-h``), run in the backend's arithmetic. This is
  the discrete map the float block computes, without rounding.
* ``exact=True``: the exact flow, by Gragg-Bulirsch-Stoer extrapolation: on each of ``N`` macro
  steps of size ``H``, the modified midpoint rule with ``n = 2, 4, 6, ...`` substeps has an
  error expansion in even powers of ``H / n``; Aitken-Neville extrapolation to ``H / n -> 0``
  gains two orders per level. Working ``GUARD_BITS`` above ``prec``, a macro step is accepted
  when two successive extrapolations agree to ``2^-prec`` relative; otherwise (after
  ``MAX_LEVELS`` levels) ``N`` is doubled. The result is an estimate refined until converged,
  not a certified enclosure: the extrapolation runs on midpoints, and the result is widened
  by the sum of the macro steps' last extrapolation changes (an error estimate).
"""

from __future__ import annotations

from collections.abc import Callable

from lipbound.errors import InputError

from .backends import Backend
from .tensor import RTensor, Tensorish, midpoint_norm

__all__ = ["FlowSolver", "ODENotConverged"]

Field = Callable[[RTensor, Tensorish], Tensorish]

#: Extra working bits of the extrapolation, so that its own rounding stays below the tolerance.
GUARD_BITS = 32
#: Extrapolation levels tried per macro step before the macro step is halved.
MAX_LEVELS = 40
#: Largest number of macro steps tried before giving up.
MAX_MACRO_STEPS = 4096


class ODENotConverged(RuntimeError):
    """The extrapolated flow did not converge to the backend's precision."""


class FlowSolver:
    """Solve ``dx/dt = f(t, x)`` from 0 to ``T`` (or back from ``T`` to 0)."""

    def __init__(self, f: Field, T: float, backend: Backend, method: str, steps: int,
                 exact: bool) -> None:
        if method not in ("rk4", "euler"):
            raise InputError(f"method must be 'rk4' or 'euler', got {method!r}")
        self.f, self.backend, self.method, self.steps, self.exact = f, backend, method, steps, exact
        self.T = RTensor.from_floats([T], (), backend)

    def _const(self, num: int, den: int) -> RTensor:
        bk = self.backend
        return RTensor([bk.from_floats([float(num)])[0] / bk.from_floats([float(den)])[0]], (),
                       bk)

    def solve(self, x: Tensorish, reverse: bool) -> Tensorish:
        if not self.exact:
            with self.backend.active():
                return self._fixed(x, reverse)
        with self.backend.at(self.backend.prec + GUARD_BITS).active():
            return self._extrapolated(x, reverse)

    def _fixed(self, x: Tensorish, reverse: bool) -> Tensorish:
        """The torch block's solver: ``t_i = t_0 + i h``, RK4 or Euler steps."""
        n = self.steps
        h = self.T * self._const(-1 if reverse else 1, n)
        half = h * self._const(1, 2)
        sixth = h * self._const(1, 6)
        for i in range(n):
            t = self.T * self._const(n - i if reverse else i, n)
            if self.method == "euler":
                x = x + h * self.f(t, x)
                continue
            k1 = self.f(t, x)
            k2 = self.f(t + half, x + half * k1)
            k3 = self.f(t + half, x + half * k2)
            k4 = self.f(t + h, x + h * k3)
            x = x + sixth * (k1 + 2 * k2 + 2 * k3 + k4)
        return x

    def _midpoint(self, x: Tensorish, t0: RTensor, big_h: RTensor, n: int) -> Tensorish:
        h = big_h * self._const(1, n)
        z_prev, z = x, x + h * self.f(t0, x)
        for m in range(1, n):
            z_prev, z = z, z_prev + 2 * h * self.f(t0 + h * self._const(m, 1), z)
        return self._const(1, 2) * (z + z_prev + h * self.f(t0 + big_h, z))

    def _macro_step(self, x: Tensorish, t0: RTensor, big_h: RTensor
                    ) -> tuple[Tensorish, float] | None:
        """The extrapolated step and its last change, or ``None`` if it did not converge."""
        tol = 2.0 ** -self.backend.prec
        rows: list[list[Tensorish]] = []
        for j in range(MAX_LEVELS):
            n_j = 2 * (j + 1)
            row = [self._midpoint(x, t0, big_h, n_j).midpoint()]
            for k in range(1, j + 1):
                n_jk = 2 * (j - k + 1)
                ratio = self._const(n_j * n_j, n_jk * n_jk) - 1
                row.append((row[k - 1] + (row[k - 1] - rows[j - 1][k - 1]) / ratio).midpoint())
            rows.append(row)
            if j >= 2:
                change = midpoint_norm(row[-1] - rows[j - 1][-1])
                if change <= tol * (1 + midpoint_norm(row[-1])):
                    return row[-1], change
        return None

    def _extrapolated(self, x: Tensorish, reverse: bool) -> Tensorish:
        macro = max(1, self.steps // 8)
        while macro <= MAX_MACRO_STEPS:
            big_h = self.T * self._const(-1 if reverse else 1, macro)
            z: Tensorish | None = x
            total_change = 0.0
            for i in range(macro):
                t0 = self.T * self._const(macro - i if reverse else i, macro)
                step = self._macro_step(z, t0, big_h)
                if step is None:
                    z = None
                    break
                z, change = step
                total_change += change
            if z is not None:
                return z.widen(total_change)
            macro *= 2
        raise ODENotConverged(
            f"the extrapolated ODE flow did not converge to {self.backend.prec} bits with up to "
            f"{MAX_MACRO_STEPS} macro steps"
        )
