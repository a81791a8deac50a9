"""Oracle benchmark: the reference backends side by side, and the default Figure 1 sweep.

Run ``python benchmarks/oracle.py`` (about three minutes on two cores; ``--only traced`` runs the
traced-oracle part alone, about a minute and a half). Every ratio is measured in this one run; the
last line is one JSON object with ``arb_vs_mp_speedup``, ``arb_vs_float64_slowdown``,
``glow_cifar_arb113_seconds``, ``paper_classifier_arb113_seconds``, ``sweep_seconds``,
``traced_vs_handwritten_slowdown``, ``traced_capture_seconds``, ``traced_repeat_capture_seconds``,
``zuko_realnvp_seconds``, ``zuko_realnvp_capture_seconds`` and the ``zuko_nsf_decompose_*``
times, plus the per-batch ratios. Goals (issue 4): speedup >= 50,
slowdown <= 300, Glow-like (2 levels x 4 steps, hidden 64) < 60 s, the paper's classifier body (3
levels x 16 steps, hidden 128, appendix G) < 300 s, sweep < 10 s, on 2 cores; (issue 12) traced
against hand-written oracle slowdown <= 2.

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
* The traced oracle (:func:`reference.compile_traced`: each leaf block's ``forward`` and
  ``inverse`` captured as ATen graphs, run in the same ball arithmetic) beside the hand-written
  one (:func:`reference.compile`) on the same model, the affine MLP coupling network with
  ``d = 2``, 8 blocks, hidden 64, a batch of 64 at ``arb:113``, forward then inverse. The traced
  oracle captures its graphs on the first call for an input shape; ``traced_capture_seconds`` is
  that first call's time less one evaluation (the trace cache emptied first; in a fresh process
  it includes torch.export's first import, seconds), and ``traced_vs_handwritten_slowdown``
  compares evaluations only (medians of three, the two oracles alternating so that load moves
  both alike). ``traced_repeat_capture_seconds`` is the same for a second oracle of the same
  model: its graphs come from :func:`reference.trace`'s cache (near 0).
  ``zuko_realnvp_seconds`` is the traced oracle's evaluation (forward then inverse, median of
  three) of a zuko ``RealNVP`` (``d = 8``, 8 transforms, zuko's default hidden layers 64, 64),
  batch 64, at ``arb:113``, with ``zuko_realnvp_capture_seconds`` apart. ``decompose`` of a zuko
  ``NSF`` (``d = 4``, 2 transforms, 8 samples, float32 against ``arb:113``):
  ``zuko_nsf_decompose_seconds`` the first call (about 10 graphs captured, most of its time),
  ``zuko_nsf_decompose_repeat_seconds`` the same call again (no capture: decompose keeps its cast
  copies, the graphs stay cached), ``zuko_nsf_decompose_float64_after_float32_seconds`` then at
  float64 (only the batch-1 Jacobian graphs are new). Without zuko installed the zuko keys are
  left out.
* ``sweep_seconds`` is the wall time of ``lipbound sweep`` as a fresh process (what a user waits
  for, imports of torch and matplotlib included); ``sweep_in_process_seconds`` leaves them out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _round_trip(ref: reference.ReferenceModel, x: torch.Tensor) -> Callable[[], object]:
    """Forward then inverse of ``x`` through the oracle ``ref``."""
    return lambda: ref.inverse(ref.forward(x))


def _traced_times(ref: reference.ReferenceModel, x: torch.Tensor,
                  other: Callable[[], object] | None = None
                  ) -> tuple[float, float, list[float], list[float]]:
    """``(capture, evaluation)`` seconds of the traced oracle ``ref`` on a round trip of ``x``
    (capture: the first call less the median evaluation), with the three evaluation times and
    those of ``other``, run alternating with them."""
    first = _seconds(_round_trip(ref, x))
    times, other_times = [], []
    for _ in range(3):
        if other is not None:
            other_times.append(_seconds(other))
        times.append(_seconds(_round_trip(ref, x)))
    evaluation = statistics.median(times)
    return max(first - evaluation, 0.0), evaluation, times, other_times


def _traced_results(gen: torch.Generator) -> dict[str, float]:
    """The traced oracle beside the hand-written one, and on zuko flows (module docstring)."""
    results: dict[str, float] = {}
    model = randomize_parameters(coupling_mlp(2, 8, 64, "affine"), generator=gen).eval()
    x = torch.randn(64, 2, generator=gen)
    hand = reference.compile(model, "arb:113")
    reference.clear_trace_cache()
    traced = reference.compile_traced(model, "arb:113")
    capture, t_traced, traced_times, hand_times = _traced_times(traced, x, _round_trip(hand, x))
    t_hand = statistics.median(hand_times)
    results["traced_vs_handwritten_slowdown"] = t_traced / t_hand
    results["traced_capture_seconds"] = capture
    repeat, *_ = _traced_times(reference.compile_traced(model, "arb:113"), x)
    results["traced_repeat_capture_seconds"] = repeat
    print(f"MLP coupling (d = 2, 8 blocks, hidden 64, batch 64) at arb:113, forward + inverse: "
          f"hand-written {t_hand:.2f} s (range {min(hand_times):.2f}-{max(hand_times):.2f}), "
          f"traced {t_traced:.2f} s (range {min(traced_times):.2f}-{max(traced_times):.2f}) "
          f"-> traced/hand-written slowdown {t_traced / t_hand:.2f}x; traced capture "
          f"{capture:.1f} s, once per input shape; a new oracle of the same model captures "
          f"nothing ({repeat:.2f} s over its evaluation)", flush=True)
    try:
        import zuko
    except ImportError:
        print("zuko is not installed: no zuko timings", flush=True)
        return results
    torch.manual_seed(0)
    flow = zuko.flows.RealNVP(features=8, context=0, transforms=8).to(torch.float64)
    z = torch.randn(64, 8, generator=gen)
    capture, t_zuko, zuko_times, _ = _traced_times(reference.compile_traced(flow, "arb:113"), z)
    results["zuko_realnvp_seconds"] = t_zuko
    results["zuko_realnvp_capture_seconds"] = capture
    print(f"zuko RealNVP (d = 8, 8 transforms, hidden 64, 64, batch 64) at arb:113, traced, "
          f"forward + inverse: {t_zuko:.2f} s (range {min(zuko_times):.2f}-"
          f"{max(zuko_times):.2f}); capture {capture:.1f} s", flush=True)
    results.update(_decompose_results(zuko, gen))
    return results


def _decompose_results(zuko: Any, gen: torch.Generator) -> dict[str, float]:
    """``decompose`` of a zuko NSF (d = 4, 2 transforms, hidden 64, 64; 8 samples, float32,
    arb:113): the first call (its captures included), the same call again (graphs cached), then
    float64 (its new shapes only)."""
    from lipbound.precision.decompose import decompose

    torch.manual_seed(0)
    flow = zuko.flows.NSF(features=4, context=0, transforms=2)
    x = torch.randn(8, 4, generator=gen)
    reference.clear_trace_cache()
    times = {name: _seconds(lambda p=p: decompose(flow, x, p, "arb:113"))
             for name, p in (("first", "float32"), ("repeat", "float32"),
                             ("float64", "float64"))}
    print(f"decompose of a zuko NSF (d = 4, 2 transforms, 8 samples) at float32 against "
          f"arb:113: first call {times['first']:.1f} s, again {times['repeat']:.1f} s (graphs "
          f"cached), then float64 {times['float64']:.1f} s", flush=True)
    return {"zuko_nsf_decompose_seconds": times["first"],
            "zuko_nsf_decompose_repeat_seconds": times["repeat"],
            "zuko_nsf_decompose_float64_after_float32_seconds": times["float64"]}


def main_benchmark(only: str | None = None) -> dict[str, float]:
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    if only == "traced":
        return _traced_results(gen)
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
          f"{results['sweep_in_process_seconds']:.1f} s without the imports", flush=True)
    results.update(_traced_results(gen))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["traced"], default=None,
                        help="run only the traced-oracle part (default: everything)")
    print(json.dumps(main_benchmark(parser.parse_args().only)))
