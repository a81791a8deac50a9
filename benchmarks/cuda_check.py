"""One short script for a lent GPU: lipbound's training pieces on CUDA, side by side with autograd.

What it measures (on ``--device``, default ``cuda``; it runs on the CPU too, slowly):

* agreement: memory-saving gradients against autograd's on the same device for a Glow-like affine
  model (3x32x32, 3 levels x 4 steps, width 128, batch 16), in float64 and float32: the largest
  relative difference over all parameter gradients and the number of fallbacks;
* the silent-NaN case of issue 10 (8 affine sigmoid couplings, d = 8, inputs x100) on the device:
  ``"fallback"`` against autograd, and that ``"raise"`` raises;
* mixed precision: one step under ``torch.autocast`` (bfloat16) with memory-saving gradients,
  whether the loss and gradients are finite and how many fallbacks the self-check counted;
* memory and time at the paper's classifier width (3 levels x 16 steps, width 128, batch 64,
  float32): peak allocated bytes of one training step and its time, memory-saving over autograd.

The last line is one JSON object. Run: ``PYTHONPATH=. python benchmarks/cuda_check.py``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lipbound.blocks import (
    AffineCoupling,
    InvertibleSequential,
    Permutation,
    SigmoidScale,
    glow_like,
    halves,
    randomize_parameters,
)
from lipbound.blocks.subnets import mlp
from lipbound.training import MemorySavingError, memory_saving, nf_loss


def _grads(net, x) -> list[torch.Tensor]:
    for p in net.parameters():
        p.grad = None
    nf_loss(net, x).loss.backward()
    return [p.grad.detach().clone() for p in net.parameters()]


def _max_rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = max(float((u - v).abs().max()) for u, v in zip(a, b))
    den = max(float(v.abs().max()) for v in b)
    return num / den


def agreement(device: str, dtype: torch.dtype) -> dict:
    model = glow_like((3, 32, 32), levels=3, steps=4, hidden=128, coupling="affine")
    model = randomize_parameters(model, 0.02, torch.Generator().manual_seed(0))
    model = model.to(device=device, dtype=dtype)
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    model(x)  # ActNorm's data-dependent initialisation
    exact = _grads(model, x)
    net = memory_saving(model, check_every=1)
    saved = _grads(net, x)
    return {"max_rel_grad_diff": _max_rel(saved, exact), "fallbacks": net.fallbacks}


def silent_nan_case(device: str) -> dict:
    torch.manual_seed(0)
    blocks = []
    for _ in range(8):
        blocks += [AffineCoupling(halves(8), mlp(4, 4, 16), mlp(4, 4, 16), SigmoidScale()),
                   Permutation(8)]
    model = InvertibleSequential(*blocks).to(device=device, dtype=torch.float64)
    x = 100 * torch.randn(32, 8, generator=torch.Generator().manual_seed(2)).to(device,
                                                                                 torch.float64)
    exact = _grads(model, x)
    net = memory_saving(model, policy="fallback")
    saved = _grads(net, x)
    raised = False
    try:
        _grads(memory_saving(model, policy="raise"), x)
    except MemorySavingError:
        raised = True
    nan_grads = sum(int(g.isnan().sum()) for g in saved)
    return {"fallback_max_rel_grad_diff": _max_rel(saved, exact), "fallbacks": net.fallbacks,
            "nan_entries": nan_grads, "raise_policy_raised": raised}


def amp_step(device: str) -> dict:
    model = glow_like((3, 32, 32), levels=2, steps=4, hidden=64, coupling="affine").to(device)
    x = torch.rand(16, 3, 32, 32, device=device)
    model(x)
    net = memory_saving(model)
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    with torch.autocast(dev_type, dtype=torch.bfloat16):
        loss = nf_loss(net, x).loss
    loss.backward()
    finite = all(bool(p.grad.isfinite().all()) for p in net.parameters() if p.grad is not None)
    return {"loss": float(loss.detach()), "grads_finite": finite, "fallbacks": net.fallbacks,
            "last_check_error": None if net.last_check is None
            else float(net.last_check.input_error)}


def _step_cost(device: str, memsave: bool, repeats: int = 5) -> tuple[int, float]:
    model = glow_like((3, 32, 32), levels=3, steps=16, hidden=128, coupling="affine").to(device)
    x = torch.rand(64, 3, 32, 32, device=device)
    model(x)
    net = memory_saving(model) if memsave else model
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nf_loss(net, x).loss.backward()
        opt.step()

    step()  # warm-up (and optimizer state)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated(device) - base if cuda else 0
    return peak, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    args = parser.parse_args()
    out: dict = {"device": args.device, "torch": torch.__version__}
    if args.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(args.device)
    for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        out[f"agreement_{name}"] = agreement(args.device, dtype)
        print(name, out[f"agreement_{name}"], flush=True)
    out["silent_nan_case"] = silent_nan_case(args.device)
    print("silent NaN case", out["silent_nan_case"], flush=True)
    out["amp_bf16"] = amp_step(args.device)
    print("amp bf16", out["amp_bf16"], flush=True)
    peak_a, time_a = _step_cost(args.device, memsave=False)
    peak_m, time_m = _step_cost(args.device, memsave=True)
    out.update(autograd_peak_bytes=peak_a, memsave_peak_bytes=peak_m,
               memsave_peak_ratio=peak_m / peak_a if peak_a else None,
               autograd_step_s=time_a, memsave_step_s=time_m,
               memsave_time_ratio=time_m / time_a)
    print(f"classifier-width step: autograd {time_a * 1e3:.1f} ms, {peak_a / 2**20:.0f} MiB; "
          f"memory-saving {time_m * 1e3:.1f} ms, {peak_m / 2**20:.0f} MiB", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
