"""Models the reproductions train, cached in the experiment's output folder.

:func:`trained_model` trains a :class:`~lipbound.training.trainers.TrainConfig` with the library's
:class:`~lipbound.training.trainers.Trainer` into ``folder`` and returns the network; a later run
with the same config (its ``config.json``) and a finished ``model.pt`` reuses them instead of
training again. :func:`preset_config` picks a full-size preset by name when the installed
:data:`~lipbound.training.presets.PRESETS` has it, else the given fallback settings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..blocks import InvertibleBlock
from ..io import load_model
from ..jsonio import jsonable
from ..training import presets
from ..training.trainers import TrainConfig, Trainer, train

__all__ = ["empty_folder", "is_cached", "log_records", "mark_cached", "preset_config",
           "trained_model"]


def preset_config(name: str, fallback_preset: str, fallback: dict[str, Any],
                  seed: int) -> TrainConfig:
    """The preset ``name`` if it exists, else ``fallback_preset`` with ``fallback`` applied;
    both with ``seed``."""
    if name in presets.PRESETS:
        return presets.load_config(name, {"seed": seed})
    return presets.load_config(fallback_preset, {**fallback, "seed": seed})


def is_cached(folder: Path, record: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a finished ``model.pt`` made with the settings ``record`` (its
    ``config.json``, written by :func:`mark_cached`)."""
    path = Path(folder) / "config.json"
    if not path.is_file() or not (Path(folder) / "model.pt").is_file():
        return False
    return json.loads(path.read_text()) == jsonable(record)


def mark_cached(folder: Path, record: dict[str, Any]) -> None:
    """Record that ``folder/model.pt`` was made with the settings ``record``."""
    (Path(folder) / "config.json").write_text(json.dumps(jsonable(record)))


def empty_folder(folder: Path) -> None:
    """Remove ``folder`` and what it holds (a stale cached run), then create it empty."""
    if Path(folder).exists():
        shutil.rmtree(folder)
    Path(folder).mkdir(parents=True)


def trained_model(config: TrainConfig, folder: Path, device: str = "cpu",
                  progress: bool = False) -> tuple[InvertibleBlock, bool]:
    """The network of ``config`` trained into ``folder`` (or the one cached there by an earlier
    run of the same config) and whether it was cached. A run that did not finish (non-finite
    loss) is trained again each time; its network is returned as it ended."""
    folder = Path(folder)
    if is_cached(folder, config.to_dict()):
        return load_model(folder / "model.pt"), True
    empty_folder(folder)
    result = train(config, folder, device=device, progress=progress)
    if result.status == "done":
        mark_cached(folder, config.to_dict())
        return load_model(folder / "model.pt"), False
    state = torch.load(folder / "checkpoint.pt", weights_only=False)
    trainer = Trainer(config, folder / "reload", device=device, progress=False)
    trainer.flow.load_state_dict(state["flow"])
    trainer.close()
    return trainer.flow, False


def log_records(folder: Path, kind: str) -> list[dict[str, Any]]:
    """The records of ``kind`` (``"monitor"``, ``"train"``, ...) in ``folder/log.jsonl``."""
    records = []
    for line in (Path(folder) / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == kind:
            records.append(record)
    return records
