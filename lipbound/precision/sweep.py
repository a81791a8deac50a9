r"""The Figure 1 depth sweep (end of section 2 of the paper).

Chains of ``L`` couplings on ``R^2`` with ``t(x_1) = 0.123456789`` and ``g(s(x_1)) = 0.1``
(:func:`lipbound.blocks.figure1_chain`), input ``(1, 1)``. For every chain (additive, affine),
depth ``L`` and precision:

* ``recon_error``: ``||x - F_p^-1(F_p(x))||`` of the float run. For ``exact``: a certified
  upper bound on the reference's own round-trip error, below ``2^-bits max(1, ||x||)`` (``bits``
  of ``reference_name``): the reference runs at ``bits + log2(cond) + 32`` bits (raised further
  if needed), since a round trip at ``b`` bits loses ``log2(cond)`` of them;
* ``sigma_min``, ``sigma_max``, ``cond``: the *exact* singular values of the Jacobian of the
  network that precision runs (its parameters, e.g. float16's ``g = 0.0999755859375``), from
  the reference's forward-mode Jacobian; for ``exact`` those of the decimal constants, ``0.1^L``
  and ``1`` (affine), ``1`` and ``1`` (additive). Values beyond float64's range show as ``0``
  or ``inf``; ``cond`` is the exact ratio, rounded to float64 (``inf`` only above ``1.8e308``);
* ``bound``: ``Lip(F^-1) ||delta|| + ||delta2||`` with ``Lip(F^-1) = 1 / sigma_min``,
  ``delta = F_p(x) - F(x)`` and ``delta2 = F_p^-1(F_p(x)) - F^-1(F_p(x))`` (the unnumbered
  bound of section 2, with ``Lip(F^-1)`` of eq. 2 replaced by its local value, eq. 5).

A depth-``L`` chain is the first ``L`` blocks of the depth-``max(depths)`` chain, so one traced
forward pass gives every depth; the inverses of all depths run as one batch, block ``i``'s
inverse applied to the rows of depth ``> i`` (rows do not interact, so each row is exactly the
depth-``L`` chain's own inverse).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import mpmath
import numpy as np
import torch
from tqdm import tqdm

import reference
from lipbound.blocks import figure1_chain
from lipbound.blocks.builders import check_figure1_constants
from reference.linalg import certified_singular_values
from reference.tensor import DualTensor, RTensor

from ..errors import InputError
from .names import parse_precision
from .run import cast_model, exact_difference, row_norms

__all__ = ["ARGUMENT_NAMES", "CHAINS", "PRECISIONS", "SweepRecord", "check_sweep_arguments",
           "figure1_sweep"]

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
                           max_prec: int = 1 << 15) -> list[tuple[mpmath.mpf, mpmath.mpf]]:
    """Certified ``(sigma_max, sigma_min)`` after every block, each to ``rtol`` relative, as
    exact mpmath numbers (no float64 underflow), by
    :func:`reference.linalg.certified_singular_values` (the precision doubles until every depth
    meets it)."""
    svs = certified_singular_values(ref, lambda r: _all_jacobians(r, x), rtol, max_prec)
    return [(sv.sigma_max, sv.sigma_min) for sv in svs]


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


def _batched_inverse_exact(ref: reference.ReferenceModel, z: RTensor,
                           depth: np.ndarray | None = None) -> RTensor:
    """The exact version of :func:`_batched_inverse_float`: row ``r`` of ``z`` is inverted
    through blocks ``depth[r] - 1, ..., 0`` (by default ``depth[r] = r + 1``)."""
    leaves = ref.leaves()
    v = z
    if depth is None:
        depth = np.arange(1, len(leaves) + 1)
    with ref.backend.active():
        for i in reversed(range(int(depth.max()))):
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
    for current in ref.doubling(max_prec):
        out = _batched_inverse_exact(current, current.convert(z))
        scale = np.maximum(np.abs(out.to_numpy()).max(axis=1), 1.0)
        if (out.radii().max(axis=1) <= EXACT_TOL * scale).all():
            return out, current
    raise reference.CertificationError(
        f"Figure 1 inverse not certified at {current.backend.prec} bits")


def _minus(ref: reference.ReferenceModel, values: np.ndarray, exact: RTensor,
           valid: np.ndarray) -> np.ndarray:
    """Per-row norms of ``values - exact`` in exact arithmetic (non-finite rows stay Inf or
    NaN), NaN where ``valid`` is false."""
    out = row_norms(exact_difference(ref, values, exact))
    out[~valid] = np.nan
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
        bound = float(_over(mpmath.mpf(float(delta[L - 1])), smin)) + float(delta2[L - 1])
        records.append(_record(chain, L, precision, float(recon[L - 1]), smax, smin, bound))
    return records


def _over(a: mpmath.mpf, b: mpmath.mpf) -> mpmath.mpf:
    """``a / b``, with ``a / 0 = inf`` (``nan`` for ``0 / 0`` and a NaN ``a``)."""
    if b != 0:
        return a / b
    return mpmath.nan if a == 0 or mpmath.isnan(a) else mpmath.inf


def _record(chain: str, depth: int, precision: str, recon: float, smax: mpmath.mpf,
            smin: mpmath.mpf, bound: float) -> SweepRecord:
    """A record from exact singular values (``cond`` from the exact ratio, so a ``sigma_min``
    that underflows float64 does not become a division by zero)."""
    return SweepRecord(chain, depth, precision, recon, float(smin), float(smax),
                       float(_over(smax, smin)), bound)


#: The exact round trips of depths whose precisions fall in one band of this many bits run
#: together, at the band's top precision.
PRECISION_BAND = 32


def _round_trip_bounds(ref: reference.ReferenceModel, x: np.ndarray, depths: np.ndarray,
                       prec: int, target: float, max_prec: int) -> np.ndarray:
    """Certified bounds ``|mid| + rad`` on ``||x - F^-1(F(x))||`` of the first ``depths[r]``
    blocks of ``ref``, all run at ``prec`` bits, the precision doubled until every bound is
    below ``target``."""
    for current in ref.at(prec).doubling(max_prec):
        trace = current.trace_forward(x)
        rec = _batched_inverse_exact(current, _stack([trace[d] for d in depths]), depths)
        with current.backend.active():
            err = rec - _stack([current.convert(x)] * len(depths))
        # |mid| + rad bounds every entry of the ball; the factor covers float64's rounding of
        # the midpoints and of the norm (a few units of 2^-53)
        bound = row_norms(np.abs(err.to_numpy()) + err.radii()) * (1 + 2.0 ** -40)
        if (bound <= target).all():
            return bound
    raise reference.CertificationError(
        f"the exact round trip is not certified below {target:.3g} at {current.backend.prec} "
        f"bits (largest bound {float(bound.max()):.3g})")


def _exact_rows(chain: str, depth: int, t: float, g: float, alternate: bool, x: np.ndarray,
                reference_name: str, rtol: float, max_prec: int = 1 << 16
                ) -> list[SweepRecord]:
    """The reference itself: the exact singular values and, for every depth, a certified bound
    on the error of its own round trip ``F^-1(F(x))`` below ``2^-bits max(1, ||x||)`` (``bits``
    of ``reference_name``). A round trip at ``b`` bits has an error of order ``2^-b cond``, so
    depth ``L`` runs at ``bits + log2(cond_L) + 32`` bits, rounded up to a multiple of
    :data:`PRECISION_BAND` (depths of one band run as one batch)."""
    ref = reference.figure1_reference(depth, chain, repr(t), repr(g), alternate, reference_name)
    svs = _exact_singular_values(ref, x, rtol)
    target = 2.0 ** -ref.backend.prec * max(1.0, float(np.linalg.norm(x)))
    bands: dict[int, list[int]] = {}
    for L, (smax, smin) in enumerate(svs, start=1):
        cond = _over(smax, smin)  # finite: g != 0 (check_figure1_constants)
        bits = ref.backend.prec + int(mpmath.ceil(mpmath.log(max(cond, 1), 2))) + 32
        bands.setdefault(-(-bits // PRECISION_BAND) * PRECISION_BAND, []).append(L)
    bound = np.empty(depth)
    for prec, depths in bands.items():
        rows = np.array(depths)
        bound[rows - 1] = _round_trip_bounds(ref, x, rows, prec, target, max_prec)
    return [_record(chain, L, "exact", float(bound[L - 1]), smax, smin, float(bound[L - 1]))
            for L, (smax, smin) in enumerate(svs, start=1)]


#: How :func:`check_sweep_arguments` names each argument of :func:`figure1_sweep` in its
#: messages; ``lipbound sweep`` passes its option names instead.
ARGUMENT_NAMES = {"depths": "depths", "chains": "chains", "precisions": "precisions", "t": "t",
                  "g": "g", "x": "x", "reference_name": "reference_name"}

#: The chains of the sweep.
CHAINS = ("additive", "affine")

#: The precision kinds the sweep runs (torch floats) besides ``exact``, and its oracle's kind
#: (certified by ball arithmetic: the ``mp`` backend has no radii).
FLOAT_KINDS, REFERENCE_KINDS = ("torch",), ("arb",)


def check_sweep_arguments(depths: int, chains: Sequence[str], precisions: Sequence[str],
                          t: float, g: float, x: Sequence[float], reference_name: str,
                          names: dict[str, str] = ARGUMENT_NAMES) -> None:
    """:class:`InputError` (or :class:`InputTypeError`) naming the argument, as ``names`` spells
    it, for anything :func:`figure1_sweep` cannot run: a depth below 1, an unknown chain, a
    precision that is not a float name or ``exact``, a reference that is not ``arb:<bits>``,
    ``t`` or ``x`` not finite, ``g`` zero or not finite, or ``g`` that a swept float precision
    rounds to 0 or Inf (that precision's affine chain would be singular or infinite)."""
    if isinstance(depths, bool) or not isinstance(depths, numbers.Integral) or depths < 1:
        raise InputError(f"{names['depths']} must be an integer >= 1, got {depths!r}")
    if not chains or any(c not in CHAINS for c in chains):
        raise InputError(f"{names['chains']} must be one or more of {', '.join(CHAINS)}, "
                         f"got {list(chains)}")
    if not precisions:
        raise InputError(f"{names['precisions']} must name at least one precision")
    floats = [parse_precision(p, FLOAT_KINDS, names["precisions"], also=("exact",))
              for p in precisions if p != "exact"]
    parse_precision(reference_name, REFERENCE_KINDS, names["reference_name"])
    check_figure1_constants(t, g, names["t"], names["g"])
    xa = np.asarray(x, dtype=np.float64)
    if xa.shape != (2,) or not np.isfinite(xa).all():
        raise InputError(f"{names['x']} must be two finite numbers, got {list(x)}")
    if "affine" in chains:
        for p in floats:
            g_p = torch.tensor(g, dtype=torch.float64).to(p.dtype).item()
            if g_p == 0 or not math.isfinite(g_p):
                raise InputError(
                    f"{names['g']} = {g!r} rounds to {g_p!r} in {p.name}: the {p.name} affine "
                    f"chain would not be invertible; choose another {names['g']} or leave "
                    f"{p.name} out of {names['precisions']}")


def figure1_sweep(depths: int = 100, chains: Sequence[str] = ("additive", "affine"),
                  precisions: Sequence[str] = PRECISIONS, t: float = 0.123456789,
                  g: float = 0.1, alternate: bool = False, x: Sequence[float] = (1.0, 1.0),
                  reference_name: str = "arb:256", rtol: float = 1e-30,
                  progress: bool = False) -> list[SweepRecord]:
    """Records for depths ``1..depths`` of every chain at every precision (see the module
    docstring). ``exact`` uses the decimal constants ``repr(t)`` and ``repr(g)``. The arguments
    are checked by :func:`check_sweep_arguments`."""
    check_sweep_arguments(depths, chains, precisions, t, g, x, reference_name)
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
