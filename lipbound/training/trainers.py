"""Trainers for the paper's settings: thin users of the library pieces (:mod:`.tasks` for data,
networks and task losses; the regularizers; memory-saving gradients; :class:`StabilityMonitor`).

One :class:`Trainer` runs every setting. Each optimizer step is :meth:`Trainer.train_step` (zero
gradients, task loss plus regularizer under the autocast of ``amp``, backward through the fp16
gradient scaler, optimizer and scheduler step), on one device or on several processes launched
by torchrun (:mod:`.distributed`: DistributedDataParallel, each rank its part of the global
batch, rank 0 logging and checkpointing). Around it the trainer keeps

* a JSON-lines log ``log.jsonl`` (``kind`` = ``"train"``: loss, the task metric, learning rate,
  memory-saving fallbacks; ``"eval"``; ``"monitor"`` and ``"warning"`` from the monitor;
  ``"interrupted"``, ``"stopped"``, ``"done"``), and a tqdm bar on stderr;
* an atomic checkpoint ``checkpoint.pt`` (:mod:`.checkpoint`) holding the network, head,
  optimizer, scheduler, every random state (torch CPU and CUDA, numpy, Python, the data-order and
  dequantization generators), the data order (epoch, position, permutation), the monitor's
  alarms, the fallback count, the fp16 gradient scaler and the log's length: resuming from it
  reproduces the uninterrupted run bit for bit (same device, dtype and threads; on several
  processes every rank resumes from rank 0's checkpoint), and lines logged after it are dropped;
* Ctrl-C handling: the first Ctrl-C (or a ``KeyboardInterrupt`` raised by a callback) ends the
  run after the current step with a checkpoint; a second Ctrl-C during a step stops at once
  without writing one (the previous checkpoint stays).

The network is saved as ``model.pt`` (``torch.save`` of the invertible network, so ``lipbound
check --model`` and ``lipbound diagnose`` read it) and the final figures as ``summary.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..blocks import ActNorm
from ..errors import InputError
from ..io import save_model
from ..jsonio import dump_json
from ..precision import TORCH_DTYPES, torch_dtype
from .agreement import gradient_agreement
from .amp import AMP_MODES, autocast, check_amp
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .ddp import call
from .distributed import context, global_batch_norm, resolve_device
from .losses import nf_loss
from .memory import MemorySaving, fork_rng, memory_saving
from .monitor import JsonLinesLog, StabilityMonitor
from .regularizers import fd_regularizer
from .tasks import TASKS, Task, eval_mode, validate_data_settings

__all__ = ["TrainConfig", "TrainResult", "Trainer", "deterministic_algorithms",
           "resolve_device", "train"]

REGULARIZERS = ("none", "fd", "nf")
OPTIMIZERS = ("adam", "adamax", "sgd")


@dataclass
class TrainConfig:
    """Everything a run depends on (``lipbound train`` reads it from a preset or a JSON/TOML file).

    Attributes:
        task: ``"classifier"``, ``"flow"``, ``"regression"`` or ``"density"`` (:mod:`.tasks`).
        arch: ``"glow"`` (Glow-like: images of digits, or vector Glow of MLP couplings for the
            2D tasks) or ``"residual"`` (a Residual Flow, 2D tasks only; no memory saving).
        levels, blocks: levels and blocks per level (2D tasks: ``levels * blocks`` blocks).
        hidden: width of the coupling sub-networks.
        coupling: ``"additive"`` or ``"affine"``. mixing: ``"1x1conv"``, ``"lu"``,
            ``"reverse"``, ``"random"`` or ``"none"`` (2D: the last three). scale: the affine
            scale (``"sigmoid"``, ``"modified"`` = ``0.5 sigmoid(h + 2) + 0.5``, ...).
        actnorm: ActNorm before every block.
        n_train: points of the 2D datasets.
        steps: optimizer steps; ``None`` means ``epochs`` epochs.
        epochs: epochs when ``steps`` is ``None`` (an epoch is ``n_train // batch_size`` steps).
        batch_size: samples per step (capped at the training set size; a last partial batch is
            dropped).
        optimizer: ``"adam"``, ``"adamax"`` or ``"sgd"``; lr, weight_decay: its settings.
        warmup_steps: linear learning-rate warm-up from ``lr / warmup_steps`` (appendix D).
        lr_decay_at: fractions of the run where the learning rate is multiplied by ``lr_decay``
            (appendix G: epochs 60, 120, 160 of 200 = 0.3, 0.6, 0.8).
        regularizer: ``"none"``, ``"fd"`` (eq. 6) or ``"nf"`` (eq. 7; not for the likelihood
            tasks, whose loss it already is); coeff: its coefficient; every: apply it every K
            steps; fd_eps, fd_direction: the FD step and ``"both"``/``"forward"``/``"inverse"``.
        memory_saving: train through memory-saving gradients; memsave_tol: their
            reconstruction tolerance (``None``: the wrapper's default).
        seed: seeds the network, the data, their order and the dequantization noise.
        dtype: ``"float32"`` or ``"float64"`` (also ``"float16"``/``"bfloat16"``).
        amp: ``"none"``, ``"bf16"`` or ``"fp16"``: automatic mixed precision of a float32 model
            (``torch.autocast``; fp16 with a gradient scaler; :mod:`.amp`) of the training
            steps; evaluations run in the model's dtype.
        log_every, eval_every, checkpoint_every, monitor_every: intervals in steps (0: only at
            the end; the monitor also measures at step 0).
        monitor_samples: samples whose Jacobian spectrum the monitor computes;
            monitor_batch: samples of its round trips; cond_threshold: its warning threshold
            (``None``: ``0.01 / eps`` of ``dtype``).
        dataset: the image tasks' data, ``"cifar10"``, ``"svhn"`` or ``"celeba64"``
            (:mod:`.datasets`; ``None``: scikit-learn's digits, and the 2D tasks' own data);
            data_root: its folder (torchvision's ``root``); bits: quantisation of its pixels
            (appendix E: 5 on CelebA64); image_size: CelebA's side after its 148x148 centre crop
            (``None``: 64); workers: DataLoader processes decoding the data.
        augment: per batch, ``"none"``, ``"flip"``, ``"crop-flip"`` (appendix G) or
            ``"translate-flip"`` (appendix D), see :func:`.tasks.augment_batch`.
        centered: flow inputs in ``[-1/2, 1/2)`` (Glow) rather than ``[0, 1)`` (Residual Flows).
        activation: of the sub-networks (``None``: ReLU for couplings, ELU for the 2D residual
            branches, LipSwish for the image ones); subnet_layers: hidden layers of the 2D MLPs.
        fc_blocks, fc_hidden: fully connected i-ResNet blocks after an image Residual Flow and
            their width; series_terms: terms of its log-determinant power series.
    """

    task: str = "classifier"
    arch: str = "glow"
    levels: int = 2
    blocks: int = 4
    hidden: int = 32
    coupling: str = "affine"
    mixing: str = "1x1conv"
    scale: str = "sigmoid"
    actnorm: bool = True
    n_train: int = 10000
    steps: int | None = None
    epochs: float | None = 10.0
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_decay_at: list[float] = field(default_factory=list)
    lr_decay: float = 0.1
    regularizer: str = "none"
    coeff: float = 1e-4
    every: int = 1
    fd_eps: float = 0.1
    fd_direction: str = "both"
    memory_saving: bool = False
    memsave_tol: float | None = None
    seed: int = 0
    dtype: str = "float32"
    amp: str = "none"
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 100
    monitor_every: int = 100
    monitor_samples: int = 4
    monitor_batch: int = 64
    cond_threshold: float | None = None
    dataset: str | None = None
    data_root: str = "data"
    bits: int = 8
    image_size: int | None = None
    augment: str = "none"
    workers: int = 0
    centered: bool = True
    activation: str | None = None
    subnet_layers: int = 2
    fc_blocks: int = 0
    fc_hidden: int = 128
    series_terms: int = 8

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """A config from ``values``: unknown keys and values of the wrong type are errors that
        name the key and ``source``."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise InputError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
        defaults = cls()
        for key, value in values.items():
            _check_type(key, value, getattr(defaults, key), fields[key].type, source)
        cfg = cls(**values)
        cfg.validate(source)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, source: str = "config") -> None:
        """Raise :class:`~lipbound.errors.InputError` naming the first bad setting."""
        choices = {"task": tuple(TASKS), "arch": ("glow", "residual"),
                   "coupling": ("additive", "affine"), "optimizer": OPTIMIZERS,
                   "regularizer": REGULARIZERS, "fd_direction": ("both", "forward", "inverse")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise InputError(f"{source}: {key} must be one of {list(allowed)}, "
                                 f"got {getattr(self, key)!r}")
        if self.dtype not in TORCH_DTYPES:
            raise InputError(f"{source}: dtype must be one of {list(TORCH_DTYPES)}, "
                             f"got {self.dtype!r}")
        if self.amp not in AMP_MODES:
            raise InputError(f"{source}: amp must be one of {list(AMP_MODES)}, got {self.amp!r}")
        if self.amp != "none" and self.dtype != "float32":
            raise InputError(f"{source}: amp {self.amp!r} (--amp) needs dtype float32 (autocast "
                             f"runs float32 operations in {self.amp}; the weights stay float32), "
                             f"got dtype {self.dtype!r}")
        positive = ("levels", "blocks", "hidden", "n_train", "batch_size", "every",
                    "monitor_batch")
        for key in positive:
            if getattr(self, key) < 1:
                raise InputError(f"{source}: {key} must be >= 1, got {getattr(self, key)}")
        for key in ("log_every", "eval_every", "checkpoint_every", "monitor_every",
                    "monitor_samples", "warmup_steps"):
            if getattr(self, key) < 0:
                raise InputError(f"{source}: {key} must be >= 0, got {getattr(self, key)}")
        if self.steps is None and self.epochs is None:
            raise InputError(f"{source}: give steps or epochs")
        if self.steps is not None and self.steps < 1:
            raise InputError(f"{source}: steps must be >= 1, got {self.steps}")
        if self.steps is None and not self.epochs > 0:
            raise InputError(f"{source}: epochs must be > 0, got {self.epochs}")
        for key in ("lr", "fd_eps"):
            if not getattr(self, key) > 0:
                raise InputError(f"{source}: {key} must be > 0, got {getattr(self, key)}")
        if not self.coeff >= 0 or self.weight_decay < 0 or not self.lr_decay > 0:
            raise InputError(f"{source}: coeff and weight_decay must be >= 0 and lr_decay > 0")
        if any(not 0 < f < 1 for f in self.lr_decay_at):
            raise InputError(f"{source}: lr_decay_at must hold fractions in (0, 1), "
                             f"got {self.lr_decay_at}")
        if self.regularizer == "nf" and self.task in ("flow", "density"):
            raise InputError(f"{source}: regularizer 'nf' is already the loss of task "
                             f"{self.task!r}; use 'none' or 'fd'")
        if self.arch == "residual" and self.task == "classifier":
            raise InputError(f"{source}: arch 'residual' is for the tasks flow, regression and "
                             f"density, got task {self.task!r}")
        validate_data_settings(self, source)
        if self.arch == "residual" and self.memory_saving:
            raise InputError(f"{source}: memory_saving needs analytic inverses; arch 'residual' "
                             "has iterative ones")


def _check_type(key: str, value: Any, default: Any, annotation: str, source: str) -> None:
    optional = "None" in str(annotation)
    if value is None:
        if not optional:
            raise InputError(f"{source}: {key} must not be null")
        return
    if "list" in str(annotation):
        ok = isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        want = "a list of numbers"
    elif "bool" in str(annotation):
        ok, want = isinstance(value, bool), "true or false"
    elif "float" in str(annotation):
        ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif "int" in str(annotation):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    else:
        ok, want = isinstance(value, str), "a string"
    if not ok:
        raise InputError(f"{source}: {key} must be {want}, got {value!r}")


@contextlib.contextmanager
def deterministic_algorithms(device: torch.device) -> Iterator[None]:
    """Deterministic kernels within the context: ``torch.use_deterministic_algorithms(True)``
    (an operation without a deterministic kernel raises), cuDNN deterministic and not
    benchmarking, and on CUDA ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS needs it; set before
    its first use unless already set). The previous settings are restored at the end."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]


class _NoLog:
    """The log of ranks other than 0: writes nothing."""

    offset = 0

    def __call__(self, record: dict[str, Any]) -> None:
        pass

    def truncate(self, offset: int) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class TrainResult:
    """What a run ended with.

    Attributes:
        step: optimizer steps done. epoch: the current epoch (0-based).
        status: ``"done"``, ``"interrupted"`` (Ctrl-C; a checkpoint holds the state) or
            ``"stopped"`` (the loss went non-finite).
        train: the last ``"train"`` record; eval: the final evaluation (rank 0; empty on the
            other ranks); monitor: the last monitor record; fallbacks: memory-saving fallback
            events.
        out: the run folder.
        precision: the precision the model ran in: ``{"dtype": ..., "amp": ...}``.
        skipped_steps: optimizer steps the fp16 gradient scaler skipped (Inf or NaN gradients).
        processes: the number of processes (torchrun's ``WORLD_SIZE``).
    """

    step: int
    epoch: int
    status: str
    train: dict[str, Any]
    eval: dict[str, Any]
    monitor: dict[str, Any] | None
    fallbacks: int
    out: Path
    precision: dict[str, str] = field(default_factory=dict)
    skipped_steps: int = 0
    processes: int = 1


Callback = Callable[["Trainer", int, dict[str, Any]], None]


class Trainer:
    """Run one :class:`TrainConfig` into the folder ``out`` (see the module docstring).

    Under an initialised ``torch.distributed`` process group of several processes (torchrun,
    :func:`.distributed.session`) the trainer runs data-parallel (:mod:`.distributed`); every
    rank must then build it with the same arguments, and callbacks run on every rank.

    Args:
        config: the run's settings.
        out: the run folder (created; written by rank 0 only).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (on several processes ``"cuda"``: each
            takes ``cuda:LOCAL_RANK``).
        progress: show a tqdm bar on stderr (rank 0).
        callbacks: functions ``(trainer, step, train_record)`` called after every step (the
            record is empty between ``log_every`` steps).
        channels_last: keep images and convolution weights in ``torch.channels_last`` memory
            format (NHWC): faster convolutions on CUDA, mostly under ``amp`` (tensor cores);
            image tasks only.
        compile: ``torch.compile`` the network for training (``True``: the default backend,
            inductor; or a backend name). Refused with memory-saving gradients: their pass is
            a custom autograd function that saves random states and checks its reconstruction
            on the host, which ``torch.compile`` cannot trace (it breaks the graph there and
            runs the pass uncompiled).
        deterministic: deterministic kernels (:func:`deterministic_algorithms`) while the
            trainer lives (until :meth:`close`).
    """

    def __init__(self, config: TrainConfig, out: str | Path, device: str = "cpu",
                 progress: bool = True, callbacks: tuple[Callback, ...] = (), *,
                 channels_last: bool = False, compile: bool | str = False,
                 deterministic: bool = False) -> None:
        config.validate()
        if compile and config.memory_saving:
            raise InputError("--compile: memory-saving gradients cannot be compiled (their pass "
                             "is a custom autograd function that saves random states and checks "
                             "its reconstruction on the host: torch.compile breaks the graph "
                             "there and runs it uncompiled); use --no-memory-saving with "
                             "--compile, or drop --compile")
        self.config, self.out = config, Path(out)
        self.dist = context(device)
        self.device, self.dtype = self.dist.device, torch_dtype(config.dtype)
        check_amp(config.amp, self.device, self.dtype)
        self.progress, self.callbacks = progress and self.dist.is_main, tuple(callbacks)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        self.task: Task = TASKS[config.task](config, self.device, self.dtype)
        if self.batch_size % self.dist.world_size:
            raise InputError(f"batch_size {self.batch_size} is not divisible by the "
                             f"{self.dist.world_size} processes (WORLD_SIZE): each takes an "
                             "equal part of the global batch")
        self.memory_format = self._memory_format(channels_last)
        self.flow = self.task.build_flow().to(device=self.device, dtype=self.dtype)
        head = self.task.build_head()
        if head is not None and self.dist.distributed:
            head = global_batch_norm(head)
        self.head = None if head is None else head.to(device=self.device, dtype=self.dtype)
        if self.memory_format is not None:
            for module in (self.flow, self.head):
                if module is not None:
                    module.to(memory_format=self.memory_format)
        self.train_flow = self._memory_saving() if config.memory_saving else self.flow
        params = list(self.flow.parameters()) + ([] if self.head is None
                                                 else list(self.head.parameters()))
        self.optimizer = _optimizer(config, params)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.skipped_steps = 0
        self._scale: float | None = None
        self.total_steps = self._total_steps()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_factor(config.warmup_steps, config.lr_decay_at, config.lr_decay,
                                       self.total_steps))
        self.data_gen = torch.Generator().manual_seed(config.seed + 1)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(config.seed + 3)
        self.step, self.epoch, self.position = 0, 0, 0
        self.order = torch.randperm(self.task.n_train, generator=self.data_gen)
        x_mon, y_mon, latent = self.task.monitor_data(config.monitor_batch)
        self._monitor_batch = (x_mon, y_mon)
        self.log = JsonLinesLog(self.out / "log.jsonl") if self.dist.is_main else _NoLog()
        self.monitor = StabilityMonitor(self.flow, x_mon, max(config.monitor_every, 1), latent,
                                        config.monitor_samples,
                                        cond_threshold=config.cond_threshold,
                                        gradient_check=self._gradient_check, log=self.log,
                                        seed=config.seed, amp=config.amp)
        # what the step runs: DDP wrappers on several processes, compiled if asked
        self.net = self.dist.wrap(self.train_flow)
        self.net_head = self.dist.wrap(self.head)
        if compile:
            self.net = torch.compile(self.net, **({} if compile is True
                                                  else {"backend": compile}))
        self._actnorm_ready = False
        self._stop_requested = False
        self._in_step = False
        self.last_train: dict[str, Any] = {}
        self._settings = contextlib.ExitStack()  # last: nothing below can fail and leave them set
        if deterministic:
            self._settings.enter_context(deterministic_algorithms(self.device))

    # -- construction helpers -------------------------------------------------------------

    def _memory_saving(self) -> nn.Module:
        return memory_saving(self.flow, policy="fallback", tol=self.config.memsave_tol)

    def _memory_format(self, channels_last: bool) -> torch.memory_format | None:
        if not channels_last:
            return None
        if len(self.task.input_shape) != 3:
            raise InputError(f"--channels-last is for image models (inputs (B, C, H, W) through "
                             f"convolutions); task {self.config.task!r} has inputs of shape "
                             f"{self.task.input_shape}")
        return torch.channels_last

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast region of ``config.amp`` (a no-op without mixed precision)."""
        return autocast(self.config.amp, self.device)

    def _aside(self) -> contextlib.AbstractContextManager:
        """Measurements (evaluation, the monitor) run on rank 0 with the random states restored
        afterwards: they take nothing from the streams every rank shares (the next FD
        directions, dropout masks)."""
        return fork_rng(self.device)

    def _gradient_check(self) -> dict[str, Any]:
        """Angle and relative norm difference between memory-saving and true gradients of the
        task loss on the monitor's batch (:func:`gradient_agreement`; the head, if any, in
        evaluation mode so that its BatchNorm statistics stay untouched)."""
        if any(not bool(m.initialized) for m in self.flow.modules() if isinstance(m, ActNorm)):
            return {"skipped": "ActNorm not initialised yet"}

        def loss_fn(net: nn.Module, batch: tuple[Tensor, Tensor | None]) -> Tensor:
            with eval_mode(*([] if self.head is None else [self.head])):
                return self.task.loss(net, self.head, *batch)[0]

        tol = self.config.memsave_tol
        return gradient_agreement(self.flow, loss_fn, [self._monitor_batch], tol=tol).summary()

    @property
    def batch_size(self) -> int:
        return min(self.config.batch_size, self.task.n_train)

    @property
    def steps_per_epoch(self) -> int:
        return self.task.n_train // self.batch_size

    def _total_steps(self) -> int:
        if self.config.steps is not None:
            return self.config.steps
        return max(1, math.ceil(self.config.epochs * self.steps_per_epoch))

    @property
    def fallbacks(self) -> int:
        """Memory-saving fallback events so far (0 without memory saving)."""
        return int(getattr(self.train_flow, "fallbacks", 0))

    # -- the step ---------------------------------------------------------------------------

    def global_batch(self) -> tuple[Tensor, Tensor | None]:
        """The next global batch of ``batch_size`` samples in the data order (a new
        permutation every epoch); the same on every rank (seeded alike)."""
        if self.position + self.batch_size > self.task.n_train:
            self.epoch += 1
            self.position = 0
            self.order = torch.randperm(self.task.n_train, generator=self.data_gen)
        index = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return self.task.batch(index, self.noise_gen)

    def next_batch(self) -> tuple[Tensor, Tensor | None]:
        """This rank's part of the next global batch (all of it on one process), initialising
        ActNorm on the whole global batch first if needed."""
        x, y = self.global_batch()
        self._initialize_actnorm(x)
        return self._format(self.dist.shard(x)), self.dist.shard(y)

    def _format(self, x: Tensor) -> Tensor:
        return x if self.memory_format is None else x.contiguous(memory_format=self.memory_format)

    def _initialize_actnorm(self, x: Tensor) -> None:
        """ActNorm's data-dependent initialisation, on the global batch ``x`` in a plain no-grad
        forward (under the training's autocast): every rank gets the parameters a single
        process would, and the FD regularizer's joint clean-and-perturbed batch never
        initialises it."""
        if self._actnorm_ready:
            return
        if any(not bool(m.initialized) for m in self.flow.modules() if isinstance(m, ActNorm)):
            with torch.no_grad(), self.autocast():
                self.flow(self._format(x))
        self._actnorm_ready = True

    def losses(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """Task loss plus this step's regularizer (every ``every`` steps), sharing one network
        pass: the FD regularizer's clean pass, or :meth:`Task.network_pass`."""
        cfg, flow = self.config, self.net
        active = cfg.regularizer != "none" and self.step % cfg.every == 0
        want_log_det = self.task.needs_log_det or (active and cfg.regularizer == "nf")
        reg = None
        if active and cfg.regularizer == "fd":
            # on several processes each draws the directions of the global batch and keeps its
            # rows: the same directions as one process
            shard = (self.dist.rank, self.dist.world_size) if self.dist.distributed else None
            fd = fd_regularizer(flow, x, eps=cfg.fd_eps, coeff=cfg.coeff,
                                direction=cfg.fd_direction, with_log_det=want_log_det,
                                shard=shard)
            z, log_det, reg = fd.z, fd.log_det, fd.loss
        elif want_log_det:
            z, log_det = call(flow, x, with_log_det=True)
        else:
            z, log_det = call(flow, x), None
        if active and cfg.regularizer == "nf":
            reg = nf_loss(flow, x, coeff=cfg.coeff, z=z, log_det=log_det).loss
        loss, metrics = self.task.objective(flow, z, log_det, x, y, self.net_head)
        if reg is not None:
            loss = loss + reg
            metrics["regularizer"] = reg.detach()
        return loss, metrics

    def train_step(self, x: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        """One optimizer step on this rank's batch; returns the metrics as tensors (no host sync
        except fp16's: whether the gradient scaler skipped the step).

        The forward runs under the autocast of ``amp``, the backward outside it (autograd runs
        each operation's backward in its forward's dtype). With fp16 the loss is scaled before
        the backward and the gradients unscaled inside ``scaler.step`` (a gradient clipping
        would go after ``scaler.unscale_(optimizer)``); a step with Inf or NaN gradients is
        skipped and counted in :attr:`skipped_steps`."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss, metrics = self.losses(x, y)
        if self.scaler.is_enabled() and self._scale is None:
            self._scale = self.scaler.get_scale()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            if scale < self._scale:  # the scaler backs off after Inf or NaN gradients
                self.skipped_steps += 1
            self._scale = scale
        with warnings.catch_warnings():
            # a skipped first step makes the scheduler warn that it stepped before the optimizer
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.scheduler.step()
        return metrics

    # -- checkpoints ------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` needs to continue exactly."""
        return {
            "config": self.config.to_dict(),
            "input_shape": list(self.task.input_shape),
            "flow": self.flow.state_dict(),
            "head": None if self.head is None else self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.device),
            "data_gen": self.data_gen.get_state(),
            "noise_gen": self.noise_gen.get_state(),
            "step": self.step, "epoch": self.epoch, "position": self.position,
            "order": self.order,
            "monitor": self.monitor.state_dict(),
            "fallbacks": self.fallbacks,
            "scaler": self.scaler.state_dict(),
            "skipped_steps": self.skipped_steps,
            "memory_saving": (self.train_flow.counts() if isinstance(self.train_flow, MemorySaving)
                              else None),
            "last_train": self.last_train,
            "log_offset": self.log.offset,
        }

    def save_checkpoint(self) -> None:
        """Write the checkpoint (rank 0), then wait for it on every rank."""
        if self.dist.is_main:
            save_checkpoint(self.state_dict(), self.checkpoint_path)
        self.dist.barrier()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.flow.load_state_dict(state["flow"])
        if self.head is not None:
            self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], self.device)
        self.data_gen.set_state(state["data_gen"])
        self.noise_gen.set_state(state["noise_gen"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.order = state["order"]
        self.monitor.load_state_dict(state["monitor"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps, self._scale = int(state.get("skipped_steps", 0)), None
        if isinstance(self.train_flow, MemorySaving):
            if state.get("memory_saving") is None:  # written before the counters were saved
                warnings.warn("the checkpoint holds no memory-saving pass counters (an older "
                              "lipbound wrote it): they restart at 0, so the check's schedule, "
                              "and the resumed run, may differ from an uninterrupted one",
                              stacklevel=2)
            else:
                self.train_flow.load_counts(state["memory_saving"])
        self.last_train = state["last_train"]
        self.log.truncate(state["log_offset"])

    def resume(self) -> None:
        """Continue from ``checkpoint.pt`` in the run folder (rank 0's, sent to every rank)."""
        state = self.dist.from_main(lambda: load_checkpoint(self.checkpoint_path))
        # keys an older checkpoint lacks had their present defaults (amp: "none"); where the
        # data lie and how many processes read them do not change the run
        free = ("steps", "epochs", "data_root", "workers")
        saved = {k: v for k, v in {**TrainConfig().to_dict(), **state["config"]}.items()
                 if k not in free}
        now = {k: v for k, v in self.config.to_dict().items() if k not in free}
        differ = sorted(k for k in now if saved.get(k) != now[k])
        if differ:
            raise InputError(
                f"resume: the run in {str(self.out)!r} was made with other settings for "
                f"{differ} (saved: {[saved.get(k) for k in differ]}, now: "
                f"{[now[k] for k in differ]}); only steps/epochs (and data_root, workers) may "
                "change on resume")
        self.load_state_dict(state)

    # -- the loop ---------------------------------------------------------------------------

    @contextmanager
    def _deferred_sigint(self) -> Iterator[None]:
        """First Ctrl-C: stop after the current step; a second one raises at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        old = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, old)

    def _train_record(self, metrics: dict[str, Tensor]) -> dict[str, Any]:
        record = {"kind": "train", "step": self.step, "epoch": self.epoch}
        record.update({k: float(v) for k, v in self.dist.mean(metrics).items()})
        record["lr"] = self.scheduler.get_last_lr()[0]
        record["fallbacks"] = self.fallbacks
        if self.scaler.is_enabled():
            record["skipped_steps"] = self.skipped_steps
        return record

    def _due(self, every: int) -> bool:
        return (every > 0 and self.step % every == 0) or self.step == self.total_steps

    def fit(self) -> TrainResult:
        """Train to ``total_steps`` (from the current state); see the module docstring."""
        from tqdm import tqdm

        status = "done"
        if self.step == 0:
            self.log.truncate(0)
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.config.task}",
                   unit="step", file=sys.stderr, disable=not self.progress, dynamic_ncols=True)
        if self.step == 0 and self.config.monitor_every > 0:
            self._measure()
        try:
            with self._deferred_sigint():
                while self.step < self.total_steps and not self._stop_requested:
                    status = self._one_step(bar)
                    if status == "stopped":
                        break
                if status == "running":
                    status = "done"
                if self._stop_requested and status != "stopped":
                    status = "interrupted"
        except KeyboardInterrupt:
            if self._in_step:
                bar.close()
                self.log({"kind": "interrupted", "step": self.step, "checkpoint": False})
                raise
            status = "interrupted"
        finally:
            bar.close()
        return self._finish(status)

    def _measure(self) -> None:
        if self.dist.is_main:
            with self._aside():
                self.monitor.measure(self.step)

    def _evaluate(self) -> dict[str, Any]:
        """The evaluation record (rank 0; empty elsewhere)."""
        if not self.dist.is_main:
            return {}
        with self._aside():  # float32 metrics: the monitor reports amp round trips
            return {"kind": "eval", "step": self.step,
                    **self.task.evaluate(self.flow, self.head)}

    def _one_step(self, bar) -> str:
        self._in_step = True
        x, y = self.next_batch()
        metrics = self.train_step(x, y)
        self.step += 1
        self._in_step = False
        bar.update(1)
        # every rank stops after the same step (Ctrl-C may reach them at different times)
        self._stop_requested = self.dist.any(self._stop_requested)
        record: dict[str, Any] = {}
        if self._due(self.config.log_every):
            record = self._train_record(metrics)
            self.log(record)
            self.last_train = record
            bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", self.task.metric)
                             if k in record})
            if not math.isfinite(record["loss"]):
                self.log({"kind": "stopped", "step": self.step,
                          "reason": "the loss is not finite"})
                return "stopped"
        if (self.config.eval_every and self.step % self.config.eval_every == 0
                and self.step < self.total_steps and self.dist.is_main):
            self.log(self._evaluate())
        if self._due(self.config.monitor_every):
            self._measure()
        if self._due(self.config.checkpoint_every):
            self.save_checkpoint()
        for callback in self.callbacks:
            callback(self, self.step, record)
        return "running"

    def _finish(self, status: str) -> TrainResult:
        evaluation = {}
        if status == "done" and self.dist.is_main:
            evaluation = self._evaluate()
            self.log(evaluation)
            save_model(self.flow, self.out / "model.pt")
        self.save_checkpoint()
        # after the checkpoint, so that a resumed run's log continues as if never interrupted
        self.log({"kind": status, "step": self.step, "epoch": self.epoch,
                  "fallbacks": self.fallbacks})
        monitors = [r for r in self.monitor.history if r["kind"] == "monitor"]
        result = TrainResult(self.step, self.epoch, status, self.last_train, evaluation,
                             monitors[-1] if monitors else None, self.fallbacks, self.out,
                             {"dtype": self.config.dtype, "amp": self.config.amp},
                             self.skipped_steps, self.dist.world_size)
        if self.dist.is_main:
            dump_json(result, self.out / "summary.json")
        return result

    def close(self) -> None:
        """Close the log and restore the global settings (deterministic algorithms)."""
        self.log.close()
        self._settings.close()


def _optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    kinds = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax, "sgd": torch.optim.SGD}
    return kinds[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lr_factor(warmup: int, decay_at: list[float], decay: float, total: int
               ) -> Callable[[int], float]:
    """``min(1, (t + 1) / warmup) * decay^(milestones passed)`` at scheduler step ``t``."""
    milestones = sorted(round(f * total) for f in decay_at)

    def factor(t: int) -> float:
        ramp = min(1.0, (t + 1) / warmup) if warmup else 1.0
        return ramp * decay ** sum(t >= m for m in milestones)

    return factor


def train(config: TrainConfig, out: str | Path, device: str = "cpu", resume: bool = False,
          progress: bool = True, callbacks: tuple[Callback, ...] = (), **options: Any
          ) -> TrainResult:
    """Build a :class:`Trainer` (``options``: its keyword arguments ``channels_last``,
    ``compile``, ``deterministic``), resume it from ``out/checkpoint.pt`` if asked, and fit."""
    held = context(device).from_main(lambda: (Path(out) / "checkpoint.pt").exists())
    if not resume and held:
        raise InputError(f"{str(out)!r} already holds a run (checkpoint.pt): resume it or choose "
                         "another output folder")
    trainer = Trainer(config, out, device, progress, callbacks, **options)
    try:
        if resume:
            trainer.resume()
        return trainer.fit()
    finally:
        trainer.close()
