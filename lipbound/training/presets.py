"""Presets for the paper's experiments at a CPU scale that finishes in minutes, and config files.

Each preset is a set of :class:`~lipbound.training.trainers.TrainConfig` values; the paper's scale
is noted beside each (appendices C, D, F, G). A config file (JSON, or TOML on Python >= 3.11) holds
any :class:`TrainConfig` keys, and optionally ``"preset"`` to start from one.

``coeff`` and ``every`` are the FD regularizer's (the paper's ``coeff = 1e-4``, ``K = 10`` for the
classifiers). At this scale the NF regularizer needs a larger coefficient applied every step
than the paper's long runs (1e-5 for the classifiers, 1e-8 for the regression over 40k steps):
on the digits classifier, ``--regularizer nf --coeff 1e-3 --every 1`` took the condition number
from 2e6 to 1e2; on the regression ``--coeff 1e-3`` from 2e7 to 41, while 1e-5 left 5e4.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..errors import InputError
from .trainers import TrainConfig

__all__ = ["PRESETS", "load_config"]

#: name -> (description, TrainConfig values).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "digits-classifier": (
        "INN classifier on 8x8 digits (appendix G; paper: CIFAR-10, 3 levels x 16 blocks, "
        "128 channels, Adam 1e-4, 200 epochs)",
        {"task": "classifier", "levels": 2, "blocks": 4, "hidden": 32, "coupling": "affine",
         "mixing": "1x1conv", "optimizer": "adam", "lr": 1e-3, "batch_size": 64,
         "epochs": 10.0, "lr_decay_at": [0.6, 0.8], "memory_saving": True, "coeff": 1e-4,
         "every": 10,
         "eval_every": 50, "monitor_every": 50}),
    "digits-flow": (
        "Glow trained by maximum likelihood on 8x8 digits, uniform dequantization, bits per "
        "dimension (appendix D; paper: CIFAR-10, 3 levels x 32 blocks, 512 channels, Adamax 5e-4)",
        {"task": "flow", "levels": 2, "blocks": 4, "hidden": 32, "coupling": "affine",
         "mixing": "reverse", "optimizer": "adamax", "lr": 1e-3, "weight_decay": 5e-5,
         "warmup_steps": 100, "batch_size": 64, "epochs": 20.0, "coeff": 1e-4, "every": 10,
         "eval_every": 100, "monitor_every": 100}),
    "regression-2d": (
        "2D toy regression x -> (y1, x2), var(y1) = 1e-24 (appendix F; paper: 3 x 8 blocks, "
        "128 units, Adam 1e-4, 40k full-batch steps)",
        {"task": "regression", "levels": 1, "blocks": 8, "hidden": 32, "coupling": "affine",
         "mixing": "reverse", "actnorm": True, "n_train": 10000, "batch_size": 10000,
         "optimizer": "adam", "lr": 1e-3, "steps": 1000, "coeff": 1e-4, "every": 1,
         "monitor_every": 100, "monitor_samples": 64, "monitor_batch": 1000}),
    "checkerboard": (
        "2D checkerboard density, affine couplings with sigmoid scale (appendix C; paper: 100 "
        "blocks of 4 x 128 units, Adam 1e-3, batch 500)",
        {"task": "density", "levels": 1, "blocks": 8, "hidden": 64, "coupling": "affine",
         "mixing": "reverse", "actnorm": False, "n_train": 10000, "batch_size": 500,
         "optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5, "steps": 1000, "coeff": 1e-4,
         "every": 10, "eval_every": 250, "monitor_every": 100, "monitor_samples": 64,
         "monitor_batch": 1000}),
}


def _read_file(path: Path) -> dict[str, Any]:
    if path.suffix not in (".json", ".toml"):
        raise InputError(f"config must be a preset ({', '.join(PRESETS)}) or a .json/.toml "
                         f"file, got {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    if path.suffix == ".json":
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"config file {str(path)!r} is not valid JSON: {err}") from err
    else:
        if sys.version_info < (3, 11):
            raise InputError(f"config file {str(path)!r}: TOML configs need Python >= 3.11 "
                             "(tomllib); use a .json config")
        import tomllib

        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise InputError(f"config file {str(path)!r} is not valid TOML: {err}") from err
    if not isinstance(values, dict):
        raise InputError(f"config file {str(path)!r} must hold an object of settings")
    return values


def load_config(target: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config of a preset name or a JSON/TOML file, with ``overrides`` (keys of
    :class:`TrainConfig`; ``None`` values are ignored) applied last. Setting ``steps`` clears
    ``epochs`` and the other way round."""
    if target in PRESETS:
        values, source = dict(PRESETS[target][1]), f"preset {target!r}"
    else:
        path = Path(target)
        values, source = _read_file(path), f"config file {str(path)!r}"
        base = values.pop("preset", None)
        if base is not None:
            if base not in PRESETS:
                raise InputError(f"{source}: preset must be one of {list(PRESETS)}, got {base!r}")
            own = values
            values = {**PRESETS[base][1], **own}
            if "epochs" in own and "steps" not in own:
                values["steps"] = None
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        values[key] = value
        if key == "steps":
            values["epochs"] = None
        elif key == "epochs":
            values["steps"] = None
    return TrainConfig.from_dict(values, source)
