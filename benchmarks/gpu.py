"""The device check of issue 13: the paper's full-size CIFAR-10 classifier on one GPU, in one
prepared run of under 5 minutes that prints one JSON line.

The model is appendix G's INN classifier: a Glow-like body (3 levels x 16 steps of ActNorm, 1x1
convolution and affine coupling, coupling networks of width 128) on 3x32x32 inputs, the head
BatchNorm1d -> ReLU -> Linear(3072, 10), cross-entropy, Adam, batch 128 (Table 8), float32. Its
architecture comes from the preset ``cifar10-classifier-affine-1x1conv`` of
:mod:`lipbound.training.presets` when that preset exists, else it is built directly with the same
numbers (``"architecture_source"`` in the JSON says which). The data are random images and labels
(the device has no dataset): the costs do not depend on the values.

What it measures (``--device``, default ``cuda``):

* ``autograd_images_per_s``, ``memsave_images_per_s``: training throughput with autograd and
  with memory-saving gradients (:func:`lipbound.training.memory_saving`), median step time;
* ``autograd_peak_bytes``, ``memsave_peak_bytes``: on CUDA ``torch.cuda.max_memory_allocated``
  during one training step after ``reset_peak_memory_stats`` (everything allocated: parameters,
  optimizer state, batch, activations); on the CPU the growth of the peak resident set size
  during the step over the size before it, after ``malloc_trim`` (Linux; as in
  ``benchmarks/training.py``);
* ``fd_overhead_k1``, ``_k5``, ``_k10``: time per step with the FD regularizer
  (:func:`lipbound.training.fd_regularizer`, coefficient 1e-4) every K steps over memory-saving
  training without it, alternating whole cycles of K steps (paper Table 11: 3.04x, 1.45x, 1.26x);
* ``amp_bf16``: a short training run under ``torch.autocast(dtype=torch.bfloat16)`` with
  memory-saving gradients: its final loss, memory-saving fallbacks, and the trained network's
  ``x -> z -> x`` reconstruction errors on the batch at bfloat16 and float32
  (:func:`lipbound.diagnostics.reconstruction_stats`);
* ``oracle``: the verdict of :func:`lipbound.precision.decompose.decompose` for one image of that
  trained network at bfloat16 against ``arb:128`` (no per-block trace, no Jacobian: at d = 3072
  the float64 Jacobian alone takes minutes on a CPU), computed on one CPU core in a child process
  while the GPU measures the rest, and stopped ``--budget`` seconds after the start (then
  ``"timed_out": true``; the full-size network needs several exact passes over 48 blocks at
  d = 3072, which may not fit: ``lipbound verify --scheduler`` is the tool for such models).

Without a GPU it prints a skip message and exits 0. ``--device cpu --small`` runs the same code on
a small model on the CPU (the test of this script). Run on a GPU machine:
``PYTHONPATH=. python benchmarks/gpu.py``.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import math
import multiprocessing
import pickle
import statistics
import sys
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training import _status_bytes  # noqa: E402  (benchmarks/training.py)

from lipbound.blocks import glow_like  # noqa: E402
from lipbound.diagnostics import reconstruction_stats  # noqa: E402
from lipbound.jsonio import jsonable  # noqa: E402
from lipbound.reproduce.fd_overhead import timed as _timed  # noqa: E402
from lipbound.training import fd_regularizer, memory_saving  # noqa: E402

#: The preset whose architecture is measured, when :mod:`lipbound.training.presets` has it.
PRESET = "cifar10-classifier-affine-1x1conv"

#: Appendix G's classifier, for when the preset does not exist.
APPENDIX_G = {"levels": 3, "blocks": 16, "hidden": 128, "coupling": "affine",
              "mixing": "1x1conv"}


@dataclass(frozen=True)
class Size:
    """The sizes of one run: the input, the batch, and how many steps each measurement takes."""

    shape: tuple[int, int, int]
    batch: int
    repeats: int  #: timed steps per throughput measurement (after one warm-up step)
    fd_cycles: int  #: 10 * fd_cycles steps of each kind per K
    amp_steps: int
    small: bool = False


#: Table 8's batch, for when the preset does not exist.
APPENDIX_G_BATCH = 128
FULL = Size((3, 32, 32), batch=APPENDIX_G_BATCH, repeats=10, fd_cycles=2, amp_steps=20)
SMALL = Size((3, 8, 8), batch=4, repeats=3, fd_cycles=1, amp_steps=3, small=True)
#: The architecture of ``--small``: 2 levels x 2 steps, width 8.
SMALL_ARCH = {"levels": 2, "blocks": 2, "hidden": 8}


def _preset() -> dict[str, Any] | None:
    try:
        from lipbound.training.presets import PRESETS
    except ImportError:
        return None
    return PRESETS[PRESET][1] if PRESET in PRESETS else None


def architecture(size: Size) -> tuple[dict[str, Any], str]:
    """The classifier's architecture (glow_like arguments) and where it came from."""
    arch, source = dict(APPENDIX_G), "appendix G (built directly)"
    values = _preset()
    if values is not None:
        arch = {k: values.get(k, v) for k, v in APPENDIX_G.items()}
        arch.update({k: values[k] for k in ("scale", "actnorm") if k in values})
        source = f"preset {PRESET}"
    if size.small:
        arch.update(SMALL_ARCH)
        source += ", reduced by --small"
    return arch, source


def full_size() -> Size:
    """:data:`FULL` with the preset's batch (Table 8: 128; :data:`APPENDIX_G_BATCH` without
    the preset)."""
    values = _preset() or {}
    return replace(FULL, batch=int(values.get("batch_size", APPENDIX_G_BATCH)))


@dataclass
class Run:
    """A classifier in training: body (wrapped for memory saving or not), head, optimizer and
    one batch."""

    flow: nn.Module
    net: nn.Module
    head: nn.Module
    opt: torch.optim.Optimizer
    x: Tensor
    y: Tensor
    device: str


def build(size: Size, arch: dict[str, Any], device: str, memsave: bool, seed: int = 0) -> Run:
    """The classifier on ``device`` with ``memsave`` gradients, its Adam, and a random batch."""
    torch.manual_seed(seed)
    a = dict(arch)
    flow = glow_like(size.shape, levels=a.pop("levels"), steps=a.pop("blocks"),
                     hidden=a.pop("hidden"), **a).to(device)
    d = math.prod(size.shape)
    head = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(d), nn.ReLU(), nn.Linear(d, 10)).to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand((size.batch, *size.shape), generator=gen).to(device)
    y = torch.randint(0, 10, (size.batch,), generator=gen).to(device)
    with torch.no_grad():
        flow(x)  # ActNorm's data-dependent initialisation
    net = memory_saving(flow) if memsave else flow
    opt = torch.optim.Adam(list(flow.parameters()) + list(head.parameters()), lr=1e-4)
    return Run(flow, net, head, opt, x, y, device)


def train_step(run: Run, fd: bool = False, amp: torch.dtype | None = None) -> float:
    """One step of cross-entropy (plus the FD regularizer when ``fd``), under autocast to
    ``amp`` when given; returns the loss."""
    run.opt.zero_grad(set_to_none=True)
    dev_type = "cuda" if run.device.startswith("cuda") else "cpu"
    with torch.autocast(dev_type, dtype=amp or torch.float32, enabled=amp is not None):
        if fd:
            reg = fd_regularizer(run.net, run.x, coeff=1e-4)
            loss = F.cross_entropy(run.head(reg.z), run.y) + reg.loss
        else:
            loss = F.cross_entropy(run.head(run.net(run.x)), run.y)
    loss.backward()
    run.opt.step()
    return float(loss.detach())


def peak_step_bytes(run: Run) -> int:
    """Peak memory of one training step (CUDA: all allocated; CPU: the growth; see the module
    docstring)."""
    if run.device.startswith("cuda"):
        torch.cuda.synchronize(run.device)
        torch.cuda.reset_peak_memory_stats(run.device)
        train_step(run)
        torch.cuda.synchronize(run.device)
        return torch.cuda.max_memory_allocated(run.device)
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand back what earlier steps freed
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set size (VmHWM) to the current one
    base = _status_bytes("VmRSS")
    train_step(run)
    return _status_bytes("VmHWM") - base


def throughput(size: Size, arch: dict[str, Any], device: str, memsave: bool
               ) -> tuple[float, int]:
    """Images per second (median step time) and the peak bytes of a step."""
    run = build(size, arch, device, memsave)
    train_step(run)  # warm-up, optimizer state
    times = [_timed(lambda: train_step(run), device) for _ in range(size.repeats)]
    return size.batch / statistics.median(times), peak_step_bytes(run)


def fd_overheads(size: Size, arch: dict[str, Any], device: str) -> dict[str, float]:
    """Mean time per step with FD every K steps over memory-saving training without it."""
    run = build(size, arch, device, memsave=True)
    train_step(run)
    train_step(run, fd=True)
    out = {}
    for k in (1, 5, 10):
        plain, reg = [], []
        for _ in range(max(size.fd_cycles * 10 // k, 1)):  # alternate whole cycles of K steps
            plain += [_timed(lambda: train_step(run), device) for _ in range(k)]
            reg += [_timed(lambda fd=i == 0: train_step(run, fd=fd), device) for i in range(k)]
        out[f"fd_overhead_k{k}"] = statistics.mean(reg) / statistics.mean(plain)
    return out


def amp_run(size: Size, arch: dict[str, Any], device: str) -> tuple[dict[str, Any], Run]:
    """A short bfloat16-autocast run with memory-saving gradients, and the reconstruction
    errors of the trained network."""
    run = build(size, arch, device, memsave=True)
    losses = [train_step(run, amp=torch.bfloat16) for _ in range(size.amp_steps)]
    run.flow.eval()
    out: dict[str, Any] = {"steps": size.amp_steps, "final_loss": losses[-1],
                           "fallbacks": run.net.fallbacks}
    for precision in ("bfloat16", "float32"):
        stats = reconstruction_stats(run.flow, run.x, precision, batch_size=size.batch)
        summary = stats.summary()
        out[f"recon_{precision}"] = {k: summary[k] for k in ("max", "median", "n_nan", "n_inf")}
    return out, run


def _oracle_child(payload: bytes, results: Connection) -> None:
    """The oracle's process (one torch thread): the decomposition of one image, its verdict and
    terms."""
    from lipbound.precision.decompose import decompose

    torch.set_num_threads(1)
    flow, image, precision, reference = pickle.loads(payload)
    start = time.perf_counter()
    d = decompose(flow, image, precision, reference, trace=False, same_mantissa=False,
                  max_float_jacobian_dim=0)
    results.send({"verdict": d.verdict, "total": d.total, "delta": d.delta, "delta2": d.delta2,
                  "seconds": time.perf_counter() - start, "timed_out": False})


@dataclass
class Oracle:
    """The oracle's verdict on one image, computed in a child process while the GPU measures."""

    precision: str
    reference: str
    child: Any
    receive: Connection
    start: float

    @classmethod
    def start_on(cls, flow: nn.Module, image: Tensor, precision: str = "bfloat16",
                 reference: str = "arb:128") -> Oracle:
        """Start the decomposition of ``image`` by (a CPU copy of) ``flow``."""
        ctx = multiprocessing.get_context("spawn")
        receive, send = ctx.Pipe(duplex=False)
        model = copy.deepcopy(flow).cpu().eval()
        payload = pickle.dumps((model, image.detach().cpu(), precision, reference))
        child = ctx.Process(target=_oracle_child, args=(payload, send), daemon=True)
        child.start()
        send.close()  # the child holds the sending end: a child that dies ends the wait
        return cls(precision, reference, child, receive, time.perf_counter())

    def result(self, deadline: float) -> dict[str, Any]:
        """The verdict, waiting until ``deadline`` (``time.perf_counter()``) at most; then the
        child is stopped and ``"timed_out": true``."""
        out: dict[str, Any] = {"precision": self.precision, "reference": self.reference}
        try:
            if self.receive.poll(max(deadline - time.perf_counter(), 0)):
                try:
                    out.update(self.receive.recv())
                    self.child.join(timeout=30)  # it exits by itself, cleaning up
                    return out
                except EOFError:  # the child ended without an answer
                    pass
            return {**out, "verdict": None, "timed_out": self.child.is_alive(),
                    "seconds": time.perf_counter() - self.start,
                    "exit_code": self.child.exitcode}  # None while it runs; nonzero: failed
        finally:
            if self.child.is_alive():
                # stopped mid-work, the child cannot release tqdm's lock: Python's resource
                # tracker then warns of one leaked semaphore at exit (harmless)
                self.child.terminate()
            self.child.join()
            self.receive.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    parser.add_argument("--small", action="store_true",
                        help="a small model and few steps (the CPU test of this script)")
    parser.add_argument("--budget", type=float, default=270.0,
                        help="seconds from the start after which the oracle is stopped "
                             "(default: %(default)s, so that the run ends within 5 minutes)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: %(default)s; CPU times are process "
                             "times, as in benchmarks/training.py)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("benchmarks/gpu.py: skipped: no CUDA GPU here (torch.cuda.is_available() is "
              "False); --device cpu --small runs the same code on the CPU")
        return 0
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    size = SMALL if args.small else full_size()
    arch, source = architecture(size)
    out: dict[str, Any] = {"device": args.device, "torch": torch.__version__,
                           "architecture_source": source, "architecture": arch,
                           "input_shape": size.shape, "batch": size.batch}
    if args.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(args.device)
    # first the bfloat16 run, so that the oracle works on its network during the timings
    out["amp_bf16"], run = amp_run(size, arch, args.device)
    oracle = Oracle.start_on(run.flow, run.x[:1])
    del run
    for name, memsave in (("autograd", False), ("memsave", True)):
        rate, peak = throughput(size, arch, args.device, memsave)
        out[f"{name}_images_per_s"], out[f"{name}_peak_bytes"] = rate, peak
        print(f"{name}: {rate:.1f} images/s, peak {peak / 2**20:.1f} MiB", file=sys.stderr,
              flush=True)
    out["memsave_peak_ratio"] = out["memsave_peak_bytes"] / out["autograd_peak_bytes"]
    out["memsave_time_ratio"] = out["autograd_images_per_s"] / out["memsave_images_per_s"]
    out.update(fd_overheads(size, arch, args.device))
    out["fd_overhead_paper"] = {"k1": 3.04, "k5": 1.45, "k10": 1.26}
    print("FD overheads " + ", ".join(f"{k} {out[k]:.2f}x" for k in
                                      ("fd_overhead_k1", "fd_overhead_k5", "fd_overhead_k10")),
          file=sys.stderr, flush=True)
    out["oracle"] = oracle.result(start + args.budget)
    out["seconds"] = time.perf_counter() - start
    print(json.dumps(jsonable(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
