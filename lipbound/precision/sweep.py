r"""The Figure 1 depth sweep (end of section 2 of the paper).

Chains of ``L`` couplings on ``R^2`` with ``t(x_1) = 0.123456789`` and ``g(s(x_1)) = 0.1``
(:func:`lipbound.blocks.figure1_chain`), input ``(1, 1)``. For every chain (additive, affine),
depth ``L`` and precision:

* ``recon_error``: ``||x - F_p^-1(F_p(x))||`` of the float run (for ``exact``: the certified
  bound on the arb reconstruction's error);
* ``sigma_min``, ``sigma_max``, ``cond``: the *exact* singular values of the Jacobian of the
  network that precision runs (its parameters, e.g. float16's ``g = 0.0999755859375``), from
  the reference's forward-mode Jacobian; for ``exact`` those of the decimal constants, ``0.1^L``
  and ``1`` (affine), ``1`` and ``1`` (additive);
* ``bound``: ``Lip(F^-1) ||delta|| + ||delta2||`` with ``Lip(F^-1) = 1 / sigma_min``,
  ``delta = F_p(x) - F(x)`` and ``delta2 = F_p^-1(F_p(x)) - F^-1(F_p(x))`` (section 2).

A depth-``L`` chain is the first ``L`` blocks of the depth-``max(depths)`` chain, so one traced
forward pass gives every depth; the inverses of all depths run as one batch, block ``i``'s
inverse applied to the rows of depth ``> i`` (rows do not interact, so each row is exactly the
depth-``L`` chain's own inverse).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import mpmath
import numpy as np
import torch
from tqdm import tqdm

import reference
from lipbound.blocks import figure1_chain
from reference.linalg import to_mpf
from reference.tensor import DualTensor, RTensor

from .names import parse_precision
from .run import cast_model

__all__ = ["PRECISIONS", "SweepRecord", "figure1_sweep", "singular_values_2x2"]

#: The precisions of the default sweep; ``exact`` is the reference with decimal constants.
PRECISIONS = ("float16", "bfloat16", "float32", "float64", "exact")


@dataclass
class SweepRecord:
    """One point of the sweep (see the module docstring)."""

    chain: str
    depth: int
    precision: str
    recon_error: float
    sigma_min: float
    sigma_max: float
    cond: float
    bound: float

    #: The keys of the JSON records (``bound`` is in the CSV and the figure).
    JSON_KEYS = ("chain", "depth", "precision", "recon_error", "sigma_min", "sigma_max", "cond")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json_record(self) -> dict:
        """``{"chain", "depth", "precision", "recon_error", "sigma_min", "sigma_max", "cond"}``."""
        d = asdict(self)
        return {k: d[k] for k in self.JSON_KEYS}


def singular_values_2x2(rows: list[list], backend: reference.Backend) -> tuple[object, object]:
    r"""``(sigma_max, sigma_min)`` of a 2x2 matrix in the backend's arithmetic:
    ``sigma_max = sqrt((f + sqrt(f^2 - 4 det^2)) / 2)`` with ``f = ||J||_F^2``, and
    ``sigma_min = |det| / sigma_max`` (no cancellation)."""
    (a, b), (c, d) = rows
    with backend.active():
        f = a * a + b * b + c * c + d * d
        det = a * d - b * c
        det2 = det * det
        disc = backend.nonnegative(f * f - 4 * det2)  # f^2 >= 4 det^2: clip rounding
        smax = backend.sqrt((f + backend.sqrt(disc)) / 2)
        smin = backend.sqrt(det2) / smax
    return smax, smin


def _all_jacobians(ref: reference.ReferenceModel, x: np.ndarray) -> list[list[list]]:
    """The exact Jacobian after every leaf block (depth 1, 2, ...), by one dual pass."""
    v: DualTensor | RTensor = DualTensor.seed(ref.convert(x))
    out = []
    with ref.backend.active():
        for block in ref.leaves():
            v = block.forward(v)
            out.append(v.jacobian_rows())
    return out


def _exact_singular_values(ref: reference.ReferenceModel, x: np.ndarray, rtol: float,
                           max_prec: int = 1 << 15) -> list[tuple[float, float]]:
    """Certified ``(sigma_max, sigma_min)`` after every block, each to ``rtol`` relative;
    the precision doubles until every depth meets it."""
    current = ref
    while True:
        bk = current.backend
        pairs = [singular_values_2x2(j, bk) for j in _all_jacobians(current, x)]
        ok = all(bk.radius(s) <= rtol * abs(bk.to_float(s)) for pair in pairs for s in pair)
        if ok:
            return [(float(to_mpf(a)), float(to_mpf(b))) for a, b in pairs]
        if 2 * bk.prec > max_prec:
            raise reference.CertificationError(
                f"Figure 1 singular values not certified to {rtol:g} at {bk.prec} bits")
        current = current.at(2 * bk.prec)


def _norm_rows(v: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.sqrt(np.sum(v * v, axis=1))
    out[np.isinf(v).any(axis=1) & ~np.isnan(v).any(axis=1)] = np.inf
    return out


def _batched_inverse_float(blocks: list, z: torch.Tensor) -> torch.Tensor:
    """Row ``L - 1`` of ``z`` is inverted through blocks ``L - 1, ..., 0``."""
    out = z.clone()
    depth_of_row = torch.arange(1, len(blocks) + 1)
    with torch.no_grad():
        for i in reversed(range(len(blocks))):
            rows = depth_of_row > i
            out[rows] = blocks[i].inverse(out[rows])
    return out


#: Required accuracy of exact values, relative to each row's scale.
EXACT_TOL = 2.0 ** -64


def _stack(rows: list[RTensor]) -> RTensor:
    """Concatenate batch-1 tensors along the batch dimension."""
    return RTensor([v for r in rows for v in r.data], (len(rows),) + rows[0].shape[1:],
                   rows[0].backend)


def _batched_inverse_exact(ref: reference.ReferenceModel, z: RTensor) -> RTensor:
    """The exact version of :func:`_batched_inverse_float`."""
    leaves = ref.leaves()
    v = z
    depth = np.arange(1, len(leaves) + 1)
    with ref.backend.active():
        for i in reversed(range(len(leaves))):
            active = np.nonzero(depth > i)[0]
            new = leaves[i].inverse(v.take(v.index_grid()[active]))
            grid = v.index_grid().copy()
            grid[active] = v.numel + new.index_grid()
            v = v.stack_with(new).take(grid)
    return v


def _certified_batched_inverse(ref: reference.ReferenceModel, z: np.ndarray,
                               max_prec: int = 1 << 15) -> tuple[RTensor, reference.ReferenceModel]:
    """:func:`_batched_inverse_exact` of the float outputs ``z`` (non-finite rows replaced by
    zeros, to be masked by the caller), the precision doubled until every row's radius is below
    :data:`EXACT_TOL` times its scale (a deep affine chain's inverse needs ``log2 cond`` more
    bits)."""
    z = np.where(np.isfinite(z), z, 0.0)
    current = ref
    while True:
        out = _batched_inverse_exact(current, current.convert(z))
        scale = np.maximum(np.abs(out.to_numpy()).max(axis=1), 1.0)
        if (out.radii().max(axis=1) <= EXACT_TOL * scale).all():
            return out, current
        if 2 * current.backend.prec > max_prec:
            raise reference.CertificationError(
                f"Figure 1 inverse not certified at {current.backend.prec} bits")
        current = current.at(2 * current.backend.prec)


def _minus(ref: reference.ReferenceModel, values: np.ndarray, exact: RTensor,
           valid: np.ndarray) -> np.ndarray:
    """Per-row norms of ``values - exact`` in exact arithmetic; NaN where ``valid`` is false
    or ``values`` is not finite, Inf where it is infinite."""
    out = np.full(values.shape[0], np.nan)
    ok = valid & np.isfinite(values).all(axis=1)
    if ok.any():
        rows = np.nonzero(ok)[0]
        sub = exact.take(exact.index_grid()[rows])
        with ref.backend.active():
            diff = (ref.convert(values[rows]) - sub).to_numpy()
        out[rows] = np.sqrt(np.sum(diff * diff, axis=1))
    out[valid & np.isinf(values).any(axis=1) & ~np.isnan(values).any(axis=1)] = np.inf
    return out


def _float_rows(chain: str, depth: int, precision: str, t: float, g: float, alternate: bool,
                x: np.ndarray, reference_name: str, rtol: float) -> list[SweepRecord]:
    p = parse_precision(precision)
    model = cast_model(figure1_chain(depth, chain, t, g, alternate), p.dtype)
    xp = torch.from_numpy(x).to(p.dtype)
    with torch.no_grad():
        z_p = torch.cat(model.trace_forward(xp)[1:])  # row L - 1: depth L
    rec_p = _batched_inverse_float(model.flat_blocks(), z_p).double().numpy()
    z_p64 = z_p.double().numpy()
    ref = reference.compile(model, reference_name)
    z_exact = _stack(ref.trace_forward(x)[1:])
    x1, ref_hi = _certified_batched_inverse(ref, z_p64)
    svs = _exact_singular_values(ref, x, rtol)
    all_rows = np.ones(depth, dtype=bool)
    finite_z = np.isfinite(z_p64).all(axis=1)
    recon = _minus(ref, rec_p, _stack([ref.convert(x)] * depth), all_rows)
    delta = _minus(ref, z_p64, z_exact, all_rows)
    delta2 = _minus(ref_hi, rec_p, x1, finite_z)
    records = []
    for L in range(1, depth + 1):
        smax, smin = svs[L - 1]
        with np.errstate(over="ignore", invalid="ignore"):
            bound = float(delta[L - 1] / smin + delta2[L - 1])
        records.append(SweepRecord(chain, L, precision, float(recon[L - 1]), smin, smax,
                                   smax / smin, bound))
    return records


def _exact_rows(chain: str, depth: int, t: float, g: float, alternate: bool, x: np.ndarray,
                reference_name: str, rtol: float) -> list[SweepRecord]:
    """The reference itself: the round trip at the reference precision (its certified error
    bound ``|mid| + rad``, of order ``2^-bits cond``) and the exact singular values."""
    ref = reference.figure1_reference(depth, chain, repr(t), repr(g), alternate,
                                      reference_name)
    z = _stack(ref.trace_forward(x)[1:])
    rec = _batched_inverse_exact(ref, z)
    with ref.backend.active():
        err = rec - _stack([ref.convert(x)] * depth)
    bound = np.sqrt(np.sum(err.to_numpy() ** 2, axis=1)) + np.sqrt(np.sum(err.radii() ** 2,
                                                                          axis=1))
    svs = _exact_singular_values(ref, x, rtol)
    return [SweepRecord(chain, L, "exact", float(bound[L - 1]), svs[L - 1][1], svs[L - 1][0],
                        svs[L - 1][0] / svs[L - 1][1], float(bound[L - 1]))
            for L in range(1, depth + 1)]


def figure1_sweep(depths: int = 100, chains: Sequence[str] = ("additive", "affine"),
                  precisions: Sequence[str] = PRECISIONS, t: float = 0.123456789,
                  g: float = 0.1, alternate: bool = False, x: Sequence[float] = (1.0, 1.0),
                  reference_name: str = "arb:256", rtol: float = 1e-30,
                  progress: bool = False) -> list[SweepRecord]:
    """Records for depths ``1..depths`` of every chain at every precision (see the module
    docstring). ``exact`` uses the decimal constants ``repr(t)`` and ``repr(g)``."""
    if int(depths) < 1:
        raise ValueError(f"depths must be >= 1, got {depths}")
    for c in chains:
        if c not in ("additive", "affine"):
            raise ValueError(f"chains must be 'additive' or 'affine', got {c!r}")
    for p in precisions:
        if p != "exact" and not parse_precision(p).is_float:
            raise ValueError(f"precisions must be float names or 'exact', got {p!r}")
    xa = np.asarray(x, dtype=np.float64).reshape(1, 2)
    jobs = [(c, p) for c in chains for p in precisions]
    records: list[SweepRecord] = []
    with mpmath.workprec(64):
        for c, p in tqdm(jobs, disable=not progress, desc="figure 1 sweep"):
            if p == "exact":
                records += _exact_rows(c, int(depths), t, g, alternate, xa, reference_name, rtol)
            else:
                records += _float_rows(c, int(depths), p, t, g, alternate, xa, reference_name,
                                       rtol)
    return records
