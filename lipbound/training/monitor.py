r"""A stability monitor for any training loop: is the network still numerically invertible?

The paper's warning (section 4.2, appendix G): "none of these failures are immediately apparent
during training" -- the loss looks fine while the inverse explodes. :class:`StabilityMonitor`
measures, every ``every`` steps on one fixed batch,

* the round-trip errors ``||x - F^-1(F(x))||`` on the batch and ``||z - F(F^-1(z))||`` on fixed
  latent points, at the precision the model runs in, NaN and Inf counted apart
  (:func:`lipbound.diagnostics.reconstruction_stats`);
* ``sigma_max``, ``sigma_min`` and the condition number ``sigma_max / sigma_min`` of the Jacobian
  ``J_F(x)`` on the first samples of the batch, and of ``J_{F^-1}(z)`` on the first latent points
  (where sampling a flow fails, section 4.1.2), in float64 (:func:`lipbound.diagnostics.spectrum`:
  a dense SVD for small ``d``, Lanczos matrix-free above). ``1 / sigma_min`` is the local
  Lipschitz constant of ``F^-1`` (Definition 1), which multiplies the forward rounding error in
  the section 2 bound ``||x - x_d2|| <= Lip(F^-1) ||delta|| + ||delta2||``;
* optionally the angle between memory-saving and true gradients (a ``gradient_check`` callable),

and writes each measurement as one JSON line. When the condition number first exceeds a threshold
(default ``0.01 / eps`` of the model's precision: rounding amplified to a 1% relative error by
the bound above), and when a reconstruction or a Jacobian first turns non-finite, it emits a
:class:`StabilityWarning` and logs the event. The condition number often grows for many steps
before anything turns NaN, so its warning comes early; but a few points can turn NaN while the
sampled Jacobians still look benign (in the 2D regression a target's inverse did, at condition
37), which is why both are watched and each warning is logged with its step.

Example::

    monitor = StabilityMonitor(model, x_fixed, every=100, log="stability.jsonl")
    for step, (x, y) in enumerate(loader):
        ...  # forward, backward, optimizer step
        monitor(step)
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor, nn

from ..blocks import require_block
from ..diagnostics import Inverted, reconstruction_stats, spectrum
from ..diagnostics.views import at_precision
from ..errors import InputError, InputTypeError
from ..jsonio import jsonable
from ..precision import TORCH_DTYPES
from .amp import AMP_MODES, autocast
from .memory import MemorySaving

__all__ = ["JsonLinesLog", "StabilityMonitor", "StabilityWarning", "default_cond_threshold"]


class StabilityWarning(UserWarning):
    """The model is becoming numerically non-invertible (condition number or non-finite values)."""


class JsonLinesLog:
    """Append-only JSON-lines file: one strict-JSON object per line (non-finite floats as the
    strings ``"nan"``, ``"inf"``; :func:`lipbound.jsonio.jsonable`).

    :attr:`offset` (bytes written so far) and :meth:`truncate` let a resumed run drop the lines
    written after its checkpoint.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open

    def __call__(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(jsonable(record), allow_nan=False) + "\n")
        self._file.flush()

    @property
    def offset(self) -> int:
        """Bytes in the file."""
        return self._file.tell()

    def truncate(self, offset: int) -> None:
        """Cut the file to its first ``offset`` bytes."""
        self._file.truncate(offset)
        self._file.seek(offset)

    def close(self) -> None:
        self._file.close()


def default_cond_threshold(dtype: torch.dtype) -> float:
    """``0.01 / eps(dtype)``: the condition number at which the first-order rounding bound
    ``cond * eps`` reaches a 1% relative error (float32: 8.4e4, float64: 4.5e13)."""
    return 0.01 / torch.finfo(dtype).eps


def _model_dtype(model: nn.Module, x: Tensor) -> torch.dtype:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return x.dtype


def _finite_or_nan(values: Tensor, reduce: Callable[[Tensor], Tensor]) -> float:
    finite = values[torch.isfinite(values)]
    return float(reduce(finite)) if finite.numel() else math.nan


class StabilityMonitor:
    """Measure the numerical invertibility of ``model`` every ``every`` steps (module docstring).

    Args:
        model: the invertible network (a lipbound block or anything adapted to one); a
            :func:`~lipbound.training.memory_saving` view is measured through its model.
        x: the fixed batch of network inputs (kept as a detached copy).
        every: measure when ``step % every == 0``.
        latent: fixed latent points for the ``z -> x -> z`` round trip; ``None`` draws standard
            normal points of the output's shape (seeded by ``seed``), the base distribution of a
            flow. Give the targets for a regression.
        spectrum_samples: the first samples of ``x`` whose Jacobian spectrum is computed.
        method: ``"auto"`` (dense SVD up to ``max_full_dim`` dimensions, matrix-free above),
            ``"full"`` or ``"matrix_free"``.
        max_full_dim: the ``"auto"`` threshold.
        cond_threshold: warn when the (largest per-sample) condition number exceeds this;
            ``None``: :func:`default_cond_threshold` of the model's dtype.
        gradient_check: ``None``, or a function of no arguments returning a dict of gradient
            agreement figures, logged under ``"gradient"``; for example
            ``lambda: gradient_agreement(model, loss_fn, [batch]).summary()`` (angle in degrees
            and relative norm difference between memory-saving and true gradients).
        log: where each record goes: a path (appended JSON lines), a callable taking the record,
            or ``None`` (kept in :attr:`history` only).
        seed: seed of the default latent points.
        amp: ``"none"``, ``"bf16"`` or ``"fp16"``: the automatic mixed precision the model is
            trained under; the round trips are then measured under the same autocast.

    Each record holds ``step``, ``precision`` (the dtype the model ran in, where the round trips
    are measured), ``amp`` (its autocast, ``"none"`` without), ``spectrum_precision`` (always
    ``"float64"``), ``spectrum_method``, ``reconstruction`` (per direction: counts of finite,
    Inf, NaN errors, mean, median, max of the finite ones), ``sigma_max`` (largest),
    ``sigma_min`` (smallest), ``condition`` (largest) and ``condition_median`` of ``J_F(x)``
    over the spectrum samples with a finite Jacobian, ``n_nonfinite_jacobian``, the same
    prefixed ``latent_`` for ``J_{F^-1}(z)`` on the first latent points, and ``gradient`` when
    a ``gradient_check`` is given.
    """

    def __init__(self, model: nn.Module, x: Tensor, every: int = 100,
                 latent: Tensor | None = None, spectrum_samples: int = 4, method: str = "auto",
                 max_full_dim: int = 2048, cond_threshold: float | None = None,
                 gradient_check: Callable[[], dict[str, Any]] | None = None,
                 log: str | Path | Callable[[dict[str, Any]], None] | None = None,
                 seed: int = 0, amp: str = "none") -> None:
        if isinstance(model, MemorySaving):
            model = model.model
        require_block(model)
        if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0:
            raise InputError(f"x must be a non-empty batch (B, ...) tensor, got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        if int(every) < 1:
            raise InputError(f"every must be >= 1, got {every}")
        if int(spectrum_samples) < 0:
            raise InputError(f"spectrum_samples must be >= 0, got {spectrum_samples}")
        if method not in ("auto", "full", "matrix_free"):
            raise InputError(f"method must be 'auto', 'full' or 'matrix_free', got {method!r}")
        if cond_threshold is not None and not cond_threshold > 0:
            raise InputError(f"cond_threshold must be > 0, got {cond_threshold}")
        if gradient_check is not None and not callable(gradient_check):
            raise InputTypeError("gradient_check must be callable or None")
        if amp not in AMP_MODES:
            raise InputError(f"amp must be one of {list(AMP_MODES)}, got {amp!r}")
        self.amp = amp
        self.model, self.x = model, x.detach().clone()
        self.every, self.spectrum_samples = int(every), int(spectrum_samples)
        self.method, self.max_full_dim, self.seed = method, int(max_full_dim), int(seed)
        self.gradient_check = gradient_check
        dtype = _model_dtype(model, x)
        names = {dt: name for name, dt in TORCH_DTYPES.items()}
        if dtype not in names:
            raise InputTypeError(f"model and x must be floating point ({sorted(TORCH_DTYPES)}), "
                                 f"got {dtype}")
        self.precision = names[dtype]
        self.cond_threshold = (default_cond_threshold(dtype)
                               if cond_threshold is None else float(cond_threshold))
        self.latent = None if latent is None else latent.detach().clone()
        self._log = JsonLinesLog(log) if isinstance(log, (str, Path)) else log
        self.history: list[dict[str, Any]] = []
        self._alarms = {"condition": False, "non_finite": False}

    def _latent(self) -> Tensor:
        if self.latent is None:
            with torch.no_grad():  # on an evaluation copy: no ActNorm initialisation here
                shape = at_precision(self.model, self.precision)(self.x[:1]).shape[1:]
            gen = torch.Generator().manual_seed(self.seed)
            z = torch.randn((self.x.shape[0], *shape), generator=gen, dtype=torch.float64)
            self.latent = z.to(device=self.x.device, dtype=self.x.dtype)
        return self.latent

    def __call__(self, step: int) -> dict[str, Any] | None:
        """Measure and log when ``step % every == 0``; return the record (else ``None``)."""
        return self.measure(step) if step % self.every == 0 else None

    def measure(self, step: int) -> dict[str, Any]:
        """Measure now, log the record, warn on a threshold crossing, and return the record."""
        latent = self._latent()
        with autocast(self.amp, self.x.device):
            recon = {
                "x->z->x": reconstruction_stats(self.model, self.x, self.precision, "x->z->x"),
                "z->x->z": reconstruction_stats(self.model, latent, self.precision, "z->x->z"),
            }
        record: dict[str, Any] = {
            "kind": "monitor", "step": int(step), "precision": self.precision, "amp": self.amp,
            "spectrum_precision": "float64",
            "reconstruction": {k: v.summary() for k, v in recon.items()},
        }
        record.update(self._spectrum_figures())
        if self.gradient_check is not None:
            record["gradient"] = self.gradient_check()
        self._emit(record)
        for event in self._alarm_events(record):
            self._emit(event)
        return record

    def _spectrum_figures(self) -> dict[str, Any]:
        """Worst-case figures of ``J_F(x)`` on the batch and, prefixed ``latent_``, of
        ``J_{F^-1}(z)`` on the latent points (where sampling a flow can fail, section 4.1.2)."""
        if self.spectrum_samples == 0:
            return {}
        out: dict[str, Any] = {}
        for prefix, model, v in (("", self.model, self.x), ("latent_", Inverted(self.model),
                                                            self._latent())):
            spec = spectrum(model, v[:self.spectrum_samples], self.method, self.max_full_dim)
            cond = spec.condition_forward
            bad = ~(torch.isfinite(spec.sigma_max) & torch.isfinite(spec.sigma_min))
            out.update({
                f"{prefix}spectrum_method": spec.method,
                f"{prefix}sigma_max": _finite_or_nan(spec.sigma_max, torch.max),
                f"{prefix}sigma_min": _finite_or_nan(spec.sigma_min, torch.min),
                f"{prefix}condition": _finite_or_nan(cond, torch.max),
                f"{prefix}condition_median": _finite_or_nan(cond, torch.median),
                f"{prefix}n_nonfinite_jacobian": int(bad.sum()),
            })
        return out

    def _alarm_events(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        events = []
        step = record["step"]
        conds = {where: record.get(key, math.nan) for where, key in
                 (("the batch", "condition"), ("the latent points", "latent_condition"))}
        over = {w: c for w, c in conds.items() if math.isfinite(c) and c > self.cond_threshold}
        if over and not self._alarms["condition"]:
            where, cond = max(over.items(), key=lambda kv: kv[1])
            msg = (f"step {step}: condition number {cond:.3g} of the Jacobian at {where} exceeds "
                   f"{self.cond_threshold:.3g} ({self.precision}): the inverse amplifies rounding "
                   "errors by up to that factor; consider the FD or NF regularizer")
            events.append({"kind": "warning", "event": "condition_threshold", "step": step,
                           "condition": cond, "threshold": self.cond_threshold, "message": msg})
        self._alarms["condition"] = bool(over)
        n_jac = record.get("n_nonfinite_jacobian", 0) + record.get("latent_n_nonfinite_jacobian", 0)
        n_bad = n_jac + sum(r["n_inf"] + r["n_nan"] for r in record["reconstruction"].values())
        if n_bad and not self._alarms["non_finite"]:
            counts = ", ".join(f"{d}: {r['n_nan']} NaN, {r['n_inf']} Inf"
                               for d, r in record["reconstruction"].items())
            msg = (f"step {step}: non-finite values in the round trips ({counts}) or "
                   f"{n_jac} non-finite Jacobians ({self.precision}): the model is numerically "
                   "non-invertible")
            events.append({"kind": "warning", "event": "non_finite", "step": step,
                           "message": msg})
        self._alarms["non_finite"] = bool(n_bad)
        for e in events:
            warnings.warn(e["message"], StabilityWarning, stacklevel=4)
        return events

    def _emit(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self._log is not None:
            self._log(record)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs for the same warnings: which alarms are raised."""
        return {"alarms": dict(self._alarms)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._alarms.update(state["alarms"])
