"""Linear relaxation (CROWN-style) ranges of sub-networks: sound against samples and box corners,
exact to rounding where the network is linear on the box, never looser than interval propagation,
and the coupling bounds built on them sound and never looser than with intervals alone."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
import torch
from torch import nn

from lipbound.blocks import coupling_mlp, glow_like, randomize_parameters
from lipbound.blocks.subnets import conv_subnet, mlp
from lipbound.bounds import blocks as block_rules
from lipbound.bounds import bound_model
from lipbound.bounds.empirical import max_jacobian_norm
from lipbound.bounds.interval import Box
from lipbound.bounds.layers import ibp
from lipbound.bounds.relax import METHOD, relaxed_box, supports

NETS = {
    "mlp_relu": lambda: (mlp(3, 2, 16, 2), (3,)),
    "mlp_leaky": lambda: (mlp(3, 2, 16, 2, "leaky_relu"), (3,)),
    "conv": lambda: (conv_subnet(2, 2, 4), (2, 3, 3)),
}


def _inside(y: torch.Tensor, box: Box) -> bool:
    return bool((y >= box.lo).all() and (y <= box.hi).all())


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("half_width", [1e-3, 0.1, 2.0])
def test_relaxed_ranges_are_sound_and_within_intervals(name, half_width):
    torch.manual_seed(0)
    net, shape = NETS[name]()
    randomize_parameters(net, 0.3, torch.Generator().manual_seed(1))
    net = net.double()
    centre = torch.randn(shape, dtype=torch.float64) * 0.5
    box = Box((centre - half_width).unsqueeze(0), (centre + half_width).unsqueeze(0))
    assert supports(net, shape)
    relaxed, interval = relaxed_box(net, box), ibp(net, box)
    assert bool((relaxed.lo >= interval.lo).all() and (relaxed.hi <= interval.hi).all())
    x = box.lo + (box.hi - box.lo) * torch.rand((4000, *shape), dtype=torch.float64)
    if len(shape) == 1:  # and every corner
        corners = torch.tensor(list(itertools.product((0.0, 1.0), repeat=shape[0])),
                               dtype=torch.float64)
        x = torch.cat([x, box.lo + (box.hi - box.lo) * corners])
    with torch.no_grad():
        assert _inside(net(x), relaxed)
    if half_width == 0.1:  # where the relaxation pays: tighter than intervals
        assert float((relaxed.hi - relaxed.lo).sum()) < float((interval.hi - interval.lo).sum())


def test_exact_to_rounding_where_the_network_is_linear():
    """All-positive weights and inputs: every ReLU is the identity on the box, so the range is
    ``W2 W1 c + W2 b1 + b2 +- |W2 W1| r``, computed here in rational arithmetic."""
    gen = torch.Generator().manual_seed(3)
    w1, b1 = torch.rand(5, 3, generator=gen, dtype=torch.float64), torch.rand(5, generator=gen,
                                                                              dtype=torch.float64)
    w2 = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    b2 = torch.randn(2, generator=gen, dtype=torch.float64)
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    with torch.no_grad():
        net[0].weight.copy_(w1), net[0].bias.copy_(b1), net[2].weight.copy_(w2)
        net[2].bias.copy_(b2)
    lo, hi = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[1.5, 2.25, 3.0]])
    relaxed = relaxed_box(net, Box(lo.double(), hi.double()))
    q = [[Fraction(v) for v in row] for row in w2.tolist()]
    w1q = [[Fraction(v) for v in row] for row in w1.tolist()]
    for i in range(2):
        coef = [sum(q[i][k] * w1q[k][j] for k in range(5)) for j in range(3)]
        const = sum(q[i][k] * Fraction(b1[k].item()) for k in range(5)) + Fraction(b2[i].item())
        exact_lo = const + sum(c * Fraction(lo[0, j].item() if c > 0 else hi[0, j].item())
                               for j, c in enumerate(coef))
        exact_hi = const + sum(c * Fraction(hi[0, j].item() if c > 0 else lo[0, j].item())
                               for j, c in enumerate(coef))
        assert Fraction(relaxed.lo[0, i].item()) <= exact_lo
        assert Fraction(relaxed.hi[0, i].item()) >= exact_hi
        assert float(exact_lo) - relaxed.lo[0, i].item() < 1e-12
        assert relaxed.hi[0, i].item() - float(exact_hi) < 1e-12


def test_unsupported_networks_use_intervals():
    tanh = mlp(2, 2, 8, 1, "tanh").double()
    assert not supports(tanh, (2,)) and relaxed_box(tanh, Box.uniform(-1, 1, (2,))) is None
    assert not supports(mlp(2, 2, 8).double(), (3,))  # wrong input size
    relu = mlp(1, 1, 8).double()
    assert supports(relu, (1,))
    model = coupling_mlp(2, 1, 8, "affine", activation="tanh").double()
    row = bound_model(model, (2,), box=(-1, 1)).blocks[0]
    assert "ranges of s and t on the boxes: interval propagation" in row.assumptions
    row = bound_model(coupling_mlp(2, 1, 8, "affine").double(), (2,), box=(-1, 1)).blocks[0]
    assert f"ranges of s and t on the boxes: {METHOD}" in row.assumptions


MODELS = {
    "affine_mlp": lambda: (coupling_mlp(4, 4, 16, "affine"), (4,), (-1.0, 1.0)),
    "affine_modified": lambda: (coupling_mlp(4, 3, 16, "affine", "modified"), (4,), (-2.0, 2.0)),
    "glow_affine": lambda: (glow_like((2, 4, 4), 1, 2, 8, "affine"), (2, 4, 4), (0.0, 1.0)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_coupling_bounds_sound_and_never_looser_than_intervals(name, monkeypatch):
    torch.manual_seed(0)
    model, shape, box = MODELS[name]()
    randomize_parameters(model, 0.1, torch.Generator().manual_seed(2))
    model = model.double().eval()
    net = bound_model(model, shape, box=box)
    search = {"n_samples": 32, "n_starts": 2, "n_steps": 10}
    assert max_jacobian_norm(model, net.boxes[0], **search) <= net.forward
    assert max_jacobian_norm(model, net.boxes[0], invert=True, **search) <= net.inverse
    monkeypatch.setattr(block_rules, "relaxed_box", lambda net, box: None)
    intervals = bound_model(model, shape, box=box)
    assert net.forward <= intervals.forward and net.inverse <= intervals.inverse
    for k, (a, b) in enumerate(zip(net.boxes, intervals.boxes, strict=True)):
        assert bool((a.lo >= b.lo).all() and (a.hi <= b.hi).all()), k
