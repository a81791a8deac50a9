r"""The rounding-versus-instability decomposition (paper section 2; DESIGN.md, "Error
decomposition").

For a model ``F``, inputs ``x`` (cast to the tested dtype first) and a float precision ``p``, with
``F`` and ``F^-1`` the exact maps of the *same* network (the ``p`` parameters, converted exactly):

==================  =========================================================================
``delta``           ``z_p - z``: ``z_p = F_p(x)`` the float forward, ``z = F(x)`` exact
``recon_exact``     ``||x - x_1||`` with ``x_1 = F^-1(z_p)`` exact: forward rounding, amplified
``amplification``   ``||x - x_1|| / ||delta||``
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
   accounts for most of the error: a bug, inconsistent parameters, an unconverged iteration;
2. ``range``: the float run has NaN or Inf, or exact intermediate values outside the dtype's
   normal range (overflow, underflow), and the run with the same significand and no exponent
   limit (``mp:<bits>``, when run) does not share the failure;
3. ``instability``: rounding amplified, ``amplification >= AMPLIFY`` or ``lip_inverse >= AMPLIFY``
   with a total error above ``AMPLIFY`` units of rounding of the input's scale;
4. ``rounding``: none of the above.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

import reference
from lipbound.autodiff import batch_jacobian
from lipbound.blocks import InvertibleBlock

from ..errors import InputError
from .names import parse_precision
from .run import (
    Run,
    cast_model,
    count_nonfinite,
    exact_difference,
    row_norms,
    run_forward,
    run_inverse,
)

__all__ = ["AMPLIFY", "BlockTrace", "Decomposition", "decompose", "format_decomposition"]

#: Amplification (and local Lip(F^-1)) from which the verdict is "instability".
AMPLIFY = 100.0

VERDICTS = ("wrong in exact arithmetic", "range", "instability", "rounding")


def _worst(v: np.ndarray) -> float:
    """Largest entry, NaN if any is NaN."""
    return float("nan") if np.isnan(v).any() else float(v.max())


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
    """The terms of the decomposition (worst sample; ``per_sample`` has every sample)."""

    precision: str
    reference: str
    emulated: bool
    n_samples: int
    dim: int
    delta: float
    recon_exact: float
    amplification: float
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


def _lip_inverse(model: InvertibleBlock, ref: reference.ReferenceModel, x: np.ndarray,
                 max_reference_dim: int, max_float_dim: int) -> tuple[np.ndarray | None,
                                                                     str | None]:
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


def _errors_at(model: InvertibleBlock, x: np.ndarray, name: str, reference_name: str
               ) -> tuple[float, float]:
    """Forward and inverse float error at precision ``name`` against the exact maps of the
    ``name``-cast network, each on the same (cast) input (worst sample)."""
    p = parse_precision(name)
    xp = torch.from_numpy(x).to(p.dtype)
    fwd = run_forward(model, xp, name)
    ref = reference.compile(cast_model(model, p.dtype), reference_name)
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


def _range_problem(fwd: Run, inv: Run, exact_trace: list[np.ndarray], dtype: torch.dtype
                   ) -> list[str]:
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


def decompose(model: InvertibleBlock, x: Tensor, precision: str = "float32",
              reference_name: str = "arb:256", parameter_rounding: bool = False,
              same_mantissa: bool | None = None, max_reference_jacobian_dim: int = 64,
              max_float_jacobian_dim: int = 4096, trace: bool = True,
              progress: bool = False) -> Decomposition:
    """The decomposition of the reconstruction error of ``model`` on ``x`` at ``precision``.

    Args:
        model: an invertible block (not modified).
        x: a batch of inputs, cast to ``precision`` first.
        precision: ``float16``, ``bfloat16``, ``float32`` or ``float64``.
        reference_name: the oracle, ``arb:<bits>`` or ``mp:<bits>``.
        parameter_rounding: also measure float64 master weights against the cast ones.
        same_mantissa: also run ``mp:<bits>`` with ``precision``'s significand (no exponent
            range); ``None`` runs it for models with at most 20,000 parameters.
        max_reference_jacobian_dim: per-sample dimension up to which ``sigma_min`` comes from
            the reference Jacobian; above it (up to ``max_float_jacobian_dim``) from float64.
        trace: compute the per-block trace.
        progress: show a progress bar over the stages (each runs the reference once or more,
            minutes for a large image model).
    """
    p = parse_precision(precision)
    if not p.is_float:
        raise InputError(f"precision must be a float name (float16, bfloat16, float32, float64), "
                         f"got {precision!r}")
    q = parse_precision(reference_name)
    if q.is_float:
        raise InputError(f"reference_name must be 'arb:<bits>' or 'mp:<bits>', got "
                         f"{reference_name!r}")
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise InputError("x must be a batched torch tensor (B, ...)")
    model_p = cast_model(model, p.dtype)
    xp = x.detach().to(p.dtype)
    x64 = xp.double().numpy()
    reasons: list[str] = []
    bar = tqdm(total=8, desc=f"verify {p.name}", disable=not progress, unit="stage")

    def stage(name: str) -> None:
        """One stage done; ``name`` is the next."""
        bar.update()
        bar.set_postfix_str(name)

    bar.set_postfix_str("float and exact runs")

    fwd = run_forward(model_p, xp, p.name, trace=trace, copy_model=False)
    zp_t = torch.from_numpy(fwd.values).to(p.dtype)
    inv = run_inverse(model_p, zp_t, p.name, trace=trace, copy_model=False)
    ref = reference.compile(model_p, reference_name)
    exact_fwd = ref.trace_forward(x64)
    z_rt = reference.certified_forward(ref, x64, tol=EXACT_TOL).value
    z = z_rt.to_numpy()
    x1, x1_rt = _exact_inverse(ref, fwd.values)

    delta = row_norms(exact_difference(ref, fwd.values, z_rt))
    recon_exact = row_norms(_minus(ref, x64, x1_rt, x1))
    with np.errstate(divide="ignore", invalid="ignore"):
        amplification = recon_exact / delta
    delta2 = row_norms(_minus(ref, inv.values, x1_rt, x1))
    total = row_norms(exact_difference(ref, inv.values, x64))

    stage("Jacobian")
    lip, jac_source = _lip_inverse(model_p, ref, x64, max_reference_jacobian_dim,
                                   max_float_jacobian_dim)
    bound = None if lip is None else lip * delta + delta2

    per_sample = {"delta": delta, "recon_exact": recon_exact, "delta2": delta2, "total": total}
    if lip is not None:
        per_sample |= {"lip_inverse": lip, "bound": bound}

    stage("per-block trace")
    block_rows: list[BlockTrace] = []
    exact_trace = [t.to_numpy() for t in exact_fwd]
    if trace:
        inv_exact = (ref.trace_inverse(fwd.values)[1:] if np.isfinite(fwd.values).all() else [])
        names = [b.name for b in ref.leaves()]
        for i, name in enumerate(names):
            # differences in the reference arithmetic: a float64 subtraction of the rounded
            # exact values would show 0 for an error below half an ulp
            f_err = _worst(row_norms(exact_difference(ref, fwd.trace[i], exact_fwd[i + 1])))
            j = len(names) - 1 - i  # the inverse trace runs the last block first
            i_err = (_worst(row_norms(exact_difference(ref, inv.trace[j], inv_exact[j])))
                     if inv_exact else math.nan)
            block_rows.append(BlockTrace(i, name, f_err, i_err))
        exact_trace += [t.to_numpy() for t in inv_exact]

    stage("same significand")
    # the same significand without an exponent range
    n_params = sum(t.numel() for t in model.parameters())
    sm = None
    if same_mantissa or (same_mantissa is None and n_params <= 20_000):
        mp_name = p.same_mantissa_reference()
        ref_mp = reference.compile(model_p, mp_name)
        z_mp = ref_mp.forward(x64)
        rec_mp = ref_mp.inverse(z_mp).to_numpy()
        sm = {"precision": mp_name, "total": _worst(row_norms(exact_difference(ref, rec_mp, x64))),
              "delta": _worst(row_norms(exact_difference(ref, z_mp.to_numpy(), z_rt)))}

    stage("second float precision")
    # a second float precision: rounding errors shrink with the unit roundoff, bugs do not
    other = "float64" if p.name != "float64" else "float32"
    u_p, u_o = p.unit_roundoff, parse_precision(other).unit_roundoff
    f_o, i_o = _errors_at(model, x64, other, reference_name)
    comparison = {"precision": other, "delta": f_o, "delta2": i_o}
    scale = max(float(np.abs(x64).max()), float(np.abs(z).max()), 1e-300)
    low, high = ((p.name, other) if u_p > u_o else (other, p.name))
    errs = {p.name: (_worst(delta), _worst(delta2)), other: (f_o, i_o)}
    u = {p.name: u_p, other: u_o}
    for k, label in ((0, "forward"), (1, "inverse")):
        if _not_shrinking(errs[low][k], errs[high][k], u[low], u[high], 64 * u[low] * scale):
            reasons.append(f"the {label} error does not shrink with the precision: "
                           f"{errs[low][k]:.3g} at {low}, {errs[high][k]:.3g} at {high}")

    stage("truncation")
    truncation = None
    if ref.root.iterative:
        ref_k = reference.compile(model_p, reference_name, iterations="as_float")
        t_fwd = _worst(row_norms(_exact_minus(ref, ref_k.forward(x64), z_rt)))
        t_inv = (_worst(row_norms(_exact_minus(ref, ref_k.inverse(fwd.values), x1_rt)))
                 if x1_rt is not None else math.nan)
        truncation = {"forward": t_fwd, "inverse": t_inv}
        if max(t_fwd, t_inv) > 0.5 * _worst(total):
            reasons.append(f"truncation of the iterative blocks (forward {t_fwd:.3g}, inverse "
                           f"{t_inv:.3g}) accounts for most of the total {_worst(total):.3g}")

    stage("parameter rounding")
    param_round = None
    if parameter_rounding:
        ref64 = reference.compile(cast_model(model, torch.float64), reference_name)
        param_round = _worst(row_norms(_exact_minus(ref, ref64.forward(x64), z_rt)))

    stage("verdict")
    verdict = "wrong in exact arithmetic" if reasons else ""
    tot = _worst(total)
    if not verdict:
        found = _range_problem(fwd, inv, exact_trace, p.dtype)
        shared = sm is not None and not (math.isfinite(sm["total"]) and (
            not math.isfinite(tot) or sm["total"] < 0.1 * tot))
        if found and not shared:
            verdict, reasons = "range", found
            if sm is not None:
                reasons.append(f"{sm['precision']} (same significand, no exponent range) "
                               f"reconstructs to {sm['total']:.3g}")
        elif found:
            reasons.append("; ".join(found) + f", but {sm['precision']} fails alike (total "
                           f"{sm['total']:.3g}): not a range problem")
    if not verdict:
        amp = _worst(amplification)
        lip_w = _worst(lip) if lip is not None else 0.0
        if amp >= AMPLIFY or (
                lip_w >= AMPLIFY and not tot <= AMPLIFY * u_p * scale):
            verdict = "instability"
            reasons.append(f"rounding is amplified: ||x - x1|| / ||delta|| = {amp:.3g}, "
                           f"local Lip(F^-1) = {lip_w:.3g}")
        else:
            verdict = "rounding"
            reasons.append(f"amplification {amp:.3g} and local Lip(F^-1) {lip_w:.3g} are below "
                           f"{AMPLIFY:g}")

    stage("done")
    bar.close()
    return Decomposition(
        precision=p.name, reference=reference_name, emulated=fwd.emulated or inv.emulated,
        n_samples=int(x64.shape[0]), dim=int(np.prod(x64.shape[1:])), delta=_worst(delta),
        recon_exact=_worst(recon_exact), amplification=_worst(amplification),
        delta2=_worst(delta2), total=_worst(total),
        lip_inverse=None if lip is None else _worst(lip), jacobian_source=jac_source,
        bound=None if bound is None else _worst(bound),
        forward_nonfinite={"nan": fwd.n_nan, "inf": fwd.n_inf},
        inverse_nonfinite={"nan": inv.n_nan, "inf": inv.n_inf}, same_mantissa=sm,
        comparison=comparison, parameter_rounding=param_round, truncation=truncation,
        verdict=verdict, reasons=reasons,
        per_sample={k: [float(v) for v in vals] for k, vals in per_sample.items()},
        trace=block_rows,
    )


def format_decomposition(d: Decomposition) -> str:
    """The decomposition as a text table."""
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3e}"

    lines = [
        f"precision {d.precision}{' (emulated)' if d.emulated else ''} against {d.reference}, "
        f"{d.n_samples} samples of dimension {d.dim} (worst sample per row)",
        f"  ||delta||        forward rounding            {f(d.delta)}",
        f"  ||x - x1||       ... through exact F^-1      {f(d.recon_exact)}",
        f"  amplification    ||x - x1|| / ||delta||      {f(d.amplification)}",
        f"  ||delta2||       inverse rounding            {f(d.delta2)}",
        f"  total            ||x - F_p^-1(F_p(x))||      {f(d.total)}",
        f"  Lip(F^-1) local  1/sigma_min ({d.jacobian_source or 'not computed'})"
        f"{' ' * max(1, 16 - len(d.jacobian_source or 'not computed'))}{f(d.lip_inverse)}",
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
        lines.append("  per block:  #  kind                  forward err  inverse err")
        lines += [f"           {r.index:>3}  {r.kind:<20}  {f(r.forward_error)}    "
                  f"{f(r.inverse_error)}" for r in d.trace]
    lines.append(f"verdict: {d.verdict}")
    lines += [f"  - {r}" for r in d.reasons]
    return "\n".join(lines)
