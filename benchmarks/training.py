"""Memory-saving gradients and the FD regularizer: memory, time and overhead, side by side.

The model is :func:`~lipbound.blocks.glow_like` with one level of ``depth`` flow steps (ActNorm,
1x1 convolution, additive coupling: the models of the paper's Table 11), trained by maximum
likelihood (:func:`~lipbound.training.nf_loss`) with Adam.

* **Saved activations**, counted exactly: every tensor that autograd saves for the backward between
  a training step's forward and its backward, through ``torch.autograd.graph.saved_tensors_hooks``,
  each storage once, parameters excluded. Memory-saving (``memory_saving(model)``) against plain
  autograd at depth 8, 16, 32 and 64; goal ``memsave_bytes_ratio_64_vs_8 <= 1.1`` (flat in depth),
  measured on a pass of the default wrapper (``check_every=10``) that keeps no per-block sketches
  (9 passes in 10). On the checked passes the wrapper also keeps the check's sketches, 3 numbers
  per sample and block, which grow with depth: ``memsave_checked_pass_bytes_ratio_64_vs_8``
  (``check_every=1``, every pass checked).
* **Peak memory** of one training step above the memory held before it: on CUDA
  ``torch.cuda.max_memory_allocated``; on the CPU (Linux) the peak resident set size of a child
  process (``--peak-child``) during its second step, after ``malloc_trim`` returned what the first
  freed and ``/proc/self/clear_refs`` reset the peak; it includes allocator slack.
* **Time per step**, memory-saving against autograd at depth 16, interleaved: median of 12
  steps each, ``memsave_time_ratio`` (goal <= 1.5) with coupling networks of width 128, and
  ``memsave_time_ratio_hidden32`` at width 32, where the backward's per-block Python work (about
  0.2 ms per rebuilt block) weighs more against the small convolutions. On the CPU time is the
  process's CPU time (one thread by default), so other processes on a shared machine do not skew
  the ratios.
* **FD overhead**: memory-saving training with :func:`~lipbound.training.fd_regularizer` (both
  directions, clean and perturbed passes batched) every K steps against unregularized
  memory-saving training, mean time per step over whole cycles: ``fd_overhead_k1``, ``_k5``,
  ``_k10`` (paper Table 11: 3.04x, 1.45x, 1.26x; goals <= 2.5, <= 1.3, <= 1.15).

The last line is one JSON object. The code is device-agnostic (``--device cuda`` runs it on a
GPU, where it synchronises only around timed regions).

Run: ``PYTHONPATH=. python benchmarks/training.py [--device cpu|cuda] [--threads 1]``
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import statistics
import subprocess
import sys

import torch

from lipbound.jsonio import jsonable
from lipbound.reproduce.fd_overhead import fd_timings, timed, timing_model
from lipbound.reproduce.fd_overhead import training_step as step
from lipbound.training import nf_loss

DEPTHS = (8, 16, 32, 64)
SHAPE = (3, 16, 16)
BATCH = 16
HIDDEN = 32
TIME_DEPTH = 16
#: Widths of the coupling networks for the time ratio; the last gives ``memsave_time_ratio``.
TIME_HIDDEN = (HIDDEN, 128)


def build(depth: int, device: str, memsave: bool, seed: int = 0, check_every: int | None = None,
          hidden: int = HIDDEN):
    """The model (wrapped or not, ``check_every`` of the wrapper or its default), its optimizer
    and a batch (:func:`lipbound.reproduce.fd_overhead.timing_model` at this benchmark's sizes)."""
    return timing_model(depth, device, memsave, SHAPE, BATCH, hidden, seed, check_every)


def saved_bytes(depth: int, device: str, memsave: bool, check_every: int | None = None) -> int:
    """Bytes of the distinct storages autograd saves for one step's backward, parameters aside
    (the default wrapper's first pass keeps no per-block sketches; ``check_every=1``: a pass that
    keeps them)."""
    net, _, x = build(depth, device, memsave, check_every=check_every)
    params = {p.data_ptr() for p in net.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nf_loss(net, x).loss
    loss.backward()
    return sum(seen.values())


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return 1024 * int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def peak_bytes(depth: int, device: str, memsave: bool) -> int:
    """Peak memory of one training step above what was held before it (see the docstring)."""
    if device.startswith("cuda"):
        net, opt, x = build(depth, device, memsave)
        step(net, opt, x)  # optimizer state exists from here on
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(net, opt, x)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    out = subprocess.run([sys.executable, __file__, "--peak-child", str(depth), str(int(memsave))],
                         capture_output=True, text=True, check=True, env=os.environ)
    return int(out.stdout.split()[-1])


def _peak_child(depth: int, memsave: bool) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    net, opt, x = build(depth, "cpu", memsave)
    step(net, opt, x)  # optimizer state exists from here on
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand memory freed by the first step back
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set size (VmHWM) to the current one
    base = _status_bytes("VmRSS")
    step(net, opt, x)
    print(_status_bytes("VmHWM") - base)


def time_ratio(device: str, hidden: int, repeats: int = 12) -> tuple[float, float, float]:
    """Median seconds per step of autograd and memory-saving (interleaved), and their ratio."""
    runs = {m: build(TIME_DEPTH, device, m, hidden=hidden) for m in (False, True)}
    for m in runs:
        step(*runs[m])  # warm-up, ActNorm initialisation
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for m, run in runs.items():
            times[m].append(timed(lambda run=run: step(*run), device))
    ag, ms = statistics.median(times[False]), statistics.median(times[True])
    print(f"time per step at depth {TIME_DEPTH}, hidden {hidden}: autograd {ag * 1e3:.1f} ms, "
          f"memory-saving "
          f"{ms * 1e3:.1f} ms, ratio {ms / ag:.3f}")
    return ag, ms, ms / ag


def fd_overheads(device: str, steps: int = 20, ks: tuple[int, ...] = (1, 5, 10)
                 ) -> dict[str, float]:
    """Mean time per step with FD every K steps over unregularized memory-saving training, in
    alternating cycles of K steps (:func:`lipbound.reproduce.fd_overhead.fd_timings`)."""
    net, opt, x = build(TIME_DEPTH, device, True)
    out = {}
    for t in fd_timings(net, opt, x, device, ks, steps):
        out[f"fd_overhead_k{t.k}"] = t.overhead
        print(f"FD every {t.k:2d} steps: {t.seconds_fd * 1e3:.1f} ms per step against "
              f"{t.seconds_plain * 1e3:.1f} ms unregularized: {t.overhead:.3f}x")
    assert net.fallbacks == 0, "the benchmark model should never need the fallback"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--peak-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak_child:
        _peak_child(*args.peak_child)
        return
    torch.set_num_threads(args.threads)
    device = args.device
    results: dict[str, object] = {"device": device, "shape": SHAPE, "batch": BATCH,
                                  "hidden": HIDDEN}
    modes = (("autograd", False), ("memsave", True))
    saved = {name: {d: saved_bytes(d, device, m) for d in DEPTHS} for name, m in modes}
    saved["memsave_checked_pass"] = {d: saved_bytes(d, device, True, 1) for d in DEPTHS}
    peak = {name: {d: peak_bytes(d, device, m) for d in DEPTHS} for name, m in modes}
    for d in DEPTHS:
        print(f"depth {d:2d}: saved activations autograd {saved['autograd'][d] / 2**20:8.2f} MiB, "
              f"memory-saving {saved['memsave'][d] / 2**20:6.3f} MiB (on a checked pass "
              f"{saved['memsave_checked_pass'][d] / 2**20:6.3f});  peak step memory autograd "
              f"{peak['autograd'][d] / 2**20:8.1f} MiB, memory-saving "
              f"{peak['memsave'][d] / 2**20:6.1f} MiB")
    results.update({
        "saved_bytes": saved, "peak_bytes": peak,
        "memsave_bytes_ratio_64_vs_8": saved["memsave"][64] / saved["memsave"][8],
        "autograd_bytes_ratio_64_vs_8": saved["autograd"][64] / saved["autograd"][8],
        "memsave_checked_pass_bytes_ratio_64_vs_8": (saved["memsave_checked_pass"][64]
                                                     / saved["memsave_checked_pass"][8]),
        "memsave_peak_ratio_64_vs_8": peak["memsave"][64] / peak["memsave"][8],
        "autograd_peak_ratio_64_vs_8": peak["autograd"][64] / peak["autograd"][8],
    })
    for hidden in TIME_HIDDEN:
        ag, ms, ratio = time_ratio(device, hidden)
        key = "" if hidden == TIME_HIDDEN[-1] else f"_hidden{hidden}"
        results.update({f"autograd_seconds_per_step{key}": ag,
                        f"memsave_seconds_per_step{key}": ms, f"memsave_time_ratio{key}": ratio})
    results.update(fd_overheads(device))
    goals = {"memsave_bytes_ratio_64_vs_8": 1.1, "memsave_time_ratio": 1.5,
             "fd_overhead_k1": 2.5, "fd_overhead_k5": 1.3, "fd_overhead_k10": 1.15}
    print("goals: " + "; ".join(f"{k} {results[k]:.3g} (<= {v}: {results[k] <= v})"
                                for k, v in goals.items()))
    print(json.dumps(jsonable(results)))


if __name__ == "__main__":
    main()
