"""JSON output for every command: tensors become lists, non-finite floats the strings ``"inf"``,
``"-inf"`` and ``"nan"`` (never bare ``NaN``/``Infinity``, which are not JSON), dataclasses
dictionaries."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["dump_json", "jsonable"]


def jsonable(value: Any) -> Any:
    """``value`` converted recursively to something :func:`json.dumps` writes as strict JSON."""
    if isinstance(value, Tensor):
        return jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def dump_json(value: Any, path: str | Path) -> None:
    """Write ``jsonable(value)`` to ``path`` as strict, indented JSON."""
    Path(path).write_text(json.dumps(jsonable(value), indent=2, allow_nan=False) + "\n")
