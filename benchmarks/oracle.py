"""Oracle benchmark: the reference backends side by side, and the default Figure 1 sweep.

Run ``python benchmarks/oracle.py`` (about three minutes on two cores). Every ratio is measured
in this one run; the last line is one JSON object with ``arb_vs_mp_speedup``,
``arb_vs_float64_slowdown``, ``glow_cifar_arb113_seconds``, ``paper_classifier_arb113_seconds``
and ``sweep_seconds``, plus the per-batch ratios. Goals (issue 4): speedup >= 50, slowdown <= 300,
Glow-like (2 levels x 4 steps, hidden 64) < 60 s, the paper's classifier body (3 levels x 16
steps, hidden 128, appendix G) < 300 s, sweep < 10 s, on 2 cores.

How it measures, and why:

* The MLP coupling network (4 blocks, width 256) runs at ``arb:113``, ``mp:113`` and float64 on
  the same batch. Each arb time is the median of six runs, three before and three after the one
  (long) mpmath run, so that a burst of load on a shared machine moves both sides alike; float64
  is the median of 50 runs on one torch thread (more threads only contend on 2 cores).
* Batches of 16 and 64: python-flint's ``arb_mat`` product switches from the classical
  algorithm to the blocked one from 64 rows on (about 3.5x less time per row), while mpmath's
  cost per row is constant, so the speedup depends on the batch. ``arb_vs_mp_speedup`` and
  ``arb_vs_float64_slowdown`` are those of the batch of 64; ``*_batch16`` keys give the other.
  The weights are converted to ``arb_mat`` once, when the model is compiled; only the
  activations are converted per product.
* ``sweep_seconds`` is the wall time of ``lipbound sweep`` as a fresh process (what a user waits
  for, imports of torch and matplotlib included); ``sweep_in_process_seconds`` leaves them out.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import reference
from lipbound.blocks import coupling_mlp, glow_like, randomize_parameters
from lipbound.cli import main

BATCHES = (16, 64)


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _mlp_ratios(batch: int, gen: torch.Generator) -> dict[str, float]:
    """arb:113 against mp:113 and float64 on one batch of the width-256 MLP coupling network."""
    model = randomize_parameters(coupling_mlp(4, 4, 256, "affine"), generator=gen).eval()
    x = torch.randn(batch, 4, generator=gen)
    arb_ref = reference.compile(model, "arb:113")  # weights converted to arb_mat here, once
    mp_ref = reference.compile(model, "mp:113")
    arb_times = [_seconds(lambda: arb_ref.forward(x)) for _ in range(3)]
    t_mp = _seconds(lambda: mp_ref.forward(x))
    arb_times += [_seconds(lambda: arb_ref.forward(x)) for _ in range(3)]
    t_arb = statistics.median(arb_times)
    with torch.no_grad():
        t_f64 = statistics.median(_seconds(lambda: model(x)) for _ in range(50))
    print(f"MLP coupling (4 blocks, width 256, batch {batch}): float64 {t_f64 * 1e3:.2f} ms, "
          f"arb:113 {t_arb * 1e3:.0f} ms (median of {len(arb_times)}, range "
          f"{min(arb_times) * 1e3:.0f}-{max(arb_times) * 1e3:.0f}), mp:113 {t_mp * 1e3:.0f} ms "
          f"-> arb/mp speedup {t_mp / t_arb:.0f}x, arb/float64 slowdown {t_arb / t_f64:.0f}x",
          flush=True)
    return {"speedup": t_mp / t_arb, "slowdown": t_arb / t_f64}


def main_benchmark() -> dict[str, float]:
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    results: dict[str, float] = {}

    ratios = {b: _mlp_ratios(b, gen) for b in BATCHES}
    results["arb_vs_mp_speedup"] = ratios[64]["speedup"]
    results["arb_vs_float64_slowdown"] = ratios[64]["slowdown"]
    results["arb_vs_mp_speedup_batch16"] = ratios[16]["speedup"]
    results["arb_vs_float64_slowdown_batch16"] = ratios[16]["slowdown"]

    image = torch.randn(1, 3, 32, 32, generator=gen)
    glow = randomize_parameters(glow_like((3, 32, 32), 2, 4, 64, "affine"), generator=gen).eval()
    results["glow_cifar_arb113_seconds"] = _seconds(
        lambda: reference.compile(glow, "arb:113").forward(image))
    print(f"Glow-like 2 levels x 4 steps, hidden 64, one 3x32x32 image at arb:113 (compile and "
          f"forward): {results['glow_cifar_arb113_seconds']:.1f} s", flush=True)

    body = randomize_parameters(glow_like((3, 32, 32), 3, 16, 128, "affine"),
                                generator=gen).eval()
    results["paper_classifier_arb113_seconds"] = _seconds(
        lambda: reference.compile(body, "arb:113").forward(image))
    print(f"paper classifier body 3 levels x 16 steps, hidden 128, one image at arb:113: "
          f"{results['paper_classifier_arb113_seconds']:.1f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        args = ["sweep", "--out", str(Path(tmp) / "fig1"), "--no-progress"]
        results["sweep_in_process_seconds"] = _seconds(lambda: main(args))
        results["sweep_seconds"] = _seconds(lambda: subprocess.run(
            [sys.executable, "-m", "lipbound.cli", *args], check=True, capture_output=True))
    print(f"default lipbound sweep (depths 1-100, 2 chains, 5 precisions, PNG + CSV): "
          f"{results['sweep_seconds']:.1f} s as a fresh process, "
          f"{results['sweep_in_process_seconds']:.1f} s without the imports")
    return results


if __name__ == "__main__":
    print(json.dumps(main_benchmark()))
