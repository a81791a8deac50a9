"""The decomposition of section 2 over a dataset, one sample at a time: serially, on local
processes or on a Dask cluster (:func:`lipbound.parallel.map_samples`), with a resumable
JSON-lines results file (``lipbound verify`` and ``lipbound diagnose --reference`` with
``--out``, ``--workers`` or ``--scheduler``).

:class:`OracleSample` is the per-sample function every engine calls: :func:`.decompose` of the
single sample ``x[i:i+1]`` at each precision. Its line in the results file is ``{"sample": i,
"results": [D_1, ...]}``, one decomposition dictionary (``Decomposition.to_dict()`` without the
``per_sample`` lists, which for one sample repeat the worst-sample numbers) per precision.

:func:`merge_decompositions` makes the summary over all samples from those lines alone (so a
resumed run gives the summary of an uninterrupted one), in the form of one
:class:`.Decomposition`: every error term, ``lip_inverse``, ``bound``, the second precision's
errors, the same-significand run, the truncation and the per-block trace are the worst over the
samples (NaN if any sample has NaN), the amplification is the largest ratio over the samples
that have one, counts are summed, ``per_sample`` lists every sample's numbers in sample order,
and the verdict is the first of :data:`.VERDICTS` that any sample has, with the number of
samples of each verdict and the reasons of the first sample that has it.

Each sample's verdict is decided on that sample alone, so the summary can differ from
``lipbound verify`` without these options, which decides one verdict from the worst numbers over
the whole batch (e.g. the second precision's worst error may come from another sample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..parallel import map_samples
from .decompose import VERDICTS, BlockTrace, Decomposition, decompose

__all__ = ["OracleSample", "decompose_samples", "decomposition_from_dict",
           "merge_decompositions"]


@dataclass(frozen=True)
class OracleSample:
    """The per-sample function: :func:`.decompose` of ``x_i`` at each of ``precisions``
    against ``reference`` (a picklable object, so that workers can run it)."""

    precisions: tuple[str, ...]
    reference: str
    parameter_rounding: bool = False
    trace: bool = True

    def __call__(self, model: nn.Module, x: Tensor, index: int) -> dict[str, Any]:
        results = []
        for p in self.precisions:
            d = decompose(model, x, p, self.reference, parameter_rounding=self.parameter_rounding,
                          trace=self.trace).to_dict()
            del d["per_sample"]
            results.append(d)
        return {"sample": index, "results": results}

    def settings(self) -> dict[str, Any]:
        """What the results depend on besides the model and the inputs (the file's
        fingerprint)."""
        return {"precisions": list(self.precisions), "reference": self.reference,
                "parameter_rounding": self.parameter_rounding, "trace": self.trace}


def _float(v: Any) -> Any:
    """A number read back from JSON (``"nan"``, ``"inf"``, ``"-inf"`` are floats again)."""
    return float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v


def _floats(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats(v) for v in value]
    return _float(value)


def decomposition_from_dict(d: dict[str, Any]) -> Decomposition:
    """A :class:`.Decomposition` from its JSON dictionary (non-finite numbers as strings)."""
    values = _floats({f.name: d.get(f.name) for f in fields(Decomposition)})
    values["trace"] = [BlockTrace(**t) for t in values["trace"] or []]
    values["per_sample"] = values["per_sample"] or {}
    return Decomposition(**values)


def _worst(values: list[float | None]) -> float | None:
    """The largest value, NaN if any is NaN; ``None`` when every value is ``None``."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    return math.nan if any(math.isnan(v) for v in known) else max(known)


def _worst_of(parts: list[dict[str, Any] | None], keys: tuple[str, ...]
              ) -> dict[str, Any] | None:
    """Per key, the worst over the dictionaries (the other keys from the first); ``None`` when
    every part is ``None``."""
    present = [p for p in parts if p is not None]
    if not present:
        return None
    return {**present[0], **{k: _worst([p[k] for p in present]) for k in keys}}


def merge_decompositions(parts: list[Decomposition], samples: list[int]) -> Decomposition:
    """The summary of single-sample decompositions ``parts`` of samples ``samples`` (same order;
    see the module for how each term is combined)."""
    if not parts or len(parts) != len(samples):
        raise ValueError("merge_decompositions needs one decomposition per sample, at least one")
    first = parts[0]
    counts = {v: sum(p.verdict == v for p in parts) for v in VERDICTS}
    verdict = next(v for v in VERDICTS if counts[v])
    worst_sample = next(i for i, p in zip(samples, parts) if p.verdict == verdict)
    why = next(p.reasons for p in parts if p.verdict == verdict)
    reasons = (["; ".join(f"{c} of {len(parts)} samples: {v}" for v, c in counts.items() if c)]
               + [f"sample {worst_sample}: {r}" for r in why])
    amplifications = [p.amplification for p in parts if p.amplification is not None]
    trace = [BlockTrace(b.index, b.kind, _worst([p.trace[j].forward_error for p in parts]),
                        _worst([p.trace[j].inverse_error for p in parts]))
             for j, b in enumerate(first.trace)]
    terms = ("delta", "recon_exact", "delta2", "total", "lip_inverse", "bound")
    per_sample = {k: [getattr(p, k) for p in parts] for k in terms
                  if getattr(first, k) is not None}
    return Decomposition(
        precision=first.precision, reference=first.reference,
        emulated=any(p.emulated for p in parts), n_samples=sum(p.n_samples for p in parts),
        dim=first.dim,
        **{k: _worst([getattr(p, k) for p in parts]) for k in terms},
        amplification=max(amplifications) if amplifications else None,
        amplification_samples=sum(p.amplification_samples for p in parts),
        exact_forward_samples=sum(p.exact_forward_samples for p in parts),
        jacobian_source=first.jacobian_source,
        forward_nonfinite={k: sum(p.forward_nonfinite[k] for p in parts) for k in ("nan", "inf")},
        inverse_nonfinite={k: sum(p.inverse_nonfinite[k] for p in parts) for k in ("nan", "inf")},
        same_mantissa=_worst_of([p.same_mantissa for p in parts], ("total", "delta")),
        comparison=_worst_of([p.comparison for p in parts], ("delta", "delta2")),
        parameter_rounding=_worst([p.parameter_rounding for p in parts]),
        truncation=_worst_of([p.truncation for p in parts], ("forward", "inverse")),
        verdict=verdict, reasons=reasons, per_sample=per_sample, trace=trace)


def decompose_samples(model: nn.Module, x: Tensor, task: OracleSample, *,
                      workers: int | None = None, scheduler: str | None = None,
                      out: str | Path | None = None, info: dict[str, Any] | None = None,
                      progress: bool = False, connect_timeout: float = 10.0
                      ) -> list[Decomposition]:
    """:class:`OracleSample` over every sample of ``x`` (see
    :func:`lipbound.parallel.map_samples` for the engines and the results file ``out``); the
    summary (:func:`merge_decompositions`) at each of ``task.precisions``, in their order."""
    lines = map_samples(task, model, x, workers=workers, scheduler=scheduler, out=out,
                        settings=task.settings(), info=info, progress=progress,
                        desc=f"oracle ({task.reference})", connect_timeout=connect_timeout)
    samples = [line["sample"] for line in lines]
    return [merge_decompositions([decomposition_from_dict(line["results"][k]) for line in lines],
                                 samples)
            for k in range(len(task.precisions))]

