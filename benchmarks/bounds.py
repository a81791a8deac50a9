"""Tightness and speed of ``lipbound.bounds``, measured side by side in one run.

Tightness is ``bound / best empirical norm`` (the largest ``||J||_2`` found by sampling and gradient
ascent on the same box, :mod:`lipbound.bounds.empirical`): 1 is exact, larger is looser; it can
never be below 1 (that would be a soundness bug). Per block kind (random weights, float64), for the
products of layer norms inside sub-networks (``Lip(t)`` of an additive coupling's MLP and conv
net), and for 2-level Glow-like models, whose ratio is split into the looseness of the per-block
bounds and that of the product over blocks (:func:`_glow_tightness`). Speed: a 100-block
architecture bounded symbolically (a spec with distinct symbols per block) and numerically (a
100-block coupling model with weights). Goals (issue 3): within 3x for single additive, ActNorm,
1x1 conv and i-ResNet blocks, 100 blocks in under 2 s; the line before the last says which are
met (wall-clock seconds; the CPU seconds beside them are steadier on a busy machine). Then the
keys of issue 11 (:func:`issue11`): deep affine
couplings, a Glow-like model on the dequantization cell of a point, and (``--cifar``) a CIFAR-size
Glow from its weights. The last line is one JSON object: ``{"tightness": {kind: ratio},
"seconds_100_blocks": {...}, "tightness_affine_mlp_8": ..., ...}``.

Run: ``PYTHONPATH=. python benchmarks/bounds.py [--cifar] [--split-budget SECONDS]`` (input
splitting of the affine MLPs: 60 s for 8 blocks, 120 s for 32 by default, 0 turns it off).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from lipbound.blocks import (
    ActNorm,
    AdditiveCoupling,
    DiagonalScaling,
    Invertible1x1Conv,
    InvertibleResidual,
    InvertibleSequential,
    NeuralODE,
    ODEFunc,
    conv_subnet,
    coupling_mlp,
    glow_like,
    halves,
    mlp,
    randomize_parameters,
)
from lipbound.blocks.residual import residual_conv, residual_mlp
from lipbound.bounds import Box, bound_model, local_bounds
from lipbound.bounds.empirical import max_block_norms, max_jacobian_norm
from lipbound.bounds.layers import lipschitz
from lipbound.bounds.spec import spec_bounds
from lipbound.bounds.split import split_bounds
from lipbound.bounds.table import expr_str
from lipbound.io import load_model, save_model
from lipbound.jsonio import jsonable

SEARCH = {"n_samples": 128, "n_starts": 4, "n_steps": 30}
#: Seconds of input splitting per affine MLP of issue 11, by number of blocks (``--split-budget``
#: sets one budget for both): 32 blocks need sub-boxes of radius ~0.1 everywhere (~4000).
SPLIT_BUDGET = {8: 60.0, 32: 120.0}
#: The 2-level Glow-like models (d = 128): a lighter search, per block lighter still.
SEARCH_GLOW = {"n_samples": 32, "n_starts": 2, "n_steps": 10}
SEARCH_BLOCK = {"n_samples": 16, "n_starts": 2, "n_steps": 5}


def _noise(model: torch.nn.Module, std: float, seed: int = 0) -> torch.nn.Module:
    return randomize_parameters(model, std, torch.Generator().manual_seed(seed)).eval()


def _single(model: InvertibleSequential, shape: tuple, box: tuple, exact_inverse: bool = False
            ) -> tuple[float, float, float, float]:
    """(forward ratio, inverse ratio, paper/tight forward, paper/tight inverse) of a 1-block net."""
    net = bound_model(model, shape, box=box)
    row, block = net.blocks[0], model.flat_blocks()[0]
    fwd, inv = max_block_norms(block, net.boxes[0], net.inverse_boxes[0], exact_inverse, **SEARCH)
    return (row.forward.value / fwd, row.inverse.value / inv,
            row.forward.paper_value / row.forward.value,
            row.inverse.paper_value / row.inverse.value)


def tightness() -> dict[str, float]:
    torch.manual_seed(0)
    out: dict[str, float] = {}
    cases = {
        "additive_mlp": (InvertibleSequential(AdditiveCoupling(halves(4), mlp(2, 2, 32, 1))),
                         (4,), (-2, 2), 0.3, False),
        "additive_conv": (InvertibleSequential(AdditiveCoupling(halves(4), conv_subnet(2, 2, 8))),
                          (4, 4, 4), (0, 1), 0.1, False),
        "affine_sigmoid": (coupling_mlp(2, 1, 32, "affine", n_hidden=1), (2,), (-4, 4), 0.3,
                           False),
        "affine_modified": (coupling_mlp(2, 1, 32, "affine", "modified", n_hidden=1), (2,),
                            (-4, 4), 0.3, False),
        "actnorm": (InvertibleSequential(ActNorm(6)), (6,), (-1, 1), 0.5, False),
        "diagonal": (InvertibleSequential(DiagonalScaling(torch.randn(6))), (6,), (-1, 1), None,
                     False),
        "conv1x1": (InvertibleSequential(Invertible1x1Conv(6)), (6, 2, 2), (-1, 1), 0.5, False),
        "iresnet_mlp": (InvertibleSequential(InvertibleResidual(residual_mlp(2, 32, 1, 0.9))),
                        (2,), (-4, 4), None, True),
        "iresnet_conv": (InvertibleSequential(InvertibleResidual(residual_conv(
            2, 4, 0.9, (2, 4, 4)))), (2, 4, 4), (-1, 1), None, True),
        "neural_ode": (InvertibleSequential(NeuralODE(ODEFunc(2, 16, 1), T=1.0, steps=8)), (2,),
                       (-2, 2), 0.3, False),
    }
    for name, (model, shape, box, std, exact_inverse) in cases.items():
        if std is not None:
            _noise(model, std)
        fwd, inv, pf, pi = _single(model.eval(), shape, box, exact_inverse)
        out[f"{name}_forward"], out[f"{name}_inverse"] = fwd, inv
        print(f"{name:16s} bound/empirical  forward {fwd:9.4g}  inverse {inv:9.4g}   "
              f"paper/tight forward {pf:7.4g} inverse {pi:7.4g}")
    for name, (net, shape) in {"t_mlp_2_layers": (cases["additive_mlp"][0][0].t, (2,)),
                               "t_conv_3_layers": (cases["additive_conv"][0][0].t, (2, 4, 4))
                               }.items():
        lip = lipschitz(net, shape)[0]
        found = max_jacobian_norm(net, Box.uniform(-2, 2, shape), **SEARCH)
        out[f"layer_product_{name}"] = lip / found
        print(f"product of layer norms / empirical Lip, {name}: {lip / found:.4g}")
    for coupling, box in (("additive", (0, 1)), ("affine", (0, 1))):
        model = _noise(glow_like((2, 8, 8), 2, 2, 8, coupling, "1x1conv"), 0.05)
        out.update(_glow_tightness(model, coupling, box))
    return out


def _glow_tightness(model: InvertibleSequential, coupling: str, box: tuple) -> dict[str, float]:
    """Whole-network ratio of a 2-level Glow-like model, split into its two causes:
    ``bound / empirical = (prod_k bound_k / prod_k emp_k) * (prod_k emp_k / empirical)``, the
    looseness of the per-block bounds (each block's bound against its own best Jacobian norm on
    its box) times the looseness of the product over blocks itself (the best per-block norms
    multiplied, against the network's best norm). Each block is measured on the box carried to
    it by interval bound propagation, as its bound is: for affine couplings those boxes grow much
    faster than the true images, so there the split mostly shows the boxes' growth."""
    net = bound_model(model, (2, 8, 8), box=box)
    out: dict[str, float] = {}
    for direction in ("forward", "inverse"):
        invert = direction == "inverse"
        total = getattr(net, direction)
        found = max_jacobian_norm(model, net.boxes[0], invert=invert, **SEARCH_GLOW)
        per_block = 1.0
        for k, block in enumerate(model.flat_blocks()):
            # the inverse on the forward image: J_{F_k^-1}(F_k(x)) = J_{F_k}(x)^-1
            per_block *= max_jacobian_norm(block, net.boxes[k], invert=invert, **SEARCH_BLOCK)
        out[f"glow2_{coupling}_{direction}"] = total / found
        out[f"glow2_{coupling}_{direction}_per_block"] = total / per_block
        out[f"glow2_{coupling}_{direction}_product_over_blocks"] = per_block / found
        print(f"glow 2 levels {coupling:8s} {direction:7s} bound {total:.4g} / empirical "
              f"{found:.4g} = {total / found:.4g}  =  per-block bounds / per-block empirical "
              f"{total / per_block:.4g}  x  product of per-block empirical / network empirical "
              f"{per_block / found:.4g}")
    return out


def seconds_100_blocks() -> dict[str, float]:
    spec = {"box": [-4, 4], "inverse_box": [-4, 4], "blocks": [
        {"kind": ["additive", "affine", "residual", "actnorm", "conv1x1"][i % 5], "tag": i}
        for i in range(100)]}
    t0 = time.perf_counter()
    net = spec_bounds(spec)
    _ = (expr_str(net.forward_expr), expr_str(net.inverse_expr))
    symbolic = time.perf_counter() - t0
    model = _noise(coupling_mlp(2, 100, 32, "affine", "modified", n_hidden=1), 0.1)
    t0, c0 = time.perf_counter(), time.process_time()
    net = bound_model(model, (2,), box=(-4, 4))
    _ = (net.forward, net.inverse, net.forward_lower, expr_str(net.forward_expr))
    numeric, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"100 blocks: symbolic spec {symbolic:.3f} s, numeric model {numeric:.3f} s "
          f"({cpu:.3f} s of CPU)")
    return {"symbolic": symbolic, "numeric": numeric, "numeric_cpu": cpu}


def issue11(cifar: bool, split_budget: float | None = None) -> dict[str, float | None]:
    """The keys of issue 11 that are computable now (goals in brackets): deep affine couplings on
    ``[-1, 1]^4`` (8 blocks <= 10, 32 blocks <= 1e3), a Glow-like model on the dequantization cell
    of one point (forward <= 3, inverse finite and <= 10, in < 60 s) and, with ``--cifar``, the
    bound of a saved CIFAR-size Glow-like model from its weights (< 20 s). Weights: builder
    initialisation plus N(0, 0.1^2) noise; ratios are bound / largest norm found (>= 1).

    For the affine MLPs, ``tightness_affine_mlp_{n}`` (and ``_inverse``) is the tightest sound
    bound reached: the whole box's (the tightest method of ``bound_model``,
    :attr:`NetworkBound.forward_method` names it; ``*_whole`` alone, ``*_composed`` the product
    of per-block bounds alone) or, with ``split_budget > 0`` seconds (default
    :data:`SPLIT_BUDGET` by model), the bound input splitting reaches (:func:`split_bounds`:
    ``*_split``, with ``split_boxes_affine_mlp_{n}`` sub-boxes in
    ``split_seconds_affine_mlp_{n}`` s, of which ``split_cpu_seconds_affine_mlp_{n}`` CPU),
    whichever is smaller."""
    out: dict[str, float | None] = {}
    for n in (8, 32):
        budget = SPLIT_BUDGET[n] if split_budget is None else split_budget
        torch.manual_seed(0)  # the builders draw their initialisation from the global generator
        model = _noise(coupling_mlp(4, n, 32, "affine"), 0.1)
        box = Box.uniform(-1, 1, (4,))
        net = bound_model(model, (4,), box=box)
        fwd = max_jacobian_norm(model, box, **SEARCH)
        inv = max_jacobian_norm(model, box, invert=True, **SEARCH)
        forward, inverse = net.forward, net.inverse
        out[f"tightness_affine_mlp_{n}_whole"] = net.forward / fwd
        out[f"tightness_affine_mlp_{n}_inverse_whole"] = net.inverse / inv
        out[f"tightness_affine_mlp_{n}_composed"] = net.forward_composed / fwd
        print(f"affine mlp, {n} blocks, [-1, 1]^4, whole box: forward {net.forward:.4g} / "
              f"{fwd:.4g} = {net.forward / fwd:.4g}; inverse {net.inverse:.4g} / {inv:.4g} = "
              f"{net.inverse / inv:.4g} (forward: {net.forward_method}; product of per-block "
              f"bounds {net.forward_composed:.4g})")
        if budget:
            t0, c0 = time.perf_counter(), time.process_time()
            split = split_bounds(model, (4,), box, budget)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            split_fwd = math.inf if split.forward is None else split.forward
            split_inv = math.inf if split.inverse is None else split.inverse
            forward, inverse = min(forward, split_fwd), min(inverse, split_inv)
            out[f"tightness_affine_mlp_{n}_split"] = split_fwd / fwd
            out[f"tightness_affine_mlp_{n}_split_inverse"] = split_inv / inv
            out[f"split_boxes_affine_mlp_{n}"] = split.boxes
            out[f"split_seconds_affine_mlp_{n}"] = seconds
            out[f"split_cpu_seconds_affine_mlp_{n}"] = cpu
            print(f"  input splitting, {budget:g} s budget ({seconds:.3g} s, {cpu:.3g} s of "
                  f"CPU, {split.boxes} sub-boxes{'' if split.batched else ', one at a time'}): "
                  f"forward {split_fwd:.4g} / {fwd:.4g} = {split_fwd / fwd:.4g}; inverse "
                  f"{split_inv:.4g} / {inv:.4g} = {split_inv / inv:.4g}")
        out[f"tightness_affine_mlp_{n}"] = forward / fwd
        out[f"tightness_affine_mlp_{n}_inverse"] = inverse / inv
        print(f"  tightest: forward {forward / fwd:.4g}, inverse {inverse / inv:.4g}")
    torch.manual_seed(0)
    model = _noise(glow_like((3, 8, 8), 1, 8, 16, "affine"), 0.1)
    x = torch.rand((1, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t0, c0 = time.perf_counter(), time.process_time()
    local = local_bounds(model, x)  # radius 0.5 / 256
    out["seconds_glow_local"] = time.perf_counter() - t0
    out["cpu_seconds_glow_local"] = time.process_time() - c0
    box = local.bounds[0].boxes[0]
    fwd = max_jacobian_norm(model, box, **SEARCH_GLOW)
    inv = max_jacobian_norm(model, box, invert=True, **SEARCH_GLOW)
    out["tightness_glow_local"] = local.forward / fwd
    out["tightness_glow_local_inverse"] = local.inverse / inv
    net = local.bounds[0]
    print(f"glow (3, 8, 8), 8 affine steps, dequantization cell: forward {local.forward:.4g} / "
          f"{fwd:.4g} = {local.forward / fwd:.4g}; inverse {local.inverse:.4g} / {inv:.4g} = "
          f"{local.inverse / inv:.4g}; {out['seconds_glow_local']:.3g} s (forward: "
          f"{net.forward_method}; product of per-block bounds {net.forward_composed:.4g}; "
          f"interval Jacobian {net.jacobian.forward}, inverse {net.jacobian.inverse}"
          + (f", {net.jacobian.reason}" if net.jacobian.reason else "") + ")")
    out["seconds_glow_cifar_weights"] = _cifar_seconds() if cifar else None
    return out


def _cifar_seconds() -> float:
    """Seconds to bound a saved (3, 32, 32) Glow-like model (3 levels of 16 steps, hidden 128,
    additive) from its weights, loading included."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "glow.pt"
        save_model(_noise(glow_like((3, 32, 32), 3, 16, 128, "additive"), 0.01), path)
        t0, c0 = time.perf_counter(), time.process_time()
        net = bound_model(load_model(path), (3, 32, 32))
        _ = (net.forward, net.inverse)
        seconds = time.perf_counter() - t0
    print(f"CIFAR-size additive Glow from its weights: {seconds:.3g} s "
          f"({time.process_time() - c0:.3g} s of CPU), Lip(F) <= "
          f"{net.forward:.4g}, Lip(F^-1) <= {net.inverse:.4g}")
    return seconds


def issue11_goals(v: dict[str, float | None]) -> str:
    """Which goals of issue 11 the run met."""
    def met(key: str, limit: float) -> str:
        value = v.get(key)
        return f"{key} {value if value is None else f'{value:.3g}'} (<= {limit:g}: " \
               f"{value is not None and value <= limit})"
    return "issue 11 goals: " + "; ".join([
        met("tightness_affine_mlp_8", 10), met("tightness_affine_mlp_32", 1e3),
        met("tightness_glow_local", 3), met("tightness_glow_local_inverse", 10),
        met("seconds_glow_local", 60), met("seconds_glow_cifar_weights", 20)])


#: Kinds with a 3x tightness goal (their forward and inverse ratios).
GOAL_KINDS = ("additive_mlp", "additive_conv", "actnorm", "conv1x1", "iresnet_mlp", "iresnet_conv")


def goals(ratios: dict[str, float], seconds: dict[str, float]) -> str:
    """Which goals the run met."""
    worst = max(ratios[f"{k}_{d}"] for k in GOAL_KINDS for d in ("forward", "inverse"))
    slowest = max(seconds.values())
    return (f"goals: worst single-block ratio {worst:.3g} (<= 3: {worst <= 3}); "
            f"100 blocks in {slowest:.3g} s (< 2 s: {slowest < 2})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", action="store_true",
                        help="also time the CIFAR-size Glow from its weights (minutes; default: "
                             "off, seconds_glow_cifar_weights null)")
    parser.add_argument("--split-budget", type=float, default=None, metavar="SECONDS",
                        help="split the box of each affine MLP for SECONDS (default: "
                             f"{SPLIT_BUDGET[8]:g} for 8 blocks, {SPLIT_BUDGET[32]:g} for 32; "
                             "0: the whole box only)")
    cli = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # many threads are much slower on a busy machine
    ratios, seconds = tightness(), seconds_100_blocks()
    local = issue11(cli.cifar, cli.split_budget)
    print(goals(ratios, seconds))
    print(issue11_goals(local))
    print(json.dumps(jsonable({"tightness": ratios, "seconds_100_blocks": seconds, **local})))
