"""Automatic mixed precision for training: ``torch.autocast`` with bfloat16 or float16.

Under autocast a float32 model runs its matrix products and convolutions in the lower precision
and the rest (sums, exponentials, the loss) in float32; the parameters, their gradients and the
optimizer stay in float32. float16's range ends at 65504, so small gradients underflow: a
:class:`torch.amp.GradScaler` multiplies the loss before the backward, divides the gradients
before the step (before any clipping) and skips a step whose gradients hold Inf or NaN, halving
the scale. bfloat16 has float32's range and needs no scaler.

Memory-saving gradients (:mod:`.memory`) record the autocast state of their forward and
reconstruct and recompute every block under the same one in the backward; their tolerance is
then ``sqrt(eps)`` of the autocast dtype.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from ..errors import InputError

__all__ = ["AMP_DTYPES", "AMP_MODES", "autocast", "check_amp"]

#: ``--amp`` value -> the autocast dtype.
AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: The values of ``--amp`` (``"none"``: no autocast).
AMP_MODES = ("none", *AMP_DTYPES)


def _autocast_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether autocast on ``device`` runs a linear layer in ``dtype`` (torch disables autocast
    with a warning where a device lacks a dtype)."""
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return False
    layer = torch.nn.Linear(2, 2, device=device, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autocast(device.type, dtype=dtype):
                out = layer(torch.ones(1, 2, device=device, dtype=torch.float32))
        except RuntimeError:
            return False
    return out.dtype == dtype


def check_amp(amp: str, device: torch.device, dtype: torch.dtype, option: str = "--amp") -> None:
    """Raise :class:`~lipbound.errors.InputError` naming ``option`` when ``amp`` is not one of
    :data:`AMP_MODES`, the model's ``dtype`` is not float32 (autocast lowers float32 operations
    only), or ``device`` cannot autocast to it."""
    if amp not in AMP_MODES:
        raise InputError(f"{option} must be one of {list(AMP_MODES)}, got {amp!r}")
    if amp == "none":
        return
    if dtype != torch.float32:
        name = str(dtype).removeprefix("torch.")
        raise InputError(f"{option} {amp} needs dtype float32 (autocast runs float32 operations "
                         f"in {amp}; the weights stay float32), got dtype {name}")
    if not _autocast_works(device, AMP_DTYPES[amp]):
        raise InputError(f"{option} {amp}: torch {torch.__version__} cannot autocast to "
                         f"{AMP_DTYPES[amp]} on {device.type}; use {option} "
                         f"{'bf16' if amp == 'fp16' else 'fp16'} or train in float32 "
                         f"({option} none)")


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast region of ``amp`` on ``device`` (a no-op for ``"none"``)."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])
