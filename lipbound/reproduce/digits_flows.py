"""The flows of the OOD table and the invertibility attack, trained by maximum likelihood on the
8x8 digits (appendices D and E at CPU scale), cached in the experiment's output folder.

* ``affine``, ``modified-affine``: the library's Glow-like flow (the ``digits-flow`` preset of
  :mod:`lipbound.training.presets`, affine couplings with the scale ``sigmoid(h + 2)`` in
  ``(0, 1)`` or ``0.5 sigmoid(h + 2) + 0.5`` in ``(0.5, 1)``), trained by the library's
  :class:`~lipbound.training.trainers.Trainer`.
* ``resflow``: a Residual Flow (:func:`lipbound.blocks.residual_flow` on ``(1, 8, 8)``: ActNorm
  and i-ResNet blocks with convolutional branches, spectral coefficient ``0.98`` as on images)
  trained on the same data and loss by a plain loop here, since the trainer's ``flow`` task
  builds Glow-like networks only. It trains with the i-ResNet power-series log-determinant (8
  terms, one Hutchinson probe, as Table 7) and is evaluated with the exact one.

Both see the digits task's data: grey levels ``k`` in ``0..16`` dequantised as
``x = (k + u) / 17 - 1/2`` in ``[-1/2, 1/2)``, first 1500 digits for training, 297 for test. At
``full`` scale the CelebA64 presets ``celeba64-affine``, ``celeba64-modified-affine`` and
``celeba64-resflow`` are used when :data:`~lipbound.training.presets.PRESETS` has them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..blocks import InvertibleBlock, residual_flow
from ..blocks.residual import InvertibleResidual
from ..io import load_model, save_model
from ..training import presets
from ..training.tasks import TASKS, Task
from ..training.trainers import TrainConfig
from .common import Settings
from .trained import empty_folder, is_cached, mark_cached, trained_model

__all__ = ["DIGITS_MODELS", "DigitsFlow", "digits_flow"]

#: Model name -> (full-size preset, overrides of the ``digits-flow`` preset).
DIGITS_MODELS: dict[str, tuple[str, dict]] = {
    "affine": ("celeba64-affine", {"scale": "sigmoid"}),
    "modified-affine": ("celeba64-modified-affine", {"scale": "modified"}),
    "resflow": ("celeba64-resflow", {}),
}
#: Power-series terms of the Residual Flow's training log-determinant (Table 7: 8 exact terms).
SERIES_TERMS = 8
#: Residual Flow sizes per scale: blocks, width, steps.
RESFLOW_SIZES = {"smoke": (1, 8, 3), "cpu": (4, 32, 200), "full": (16, 128, 20000)}


@dataclass
class DigitsFlow:
    """A trained flow, its data and how they are quantised.

    Attributes:
        name: ``"affine"``, ``"modified-affine"`` or ``"resflow"``.
        model: the network (float32, evaluation mode).
        task: the training task (``task.eval_data()``: dequantised test data).
        levels: quantisation levels of the data; offset: ``x = offset + (k + u) / levels``.
        test_bpd: bits per dimension on the test data.
        cached: whether the model came from the cache.
        description: the model in words.
    """

    name: str
    model: InvertibleBlock
    task: Task
    levels: int
    offset: float
    test_bpd: float
    cached: bool
    description: str


def _flow_config(name: str, settings: Settings) -> TrainConfig:
    preset, overrides = DIGITS_MODELS[name]
    if settings.scale == "full" and preset in presets.PRESETS:
        return presets.load_config(preset, {"seed": settings.seed})
    sizes = settings.pick({"steps": 3, "blocks": 1, "hidden": 8}, {}, {"blocks": 8,
                                                                       "hidden": 64})
    return presets.load_config("digits-flow", {
        **overrides, **sizes, "seed": settings.seed, "eval_every": 0, "monitor_every": 0,
        "monitor_samples": 0, "monitor_batch": 16, "checkpoint_every": 0})


def _task(config: TrainConfig, device: str) -> Task:
    return TASKS[config.task](config, torch.device(device), torch.float32)


def _quantisation(config: TrainConfig, task: Task) -> tuple[int, float]:
    levels = int(getattr(task, "n_bins", None) or 2 ** getattr(config, "bits", 8))
    return levels, (-0.5 if getattr(config, "centered", True) else 0.0)


def _train_resflow(config: TrainConfig, task: Task, sizes: tuple[int, int, int],
                   folder: Path, device: str, progress: bool) -> tuple[InvertibleBlock, bool]:
    blocks, hidden, steps = sizes
    record = {"blocks": blocks, "hidden": hidden, "steps": steps, "seed": config.seed,
              "lr": config.lr, "batch_size": config.batch_size}
    if is_cached(folder, record):
        return load_model(folder / "model.pt"), True
    empty_folder(folder)
    torch.manual_seed(config.seed)
    shape = task.input_shape
    model = residual_flow(shape, blocks, hidden, coeff=0.98, actnorm=True, log_det="series",
                          n_series_terms=SERIES_TERMS).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    order = torch.Generator().manual_seed(config.seed + 1)
    noise = torch.Generator(device=device).manual_seed(config.seed + 3)
    from tqdm import tqdm

    for _ in tqdm(range(steps), desc="train resflow", disable=not progress):
        index = torch.randperm(task.n_train, generator=order)[:config.batch_size]
        x, _ = task.batch(index, noise)
        optimizer.zero_grad(set_to_none=True)
        loss, _ = task.loss(model, None, x, None)
        loss.backward()
        optimizer.step()
    for block in model.modules():
        if isinstance(block, InvertibleResidual):
            block.log_det = "exact"
    model.eval()
    save_model(model, folder / "model.pt")
    mark_cached(folder, record)
    return model, False


def digits_flow(name: str, settings: Settings) -> DigitsFlow:
    """Model ``name`` trained (or reused from ``settings.out / "models" / name``)."""
    config = _flow_config(name, settings)
    folder = settings.out / "models" / name
    uses_preset = config.task != "flow" or getattr(config, "dataset", None) is not None
    task = _task(config, settings.device)
    if name == "resflow" and not uses_preset:
        sizes = RESFLOW_SIZES[settings.scale]
        model, cached = _train_resflow(config, task, sizes, folder, settings.device,
                                       settings.progress)
        description = (f"Residual Flow, {sizes[0]} i-ResNet blocks of width {sizes[1]}, "
                       f"c = 0.98, {sizes[2]} steps")
    else:
        model, cached = trained_model(config, folder, settings.device, settings.progress)
        description = (f"Glow-like, {config.levels} x {config.blocks} blocks of width "
                       f"{config.hidden}, {config.scale} scale, {config.steps or config.epochs} "
                       f"{'steps' if config.steps else 'epochs'}")
    # load_model maps a cached model to the CPU; the task's data sit on settings.device
    model = model.to(settings.device).float().eval()
    bpd = task.evaluate(model, None).get("test_bpd", float("nan"))
    levels, offset = _quantisation(config, task)
    return DigitsFlow(name, model, task, levels, offset, float(bpd), cached, description)


def dequantization_centres(x: Tensor, levels: int, offset: float) -> Tensor:
    """The centres ``offset + (floor((x - offset) levels) + 1/2) / levels`` of the cells holding
    the entries of the dequantised data ``x`` (float64)."""
    k = torch.floor((x.detach().to(torch.float64) - offset) * levels)
    return offset + (k + 0.5) / levels
