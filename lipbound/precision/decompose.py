r"""The rounding-versus-instability decomposition (paper section 2; DESIGN.md, "Error
decomposition").

For a model ``F``, inputs ``x`` (cast to the tested dtype first) and a float precision ``p``, with
``F`` and ``F^-1`` the exact maps of the *same* network (the ``p`` parameters, converted exactly):

==================  =========================================================================
``delta``           ``z_p - z``: ``z_p = F_p(x)`` the float forward, ``z = F(x)`` exact
``recon_exact``     ``||x - x_1||`` with ``x_1 = F^-1(z_p)`` exact: forward rounding, amplified
``amplification``   ``||x - x_1|| / ||delta||``, over the samples with ``delta != 0`` (a sample
                    whose float forward is exact has no ratio: it is counted, not used)
``delta2``          ``F_p^-1(z_p) - x_1``: the float inverse's own rounding
``total``           ``||x - F_p^-1(z_p)||`` (the reconstruction error)
``lip_inverse``     ``1 / sigma_min(J_F(x)) = ||J_{F^-1}(z)||_2``, the local ``Lip(F^-1)``
                    (the constant of eq. 2 near ``z``, by eq. 5 applied to ``F^-1``), from
                    the reference Jacobian (small ``d``) or a float64 one
``bound``           ``lip_inverse ||delta|| + ||delta2||``: the paper's (unnumbered) bound of
                    section 2, ``||x - x_d2|| <= Lip(F^-1) ||delta|| + ||delta2||``, with the
                    local constant: ``total <= bound`` to first order in ``delta``
==================  =========================================================================

All norms are per sample (Euclidean, over the flattened sample). Optional terms: the *parameter
rounding* ``||F_64(x) - F(x)||`` (exact maps with float64 master weights against the weights cast
to ``p``) and, for iterative blocks, the *truncation* ``||F_k(x) - F(x)||`` and
``||F_k^-1(z_p) - x_1||`` (the block's own iteration count or ODE steps run exactly, against the
converged map).

**Verdict**, the first that applies:

1. ``wrong in exact arithmetic``: the float error does not shrink with the precision (the same
   run at a second float precision ``q`` has an error within a factor ``sqrt(u_p / u_q)`` of it,
   where rounding would shrink it by ``u_p / u_q``), or the truncation of an iterative inverse
   accounts for most of the error, or the exact inverse misses ``x`` on the exact ``F(x)``
   (``||x - F^-1(F(x))||``, certified from below) by most of the error: a bug, inconsistent
   parameters, an unconverged iteration;
2. ``range``: the float run has NaN or Inf, or exact intermediate values outside the dtype's
   normal range (overflow, underflow), and the run with the same significand and no exponent
   limit (``mp:<bits>``, when run) does not share the failure;
3. ``instability``: rounding amplified, ``amplification >= AMPLIFY`` or ``lip_inverse >= AMPLIFY``
   with a total error above ``AMPLIFY`` units of rounding of the input's scale (a NaN never
   decides: samples without a ratio are left out, and a total error that is not finite without
   a range problem is "instability");
4. ``rounding``: none of the above.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

import reference
from lipbound.adapters import adapt
from lipbound.autodiff import batch_jacobian
from lipbound.blocks import InvertibleBlock

from ..errors import InputError
from .names import Precision, parse_precision
from .run import (
    Run,
    cast_model,
    count_nonfinite,
    exact_difference,
    row_norms,
    run_forward,
    run_inverse,
)

__all__ = ["AMPLIFY", "BlockTrace", "Decomposition", "check_inputs", "decompose",
           "format_decomposition"]

#: Amplification (and local Lip(F^-1)) from which the verdict is "instability".
AMPLIFY = 100.0

VERDICTS = ("wrong in exact arithmetic", "range", "instability", "rounding")


def _worst(v: np.ndarray) -> float:
    """Largest entry, NaN if any is NaN (what the report shows: a NaN error must show)."""
    return float("nan") if np.isnan(v).any() else float(v.max())


def _largest_known(v: np.ndarray | None) -> float | None:
    """Largest entry that is not NaN; ``None`` when there is none (what the verdict uses: a NaN
    decides nothing)."""
    if v is None:
        return None
    known = v[~np.isnan(v)]
    return float(known.max()) if known.size else None


def _at_least(value: float | None, threshold: float) -> bool:
    """``value >= threshold``; ``False`` for a value that is ``None`` or NaN."""
    return value is not None and not math.isnan(value) and value >= threshold


def _g(value: float | None) -> str:
    """A number for a reason line; ``-`` when it was not measured."""
    return "-" if value is None else f"{value:.3g}"


@dataclass
class BlockTrace:
    """Where error enters and grows: the forward error after block ``index`` (against the exact
    forward trace) and the inverse error after its inverse (against the exact inverse of
    ``z_p``), worst sample."""

    index: int
    kind: str
    forward_error: float
    inverse_error: float


@dataclass
class Decomposition:
    """The terms of the decomposition (worst sample; ``per_sample`` has every sample).

    ``amplification`` is the largest ``||x - x_1|| / ||delta||`` over the samples with
    ``delta != 0`` (``amplification_samples`` of them; ``None`` when there is none): a sample whose
    float forward is exact (``delta = 0``, counted in ``exact_forward_samples``) has no ratio.
    """

    precision: str
    reference: str
    emulated: bool
    n_samples: int
    dim: int
    delta: float
    recon_exact: float
    amplification: float | None
    amplification_samples: int
    exact_forward_samples: int
    delta2: float
    total: float
    lip_inverse: float | None
    jacobian_source: str | None
    bound: float | None
    forward_nonfinite: dict[str, int]
    inverse_nonfinite: dict[str, int]
    same_mantissa: dict[str, Any] | None
    comparison: dict[str, Any]
    parameter_rounding: float | None
    truncation: dict[str, float] | None
    verdict: str
    reasons: list[str]
    per_sample: dict[str, list[float]] = field(default_factory=dict)
    trace: list[BlockTrace] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (use :func:`lipbound.jsonio.jsonable`)."""
        return asdict(self)


#: Required accuracy of the exact values, relative to their scale: far below any float error.
EXACT_TOL = 2.0 ** -64

#: The cast copies of each model that the float runs and the oracles use, per dtype, with the
#: model's state when cast (:func:`reference.state_key`). The traced oracle's captured graphs
#: are cached per module object (:func:`reference.trace`), so the same copies in every call
#: and at every precision let one capture serve them all, until the model changes.
_CAST_COPIES: weakref.WeakKeyDictionary[nn.Module, dict[torch.dtype, tuple[Any, nn.Module]]]
_CAST_COPIES = weakref.WeakKeyDictionary()


def _cast(model: InvertibleBlock, dtype: torch.dtype, original: Any) -> InvertibleBlock:
    """``cast_model(model, dtype)``, the same copy again while ``original`` (the model as the
    caller gave it, of which ``model`` is the adapted form) is unchanged."""
    if not isinstance(original, nn.Module):
        return cast_model(model, dtype)
    entries = _CAST_COPIES.setdefault(original, {})
    state = reference.state_key(original)
    hit = entries.get(dtype)
    if hit is None or hit[0] != state:
        hit = entries[dtype] = (state, cast_model(model, dtype))
    return hit[1]


def _exact_inverse(ref: reference.ReferenceModel, z: np.ndarray
                   ) -> tuple[np.ndarray, reference.RTensor | None]:
    """``F^-1(z)`` certified to :data:`EXACT_TOL` (the precision is raised for an
    ill-conditioned inverse); NaN and no exact tensor when ``z`` is not finite."""
    if not np.isfinite(z).all():
        return np.full(z.shape, np.nan), None
    exact = reference.certified_inverse(ref, z, tol=EXACT_TOL).value
    return exact.to_numpy(), exact


def _minus(ref: reference.ReferenceModel, values: np.ndarray,
           exact: reference.RTensor | None, approx: np.ndarray) -> np.ndarray:
    """``values - exact`` in exact arithmetic where possible (see :func:`exact_difference`)."""
    return approx * np.nan if exact is None else exact_difference(ref, values, exact)


def _exact_minus(ref: reference.ReferenceModel, a: reference.RTensor, b: reference.RTensor
                 ) -> np.ndarray:
    """``a - b`` of two reference results, in the reference arithmetic (no float64 rounding of
    either before the subtraction), as float64."""
    with ref.backend.active():
        return (a - b).to_numpy()


def _check_arguments(precision: str, reference_name: str, x: Tensor) -> Precision:
    """The parsed float precision; :class:`InputError` for a precision that is not a float name,
    a reference that is not ``mp``/``arb``, or ``x`` that is not a finite batch."""
    p = parse_precision(precision, kinds=("torch",), argument="precision")
    parse_precision(reference_name, kinds=("mp", "arb"), argument="reference_name")
    check_inputs(x, "x")
    return p


def check_inputs(x: Tensor, name: str) -> None:
    """:class:`InputError` naming ``name`` unless ``x`` is a finite, non-empty batch ``(B, ...)``
    (the message lists the first rows with NaN or Inf)."""
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise InputError(f"{name} must be a batched torch tensor (B, ...)")
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise InputError(f"{name} must hold at least one sample of at least one value, got "
                         f"shape {tuple(x.shape)}")
    bad = torch.nonzero(~torch.isfinite(x.detach().reshape(x.shape[0], -1)).all(dim=1))
    if len(bad):
        rows = [int(r) for r in bad[:10, 0]]
        raise InputError(f"{name} must be finite: rows {rows}{' ...' if len(bad) > 10 else ''} "
                         "hold NaN or Inf")


@dataclass
class _Runs:
    """The float and exact runs every term is measured from (section 2's notation)."""

    p: Precision
    model_p: InvertibleBlock  #: the network at ``p`` (its parameters cast to ``p``)
    x64: np.ndarray  #: ``x`` cast to ``p``, as float64 (exactly)
    fwd: Run  #: ``z_p = F_p(x)``
    inv: Run  #: ``F_p^-1(z_p)``
    ref: reference.ReferenceModel  #: the exact maps of ``model_p``
    exact_fwd: list[reference.RTensor]  #: the exact forward trace, ``F(x)`` last
    z: reference.RTensor  #: ``z = F(x)``, certified to :data:`EXACT_TOL`
    x1: np.ndarray  #: ``x_1 = F^-1(z_p)`` as float64 (NaN for a non-finite ``z_p``)
    x1_exact: reference.RTensor | None  #: ``x_1`` itself

    @property
    def scale(self) -> float:
        """The magnitude of the input and the exact output (floor ``1e-300``)."""
        return max(float(np.abs(self.x64).max()), float(np.abs(self.z.to_numpy()).max()),
                   1e-300)


def _runs(model: InvertibleBlock, x: Tensor, p: Precision, reference_name: str, trace: bool,
          original: Any = None) -> _Runs:
    """``z_p = F_p(x)`` and ``F_p^-1(z_p)`` in float (traced per block when ``trace``), and the
    exact ``z = F(x)`` (with its per-block trace) and ``x_1 = F^-1(z_p)``."""
    model_p = _cast(model, p.dtype, original)
    xp = x.detach().to(p.dtype)
    x64 = xp.double().numpy()
    fwd = run_forward(model_p, xp, p.name, trace=trace, copy_model=False)
    inv = run_inverse(model_p, torch.from_numpy(fwd.values).to(p.dtype), p.name, trace=trace,
                      copy_model=False)
    ref = reference.oracle(model_p, reference_name)
    exact_fwd = ref.trace_forward(x64)
    z = reference.certified_forward(ref, x64, tol=EXACT_TOL).value
    x1, x1_exact = _exact_inverse(ref, fwd.values)
    return _Runs(p, model_p, x64, fwd, inv, ref, exact_fwd, z, x1, x1_exact)


@dataclass
class _Terms:
    """Per-sample norms of section 2's error terms."""

    delta: np.ndarray  #: ``||z_p - z||``, forward rounding
    recon_exact: np.ndarray  #: ``||x - x_1||``, forward rounding through the exact inverse
    delta2: np.ndarray  #: ``||F_p^-1(z_p) - x_1||``, the float inverse's own rounding
    total: np.ndarray  #: ``||x - F_p^-1(z_p)||``, the reconstruction error


def _error_terms(r: _Runs) -> _Terms:
    """``||delta||``, ``||x - x_1||``, ``||delta2||`` and the total, each difference taken in
    the reference arithmetic (see :func:`exact_difference`)."""
    return _Terms(
        delta=row_norms(exact_difference(r.ref, r.fwd.values, r.z)),
        recon_exact=row_norms(_minus(r.ref, r.x64, r.x1_exact, r.x1)),
        delta2=row_norms(_minus(r.ref, r.inv.values, r.x1_exact, r.x1)),
        total=row_norms(exact_difference(r.ref, r.inv.values, r.x64)),
    )


@dataclass
class _Amplification:
    """``||x - x_1|| / ||delta||`` over the samples where it is defined."""

    worst: float | None  #: the largest ratio (``None`` when no sample has one)
    samples: int  #: samples with a ratio (``delta != 0`` and neither term NaN)
    exact_forward: int  #: samples with ``delta = 0``: the float forward is exact


def _amplification(recon_exact: np.ndarray, delta: np.ndarray) -> _Amplification:
    """The amplification of forward rounding by the exact inverse, ``||x - x_1|| / ||delta||``.

    A sample with ``delta = 0`` (its float forward is exact) has no ratio (``0 / 0``): it is
    counted and left out, as is a sample where either term is NaN, so that no NaN reaches the
    verdict."""
    exact = delta == 0
    used = ~exact & ~np.isnan(delta) & ~np.isnan(recon_exact)
    ratios = recon_exact[used] / delta[used]
    return _Amplification(float(ratios.max()) if ratios.size else None, int(used.sum()),
                          int(exact.sum()))


def _lip_inverse(model: InvertibleBlock, ref: reference.ReferenceModel, x: np.ndarray,
                 max_reference_dim: int, max_float_dim: int) -> tuple[np.ndarray | None,
                                                                     str | None]:
    """Per sample ``1 / sigma_min(J_F(x))``, the local ``Lip(F^-1)`` (eq. 5 applied to
    ``F^-1``): from the reference Jacobian up to ``max_reference_dim``, from a float64 one up to
    ``max_float_dim``, else not computed; with its source."""
    d = int(np.prod(x.shape[1:]))
    if d <= max_reference_dim:
        lips = []
        for b in range(x.shape[0]):
            sv = reference.singular_values(ref, x[b:b + 1], rtol=1e-6)
            lips.append(float(1 / sv.sigma_min) if sv.sigma_min != 0 else math.inf)
        return np.array(lips), ref.backend.name
    if d <= max_float_dim:
        m64 = cast_model(model, torch.float64)
        jac = batch_jacobian(m64, torch.from_numpy(x)).detach()
        smin = torch.linalg.svdvals(jac)[:, -1].numpy()
        with np.errstate(divide="ignore"):
            return 1.0 / smin, "float64"
    return None, None


def _bound(lip: np.ndarray | None, t: _Terms) -> np.ndarray | None:
    """Per sample ``Lip(F^-1) ||delta|| + ||delta2||`` with the local ``Lip(F^-1)``: section 2's
    bound on the total (to first order in ``delta``)."""
    return None if lip is None else lip * t.delta + t.delta2


def _block_trace(r: _Runs) -> tuple[list[BlockTrace], list[np.ndarray]]:
    """Per leaf block, the worst forward error against the exact forward trace and the worst
    inverse error against the exact inverse trace of ``z_p``; and that exact inverse trace
    (empty when ``z_p`` is not finite)."""
    finite = np.isfinite(r.fwd.values).all()
    inv_exact = r.ref.trace_inverse(r.fwd.values)[1:] if finite else []
    names = [b.name for b in r.ref.leaves()]
    rows = []
    for i, name in enumerate(names):
        # differences in the reference arithmetic: a float64 subtraction of the rounded
        # exact values would show 0 for an error below half an ulp
        f_err = _worst(row_norms(exact_difference(r.ref, r.fwd.trace[i], r.exact_fwd[i + 1])))
        j = len(names) - 1 - i  # the inverse trace runs the last block first
        i_err = (_worst(row_norms(exact_difference(r.ref, r.inv.trace[j], inv_exact[j])))
                 if inv_exact else math.nan)
        rows.append(BlockTrace(i, name, f_err, i_err))
    return rows, [t.to_numpy() for t in inv_exact]


def _same_significand(r: _Runs) -> dict[str, Any]:
    """The round trip at ``mp:<bits>`` with ``p``'s significand and no exponent range: its
    ``||delta||`` and total, against the exact values."""
    mp_name = r.p.same_mantissa_reference()
    ref_mp = (r.ref.with_backend(mp_name) if isinstance(r.ref, reference.TracedModel)
              else reference.compile(r.model_p, mp_name))  # traced: the same captured graphs
    z_mp = ref_mp.forward(r.x64)
    rec_mp = ref_mp.inverse(z_mp).to_numpy()
    return {"precision": mp_name,
            "total": _worst(row_norms(exact_difference(r.ref, rec_mp, r.x64))),
            "delta": _worst(row_norms(exact_difference(r.ref, z_mp.to_numpy(), r.z)))}


def _errors_at(model: InvertibleBlock, x: np.ndarray, name: str, reference_name: str,
               original: Any = None) -> tuple[float, float]:
    """Forward and inverse float error at precision ``name`` against the exact maps of the
    ``name``-cast network, each on the same (cast) input (worst sample)."""
    p = parse_precision(name)
    xp = torch.from_numpy(x).to(p.dtype)
    fwd = run_forward(model, xp, name)
    ref = reference.oracle(_cast(model, p.dtype, original), reference_name)
    z = reference.certified_forward(ref, xp, tol=EXACT_TOL).value
    zp = torch.from_numpy(fwd.values).to(p.dtype)
    inv = run_inverse(model, zp, name)
    x1_np, x1 = _exact_inverse(ref, zp.double().numpy())
    return _worst(row_norms(exact_difference(ref, fwd.values, z))), _worst(
        row_norms(_minus(ref, inv.values, x1, x1_np)))


def _not_shrinking(err_low: float, err_high: float, u_low: float, u_high: float,
                   floor: float) -> bool:
    """Whether an error pair is not rounding-like: the higher precision's error is not smaller
    by at least ``sqrt(u_low / u_high)`` (rounding shrinks it by ``u_low / u_high``)."""
    if not (math.isfinite(err_low) and math.isfinite(err_high)) or err_low <= floor:
        return False
    return err_high * math.sqrt(u_low / u_high) > err_low


def _second_precision(model: InvertibleBlock, r: _Runs, t: _Terms, reference_name: str,
                      original: Any = None) -> tuple[dict[str, Any], list[str]]:
    """``||delta||`` and ``||delta2||`` at a second float precision ``q`` (float64, or float32
    when ``p`` is float64), and the reasons for "wrong in exact arithmetic" they give: rounding
    errors shrink with the unit roundoff, bugs do not."""
    p = r.p
    other = "float64" if p.name != "float64" else "float32"
    u_p, u_o = p.unit_roundoff, parse_precision(other).unit_roundoff
    f_o, i_o = _errors_at(model, r.x64, other, reference_name, original)
    low, high = ((p.name, other) if u_p > u_o else (other, p.name))
    errs = {p.name: (_worst(t.delta), _worst(t.delta2)), other: (f_o, i_o)}
    u = {p.name: u_p, other: u_o}
    reasons = []
    for k, label in ((0, "forward"), (1, "inverse")):
        if _not_shrinking(errs[low][k], errs[high][k], u[low], u[high], 64 * u[low] * r.scale):
            reasons.append(f"the {label} error does not shrink with the precision: "
                           f"{errs[low][k]:.3g} at {low}, {errs[high][k]:.3g} at {high}")
    return {"precision": other, "delta": f_o, "delta2": i_o}, reasons


def _truncation(r: _Runs, reference_name: str, total: float
                ) -> tuple[dict[str, float] | None, list[str]]:
    """For iterative blocks, ``||F_k(x) - F(x)||`` and ``||F_k^-1(z_p) - x_1||`` (the float
    run's iteration counts run exactly, against the converged maps), and the reason for "wrong
    in exact arithmetic" when they account for most of the ``total``; ``None`` otherwise."""
    if not r.ref.root.iterative:
        return None, []
    ref_k = reference.oracle(r.model_p, reference_name, iterations="as_float")
    t_fwd = _worst(row_norms(_exact_minus(r.ref, ref_k.forward(r.x64), r.z)))
    t_inv = (_worst(row_norms(_exact_minus(r.ref, ref_k.inverse(r.fwd.values), r.x1_exact)))
             if r.x1_exact is not None else math.nan)
    reasons = []
    known = [v for v in (t_fwd, t_inv) if not math.isnan(v)]
    if known and not math.isnan(total) and max(known) > 0.5 * total:
        reasons.append(f"truncation of the iterative blocks (forward {t_fwd:.3g}, inverse "
                       f"{t_inv:.3g}) accounts for most of the total {total:.3g}")
    return {"forward": t_fwd, "inverse": t_inv}, reasons


def _inconsistent_inverse(r: _Runs, total: float) -> list[str]:
    """The reason for "wrong in exact arithmetic" when the exact inverse does not invert the
    exact forward: ``||x - F^-1(F(x))||``, both maps exact (a certified lower bound: each entry's
    distance minus its radius), accounts for most of the ``total`` (a model whose stored inverse
    is not the inverse of its stored forward, such as inconsistent parameters)."""
    if not math.isfinite(total) or total == 0:
        return []
    back = reference.certified_inverse(r.ref, r.z, tol=EXACT_TOL).value
    with r.ref.backend.active():
        diff = back - r.ref.convert(r.x64)
    low = np.maximum(np.abs(diff.to_numpy()) - diff.radii(), 0.0)
    gap = _worst(row_norms(low))
    if gap > 0.5 * total:
        return [f"the exact inverse does not invert the exact forward: ||x - F^-1(F(x))|| >= "
                f"{gap:.3g} in exact arithmetic, most of the total {total:.3g}"]
    return []


def _parameter_rounding(model: InvertibleBlock, r: _Runs, reference_name: str,
                        original: Any = None) -> float:
    """``||F_64(x) - F(x)||``: the exact maps with float64 master weights against the weights
    cast to ``p`` (worst sample)."""
    ref64 = reference.oracle(_cast(model, torch.float64, original), reference_name)
    return _worst(row_norms(_exact_minus(r.ref, ref64.forward(r.x64), r.z)))


def _range_problem(fwd: Run, inv: Run, exact_trace: list[np.ndarray], dtype: torch.dtype
                   ) -> list[str]:
    """The NaN and Inf of the float runs, and the exact intermediate values outside the dtype's
    normal range (overflow, underflow)."""
    info = torch.finfo(dtype)
    found = []
    for what, run in (("forward", fwd), ("inverse", inv)):
        values = np.concatenate([t.ravel() for t in run.trace] + [run.values.ravel()])
        n_nan, n_inf = count_nonfinite(values)
        if n_nan or n_inf:
            found.append(f"the {what} float run has {n_nan} NaN and {n_inf} Inf")
    exact = np.abs(np.concatenate([t.ravel() for t in exact_trace]))
    n_over = int((exact > info.max).sum())
    n_under = int(((exact > 0) & (exact < info.tiny)).sum())
    if n_over:
        found.append(f"{n_over} exact intermediate values exceed the {dtype} maximum {info.max:g}")
    if n_under:
        found.append(f"{n_under} exact intermediate values are below the smallest normal "
                     f"{info.tiny:g} of {dtype} (underflow)")
    return found


def _verdict(r: _Runs, reasons: list[str], exact_trace: list[np.ndarray],
             sm: dict[str, Any] | None, amp: _Amplification, lip: np.ndarray | None,
             total: float) -> tuple[str, list[str]]:
    """The verdict of the module docstring, the first that applies, with its reasons.

    ``reasons`` already holds those for "wrong in exact arithmetic" (second precision,
    truncation). A NaN never decides a comparison: the amplification leaves out the samples
    without a ratio, the local ``Lip(F^-1)`` its NaN samples, and a total error that is not
    finite without a range problem is "instability" (rounding alone, at the same significand
    without an exponent range, breaks the reconstruction)."""
    reasons = list(reasons)
    if reasons:
        return "wrong in exact arithmetic", reasons
    found = _range_problem(r.fwd, r.inv, exact_trace, r.p.dtype)
    shared = sm is not None and not (math.isfinite(sm["total"]) and (
        not math.isfinite(total) or sm["total"] < 0.1 * total))
    if found and not shared:
        reasons = found
        if sm is not None:
            reasons.append(f"{sm['precision']} (same significand, no exponent range) "
                           f"reconstructs to {sm['total']:.3g}")
        return "range", reasons
    if found:
        reasons.append("; ".join(found) + f", but {sm['precision']} fails alike (total "
                       f"{sm['total']:.3g}): not a range problem")
    if amp.exact_forward:
        reasons.append(f"{amp.exact_forward} samples with an exact float forward (delta = 0) "
                       "have no amplification and are left out of it")
    lip_w = _largest_known(lip)
    if not math.isfinite(total):
        reasons.append(f"the reconstruction error is {total:.3g} without a range problem")
        return "instability", reasons
    if _at_least(amp.worst, AMPLIFY) or (
            _at_least(lip_w, AMPLIFY) and total > AMPLIFY * r.p.unit_roundoff * r.scale):
        reasons.append(f"rounding is amplified: ||x - x1|| / ||delta|| = {_g(amp.worst)}, "
                       f"local Lip(F^-1) = {_g(lip_w)}")
        return "instability", reasons
    reasons.append(f"amplification {_g(amp.worst)} and local Lip(F^-1) {_g(lip_w)} are below "
                   f"{AMPLIFY:g}")
    return "rounding", reasons


def decompose(model: Any, x: Tensor, precision: str = "float32",
              reference_name: str = "arb:256", parameter_rounding: bool = False,
              same_mantissa: bool | None = None, max_reference_jacobian_dim: int = 64,
              max_float_jacobian_dim: int = 4096, trace: bool = True,
              progress: bool = False) -> Decomposition:
    """The decomposition of the reconstruction error of ``model`` on ``x`` at ``precision``.

    The steps, each a function of this module: the float and exact runs (:func:`_runs`: ``z_p``,
    ``z``, ``x_1``), the error terms (:func:`_error_terms`: ``delta``, ``x - x_1``, ``delta2``,
    total), :func:`_amplification`, :func:`_lip_inverse` (``1 / sigma_min``), :func:`_bound`,
    :func:`_block_trace`, :func:`_same_significand`, :func:`_second_precision`,
    :func:`_truncation`, :func:`_parameter_rounding` and :func:`_verdict`.

    The oracle is the hand-written reference where every block type has one, else the traced
    one (:func:`reference.oracle`): models of other libraries are adapted
    (:func:`lipbound.adapters.adapt`) and their captured ATen graphs run in the reference
    arithmetic. The cast copies of ``model`` that the runs and the oracles use are kept per
    model and dtype while the model is unchanged (:func:`reference.state_key`), so the traced
    oracle's captured graphs serve later calls and the second precision: a repeated call
    captures nothing.

    Args:
        model: an invertible block, or any model :func:`lipbound.adapters.adapt` accepts (not
            modified).
        x: a finite batch of inputs, cast to ``precision`` first.
        precision: ``float16``, ``bfloat16``, ``float32`` or ``float64``.
        reference_name: the oracle, ``mp:<bits>`` or ``arb:<bits>``.
        parameter_rounding: also measure float64 master weights against the cast ones.
        same_mantissa: also run ``mp:<bits>`` with ``precision``'s significand (no exponent
            range); ``None`` runs it for models with at most 20,000 parameters.
        max_reference_jacobian_dim: per-sample dimension up to which ``sigma_min`` comes from
            the reference Jacobian; above it (up to ``max_float_jacobian_dim``) from float64.
        trace: compute the per-block trace.
        progress: show a progress bar over the stages (each runs the reference once or more,
            minutes for a large image model).
    """
    p = _check_arguments(precision, reference_name, x)
    original, model = model, adapt(model)
    bar = tqdm(total=8, desc=f"verify {p.name}", disable=not progress, unit="stage")

    def stage(name: str) -> None:
        """One stage done; ``name`` is the next."""
        bar.update()
        bar.set_postfix_str(name)

    bar.set_postfix_str("float and exact runs")
    r = _runs(model, x, p, reference_name, trace, original)
    terms = _error_terms(r)
    amp = _amplification(terms.recon_exact, terms.delta)

    stage("Jacobian")
    lip, jac_source = _lip_inverse(r.model_p, r.ref, r.x64, max_reference_jacobian_dim,
                                   max_float_jacobian_dim)
    bound = _bound(lip, terms)
    per_sample = {"delta": terms.delta, "recon_exact": terms.recon_exact,
                  "delta2": terms.delta2, "total": terms.total}
    if lip is not None:
        per_sample |= {"lip_inverse": lip, "bound": bound}

    stage("per-block trace")
    block_rows, inv_exact = _block_trace(r) if trace else ([], [])
    exact_trace = [t.to_numpy() for t in r.exact_fwd] + inv_exact

    stage("same significand")
    n_params = sum(t.numel() for t in model.parameters())
    run_sm = same_mantissa or (same_mantissa is None and n_params <= 20_000)
    sm = _same_significand(r) if run_sm else None

    stage("second float precision")
    comparison, reasons = _second_precision(model, r, terms, reference_name, original)

    stage("truncation")
    total = _worst(terms.total)
    truncation, why = _truncation(r, reference_name, total)
    why = why + _inconsistent_inverse(r, total)

    stage("parameter rounding")
    param_round = (_parameter_rounding(model, r, reference_name, original) if parameter_rounding
                   else None)

    stage("verdict")
    verdict, reasons = _verdict(r, reasons + why, exact_trace, sm, amp, lip, total)

    stage("done")
    bar.close()
    return Decomposition(
        precision=p.name, reference=reference_name,
        emulated=r.fwd.emulated or r.inv.emulated, n_samples=int(r.x64.shape[0]),
        dim=int(np.prod(r.x64.shape[1:])), delta=_worst(terms.delta),
        recon_exact=_worst(terms.recon_exact), amplification=amp.worst,
        amplification_samples=amp.samples, exact_forward_samples=amp.exact_forward,
        delta2=_worst(terms.delta2), total=total,
        lip_inverse=None if lip is None else _worst(lip), jacobian_source=jac_source,
        bound=None if bound is None else _worst(bound),
        forward_nonfinite={"nan": r.fwd.n_nan, "inf": r.fwd.n_inf},
        inverse_nonfinite={"nan": r.inv.n_nan, "inf": r.inv.n_inf}, same_mantissa=sm,
        comparison=comparison, parameter_rounding=param_round, truncation=truncation,
        verdict=verdict, reasons=reasons,
        per_sample={k: [float(v) for v in vals] for k, vals in per_sample.items()},
        trace=block_rows,
    )


def format_decomposition(d: Decomposition) -> str:
    """The decomposition as a text table."""
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3e}"

    lip_source = f"1/sigma_min ({d.jacobian_source or 'not computed'})"
    lines = [
        f"precision {d.precision}{' (emulated)' if d.emulated else ''} against {d.reference}, "
        f"{d.n_samples} samples of dimension {d.dim} (worst sample per row)",
        f"  ||delta||        forward rounding            {f(d.delta)}",
        f"  ||x - x1||       ... through exact F^-1      {f(d.recon_exact)}",
        f"  amplification    ||x - x1|| / ||delta||      {f(d.amplification)}"
        f"  ({d.amplification_samples} of {d.n_samples} samples; "
        f"{d.exact_forward_samples} with delta = 0 left out)",
        f"  ||delta2||       inverse rounding            {f(d.delta2)}",
        f"  total            ||x - F_p^-1(F_p(x))||      {f(d.total)}",
        f"  Lip(F^-1) local  {lip_source:<27} {f(d.lip_inverse)}",
        f"  bound            Lip ||delta|| + ||delta2||  {f(d.bound)}",
        f"  non-finite       forward NaN {d.forward_nonfinite['nan']} Inf "
        f"{d.forward_nonfinite['inf']}, inverse NaN {d.inverse_nonfinite['nan']} Inf "
        f"{d.inverse_nonfinite['inf']}",
    ]
    if d.same_mantissa is not None:
        lines.append(f"  {d.same_mantissa['precision']:<16} same significand, no range: total "
                     f"{f(d.same_mantissa['total'])}")
    lines.append(f"  {d.comparison['precision']:<16} ||delta|| {f(d.comparison['delta'])}, "
                 f"||delta2|| {f(d.comparison['delta2'])}")
    if d.parameter_rounding is not None:
        lines.append(f"  parameter rounding ||F_64(x) - F(x)||     {f(d.parameter_rounding)}")
    if d.truncation is not None:
        lines.append(f"  truncation       forward {f(d.truncation['forward'])}, inverse "
                     f"{f(d.truncation['inverse'])}")
    if d.trace:
        width = max([20] + [len(r.kind) for r in d.trace])  # long adapted names keep the columns
        lines.append(f"  per block:  #  {'kind':<{width}}  forward err  inverse err")
        lines += [f"           {r.index:>3}  {r.kind:<{width}}  {f(r.forward_error)}    "
                  f"{f(r.inverse_error)}" for r in d.trace]
    lines.append(f"verdict: {d.verdict}")
    lines += [f"  - {r}" for r in d.reasons]
    return "\n".join(lines)
