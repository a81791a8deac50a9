"""What every adapter shares: a foreign module behind the lipbound contract, and sequences of them.

An adapter is an :class:`~lipbound.blocks.InvertibleBlock` whose ``forward`` maps data to latent
(the normalizing direction), whatever the library calls that direction. The foreign module is a
submodule (``self.module``), so parameters are shared, not copied, and ``.to(dtype)`` reaches them.
A model that is a sequence of invertible steps becomes an :class:`AdaptedSequence` of adapted
steps, so the per-block diagnostics see every step.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..autodiff import batch_jacobian
from ..blocks import InvertibleBlock, InvertibleSequential
from ..errors import InputError

__all__ = ["AdaptedSequence", "ForeignBlock", "autograd_log_det", "nested_leaves",
           "per_sample_log_det"]


def per_sample_log_det(log_det: Tensor | float, x: Tensor, source: str) -> Tensor:
    """A library's log-determinant as shape ``(batch,)``: scalars (volume-preserving steps) are
    broadcast; any other shape is an error naming ``source``."""
    if not isinstance(log_det, Tensor):
        return x.new_full((x.shape[0],), float(log_det))
    if log_det.dim() == 0:
        return log_det.to(x.dtype).expand(x.shape[0])
    log_det = log_det.reshape(log_det.shape[0], -1) if log_det.dim() > 1 else log_det
    if log_det.shape[0] != x.shape[0] or (log_det.dim() == 2 and log_det.shape[1] != 1):
        raise InputError(
            f"{source} returned a log-determinant of shape {tuple(log_det.shape)}, expected one "
            f"value per sample ({x.shape[0]},)"
        )
    return log_det.reshape(-1)


def autograd_log_det(fn, x: Tensor, max_dim: int = 4096) -> Tensor:
    """``log|det J_fn(x)|`` per sample from the :mod:`torch.func` Jacobian, for libraries that
    give none; refused above ``max_dim`` per-sample dimensions (cost ``O(d^3)``)."""
    d = x[0].numel()
    if d > max_dim:
        raise InputError(
            f"this model gives no log-determinant and the autograd one is limited to "
            f"{max_dim} dimensions per sample, got {d}"
        )
    return batch_jacobian(fn, x).slogdet().logabsdet


def nested_leaves(module: nn.Module, container: type, children: str) -> list[nn.Module]:
    """The leaves of ``module`` in order, where every ``container`` (a library's composite
    transform) holds its steps in the attribute ``children`` and is expanded, nested ones too."""
    if isinstance(module, container):
        return [leaf for sub in getattr(module, children)
                for leaf in nested_leaves(sub, container, children)]
    return [module]


class ForeignBlock(InvertibleBlock):
    """A module of another library seen as one invertible block.

    Subclasses implement :meth:`_map`: the map (``inverse=False``: data to latent) and its
    log-abs-determinant per sample.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def extra_repr(self) -> str:
        return type(self.module).__name__

    def _map(self, v: Tensor, inverse: bool, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def _forward(self, x: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        return self._map(x, False, with_log_det)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        return self._map(y, True, with_log_det)


class AdaptedSequence(InvertibleSequential):
    """The steps of a foreign sequential model, each adapted; ``source`` names the model's class."""

    def __init__(self, *blocks: InvertibleBlock, source: str) -> None:
        super().__init__(*blocks)
        self.source = source

    def extra_repr(self) -> str:
        return f"source={self.source}"
