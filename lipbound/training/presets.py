"""Presets for the paper's experiments, and config files.

Each preset is a set of :class:`~lipbound.training.trainers.TrainConfig` values. The first four
(:data:`CPU_PRESETS`) run the paper's settings at a CPU scale that finishes in minutes, with the
paper's scale noted beside each (appendices C, D, F, G). The others (:data:`FULL_SIZE`) are the
paper's models at full size on the real data (``data_root``; :mod:`.datasets`), for a GPU:

* ``cifar10-classifier-{additive,affine}-{1x1conv,shuffle}``: appendix G, Tables 8 and 9;
* ``cifar10-glow``: appendix D, Table 6 (and Table 1's 100k updates);
* ``celeba64-{affine,modified-affine,resflow}``: appendix E.1, Table 7, 5-bit CelebA 64x64;
* ``checkerboard-{affine,modified-affine,resflow}``: appendix C, Table 4, 100 blocks.

Each description says where a value is not in the paper and what was chosen. A config file (JSON,
or TOML on Python >= 3.11) holds any :class:`TrainConfig` keys, and optionally ``"preset"`` to
start from one (e.g. ``{"preset": "cifar10-glow", "coupling": "additive"}`` for Table 1's additive
model).

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

__all__ = ["CPU_PRESETS", "FULL_SIZE", "PRESETS", "load_config"]

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


#: The presets at a CPU scale (minutes); the rest of :data:`PRESETS` are full size.
CPU_PRESETS = tuple(PRESETS)

CIFAR10_TRAIN = 50000
#: Intervals of the full-size image runs: one CIFAR-10 epoch at batch 128.
_EPOCH_128 = CIFAR10_TRAIN // 128

_CLASSIFIER_FD = {("additive", "1x1conv"): "5e-5", ("affine", "1x1conv"): "1e-4",
                  ("affine", "shuffle"): "1e-4", ("additive", "shuffle"): None}


def _classifier(coupling: str, mixing: str) -> tuple[str, dict[str, Any]]:
    fd = _CLASSIFIER_FD[coupling, mixing]
    grid = ("Table 9's grid: FD 1e-3, 1e-4, 5e-5; NF 1e-3, 1e-4, 1e-5" if fd is None else
            f"Tables 2/10 report FD {fd} and NF 1e-5 (Table 9's grid: FD 1e-3, 1e-4, 5e-5; NF "
            "1e-3, 1e-4, 1e-5)")
    if fd is None:
        grid = ("Table 10 reports FD and NF runs without their coefficients; " + grid)
    mix = "1x1 convolutions" if mixing == "1x1conv" else "shuffle (fixed random) permutations"
    return (
        f"CIFAR-10 INN classifier, {coupling} couplings with {mix} and ActNorm (appendix G, "
        "Table 8): 3 levels x 16 blocks, conv 3x3-ReLU-1x1-ReLU-3x3 with 128 channels, head "
        "BatchNorm1d-ReLU-Linear, Adam(0.9, 0.999) lr 1e-4 / 10 at epochs 60, 120, 160, batch 128,"
        " 200 epochs, weight decay 0, per-channel standardisation, random crop (zero padding 4: "
        "the paper does not give the padding) and horizontal flip, memory-saving gradients "
        f"(Table 11). Regularizers: --regularizer fd --coeff C --every 10 or --regularizer nf "
        f"--coeff C --every 1; {grid}. FD eps 0.1 (appendix G), K = 10 (authors' code)",
        {"task": "classifier", "dataset": "cifar10", "levels": 3, "blocks": 16, "hidden": 128,
         "coupling": coupling, "mixing": "1x1conv" if mixing == "1x1conv" else "random",
         "actnorm": True, "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0,
         "batch_size": 128, "epochs": 200.0, "steps": None, "lr_decay_at": [0.3, 0.6, 0.8],
         "lr_decay": 0.1, "augment": "crop-flip", "memory_saving": True,
         "coeff": float(fd or "1e-4"), "every": 10, "log_every": 50,
         "eval_every": _EPOCH_128, "checkpoint_every": _EPOCH_128,
         "monitor_every": _EPOCH_128, "monitor_samples": 1, "workers": 4})


_CELEBA = {"task": "flow", "dataset": "celeba64", "bits": 5, "image_size": 64, "levels": 4,
           "blocks": 16, "hidden": 512, "actnorm": True, "centered": False, "batch_size": 64,
           "lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 1000, "epochs": 20.0, "steps": None,
           "augment": "none", "memory_saving": False, "log_every": 50, "eval_every": 2500,
           "checkpoint_every": 1000, "monitor_every": 2500, "monitor_samples": 1,
           "workers": 8}
_CELEBA_COMMON = (
    "5-bit CelebA 64x64 (148x148 centre crop resized to 64, Real NVP's preparation; the paper "
    "does not say), dequantised x = (k + u) / 32 in [0, 1) (appendix E.1); Table 7: 4 levels "
    "(squeeze first, no factor-out) x 16 blocks, inner dim 512, ActNorm, batch 64, lr 1e-3 "
    "warmed up over 1000 iterations, weight decay 0. Not in the paper: the training length "
    "(20 epochs, the epoch of Figure 5's samples) and augmentation (none)")
_CHECKERBOARD = {"task": "density", "levels": 1, "blocks": 100, "hidden": 128,
                 "subnet_layers": 4, "actnorm": False, "mixing": "reverse", "n_train": 100000,
                 "batch_size": 500, "optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5,
                 "steps": 10000, "epochs": None, "log_every": 50, "eval_every": 1000,
                 "checkpoint_every": 1000, "monitor_every": 1000, "monitor_samples": 64,
                 "monitor_batch": 1000}
_CHECKERBOARD_COMMON = (
    "2D checkerboard density (appendix C, Table 4): 100 blocks, hidden 128-128-128-128, no "
    "ActNorm, Adam lr 1e-3, weight decay 1e-5, batch 500. Not in the paper: the training length "
    "(10,000 steps) and data size (100,000 points)")

PRESETS.update({
    f"cifar10-classifier-{c}-{m}": _classifier(c, m)
    for c in ("additive", "affine") for m in ("1x1conv", "shuffle")})
PRESETS.update({
    "cifar10-glow": (
        "Glow trained by maximum likelihood on CIFAR-10 (appendix D, Table 6): 3 levels x 32 "
        "blocks, 3 conv layers (3x3-ReLU-1x1-ReLU-3x3) of 512 channels, reverse permutation, "
        "affine couplings with sigmoid(h + 2) scale (Table 1 also trains additive and modified "
        "affine: set coupling / scale in a config file), Adamax lr 5e-4 warmed up linearly over 5 "
        "epochs (3905 steps), weight decay 5e-5, batch 64, 100k updates (Table 1), 10% "
        "translation and horizontal flips, 8-bit uniform dequantization into [-1/2, 1/2) "
        "(appendix D). Not in the paper: ActNorm (on, as Glow) and factoring out (none: the "
        "library's Glow-like network keeps all dimensions, 12, 48, 192 channels per level)",
        {"task": "flow", "dataset": "cifar10", "bits": 8, "levels": 3, "blocks": 32,
         "hidden": 512, "coupling": "affine", "scale": "sigmoid", "mixing": "reverse",
         "actnorm": True, "centered": True, "optimizer": "adamax", "lr": 5e-4,
         "weight_decay": 5e-5, "batch_size": 64, "warmup_steps": 5 * (CIFAR10_TRAIN // 64),
         "steps": 100000, "epochs": None, "augment": "translate-flip", "memory_saving": False,
         "log_every": 50, "eval_every": 5000, "checkpoint_every": 1000, "monitor_every": 5000,
         "monitor_samples": 1, "workers": 4}),
    "celeba64-affine": (
        "Affine coupling flow, standard sigmoid(h + 2) scale in (0, 1), on " + _CELEBA_COMMON
        + "; Adamax, ELU coupling networks conv 3x3-1x1-3x3 (Table 7). Table 7 names no channel "
        "mixing: the couplings alternate the channel half they change",
        {**_CELEBA, "coupling": "affine", "scale": "sigmoid", "mixing": "none",
         "activation": "elu", "optimizer": "adamax"}),
    "celeba64-modified-affine": (
        "Affine coupling flow, modified scale 0.5 sigmoid(h + 2) + 0.5 in (0.5, 1), on "
        + _CELEBA_COMMON + "; Adamax, ELU coupling networks conv 3x3-1x1-3x3 (Table 7). Table 7 "
        "names no channel mixing: the couplings alternate the channel half they change",
        {**_CELEBA, "coupling": "affine", "scale": "modified", "mixing": "none",
         "activation": "elu", "optimizer": "adamax"}),
    "celeba64-resflow": (
        "Residual Flow, spectral coefficient 0.98 (appendix E.1), on " + _CELEBA_COMMON
        + "; Adam, LipSwish, i-ResNet branches conv 3x3-1x1-3x3, FC end (Table 7). The "
        "log-determinant is the power series truncated after 8 terms with 1 trace sample (Table "
        "7's 8 exact terms and 1 sample; the Russian-roulette tail of Residual Flows is not "
        "implemented). Not in the paper: the FC end's size (4 blocks of width 128 here) and the "
        "padding channels (none, so the padding distribution does not apply)",
        {**_CELEBA, "arch": "residual", "activation": "lipswish", "optimizer": "adam",
         "fc_blocks": 4, "fc_hidden": 128, "series_terms": 8}),
    "checkerboard-affine": (
        "Affine couplings with the standard sigmoid(h + 2) scale in (0, 1), swish (SiLU) MLPs, "
        "alternating halves; " + _CHECKERBOARD_COMMON,
        {**_CHECKERBOARD, "coupling": "affine", "scale": "sigmoid", "activation": "silu"}),
    "checkerboard-modified-affine": (
        "Affine couplings with the modified scale 0.5 sigmoid(h + 2) + 0.5 in (0.5, 1), swish "
        "(SiLU) MLPs, alternating halves; " + _CHECKERBOARD_COMMON,
        {**_CHECKERBOARD, "coupling": "affine", "scale": "modified", "activation": "silu"}),
    "checkerboard-resflow": (
        "Residual Flow with spectral coefficient 0.8 (appendix C), LipSwish MLP branches, exact "
        "2x2 log-determinants; " + _CHECKERBOARD_COMMON,
        {**_CHECKERBOARD, "arch": "residual", "activation": "lipswish"}),
})
#: The full-size presets (paper scale, real data; for a GPU).
FULL_SIZE = tuple(name for name in PRESETS if name not in CPU_PRESETS)


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
