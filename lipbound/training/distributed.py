r"""Training on several processes with ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node N -m lipbound train ...`` starts ``N`` processes and sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous variables) in each; :func:`session` reads
them, joins the process group (NCCL on CUDA, Gloo on the CPU), gives each process its device
(``cuda:LOCAL_RANK``) and leaves the group at the end. The :class:`~lipbound.training.trainers.
Trainer` then sees an initialised process group through :func:`context` and

* wraps the flow (its memory-saving view, if any) and the head in
  :class:`~torch.nn.parallel.DistributedDataParallel`, which averages the gradients;
* builds the same global batch of ``batch_size`` samples on every process (the data order and
  the dequantization noise are seeded alike) and keeps rows ``r b .. (r + 1) b - 1`` on rank
  ``r``, ``b = batch_size / WORLD_SIZE``: since every loss is a mean over samples, the average of
  the ranks' gradients is the gradient of the global batch, and a run on ``N`` processes follows
  the run on one process up to rounding;
* initialises ActNorm on the whole first global batch, and draws the FD regularizer's random
  directions for the whole global batch, each rank keeping its rows
  (:func:`~lipbound.training.regularizers.unit_directions`), as one process would;
* replaces BatchNorm layers in the head by :class:`GlobalBatchNorm` (statistics of the global
  batch, through differentiable all-reduces; ``nn.SyncBatchNorm`` has no CPU kernel), so that
  the head also sees the statistics of the global batch;
* writes the log, checkpoints, ``model.pt`` and ``summary.json`` on rank 0 only (a barrier
  follows every checkpoint), runs the stability monitor and evaluations on rank 0 only (they
  hold no collectives, and do not touch the random streams the ranks share), and resumes every
  rank from rank 0's checkpoint, sent to the others (no shared file system needed).

* stops every rank after the same step when Ctrl-C reaches any (torchrun passes its SIGINT
  on to the workers): each step ends with a one-number all-reduce on a Gloo group.

Memory-saving gradients work unchanged under DDP: their custom autograd function takes the
parameters as inputs, so every parameter's gradient is accumulated once per backward, through
``AccumulateGrad``, where DDP's reducer hooks see it (no "marked ready twice"), and every pass
(the FD regularizer's extra forward and inverse passes included) goes through DDP's call
(:mod:`.ddp`). Every step uses every parameter, so neither ``find_unused_parameters`` nor
``static_graph`` is needed. A memory-saving fallback is decided per rank and counted per rank
(the log shows rank 0's count).

A :class:`Context` of one process (no process group) makes every collective a no-op, so the
trainer has one code path.
"""

from __future__ import annotations

import datetime
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import InputError

__all__ = ["Context", "GlobalBatchNorm", "context", "global_batch_norm", "resolve_device",
           "session", "torchrun_env"]

T = TypeVar("T")

#: How long a rank waits in a collective: the other ranks wait for rank 0 while it evaluates,
#: runs the stability monitor (Jacobian spectra) or writes a checkpoint.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)

#: The variables torchrun sets in every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``...; a clear error when CUDA is asked for and absent."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} "
                         "CUDA device(s)")
    return dev


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, world size, local rank)`` from torchrun's variables, or ``None`` outside it."""
    if not all(name in os.environ for name in TORCHRUN_VARIABLES):
        return None
    try:
        return tuple(int(os.environ[name]) for name in TORCHRUN_VARIABLES)  # type: ignore
    except ValueError as err:
        raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets "
                         f"them), got {[os.environ[n] for n in TORCHRUN_VARIABLES]}") from err


def _process_device(device: str | torch.device, world_size: int, local_rank: int
                     ) -> torch.device:
    dev = resolve_device(device)
    if dev.type != "cuda" or world_size == 1:
        return dev
    if dev.index is not None:
        raise InputError(f"--device {device}: with {world_size} processes (torchrun) each "
                         "process takes the GPU of its LOCAL_RANK; give --device cuda")
    if local_rank >= torch.cuda.device_count():
        raise InputError(f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()}"
                         " CUDA device(s): start at most that many processes per node "
                         "(--nproc_per_node)")
    return torch.device("cuda", local_rank)


@dataclass
class Context:
    """This process's place in the run: ``rank`` of ``world_size``, its ``device``, and a Gloo
    group ``control`` for the flags the ranks agree on (host values, no device sync)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    control: Any = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, checkpoints, evaluates and monitors."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.control)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (the same answer on every rank)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t)

    def mean(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """The mean over the ranks of each 0-dim tensor (one all-reduce for all)."""
        if not self.distributed or not values:
            return values
        stacked = torch.stack([v.detach().to(torch.float64) for v in values.values()])
        dist.all_reduce(stacked)
        return dict(zip(values, (stacked / self.world_size).unbind()))

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 and sent to every rank; an error it raises is raised on every
        rank (so that no rank waits for the others)."""
        if not self.distributed:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except Exception as err:  # sent to the other ranks, raised everywhere below
                box[0] = ("error", err)
        dist.broadcast_object_list(box, src=0, group=self.control)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def shard(self, t: Tensor | None) -> Tensor | None:
        """This rank's rows of a global batch (equal parts, in rank order)."""
        if t is None or not self.distributed:
            return t
        n = t.shape[0] // self.world_size
        return t[self.rank * n:(self.rank + 1) * n]

    def wrap(self, module: nn.Module | None) -> nn.Module | None:
        """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel` (itself with one
        process). Every step uses every parameter (the FD regularizer every K steps adds passes,
        it does not leave parameters out), so neither ``find_unused_parameters`` nor
        ``static_graph`` is needed; buffers are not broadcast: every rank computes the same ones
        (ActNorm's initialisation and the head's statistics come from the global batch)."""
        if module is None or not self.distributed or not any(
                p.requires_grad for p in module.parameters()):
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        # no buffer broadcast in forward (the keyword's name changed in torch 2.13)
        sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
            nn.parallel.DistributedDataParallel).parameters else "broadcast_buffers")
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, **{sync: False})


def context(device: str | torch.device = "cpu") -> Context:
    """The :class:`Context` of this process: from the initialised default process group (its
    rank and size; a CUDA device without index becomes ``cuda:LOCAL_RANK``), else one process on
    ``device``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return Context(device=resolve_device(device))
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
    dev = _process_device(device, world, local)
    control = None
    if dist.get_backend() != "gloo":
        control = _control_group()
    return Context(rank, world, dev, control)


_CONTROL: dict[int, Any] = {}


def _control_group() -> Any:
    """A Gloo group over all ranks (created once per default group: every rank calls this)."""
    key = id(dist.group.WORLD)
    if key not in _CONTROL:
        _CONTROL[key] = dist.new_group(backend="gloo")
    return _CONTROL[key]


@contextmanager
def session(device: str | torch.device = "cpu") -> Iterator[Context]:
    """Join the process group torchrun describes (NCCL for CUDA, Gloo for the CPU; collectives
    time out after :data:`COLLECTIVE_TIMEOUT`) for the duration, and leave it at the end; outside
    torchrun (or with one process) nothing is joined. Yields this process's :class:`Context`."""
    env = torchrun_env()
    if env is None or env[1] == 1 or dist.is_initialized():
        yield context(device)
        return
    rank, world, local = env
    dev = _process_device(device, world, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=dev,
                                timeout=COLLECTIVE_TIMEOUT)
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    try:
        ctx = context(dev)
        yield ctx
        # leave together: a rank that tears its group down while rank 0 still writes the run
        # folder can abort in Gloo's threads
        ctx.barrier()
    finally:
        _CONTROL.pop(id(dist.group.WORLD), None)
        dist.destroy_process_group()


class GlobalBatchNorm(_BatchNorm):
    r"""Batch normalisation with the statistics of the global batch across the processes of
    the default group (in training mode), the same layer as :class:`torch.nn.BatchNorm1d`/``2d``
    otherwise (same parameters and buffers, so state dicts carry over).

    With ``n_r`` samples (times spatial positions) on rank ``r``, ``N = sum_r n_r``, the mean is
    ``mu = sum_r S_r / N`` with ``S_r`` the rank's sum, and the variance
    ``sigma^2 = sum_r Q_r / N`` with ``Q_r = sum (x - mu)^2`` over the rank's values (two
    all-reduces; centring before squaring keeps float32 accurate). The all-reduces are
    differentiable (``torch.distributed.nn``): the backward sums every rank's gradient with
    respect to the shared statistics, so with DDP's average the parameters get the gradient of
    the loss averaged over the global batch. The running variance takes the unbiased
    ``sigma^2 N / (N - 1)``, as ``BatchNorm`` does. A bf16/fp16 input (autocast) is normalised
    with statistics computed in float32 and the output is cast back to the input's dtype.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise InputError(f"GlobalBatchNorm expects (batch, channels, ...), got {x.dim()}-d")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        # statistics in float32 at least: under autocast the input is bf16/fp16, the running
        # buffers float32, and sums of a global batch in bf16 lose most of their digits
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        dims = [0, *range(2, xf.dim())]
        shape = (1, -1) + (1,) * (xf.dim() - 2)
        n = torch.tensor([xf.numel() // xf.shape[1]], dtype=xf.dtype, device=xf.device)
        sums = all_reduce(torch.cat([xf.sum(dims), n]))
        count = sums[-1].detach()
        mean = sums[:-1] / count
        var = all_reduce((xf - mean.reshape(shape)).square().sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                          else self.momentum)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                self.running_var.lerp_((var.detach() * count / (count - 1))
                                       .to(self.running_var.dtype), factor)
        y = (xf - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y.to(x.dtype)
        return y


class _AllReduceSum(torch.autograd.Function):
    """``sum_r t_r`` over the ranks, differentiable: the gradient of each rank's input is the
    sum over the ranks of the gradients of the output."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _AllReduceSum.apply(grad)


def all_reduce(t: Tensor) -> Tensor:
    """The differentiable sum of ``t`` over the ranks of the default group."""
    return _AllReduceSum.apply(t)


def global_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm1d/2d/3d`` replaced (in place, parameters and buffers
    moved over) by a :class:`GlobalBatchNorm`; a BatchNorm ``module`` itself is returned
    replaced."""
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        new.train(module.training)
        for name, t in [*module.named_parameters(recurse=False),
                        *module.named_buffers(recurse=False)]:
            setattr(new, name, t)
        return new
    for name, child in module.named_children():
        setattr(module, name, global_batch_norm(child))
    return module
