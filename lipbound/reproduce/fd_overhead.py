r"""Table 11 (appendix G): the cost of the bi-directional finite-differences regularizer (FD, eq. 6)
applied every K steps, against unregularized memory-saving training.

Both trainings run memory-saving gradients (:func:`~lipbound.training.memory_saving`) on a
Glow-like network of additive couplings with 1x1 convolutions (the paper's Table 11 models), by
maximum likelihood (:func:`~lipbound.training.nf_loss`) with Adam. The regularizer's clean and
perturbed passes are batched (:func:`~lipbound.training.fd_regularizer`). For each K, whole cycles
of K unregularized steps and K steps with FD on the first alternate, so that drifts of a shared
machine hit both alike; the overhead is the ratio of the mean times per step, which is the
paper's ratio of times per epoch. On the CPU a step's time is the process's CPU time, on CUDA
the wall-clock time between synchronisations. ``benchmarks/training.py`` uses the same pieces.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..blocks import glow_like, randomize_parameters
from ..training import fd_regularizer, memory_saving, nf_loss
from .common import Claim, ExperimentResult, Settings, claim_less_than, format_value, save_figure

__all__ = ["PAPER", "FDTiming", "claims", "fd_timings", "run", "timed", "timing_model",
           "training_step"]

#: Table 11: overhead of FD every K steps over unregularized memory-saving training.
PAPER = {"overhead_k1": 3.04, "overhead_k5": 1.45, "overhead_k10": 1.26}


def timing_model(depth: int, device: str, memsave: bool, shape: Sequence[int] = (3, 16, 16),
                 batch: int = 16, hidden: int = 32, seed: int = 0,
                 check_every: int | None = None) -> tuple[Any, torch.optim.Optimizer, torch.Tensor]:
    """A one-level Glow-like network of ``depth`` steps (ActNorm, 1x1 convolution, additive
    coupling with sub-networks of width ``hidden``), small random parameters, wrapped for
    memory-saving gradients when ``memsave`` (``check_every`` of the wrapper, or its default);
    its Adam optimizer and one batch of uniform inputs of ``shape``."""
    torch.manual_seed(seed)
    model = glow_like(tuple(shape), levels=1, steps=depth, hidden=hidden, coupling="additive",
                      mixing="1x1conv")
    model = randomize_parameters(model, 0.02, torch.Generator().manual_seed(seed)).to(device)
    options = {} if check_every is None else {"check_every": check_every}
    net = memory_saving(model, **options) if memsave else model
    x = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(seed + 1))
    return net, torch.optim.Adam(net.parameters(), lr=1e-4), x.to(device)


def training_step(net: Any, opt: torch.optim.Optimizer, x: torch.Tensor, fd: bool = False
                  ) -> None:
    """One maximum-likelihood step, with the FD regularizer (coefficient 1e-4) when ``fd``."""
    opt.zero_grad(set_to_none=True)
    if fd:
        reg = fd_regularizer(net, x, coeff=1e-4, with_log_det=True)
        loss = nf_loss(net, x, z=reg.z, log_det=reg.log_det).loss + reg.loss
    else:
        loss = nf_loss(net, x).loss
    loss.backward()
    opt.step()


def timed(fn: Callable[[], Any], device: str) -> float:
    """Seconds ``fn`` takes: wall-clock between synchronisations on CUDA; on the CPU the
    process's CPU time, which other processes' load on a shared machine does not inflate."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - t0
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


@dataclass(frozen=True)
class FDTiming:
    """Mean seconds per step with FD every ``k`` steps and without, and their ratio."""

    k: int
    seconds_fd: float
    seconds_plain: float

    @property
    def overhead(self) -> float:
        return self.seconds_fd / self.seconds_plain


def fd_timings(net: Any, opt: torch.optim.Optimizer, x: torch.Tensor, device: str,
               ks: Sequence[int] = (1, 5, 10), steps: int = 20) -> list[FDTiming]:
    """For each K, about ``steps`` steps of each kind in alternating whole cycles of K steps
    (module docstring); ``net`` must be a memory-saving network (one warm-up step of each kind
    runs first)."""
    training_step(net, opt, x)
    training_step(net, opt, x, fd=True)
    out = []
    for k in ks:
        plain: list[float] = []
        reg: list[float] = []
        for _ in range(max(1, steps // k)):
            plain += [timed(lambda: training_step(net, opt, x), device) for _ in range(k)]
            reg += [timed(lambda fd=i == 0: training_step(net, opt, x, fd=fd), device)
                    for i in range(k)]
        out.append(FDTiming(k, statistics.mean(reg), statistics.mean(plain)))
    return out


def claims(ours: dict[str, float]) -> list[Claim]:
    """Table 11's claims: the overhead decreases as K grows (K = 1, 5, 10), and FD every 10
    steps costs less than 1.5x unregularized training (paper: 1.26x)."""
    k1, k5, k10 = (float(ours[f"overhead_k{k}"]) for k in (1, 5, 10))
    evidence = f"{format_value(k1)} > {format_value(k5)} > {format_value(k10)}"
    decreasing = Claim("The FD overhead decreases as K grows", None,
                       evidence + " (NaN: undecided)")
    if not any(v != v for v in (k1, k5, k10)):
        decreasing = Claim("The FD overhead decreases as K grows", k1 > k5 > k10, evidence)
    return [decreasing,
            claim_less_than("FD every 10 steps costs less than 1.5x unregularized training",
                            k10, 1.5)]


def _figure(ours: dict[str, float], settings: Settings) -> list[str]:
    import matplotlib.pyplot as plt

    ks = (1, 5, 10)
    fig, ax = plt.subplots(figsize=(4.5, 3))
    width = 0.38
    pos = range(len(ks))
    ax.bar([p - width / 2 for p in pos], [PAPER[f"overhead_k{k}"] for k in ks], width,
           label="paper (CIFAR-10, GPU)")
    ax.bar([p + width / 2 for p in pos], [ours[f"overhead_k{k}"] for k in ks], width,
           label=f"ours ({settings.scale})")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(list(pos), [f"K = {k}" for k in ks])
    ax.set_ylabel("time per step / unregularized")
    ax.set_title("FD regularizer every K steps (Table 11)")
    ax.legend()
    return save_figure(fig, settings, "table11_fd_overhead")


def run(settings: Settings) -> ExperimentResult:
    """Time FD every 1, 5, 10 steps against unregularized memory-saving training."""
    size = settings.pick(
        {"depth": 2, "shape": (3, 8, 8), "batch": 4, "hidden": 8},
        {"depth": 16, "shape": (3, 16, 16), "batch": 16, "hidden": 32},
        {"depth": 48, "shape": (3, 32, 32), "batch": 128, "hidden": 128})
    steps = settings.pick(10, 40, 100)
    net, opt, x = timing_model(size["depth"], settings.device, True, size["shape"],
                               size["batch"], size["hidden"], settings.seed)
    timings = fd_timings(net, opt, x, settings.device, steps=steps)
    ours: dict[str, float] = {f"overhead_k{t.k}": t.overhead for t in timings}
    rows = [{"K": t.k, "seconds_per_step_fd": t.seconds_fd,
             "seconds_per_step_unregularized": t.seconds_plain, "overhead": t.overhead,
             "paper_overhead": PAPER[f"overhead_k{t.k}"]} for t in timings]
    ours["memory_saving_fallbacks"] = int(net.fallbacks)
    clock = "wall-clock time (CUDA)" if settings.device.startswith("cuda") else "CPU time"
    return ExperimentResult(
        name="table11_fd_overhead", title="Table 11 (appendix G)", scale=settings.scale,
        scale_note=(f"one level of {size['depth']} additive 1x1-conv steps, input "
                    f"{'x'.join(map(str, size['shape']))}, batch {size['batch']}, width "
                    f"{size['hidden']}, {steps} steps of each kind per K, {clock}"),
        paper=PAPER, ours=ours, claims=claims(ours), rows=rows,
        files=_figure(ours, settings),
        notes=["Paper: time per epoch of additive 1x1-conv INN classifiers on CIFAR-10 (Titan "
               "Xp); ours: mean time per step of maximum-likelihood training, whose ratio is "
               "the same overhead.",
               "Both sides train with memory-saving gradients; fallbacks (steps whose "
               "reconstruction failed the check) are counted in memory_saving_fallbacks."])
