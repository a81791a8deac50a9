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
    def __init__(self, partition: Partition, t: nn.Module | float) -> None:
        super().__init__()
        if not isinstance(partition, Partition):
            raise InputTypeError(f"partition must be a Partition, got {type(partition).__name__}")
        self.partition = partition
        self.t = as_subnet(t, "t")


class AdditiveCoupling(_Coupling):
    """Additive coupling, eq. 3: volume preserving, globally bi-Lipschitz (Lemma 5).

    Args:
        partition: the split into ``I_1`` (conditioning) and ``I_2`` (active).
        t: the translation sub-network, or a number for a constant translation.
    """

    def _forward(self, x: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        p = self.partition
        x2 = p.active(x)
        y = p.combine(x, x2 + _apply(self.t, p.cond(x), x2, "t"))
        return y, zeros_log_det(x) if with_log_det else None

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        p = self.partition
        y2 = p.active(y)
        x = p.combine(y, y2 - _apply(self.t, p.cond(y), y2, "t"))
        return x, zeros_log_det(y) if with_log_det else None


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

    def _scale_shift(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        p = self.partition
        c, z2 = p.cond(z), p.active(z)
        h = _apply(self.s, c, z2, "s").expand_as(z2)
        return z2, h, self.scale(h), _apply(self.t, c, z2, "t")

    def _forward(self, x: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        x2, h, g, t = self._scale_shift(x)
        y = self.partition.combine(x, x2 * g + t)
        return y, self.partition.sum_active(self.scale.log_abs(h)) if with_log_det else None

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        y2, h, g, t = self._scale_shift(y)
        x = self.partition.combine(y, (y2 - t) / g)
        return x, -self.partition.sum_active(self.scale.log_abs(h)) if with_log_det else None

    @property
    def has_constant_scale(self) -> bool:
        """Whether ``s`` is a constant function (so ``g(s)`` is a constant)."""
        return isinstance(self.s, Constant)
