"""One report of every diagnostic that applies to a model and a dataset (``lipbound diagnose``).

* reconstruction statistics in both directions at each precision: ``x -> z -> x`` on the data and
  ``z -> x -> z`` on as many standard normal latent points (the base distribution, as when
  sampling), with the first failing block per sample (:mod:`.reconstruction`);
* the Jacobian spectrum of ``F`` and ``F^-1`` on the first samples, in float64 (:mod:`.spectrum`);
* the invertibility attack on the first samples (:mod:`.attack`), with the settings it ran
  (samples, steps, step size, radius) in the report;
* the convergence of iterative inverses during the float64 round trip;
* on request (``reference``), the oracle's rounding-versus-instability decomposition of section 2
  (:func:`lipbound.precision.decompose.decompose`) on the first samples at each precision; models
  of other libraries (the adapters of :mod:`lipbound.adapters`) run on the traced oracle
  (:func:`reference.compile_traced`). Where the oracle refuses (an unregistered layer or ATen
  operation, an undecided comparison, a graph it cannot capture) the report says why and skips it.

Data holding NaN or Inf is refused (:class:`~lipbound.errors.InputError`, naming the rows) unless
``allow_nonfinite``; then those samples fail at ``"input"`` and the report lists their rows. Every
stage shows a tqdm bar on stderr when ``progress``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

import reference

from ..blocks import InvertibleBlock, require_block
from ..errors import InputError
from ..jsonio import jsonable
from ..precision.decompose import Decomposition, decompose, format_decomposition
from ..precision.names import parse_precision
from ..shape import check_batch, output_shape
from .attack import AttackResult, invertibility_attack
from .reconstruction import DIRECTIONS, ReconstructionStats, reconstruction_stats
from .spectrum import Spectrum, spectrum
from .views import at_precision, non_finite_rows

__all__ = [
    "ORACLE_REFUSALS",
    "AttackSettings",
    "Diagnosis",
    "OracleSettings",
    "diagnose",
    "diagnosis_to_json",
    "format_diagnosis",
]


@dataclass(frozen=True)
class AttackSettings:
    """Settings of the invertibility attack in :func:`diagnose`: the paper's step ``5e-4`` and
    dequantization cell (appendix E), but 50 iterations (steps) instead of its 200 by default, so
    that a report stays interactive (the attack dominated the run time); see
    :func:`~.attack.invertibility_attack` for ``bits``, ``levels`` and ``radius``."""

    samples: int = 8
    iterations: int = 50
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
    #: rows of the data holding NaN or Inf (diagnosed only with ``allow_nonfinite``)
    non_finite_rows: list[int] = field(default_factory=list)


def nonfinite_data_message(x: Tensor, name: str = "x",
                           remedy: str = "allow_nonfinite=True") -> str | None:
    """``None`` when every sample of ``x`` is finite, else a message that names the rows holding
    NaN and those holding Inf (the first five of each) and ``remedy``."""
    rows = non_finite_rows(x)
    if not rows.numel():
        return None
    flat = x.reshape(x.shape[0], -1)
    parts = []
    for label, test in (("NaN", torch.isnan), ("Inf", torch.isinf)):
        hit = torch.nonzero(test(flat).any(dim=1)).flatten().tolist()
        if hit:
            shown = ", ".join(map(str, hit[:5])) + (", ..." if len(hit) > 5 else "")
            parts.append(f"{label} in row{'s' if len(hit) > 1 else ''} {shown}")
    return (f"{name} holds NaN or Inf in {rows.numel()} of {x.shape[0]} samples "
            f"({'; '.join(parts)}); to diagnose them anyway, pass {remedy}")


def _latent_samples(shape: tuple[int, ...], n: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=gen, dtype=torch.float64)


def _stage(desc: str, progress: bool):
    """A one-step tqdm bar for a stage that has no finer progress of its own."""
    from tqdm import tqdm

    return tqdm(total=1, desc=desc, unit="stage", disable=not progress)


def _convergence(model: InvertibleBlock, x: Tensor, progress: bool) -> list[dict]:
    run = at_precision(model, "float64")
    if not run.is_iterative:
        return []
    with _stage("convergence of iterative inverses (float64)", progress) as bar, torch.no_grad():
        run.inverse(run(x.to(torch.float64)))
        bar.update()
    return [{"block": i, "kind": type(b).__name__, **jsonable(b.last_convergence)}
            for i, b in enumerate(run.flat_blocks()) if b.last_convergence is not None]


#: What the oracle raises when it refuses a model (an unregistered layer or ATen operation, a
#: comparison no precision up to the cap decides, a graph it cannot capture).
ORACLE_REFUSALS = (reference.UnknownLayerError, reference.UnsupportedOpError,
                   reference.UndecidedComparisonError, reference.TraceError)


def _oracle(model: InvertibleBlock, x: Tensor, precisions: tuple[str, ...],
            settings: OracleSettings, progress: bool) -> tuple[list[Decomposition], str | None]:
    """The decompositions at every precision, or none and the reason the oracle gave none.

    :func:`decompose` picks the oracle: the hand-written one for lipbound's blocks, the traced one
    (the captured ATen graphs in ball arithmetic) for models of other libraries. Its refusals (no
    implementation of a layer or an ATen operation, a comparison no precision up to the cap
    decides, a graph that cannot be captured) become the note; no number is guessed."""
    try:
        return [decompose(model, x[:settings.samples], p, settings.reference, progress=progress)
                for p in precisions], None
    except ORACLE_REFUSALS as err:
        return [], f"no oracle decomposition: {err}"


def diagnose(model: InvertibleBlock, x: Tensor, precisions: tuple[str, ...] = ("float32",
             "float64"), directions: tuple[str, ...] = DIRECTIONS, tol: float | None = None,
             spectrum_samples: int = 8, spectrum_method: str = "auto", max_full_dim: int = 2048,
             attack: AttackSettings | None = AttackSettings(), seed: int = 0,
             progress: bool = False, oracle: OracleSettings | None = None,
             allow_nonfinite: bool = False) -> Diagnosis:
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
        progress: a tqdm bar on stderr for every stage.
        oracle: settings of the oracle decomposition, or ``None`` (default) for none.
        allow_nonfinite: diagnose data that holds NaN or Inf (those samples fail at
            ``"input"``) instead of raising :class:`InputError`.
    """
    require_block(model)
    check_batch(x)
    if not precisions:
        raise InputError("precisions must name at least one precision")
    if spectrum_samples < 0:
        raise InputError(f"spectrum_samples must be >= 0, got {spectrum_samples}")
    if attack is not None and attack.samples < 0:
        raise InputError(f"attack.samples must be >= 0, got {attack.samples}")
    if oracle is not None and oracle.samples < 1:
        raise InputError(f"oracle.samples must be >= 1, got {oracle.samples}")
    if oracle is not None:
        parse_precision(oracle.reference, ("mp", "arb"), "oracle.reference")
    for d in directions:
        if d not in DIRECTIONS:
            raise InputError(f"directions must be among {list(DIRECTIONS)}, got {d!r}")
    message = nonfinite_data_message(x)
    if message and not allow_nonfinite:
        raise InputError(message)
    inputs = {"x->z->x": x}
    if "z->x->z" in directions:
        inputs["z->x->z"] = _latent_samples(output_shape(model, x), x.shape[0], seed)
    else:
        output_shape(model, x)
    stats = [reconstruction_stats(model, inputs[d], p, d, tol, progress=progress)
             for p in precisions for d in directions]
    result = Diagnosis(type(model).__name__, [type(b).__name__ for b in model.flat_blocks()],
                       tuple(x.shape[1:]), x.shape[0], stats,
                       non_finite_rows=non_finite_rows(x).tolist())
    if spectrum_samples > 0:
        result.spectrum = spectrum(model, x[:spectrum_samples], spectrum_method, max_full_dim,
                                   progress=progress)
    if attack is not None and attack.samples > 0:
        result.attack = invertibility_attack(
            model, x[:attack.samples], attack.radius, attack.bits, attack.step, attack.iterations,
            attack.precision or precisions[0], tol, progress, attack.levels, seed)
    result.convergence = _convergence(model, x, progress)
    if oracle is not None:
        result.decomposition, result.oracle_note = _oracle(model, x, precisions, oracle, progress)
    return result


def diagnosis_to_json(d: Diagnosis) -> dict:
    """The report as a JSON-ready dictionary (non-finite numbers as ``"inf"``/``"nan"``)."""
    out: dict = {"model": d.model, "blocks": d.block_kinds,
                 "data_shape": [d.n_samples, *d.sample_shape],
                 "sample_shape": list(d.sample_shape), "n_samples": d.n_samples,
                 "non_finite_rows": d.non_finite_rows, "reconstruction": []}
    for s in d.reconstruction:
        counts = s.failure_counts()
        out["reconstruction"].append({
            "direction": s.direction, "precision": s.precision, "tol": s.tol, **s.summary(),
            "first_failure": s.first_failure,
            "first_failure_samples": counts.get(s.first_failure, 0),
            "first_failure_counts": counts,
            "lowest_failing_block": s.lowest_failing_block,
            "errors": s.errors, "relative_errors": s.relative_errors,
            "failure_per_sample": [None if f is None else {"block": f.block, "kind": f.kind,
                                                           "stage": f.stage}
                                   for f in s.failures],
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
            "precision": a.precision, "samples": a.errors.numel(), "iterations": a.iterations,
            "step": a.step, "radius": a.radius, "tol": a.tol, "initial_errors": a.initial_errors,
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


def _kind(s: ReconstructionStats, key: str) -> str:
    """`` (AffineCoupling)`` for the key ``"1:inverse"``; nothing for ``"input"``."""
    block = key.split(":")[0]
    return f" ({s.block_kinds[int(block)]})" if block.isdigit() else ""


def format_diagnosis(d: Diagnosis) -> str:
    """The report as plain text."""
    lines = [f"model: {d.model}, {len(d.block_kinds)} leaf blocks; data shape "
             f"{(d.n_samples, *d.sample_shape)}: {d.n_samples} samples of shape {d.sample_shape}"]
    if d.non_finite_rows:
        rows = ", ".join(map(str, d.non_finite_rows[:5])) + (
            ", ..." if len(d.non_finite_rows) > 5 else "")
        n = len(d.non_finite_rows)
        lines.append(f"the data hold NaN or Inf in {n} sample{'s' if n > 1 else ''} (row"
                     f"{'s' if n > 1 else ''} {rows}): they fail at 'input'")
    lines += ["", "reconstruction (L2 error per sample; mean/median/max over finite errors; NaN "
              "and Inf counted apart)",
              "first failures: where samples first fail, in execution order, the first one first",
              "  (x->z->x: forward 0..L-1, then inverse L-1..0; z->x->z: inverse L-1..0, then "
              "forward 0..L-1)"]
    head = f"  {'direction':<9} {'precision':<9} {'mean':>10} {'median':>10} {'max':>10} " \
           f"{'% Inf':>7} {'% NaN':>7}  first failures (block:stage (kind) x samples)"
    lines.append(head)
    for s in d.reconstruction:
        m = s.summary()
        counts = list(s.failure_counts().items())
        fails = ", ".join(f"{k}{_kind(s, k)} x{v}" for k, v in counts[:3]) or "none"
        if len(counts) > 3:
            fails += f", {len(counts) - 3} more steps (JSON)"
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
        lines += ["", f"invertibility attack ({a.precision}, {a.flagged.numel()} samples, "
                      f"{a.iterations} steps of size {a.step:g}, L-inf radius {a.radius:.3e}): "
                      f"{int(a.flagged.sum())} of {a.flagged.numel()} samples flagged "
                      f"({int(a.flagged_at_start.sum())} at the start points)",
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
