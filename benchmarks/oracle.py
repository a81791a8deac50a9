"""Oracle benchmark: the reference backends side by side, and the default Figure 1 sweep.

Run ``python benchmarks/oracle.py``. Every ratio is measured in this one run; the last line is one
JSON object with ``arb_vs_mp_speedup``, ``arb_vs_float64_slowdown``, ``glow_cifar_arb113_seconds``,
``paper_classifier_arb113_seconds`` and ``sweep_seconds``. Goals (issue 4): speedup >= 50,
slowdown <= 300, Glow-like (2 levels x 4 steps, hidden 64) < 60 s, the paper's classifier body
(3 levels x 16 steps, hidden 128, appendix G) < 300 s, sweep < 10 s, on 2 cores.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import flint
import torch

import reference
from lipbound.blocks import coupling_mlp, glow_like, randomize_parameters
from lipbound.cli import main


def _seconds(fn: Callable[[], object], repeat: int = 1) -> float:
    """Best of ``repeat`` wall-clock times."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main_benchmark() -> dict[str, float]:
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    flint.ctx.threads = 2
    gen = torch.Generator().manual_seed(0)
    results: dict[str, float] = {}

    # width-256 MLP coupling network, one batch, 113 bits
    mlp_model = randomize_parameters(coupling_mlp(4, 4, 256, "affine"), generator=gen).eval()
    x = torch.randn(16, 4)  # arb_mat converts the weight matrix per product: batch amortises
    arb_ref = reference.compile(mlp_model, "arb:113")
    mp_ref = reference.compile(mlp_model, "mp:113")
    t_arb = _seconds(lambda: arb_ref.forward(x), repeat=3)
    t_mp = _seconds(lambda: mp_ref.forward(x))
    with torch.no_grad():
        t_f64 = _seconds(lambda: mlp_model(x), repeat=20)
    results["arb_vs_mp_speedup"] = t_mp / t_arb
    results["arb_vs_float64_slowdown"] = t_arb / t_f64
    print(f"MLP coupling (4 blocks, width 256, batch 16): float64 {t_f64 * 1e3:.2f} ms, "
          f"arb:113 {t_arb * 1e3:.1f} ms, mp:113 {t_mp * 1e3:.0f} ms -> arb/mp speedup "
          f"{results['arb_vs_mp_speedup']:.0f}x, arb/float64 slowdown "
          f"{results['arb_vs_float64_slowdown']:.0f}x")

    image = torch.randn(1, 3, 32, 32)
    glow = randomize_parameters(glow_like((3, 32, 32), 2, 4, 64, "affine"), generator=gen).eval()
    results["glow_cifar_arb113_seconds"] = _seconds(
        lambda: reference.compile(glow, "arb:113").forward(image))
    print(f"Glow-like 2 levels x 4 steps, hidden 64, one 3x32x32 image at arb:113 (compile and "
          f"forward): {results['glow_cifar_arb113_seconds']:.1f} s")

    body = randomize_parameters(glow_like((3, 32, 32), 3, 16, 128, "affine"),
                                generator=gen).eval()
    results["paper_classifier_arb113_seconds"] = _seconds(
        lambda: reference.compile(body, "arb:113").forward(image))
    print(f"paper classifier body 3 levels x 16 steps, hidden 128, one image at arb:113: "
          f"{results['paper_classifier_arb113_seconds']:.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        results["sweep_seconds"] = _seconds(
            lambda: main(["sweep", "--out", str(Path(tmp) / "fig1"), "--no-progress"]))
    print(f"default lipbound sweep (depths 1-100, 2 chains, 5 precisions, PNG + CSV): "
          f"{results['sweep_seconds']:.1f} s")
    return results


if __name__ == "__main__":
    print(json.dumps(main_benchmark()))
