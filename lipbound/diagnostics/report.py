"""One report of every diagnostic that applies to a model and a dataset (``lipbound diagnose``).

* reconstruction statistics in both directions at each precision: ``x -> z -> x`` on the data and
  ``z -> x -> z`` on as many standard normal latent points (the base distribution, as when
  sampling), with the first failing block per sample (:mod:`.reconstruction`);
* the Jacobian spectrum of ``F`` and ``F^-1`` on the first samples, in float64 (:mod:`.spectrum`);
* the invertibility attack on the first samples (:mod:`.attack`);
* the convergence of iterative inverses during the float64 round trip;
* on request (``reference``), the oracle's rounding-versus-instability decomposition of section 2
  (:func:`lipbound.precision.decompose.decompose`) on the first samples at each precision, where
  every block has a reference implementation. Models of other libraries (the adapters of
  :mod:`lipbound.adapters`) have none: the report says so and skips it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

import reference

from ..adapters.base import ForeignBlock
from ..blocks import InvertibleBlock
from ..errors import InputError
from ..jsonio import jsonable
from ..precision.decompose import Decomposition, decompose, format_decomposition
from ..precision.names import parse_precision
from .attack import AttackResult, invertibility_attack
from .reconstruction import DIRECTIONS, ReconstructionStats, reconstruction_stats
from .spectrum import Spectrum, spectrum
from .views import at_precision, leaf_blocks

__all__ = [
    "AttackSettings",
    "Diagnosis",
    "OracleSettings",
    "diagnose",
    "diagnosis_to_json",
    "format_diagnosis",
]


@dataclass(frozen=True)
class AttackSettings:
    """Settings of the invertibility attack in :func:`diagnose` (paper defaults; appendix E);
    see :func:`~.attack.invertibility_attack` for ``bits``, ``levels`` and ``radius``."""

    samples: int = 8
    iterations: int = 200
    step: float = 5e-4
    bits: int = 8
    radius: float | None = None
    precision: str | None = None
    levels: int | None = None


@dataclass(frozen=True)
class OracleSettings:
    """The oracle decomposition in :func:`diagnose`: the reference (``arb:<bits>`` or
    ``mp:<bits>``) and how many of the first samples it runs on (its cost grows fast with the
    dimension: 0.15 s for 4 samples at ``d = 2``, 35 s per precision at ``d = 64``)."""

    reference: str = "arb:256"
    samples: int = 4


@dataclass
class Diagnosis:
    """The result of :func:`diagnose`."""

    model: str
    block_kinds: list[str]
    sample_shape: tuple[int, ...]
    n_samples: int
    reconstruction: list[ReconstructionStats]
    spectrum: Spectrum | None = None
    attack: AttackResult | None = None
    convergence: list[dict] = field(default_factory=list)
    decomposition: list[Decomposition] = field(default_factory=list)
    oracle_note: str | None = None


def _latent_samples(model: InvertibleBlock, x: Tensor, seed: int) -> Tensor:
    with torch.no_grad():
        shape = at_precision(model, "float64")(x[:1].to(torch.float64)).shape[1:]
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((x.shape[0], *shape), generator=gen, dtype=torch.float64)


def _convergence(model: InvertibleBlock, x: Tensor) -> list[dict]:
    run = at_precision(model, "float64")
    if not run.is_iterative:
        return []
    with torch.no_grad():
        run.inverse(run(x.to(torch.float64)))
    return [{"block": i, "kind": type(b).__name__, **jsonable(b.last_convergence)}
            for i, b in enumerate(leaf_blocks(run)) if b.last_convergence is not None]


def _oracle(model: InvertibleBlock, x: Tensor, precisions: tuple[str, ...],
            settings: OracleSettings) -> tuple[list[Decomposition], str | None]:
    """The decompositions at every precision, or none and the reason there is no reference."""
    foreign = sorted({type(b.module).__name__ for b in leaf_blocks(model)
                      if isinstance(b, ForeignBlock)})
    if foreign:
        return [], (f"no oracle decomposition: models of other libraries have no reference "
                    f"implementation (adapted modules: {', '.join(foreign)})")
    try:
        return [decompose(model, x[:settings.samples], p, settings.reference)
                for p in precisions], None
    except reference.UnknownLayerError as err:
        return [], f"no oracle decomposition: {err}"


def diagnose(model: InvertibleBlock, x: Tensor, precisions: tuple[str, ...] = ("float32",
             "float64"), directions: tuple[str, ...] = DIRECTIONS, tol: float | None = None,
             spectrum_samples: int = 8, spectrum_method: str = "auto", max_full_dim: int = 2048,
             attack: AttackSettings | None = AttackSettings(), seed: int = 0,
             progress: bool = False, oracle: OracleSettings | None = None) -> Diagnosis:
    """Run the diagnostics of this package on ``model`` and the dataset ``x``.

    Args:
        model: an invertible model (adapt other libraries' models with
            :func:`lipbound.adapters.adapt`).
        x: the data, batch first.
        precisions: float precisions of the reconstruction statistics.
        directions: round-trip directions (:data:`~.reconstruction.DIRECTIONS`).
        tol: failure tolerance of the per-block trace; ``None``: ``sqrt(eps)`` of each precision.
        spectrum_samples: samples whose Jacobian spectrum is computed (0: none).
        spectrum_method, max_full_dim: see :func:`~.spectrum.spectrum`.
        attack: attack settings, or ``None`` for no attack; its precision defaults to the first
            of ``precisions``.
        seed: seed of the latent samples and of the attack's random directions.
        progress: tqdm bars.
        oracle: settings of the oracle decomposition, or ``None`` (default) for none.
    """
    if not precisions:
        raise InputError("precisions must name at least one precision")
    if spectrum_samples < 0:
        raise InputError(f"spectrum_samples must be >= 0, got {spectrum_samples}")
    if attack is not None and attack.samples < 0:
        raise InputError(f"attack.samples must be >= 0, got {attack.samples}")
    if oracle is not None and oracle.samples < 1:
        raise InputError(f"oracle.samples must be >= 1, got {oracle.samples}")
    if oracle is not None and parse_precision(oracle.reference).is_float:
        raise InputError(f"oracle.reference must be 'arb:<bits>' or 'mp:<bits>', got "
                         f"{oracle.reference!r}")
    for d in directions:
        if d not in DIRECTIONS:
            raise InputError(f"directions must be among {list(DIRECTIONS)}, got {d!r}")
    inputs = {"x->z->x": x}
    if "z->x->z" in directions:
        inputs["z->x->z"] = _latent_samples(model, x, seed)
    stats = [reconstruction_stats(model, inputs[d], p, d, tol, progress=progress)
             for p in precisions for d in directions]
    result = Diagnosis(type(model).__name__, [type(b).__name__ for b in leaf_blocks(model)],
                       tuple(x.shape[1:]), x.shape[0], stats)
    if spectrum_samples > 0:
        result.spectrum = spectrum(model, x[:spectrum_samples], spectrum_method, max_full_dim,
                                   progress=progress)
    if attack is not None and attack.samples > 0:
        result.attack = invertibility_attack(
            model, x[:attack.samples], attack.radius, attack.bits, attack.step, attack.iterations,
            attack.precision or precisions[0], tol, progress, attack.levels, seed)
    result.convergence = _convergence(model, x)
    if oracle is not None:
        result.decomposition, result.oracle_note = _oracle(model, x, precisions, oracle)
    return result


def diagnosis_to_json(d: Diagnosis) -> dict:
    """The report as a JSON-ready dictionary (non-finite numbers as ``"inf"``/``"nan"``)."""
    out: dict = {"model": d.model, "blocks": d.block_kinds, "sample_shape": list(d.sample_shape),
                 "n_samples": d.n_samples, "reconstruction": []}
    for s in d.reconstruction:
        out["reconstruction"].append({
            "direction": s.direction, "precision": s.precision, "tol": s.tol, **s.summary(),
            "first_failure_counts": s.failure_counts(),
            "first_failing_block": s.first_failing_block,
            "errors": s.errors, "relative_errors": s.relative_errors,
            "first_failure": [None if f is None else {"block": f.block, "kind": f.kind,
                                                      "stage": f.stage} for f in s.failures],
        })
    if d.spectrum is not None:
        sp = d.spectrum
        out["spectrum"] = {
            "method": sp.method, "sigma_max": sp.sigma_max, "sigma_min": sp.sigma_min,
            "inverse_sigma_max": sp.inverse_sigma_max, "inverse_sigma_min": sp.inverse_sigma_min,
            "condition_forward": sp.condition_forward, "condition_inverse": sp.condition_inverse,
            "rel_accuracy": sp.rel_accuracy,
        }
    if d.attack is not None:
        a = d.attack
        out["attack"] = {
            "precision": a.precision, "radius": a.radius, "step": a.step,
            "iterations": a.iterations, "tol": a.tol, "initial_errors": a.initial_errors,
            "errors": a.errors, "flagged": a.flagged, "n_flagged": int(a.flagged.sum()),
            "n_flagged_at_start": int(a.flagged_at_start.sum()),
            "worst_index": a.worst_index, "worst_error": float(a.errors[a.worst_index]),
            "worst_input": a.x_worst[a.worst_index], "worst_start": a.start[a.worst_index],
        }
    out["convergence"] = d.convergence
    if d.decomposition or d.oracle_note:
        out["oracle"] = {"note": d.oracle_note,
                         "decomposition": [dec.to_dict() for dec in d.decomposition]}
    return jsonable(out)


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3e}"


def _tensor_range(t: Tensor) -> str:
    finite = t[torch.isfinite(t)]
    bad = t.numel() - finite.numel()
    text = (f"{float(finite.min()):.3e} .. {float(finite.max()):.3e}" if finite.numel()
            else "none finite")
    return text + (f" ({bad} non-finite)" if bad else "")


def format_diagnosis(d: Diagnosis) -> str:
    """The report as plain text."""
    lines = [f"model: {d.model}, {len(d.block_kinds)} leaf blocks, sample shape "
             f"{d.sample_shape}, {d.n_samples} samples", "", "reconstruction (L2 error per "
             "sample; mean/median/max over finite errors; NaN and Inf counted apart)"]
    head = f"  {'direction':<9} {'precision':<9} {'mean':>10} {'median':>10} {'max':>10} " \
           f"{'% Inf':>7} {'% NaN':>7}  first failures (block:stage x samples)"
    lines.append(head)
    for s in d.reconstruction:
        m = s.summary()
        fails = ", ".join(f"{k} ({s.block_kinds[int(k.split(':')[0])]}) x{v}"
                          for k, v in list(s.failure_counts().items())[:3]) or "none"
        lines.append(f"  {s.direction:<9} {s.precision:<9} {_num(m['mean']):>10} "
                     f"{_num(m['median']):>10} {_num(m['max']):>10} {m['pct_inf']:>7.2f} "
                     f"{m['pct_nan']:>7.2f}  {fails}")
    if d.spectrum is not None:
        sp = d.spectrum
        acc = "" if sp.rel_accuracy is None else \
            f", stated relative accuracy <= {_tensor_range(sp.rel_accuracy)}"
        lines += ["", f"Jacobian spectrum (float64, {sp.method}{acc}), "
                      f"{sp.sigma_max.numel()} samples",
                  f"  sigma_max(J_F)       {_tensor_range(sp.sigma_max)}",
                  f"  sigma_min(J_F)       {_tensor_range(sp.sigma_min)}",
                  f"  Lip(F^-1) local      {_tensor_range(sp.inverse_sigma_max)}",
                  f"  cond forward         {_tensor_range(sp.condition_forward)}",
                  f"  cond inverse         {_tensor_range(sp.condition_inverse)}"]
    if d.attack is not None:
        a = d.attack
        lines += ["", f"invertibility attack ({a.precision}, L-inf radius {a.radius:.3e}, step "
                      f"{a.step:g}, {a.iterations} iterations): {int(a.flagged.sum())} of "
                      f"{a.flagged.numel()} samples flagged ({int(a.flagged_at_start.sum())} "
                      "at the start points)",
                  f"  error at start       {_tensor_range(a.initial_errors)}",
                  f"  error after attack   {_tensor_range(a.errors)}",
                  f"  worst: sample {a.worst_index}, error {float(a.errors[a.worst_index]):.3e}, "
                  f"max |x' - x_hat| {float((a.x_worst - a.start)[a.worst_index].abs().max()):.3e}"
                  " (the input itself is in the JSON report)"]
    if d.convergence:
        lines += ["", "iterative inverses (float64 round trip)"]
        lines += [f"  block {c['block']} {c['kind']}: converged {c['converged']}, "
                  f"{c['iterations']} iterations, residual {c['residual']}" for c in d.convergence]
    if d.oracle_note:
        lines += ["", d.oracle_note]
    for dec in d.decomposition:
        lines += ["", "oracle decomposition (section 2): " + format_decomposition(dec)]
    return "\n".join(lines)
