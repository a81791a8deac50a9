"""Matrix-free sigma_min and sigma_max against the full SVD at d = 3072 (a 3x32x32 Glow-like model).

Side by side in one run, in float64, at one input:

* the paper's method (appendix D): the Jacobian one backward pass per output row, then all singular
  values (LAPACK) - the reference values and the baseline time;
* the full Jacobian with ``torch.func`` (``jacrev`` under ``vmap``, rows in chunks), then the SVD;
* matrix-free: Lanczos on J^T J for sigma_max(J_F(x)) and on the inverse for
  sigma_min = 1 / sigma_max(J_{F^-1}(F(x))) (lipbound.diagnostics.spectrum).

The last line is one JSON object: d, speedup_vs_rowwise, sigma_min_rel_error, sigma_max_rel_error
(goal: errors within 1%, at least 20x faster), and the measured times.

    PYTHONPATH=. python benchmarks/jacobian.py [--levels 2 --steps 2 --hidden 32 --tol 1e-6]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lipbound.blocks import glow_like, randomize_parameters
from lipbound.diagnostics.spectrum import jacobian, jacobian_rowwise, sigma_max, sigma_min


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32])
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--tol", type=float, default=1e-6, help="ARPACK tolerance")
    parser.add_argument("--chunk", type=int, default=64, help="vmap rows per chunk")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(args.seed)
    model = glow_like(tuple(args.shape), levels=args.levels, steps=args.steps, hidden=args.hidden,
                      coupling="affine")
    randomize_parameters(model, 0.05, torch.Generator().manual_seed(args.seed))
    model.eval()
    x = torch.randn(1, *args.shape)
    d = x.numel()
    print(f"Glow-like affine, {args.levels} levels x {args.steps} steps, hidden {args.hidden}, "
          f"d = {d}, float64, {torch.get_num_threads()} threads")

    # warm-up (one-time imports and kernel selection), not timed
    sigma_max(model, x[0], tol=1e-2)

    def rowwise():
        jac = jacobian_rowwise(model, x[0]).detach()
        return torch.linalg.svdvals(jac)

    sv_rows, t_rows = _timed(rowwise)
    print(f"rowwise Jacobian ({d} backward passes) + SVD: {t_rows:.2f} s")

    def vmapped():
        return torch.linalg.svdvals(jacobian(model, x, chunk_size=args.chunk)[0].detach())

    sv_full, t_full = _timed(vmapped)
    print(f"vmap Jacobian (chunks of {args.chunk}) + SVD:     {t_full:.2f} s")

    def free():
        return sigma_max(model, x[0], tol=args.tol), sigma_min(model, x[0], tol=args.tol)

    (top, low), t_free = _timed(free)
    print(f"matrix-free sigma_max + sigma_min:        {t_free:.2f} s "
          f"({top.matvecs} + {low.matvecs} products with J^T J)")

    exact_max, exact_min = float(sv_rows[0]), float(sv_rows[-1])
    max_err = abs(top.value - exact_max) / exact_max
    min_err = abs(low.value - exact_min) / exact_min
    agree = float((sv_rows - sv_full).abs().max() / sv_rows[0])
    print(f"sigma_max: SVD {exact_max:.10e}, matrix-free {top.value:.10e} (rel. error {max_err:.2e}"
          f", stated accuracy {top.rel_accuracy:.1e})")
    print(f"sigma_min: SVD {exact_min:.10e}, matrix-free {low.value:.10e} (rel. error {min_err:.2e}"
          f", stated accuracy {low.rel_accuracy:.1e})")
    print(f"rowwise and vmap spectra agree to {agree:.1e} (relative to sigma_max)")
    print(f"speedup of matrix-free: {t_rows / t_free:.1f}x vs rowwise, "
          f"{t_full / t_free:.1f}x vs vmap")
    print(json.dumps({
        "d": d,
        "speedup_vs_rowwise": t_rows / t_free,
        "sigma_min_rel_error": min_err,
        "sigma_max_rel_error": max_err,
        "speedup_vs_vmap_full": t_full / t_free,
        "seconds_rowwise": t_rows,
        "seconds_vmap_full": t_full,
        "seconds_matrix_free": t_free,
        "matvecs": top.matvecs + low.matvecs,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
