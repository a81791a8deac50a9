r"""Architecture specs without weights: a JSON file listing the blocks, with numbers where known.

The result is the composed symbolic bound of Table 3 (:mod:`.table`, :mod:`.compose`), numeric
where every number is given. A file is either the list of blocks alone (``[{"kind": ...}, ...]``)
or an object with it::

    {
      "name": "2D affine coupling flow",           (optional)
      "description": "...",                         (optional)
      "box": [-4, 4],                               (optional: [a, b] for every local block)
      "inverse_box": [-8, 8],                       (optional: [a*, b*] for every local block)
      "blocks": [
        {"kind": "additive", "lip_t": 2.5},
        {"repeat": 8, "blocks": [ ... ]},           (a group of blocks, repeated)
        ...
      ]
    }

Every block has a ``kind`` and optional numbers (absent keys stay symbols; all Lipschitz
constants and sups must be upper bounds, the boxes are taken as given):

=================  =========================================================================
kind               keys
=================  =========================================================================
``additive``       ``lip_t``
``affine``         ``lip_s``, ``lip_t``, ``c_g``, ``c_dg``, ``c_inv_g``, ``c_dinv_g``, ``c_t``,
                   ``box`` [a, b], ``inverse_box`` [a*, b*]; or ``scale`` (``sigmoid``,
                   ``modified``, ``exp``, ``softclamp``) with ``s_range`` [lo, hi] (range of the
                   raw scale s on the box) to compute the four ``c`` of ``g``, and ``t_range``
                   [lo, hi] for ``c_t``
``residual``       ``lip_g``, or ``coeffs`` [c_1, ...] (spectral-norm coefficients of a chain
                   with 1-Lipschitz activations: ``Lip(g) <= prod c_i``)
``ode``            ``lip_f``, ``T``; ``method`` (``rk4``, ``euler``) and ``steps`` add the
                   discrete flow's tighter bound
``diagonal``,      ``max_abs`` (max ``|D_ii|``), ``max_inv_abs`` (max ``1/|D_ii|``), or
``actnorm``        ``diag`` [...] (diagonal) / ``log_scale`` [...] (ActNorm)
``conv1x1``        ``norm``, ``inv_norm``, or ``weight`` [[...], ...] (certified from it)
``permutation``,   none (orthogonal: 1 both ways)
``squeeze``
=================  =========================================================================

A block may carry ``"tag"`` (a string or integer) to give its symbols their own names
(``Lip(t)[tag]``); untagged blocks share symbols, so repeated blocks compose into powers. The
paper's box ``[a, b]^d`` asserts that the inputs of *every* local block lie in it: without weights
the boxes cannot be carried from block to block. An affine block without a box keeps its symbolic
bound, a result (symbolic only), with the reason it has no number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..blocks.scale import make_scale
from ..errors import InputError
from . import table
from .blocks import actnorm_numbers, diagonal_numbers
from .compose import NetworkBound
from .norms import certified_inverse, spectral_norm_upper
from .rounding import up
from .scales import scale_sup

__all__ = ["KINDS", "load_spec", "spec_bounds"]

_COMMON = {"kind", "tag"}


def _number(block: Mapping[str, Any], key: str, where: str) -> float | None:
    v = block.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        raise InputError(f"{where}: {key!r} must be a number, got {v!r}")
    if v < 0:
        raise InputError(f"{where}: {key!r} must be >= 0, got {v!r}")
    return float(v)


def _pair(value: Any, key: str, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
            or value[0] > value[1]):
        raise InputError(f"{where}: {key!r} must be [lo, hi] with finite lo <= hi, got {value!r}")
    return float(value[0]), float(value[1])


def _vector(block: Mapping[str, Any], key: str, where: str) -> torch.Tensor | None:
    if key not in block:
        return None
    try:
        t = torch.tensor(block[key], dtype=torch.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: {key!r} must be a list of numbers ({err})") from err
    if t.numel() == 0 or not bool(torch.isfinite(t).all()):
        raise InputError(f"{where}: {key!r} must be a non-empty list of finite numbers")
    return t


def _additive(block: Mapping[str, Any], sym: table.Symbols, ctx: dict, where: str):
    return table.additive(sym, {"Lip(t)": _number(block, "lip_t", where)})


def _scale_sups(block: Mapping[str, Any], where: str) -> dict[str, float | None]:
    if "scale" not in block:
        return {}
    s_range = _pair(block.get("s_range"), "s_range", where)
    if s_range is None:
        raise InputError(f"{where}: 'scale' needs 's_range' [lo, hi], the range of s on the box")
    scale = make_scale(block["scale"])
    return {symbol: scale_sup(scale, which, *s_range) for symbol, which in
            (("c_g", "g"), ("c_g'", "dg"), ("c_1/g", "inv_g"), ("c_(1/g)'", "d_inv_g"))}


_NO_BOX = ("the affine coupling bound (Lemma 6) is local, there is no global one (Theorem 2 "
           "(ii)): give \"box\" [a, b] (and \"inverse_box\" [a*, b*]) for a number")


def _affine(block: Mapping[str, Any], sym: table.Symbols, ctx: dict, where: str):
    values: dict[str, float | None] = {
        "Lip(s)": _number(block, "lip_s", where), "Lip(t)": _number(block, "lip_t", where),
        "c_g": _number(block, "c_g", where), "c_g'": _number(block, "c_dg", where),
        "c_1/g": _number(block, "c_inv_g", where), "c_(1/g)'": _number(block, "c_dinv_g", where),
        "c_t": _number(block, "c_t", where),
    }
    for key, v in _scale_sups(block, where).items():
        values[key] = v if values[key] is None else values[key]
    t_range = _pair(block.get("t_range"), "t_range", where)
    if t_range is not None and values["c_t"] is None:
        values["c_t"] = max(abs(t_range[0]), abs(t_range[1]))
    box = _pair(block.get("box", ctx.get("box")), "box", where)
    inverse_box = _pair(block.get("inverse_box", ctx.get("inverse_box")), "inverse_box", where)
    if box is not None:
        values["a"], values["b"] = box
    if inverse_box is not None:
        values["a*"], values["b*"] = inverse_box
    return table.affine(sym, values, symbolic_forward=None if box else _NO_BOX,
                        symbolic_inverse=None if inverse_box else _NO_BOX)


def _residual(block: Mapping[str, Any], sym: table.Symbols, ctx: dict, where: str):
    lip_g = _number(block, "lip_g", where)
    coeffs = _vector(block, "coeffs", where)
    if coeffs is not None:
        if lip_g is not None:
            raise InputError(f"{where}: give 'lip_g' or 'coeffs', not both")
        lip_g = 1.0
        for c in coeffs.tolist():
            lip_g = up(lip_g * abs(c))
    return table.residual(sym, {"Lip(g)": lip_g})


def _ode(block: Mapping[str, Any], sym: table.Symbols, ctx: dict, where: str):
    steps = block.get("steps")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise InputError(f"{where}: 'steps' must be an integer >= 1, got {steps!r}")
    return table.neural_ode(sym, {"Lip(f)": _number(block, "lip_f", where),
                                  "T": _number(block, "T", where)},
                            method=block.get("method"), steps=steps)


def _diagonal_like(kind: str) -> Callable:
    key = "log_scale" if kind == "actnorm" else "diag"

    def rule(block: Mapping[str, Any], sym: table.Symbols, ctx: dict, where: str):
        values = {"max|D|": _number(block, "max_abs", where),
                  "max|1/D|": _number(block, "max_inv_abs", where)}
        vec = _vector(block, key, where)
        if vec is not None:
            if kind == "actnorm":
                values = actnorm_numbers(vec)
            else:
                if bool((vec == 0).any()):
                    raise InputError(f"{where}: 'diag' must have no zero entry (D invertible)")
                values = diagonal_numbers(vec)
        return (table.actnorm if kind == "actnorm" else table.diagonal)(sym, values)
    return rule


def _conv1x1(block: Mapping[str, Any], sym: table.Symbols, ctx: dict, where: str):
    values = {"||W||": _number(block, "norm", where), "||W^-1||": _number(block, "inv_norm", where)}
    w = _vector(block, "weight", where)
    if w is not None:
        if w.dim() != 2 or w.shape[0] != w.shape[1]:
            raise InputError(f"{where}: 'weight' must be a square matrix, got shape "
                             f"{tuple(w.shape)}")
        values = {"||W||": spectral_norm_upper(w), "||W^-1||": certified_inverse(w)[1]}
    return table.invertible_1x1_conv(sym, values)


def _reshape(kind: str) -> Callable:
    return lambda block, sym, ctx, where: table.volume_preserving_reshape(kind)


#: kind -> (row builder, allowed keys besides "kind" and "tag").
KINDS: dict[str, tuple[Callable, frozenset[str]]] = {
    "additive": (_additive, frozenset({"lip_t"})),
    "affine": (_affine, frozenset({"lip_s", "lip_t", "c_g", "c_dg", "c_inv_g", "c_dinv_g", "c_t",
                                   "box", "inverse_box", "scale", "s_range", "t_range"})),
    "residual": (_residual, frozenset({"lip_g", "coeffs"})),
    "ode": (_ode, frozenset({"lip_f", "T", "method", "steps"})),
    "diagonal": (_diagonal_like("diagonal"), frozenset({"max_abs", "max_inv_abs", "diag"})),
    "actnorm": (_diagonal_like("actnorm"), frozenset({"max_abs", "max_inv_abs", "log_scale"})),
    "conv1x1": (_conv1x1, frozenset({"norm", "inv_norm", "weight"})),
    "permutation": (_reshape("permutation"), frozenset()),
    "squeeze": (_reshape("squeeze"), frozenset()),
}


def _rows(blocks: Any, ctx: dict, where: str) -> list[table.BlockBound]:
    if not isinstance(blocks, list):
        raise InputError(f"{where}: 'blocks' must be a list, got {type(blocks).__name__}")
    rows: list[table.BlockBound] = []
    for i, block in enumerate(blocks):
        here = f"{where}[{i}]"
        if not isinstance(block, dict):
            raise InputError(f"{here}: each block must be an object, got {block!r}")
        if "repeat" in block:
            n = block["repeat"]
            extra = set(block) - {"repeat", "blocks"}
            if not isinstance(n, int) or isinstance(n, bool) or n < 1 or extra:
                raise InputError(f"{here}: a group is {{\"repeat\": n >= 1, \"blocks\": [...]}}, "
                                 f"got {block!r}")
            rows += _rows(block.get("blocks"), ctx, f"{here}.blocks") * n
            continue
        kind = block.get("kind")
        if kind not in KINDS:
            raise InputError(f"{here}: 'kind' must be one of {sorted(KINDS)}, got {kind!r}")
        builder, allowed = KINDS[kind]
        unknown = set(block) - allowed - _COMMON
        if unknown:
            raise InputError(f"{here}: unknown keys {sorted(unknown)} for kind {kind!r}; "
                             f"allowed: {sorted(allowed | _COMMON)}")
        row = builder(block, table.Symbols(block.get("tag")), ctx, here)
        rows.append(table.BlockBound(row.kind, row.scope, row.forward, row.inverse,
                                     row.assumptions, f"{kind}"))
    return rows


def spec_bounds(spec: Mapping[str, Any] | list) -> NetworkBound:
    """The rows and composition of an architecture spec (a parsed JSON object, see above, or
    just its list of blocks)."""
    if isinstance(spec, list):
        spec = {"blocks": spec}
    if not isinstance(spec, Mapping):
        raise InputError(f"spec must be a JSON object {{\"blocks\": [...]}} or a JSON list of "
                         f"blocks, got {type(spec).__name__}")
    unknown = set(spec) - {"name", "description", "box", "inverse_box", "blocks"}
    if unknown:
        raise InputError(f"spec: unknown top-level keys {sorted(unknown)}")
    if "blocks" not in spec:
        raise InputError("spec: 'blocks' (the list of blocks) is required")
    ctx = {"box": _pair(spec.get("box"), "box", "spec"),
           "inverse_box": _pair(spec.get("inverse_box"), "inverse_box", "spec")}
    rows = _rows(spec["blocks"], ctx, "spec.blocks")
    _check_consistent(rows)
    return NetworkBound(tuple(rows))


def _check_consistent(rows: list[table.BlockBound]) -> None:
    """Blocks that share a symbol must give it the same number (or none)."""
    seen: dict = {}
    for row in rows:
        for bound in (row.forward, row.inverse):
            for sym, v in bound.values.items():
                if seen.setdefault(sym, v) != v:
                    raise InputError(
                        f"symbol {sym} is given two numbers ({seen[sym]} and {v}) by blocks that "
                        "share it; give the blocks distinct \"tag\"s"
                    )


def load_spec(path: str | Path) -> dict[str, Any]:
    """Read a spec file (JSON)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"spec file {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"spec file {str(path)!r} is not valid JSON: {err}") from err
