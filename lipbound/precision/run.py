"""Running a model at any precision name: torch floats (native or emulated) or the reference.

:func:`run_forward` and :func:`run_inverse` return a :class:`Run`: the result as float64 values
(every float result converts exactly), whether the float run was emulated, NaN and Inf counts,
and for the reference backends the exact result itself. The model is never modified: float runs
use a copy cast to the dtype, in eval mode; ``x`` is cast to the dtype first (so the input's own
rounding is not part of any error measured against the same cast input).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

import reference
from lipbound.blocks import InvertibleBlock
from lipbound.blocks.numerics import row_norms  # the one scaled norm (numpy)

from ..errors import InputError
from .cast import cast_model
from .emulate import RoundEachOp, is_missing_kernel
from .names import Precision, parse_precision

__all__ = ["Run", "cast_model", "count_nonfinite", "exact_difference", "row_norms", "run_forward",
           "run_inverse"]


def count_nonfinite(values: np.ndarray) -> tuple[int, int]:
    """``(number of NaN, number of Inf)``."""
    return int(np.isnan(values).sum()), int(np.isinf(values).sum())


@dataclass
class Run:
    """One run of a model's forward or inverse at a precision.

    Attributes:
        precision: the precision name.
        values: the result as float64 (exact for float runs; midpoints for the reference).
        emulated: whether a float run used :class:`~lipbound.precision.emulate.RoundEachOp`.
        n_nan: NaN entries in ``values``.
        n_inf: Inf entries in ``values``.
        trace: per leaf block, the intermediate results (float64), when asked for.
        exact: the reference result (:class:`reference.RTensor`), reference runs only.
    """

    precision: str
    values: np.ndarray
    emulated: bool = False
    n_nan: int = 0
    n_inf: int = 0
    trace: list[np.ndarray] = field(default_factory=list)
    exact: reference.RTensor | None = None


def _torch_run(model: InvertibleBlock, x: Tensor, inverse: bool, trace: bool
               ) -> tuple[Tensor, list[Tensor]]:
    """The run's output and, when ``trace``, every leaf block's output (the blocks' own trace)."""
    with torch.no_grad():
        if not trace:
            return (model.inverse(x) if inverse else model(x)), []
        steps = (model.trace_inverse(x) if inverse else model.trace_forward(x))[1:]
        return (steps[-1] if steps else x), steps


def _float_run(model: InvertibleBlock, x: Tensor, p: Precision, inverse: bool, trace: bool,
               emulate: bool | None) -> Run:
    dtype = p.dtype
    xp = x.detach().to(dtype)
    emulated = bool(emulate)
    if emulated and dtype not in (torch.float16, torch.bfloat16):
        raise InputError(f"emulate=True applies to float16 and bfloat16, not {p.name}")
    if not emulated:
        try:
            out, steps = _torch_run(model, xp, inverse, trace)
        except (RuntimeError, NotImplementedError) as err:
            if emulate is False or not is_missing_kernel(err):
                raise
            emulated = True
    if emulated:
        with RoundEachOp(dtype):
            out, steps = _torch_run(model, xp, inverse, trace)
    values = out.double().numpy()
    return Run(p.name, values, emulated, *count_nonfinite(values),
               [s.double().numpy() for s in steps])


def _reference_run(ref: reference.ReferenceModel, x: Tensor | reference.RTensor, p: Precision,
                   inverse: bool, trace: bool) -> Run:
    if trace:
        steps = ref.trace_inverse(x) if inverse else ref.trace_forward(x)
        out, steps = steps[-1], steps[1:]
    else:
        out, steps = (ref.inverse(x) if inverse else ref.forward(x)), []
    values = out.to_numpy()
    return Run(p.name, values, False, *count_nonfinite(values), [s.to_numpy() for s in steps],
               exact=out)


def _run(model: InvertibleBlock, x: Tensor, precision: str, inverse: bool, trace: bool,
         emulate: bool | None, ref: reference.ReferenceModel | None, copy_model: bool) -> Run:
    p = parse_precision(precision)
    if p.is_float:
        if not copy_model and any(t.is_floating_point() and t.dtype != p.dtype
                                  for t in list(model.parameters()) + list(model.buffers())):
            raise InputError(f"copy_model=False needs a model already cast to {p.dtype}")
        return _float_run(cast_model(model, p.dtype) if copy_model else model, x, p, inverse,
                          trace, emulate)
    if ref is None or ref.backend.name != p.name:
        ref = reference.compile(model, p.name)
    return _reference_run(ref, x, p, inverse, trace)


def run_forward(model: InvertibleBlock, x: Tensor, precision: str, trace: bool = False,
                emulate: bool | None = None,
                ref: reference.ReferenceModel | None = None, copy_model: bool = True) -> Run:
    """``F(x)`` at ``precision``.

    Args:
        model: the model (not modified; float runs use a cast copy).
        x: the input batch; cast to the float dtype for float runs, converted exactly otherwise.
        precision: a precision name (see :mod:`lipbound.precision.names`).
        trace: also return every leaf block's output.
        emulate: ``None`` (emulate only where a half kernel is missing), ``True`` (always, for
            float16/bfloat16) or ``False`` (never: a missing kernel raises).
        ref: a compiled reference to reuse for ``mp``/``arb`` precisions.
        copy_model: run float precisions on a cast copy (default); ``False`` runs the model
            itself, which must already have the dtype (so iterative blocks record their
            convergence on it).
    """
    return _run(model, x, precision, False, trace, emulate, ref, copy_model)


def run_inverse(model: InvertibleBlock, y: Tensor, precision: str, trace: bool = False,
                emulate: bool | None = None,
                ref: reference.ReferenceModel | None = None, copy_model: bool = True) -> Run:
    """``F^-1(y)`` at ``precision``; arguments as :func:`run_forward`."""
    return _run(model, y, precision, True, trace, emulate, ref, copy_model)


def exact_difference(ref: reference.ReferenceModel, values: np.ndarray,
                     exact: reference.RTensor | np.ndarray) -> np.ndarray:
    """``values - exact`` computed in the reference arithmetic (a float64 subtraction of the
    rounded exact value would lose differences below half an ulp), rounded to float64 at the
    end (a difference beyond float64's range becomes Inf). In rows of ``values`` with NaN or
    Inf, those entries stay as they are (the exact value is finite: Inf minus it is Inf) and
    the finite ones are subtracted in float64."""
    exact_rt = exact if isinstance(exact, reference.RTensor) else ref.convert(exact)
    finite = np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)
    if finite.all():
        with ref.backend.active():
            return (ref.convert(values) - exact_rt).to_numpy()
    with np.errstate(invalid="ignore", over="ignore"):
        out = np.where(np.isfinite(values), values - exact_rt.to_numpy(), values)
    rows = np.nonzero(finite)[0]
    if rows.size:
        sub = exact_rt.take(exact_rt.index_grid()[rows])
        with ref.backend.active():
            out[rows] = (ref.convert(values[rows]) - sub).to_numpy()
    return out
