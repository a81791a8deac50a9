r"""Coupling blocks (paper eqs. 3 and 4; Table 3; Lemmas 5 and 6).

Additive (Dinh et al., 2014), eq. 3::

    F(x)_{I1} = x_{I1},    F(x)_{I2} = x_{I2} + t(x_{I1})

Affine (Dinh et al., 2017), eq. 4::

    F(x)_{I1} = x_{I1},    F(x)_{I2} = x_{I2} * g(s(x_{I1})) + t(x_{I1})

with inverse ``x_{I2} = (y_{I2} - t(y_{I1})) / g(s(y_{I1}))`` and
``log|det J_F(x)| = sum_{i in I2} log|g(s(x_{I1}))_i|``. The sub-networks ``t`` and ``s`` are any
modules mapping the conditioning part to the active part's shape (see :mod:`.partition`), or plain
numbers for constant functions (the Figure 1 toy: ``t = 0.123456789``, ``g(s) = 0.1`` via
``IdentityScale`` and ``s = 0.1``).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import InputError, InputTypeError
from .base import InvertibleBlock, zeros_log_det
from .partition import Partition
from .scale import ScaleFunction, make_scale
from .subnets import Constant, as_subnet

__all__ = ["AdditiveCoupling", "AffineCoupling"]


def _apply(net: nn.Module, cond: Tensor, active: Tensor, name: str) -> Tensor:
    out = net(cond)
    if out.dim() != 0 and out.shape != active.shape:
        raise InputError(
            f"sub-network {name} returned shape {tuple(out.shape)}, expected the active part's "
            f"shape {tuple(active.shape)} (or a scalar)"
        )
    return out


class _Coupling(InvertibleBlock):
    """Shared structure of eqs. 3 and 4: the sub-networks read only ``I_1``, which the block
    passes unchanged, so ``x_{I1} = y_{I1}`` and the sub-network outputs (:meth:`conditioner`) are
    the same from either side. :meth:`couple` maps the active part given them, both ways; the
    memory-saving backward (:mod:`lipbound.training.memory`) uses this to invert a block and
    rebuild its graph with one evaluation of the sub-networks."""

    def __init__(self, partition: Partition, t: nn.Module | float) -> None:
        super().__init__()
        if not isinstance(partition, Partition):
            raise InputTypeError(f"partition must be a Partition, got {type(partition).__name__}")
        self.partition = partition
        self.t = as_subnet(t, "t")

    def conditioner(self, z: Tensor) -> tuple[Tensor, ...]:
        """The sub-network outputs from the conditioning part ``z_{I1}`` of ``z`` (``x`` or
        ``y``)."""
        raise NotImplementedError

    def couple(self, z2: Tensor, cond: tuple[Tensor, ...], inverse: bool,
               with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        """The active part mapped forward (``x_{I2} -> y_{I2}``) or back, given
        ``cond = conditioner(.)``, and the log-determinant of that direction."""
        raise NotImplementedError

    def _map(self, z: Tensor, inverse: bool, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        z2, ld = self.couple(self.partition.active(z), self.conditioner(z), inverse, with_log_det)
        return self.partition.combine(z, z2), ld

    def _forward(self, x: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        return self._map(x, False, with_log_det)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        return self._map(y, True, with_log_det)


class AdditiveCoupling(_Coupling):
    """Additive coupling, eq. 3: volume preserving, globally bi-Lipschitz (Lemma 5).

    Args:
        partition: the split into ``I_1`` (conditioning) and ``I_2`` (active).
        t: the translation sub-network, or a number for a constant translation.
    """

    def conditioner(self, z: Tensor) -> tuple[Tensor, ...]:
        p = self.partition
        return (_apply(self.t, p.cond(z), p.active(z), "t"),)

    def couple(self, z2: Tensor, cond: tuple[Tensor, ...], inverse: bool,
               with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        (t,) = cond
        return z2 - t if inverse else z2 + t, zeros_log_det(z2) if with_log_det else None


class AffineCoupling(_Coupling):
    """Affine coupling, eq. 4: only locally bi-Lipschitz (Lemma 6, Theorem 2 (ii)).

    Args:
        partition: the split into ``I_1`` (conditioning) and ``I_2`` (active).
        t: the translation sub-network, or a number for a constant.
        s: the raw-scale sub-network ``h = s(x_{I1})``, or a number for a constant.
        scale: the scale function ``g`` (a :class:`ScaleFunction` or a name for
            :func:`~lipbound.blocks.scale.make_scale`); default ``sigmoid(h + 2)``.
    """

    def __init__(self, partition: Partition, t: nn.Module | float, s: nn.Module | float,
                 scale: str | ScaleFunction = "sigmoid") -> None:
        super().__init__(partition, t)
        self.s = as_subnet(s, "s")
        self.scale = make_scale(scale)

    def conditioner(self, z: Tensor) -> tuple[Tensor, ...]:
        """``(h, g(h), t)`` with ``h = s(z_{I1})`` expanded to the active part's shape."""
        p = self.partition
        c, z2 = p.cond(z), p.active(z)
        h = _apply(self.s, c, z2, "s").expand_as(z2)
        return h, self.scale(h), _apply(self.t, c, z2, "t")

    def couple(self, z2: Tensor, cond: tuple[Tensor, ...], inverse: bool,
               with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        h, g, t = cond
        out = (z2 - t) / g if inverse else z2 * g + t
        if not with_log_det:
            return out, None
        ld = self.partition.sum_active(self.scale.log_abs(h))
        return out, -ld if inverse else ld

    @property
    def has_constant_scale(self) -> bool:
        """Whether ``s`` is a constant function (so ``g(s)`` is a constant)."""
        return isinstance(self.s, Constant)
