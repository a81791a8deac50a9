"""The zonotope pass (:mod:`lipbound.bounds.zonotope`): every operation encloses its exact result
at sampled points of its input zonotopes, the boxes between blocks and inside the coupling
sub-networks hold the values of sampled inputs on models of every supported block kind, the
pass is much tighter than interval propagation on a dequantization cell, and with it the
whole-network bounds stay sound and the inverse bound of a Glow-like model on a dequantization
cell is finite."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipbound.blocks import (
    ActNorm,
    AdditiveCoupling,
    DiagonalScaling,
    Invertible1x1Conv,
    InvertibleSequential,
    Permutation,
    coupling_mlp,
    glow_like,
    halves,
    randomize_parameters,
    residual_flow,
)
from lipbound.blocks.scale import make_scale
from lipbound.bounds import Box, bound_model, local_bounds
from lipbound.bounds.blocks import block_rule
from lipbound.bounds.empirical import max_jacobian_norm
from lipbound.bounds.interval import monotone_map
from lipbound.bounds.jacobian import jacobian_bounds
from lipbound.bounds.scales import dg_box, g_box
from lipbound.bounds.zonotope import (
    Zonotope,
    add,
    linear,
    mean_value,
    multiply,
    piecewise_linear,
    zonotope_ranges,
)


def _random_zonotope(gen: torch.Generator, n: int, m: int, spread: float = 1.0) -> Zonotope:
    """A batch of one zonotope."""
    return Zonotope(torch.randn(1, n, generator=gen, dtype=torch.float64),
                    spread * torch.randn(1, n, m, generator=gen, dtype=torch.float64),
                    0.01 * torch.rand(1, n, generator=gen, dtype=torch.float64))


def _points(z: Zonotope, eps: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Points of ``z`` for the generator coefficients ``eps`` (k, m) and random error terms."""
    n = z.c.shape[-1]
    delta = (2 * torch.rand(len(eps), n, generator=gen, dtype=torch.float64) - 1) * z.e
    return z.c + eps[:, : z.n_gens] @ z.g[0].T + delta


def _eps(gen: torch.Generator, k: int, m: int) -> torch.Tensor:
    """Coefficients in [-1, 1]^m: half of them vertices."""
    u = 2 * torch.rand(k, m, generator=gen, dtype=torch.float64) - 1
    u[: k // 2] = torch.sign(u[: k // 2])
    return u


def _holds(z: Zonotope, values: torch.Tensor) -> bool:
    box = z.box((z.c.shape[-1],))
    return bool(((values >= box.lo) & (values <= box.hi)).all())


def test_linear_add_and_multiply_enclose_their_exact_results():
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        a = _random_zonotope(gen, 6, 5)
        # b shares a's generators and has its own new ones after them
        b = _random_zonotope(gen, 6, 8, 0.3)
        eps = _eps(gen, 2000, 8)
        xa, xb = _points(a, eps, gen), _points(b, eps, gen)
        w, bias = torch.randn(4, 6, generator=gen, dtype=torch.float64), torch.randn(4)
        assert _holds(linear(a, w, bias.double()), xa @ w.T + bias.double())
        assert _holds(add(a, b), xa + xb)
        prod = multiply(a, b)
        assert _holds(prod, xa * xb)
        # the bilinear term is a new generator per coordinate, after the shared ones
        assert prod.n_gens == 8 + 6
    # a linear map keeps the dependence: x - x is exactly 0 up to rounding
    z = _random_zonotope(gen, 3, 3)
    diff = linear(z, torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]]).double())
    both = add(Zonotope(diff.c[:, :1], diff.g[:, :1], diff.e[:, :1]),
               Zonotope(diff.c[:, 1:], diff.g[:, 1:], diff.e[:, 1:]))
    assert float(both.radius()) <= 2 * float(z.e[0, 0]) + 1e-12


@pytest.mark.parametrize("slope", [0.0, 0.1, 1.0])
def test_piecewise_linear_encloses_relu_and_is_exact_where_stable(slope):
    gen = torch.Generator().manual_seed(1)
    z = _random_zonotope(gen, 50, 6, 0.8)
    eps = _eps(gen, 4000, 6)
    x = _points(z, eps, gen)
    out = piecewise_linear(z, slope)
    assert _holds(out, torch.maximum(x, slope * x))
    r = z.radius()
    stable = ((z.c - r) > 0) | ((z.c + r) < 0)
    assert bool(stable.any()) and bool((~stable).any())
    assert out.n_gens == 6 + (0 if slope == 1.0 else int((~stable).sum()))
    # positive coordinates pass unchanged
    pos = (z.c - r) > 0
    assert torch.equal(out.g[pos][:, :6], z.g[pos])


@pytest.mark.parametrize("fn", ["tanh", "sigmoid"])
def test_mean_value_form_encloses_activations(fn):
    from lipbound.bounds.jacobian import _DERIVATIVES
    layer = {"tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()}[fn]
    f = {"tanh": torch.tanh, "sigmoid": torch.sigmoid}[fn]
    gen = torch.Generator().manual_seed(2)
    z = _random_zonotope(gen, 30, 4, 0.5)
    x = _points(z, _eps(gen, 3000, 4), gen)
    r = z.radius()
    out = mean_value(z, monotone_map(Box.point(z.c), f),
                     _DERIVATIVES[type(layer)](layer, Box(z.c - r, z.c + r)))
    assert _holds(out, f(x))


@pytest.mark.parametrize("name", ["sigmoid", "modified", "exp", "softclamp"])
def test_mean_value_form_encloses_coupling_scales(name):
    scale = make_scale(name)
    gen = torch.Generator().manual_seed(3)
    z = _random_zonotope(gen, 20, 4, 0.3)
    x = _points(z, _eps(gen, 3000, 4), gen)
    r = z.radius()
    rng = Box(z.c - r, z.c + r)
    out = mean_value(z, g_box(scale, Box.point(z.c)), dg_box(scale, rng))
    with torch.no_grad():
        assert _holds(out, scale(x))


def _noisy(model, std, seed):
    return randomize_parameters(model, std, torch.Generator().manual_seed(seed)).eval().double()


MODELS = {
    "affine_relu": lambda: (_noisy(coupling_mlp(4, 4, 16, "affine"), 0.2, 1), (4,)),
    "affine_tanh_exp": lambda: (_noisy(coupling_mlp(4, 3, 16, "affine", "exp",
                                                    activation="tanh"), 0.1, 2), (4,)),
    "additive_leaky_actnorm": lambda: (_noisy(coupling_mlp(4, 3, 16, "additive",
                                                           activation="leaky_relu",
                                                           actnorm=True), 0.2, 3), (4,)),
    "glow_1x1": lambda: (_noisy(glow_like((2, 4, 4), 1, 2, 8, "affine"), 0.1, 4), (2, 4, 4)),
    "glow_lu_softclamp": lambda: (_noisy(glow_like((2, 4, 4), 1, 2, 8, "affine", "lu",
                                                   "softclamp"), 0.1, 5), (2, 4, 4)),
    "glow_permute_additive": lambda: (_noisy(glow_like((2, 4, 4), 1, 2, 8, "additive",
                                                       "reverse"), 0.1, 6), (2, 4, 4)),
    "linear": lambda: (_noisy(InvertibleSequential(
        ActNorm(4), Invertible1x1Conv(4), DiagonalScaling(torch.tensor([1.5, -0.5, 2.0, 1.0])),
        Permutation(4, "random"), AdditiveCoupling(halves(4), 0.5)), 0.3, 7), (4,)),
}


def _shapes(blocks, shape):
    """The per-sample shapes before each block and after the last."""
    shapes = [tuple(shape)]
    for b in blocks:
        shapes.append(tuple(block_rule(b).out_shape(b, shapes[-1])))
    return shapes


def _prefix_outputs(net: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for layer in net:
        x = layer(x)
        out.append(x)
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_boxes_hold_sampled_values_between_blocks_and_inside_subnetworks(name):
    model, shape = MODELS[name]()
    blocks = model.flat_blocks()
    shapes = _shapes(blocks, shape)
    gen = torch.Generator().manual_seed(8)
    centre = torch.rand((1, *shape), generator=gen, dtype=torch.float64)
    half = 0.05
    ranges = zonotope_ranges(blocks, shapes, Box(centre - half, centre + half))
    assert ranges.reason is None and all(b is not None for b in ranges.boxes)
    u = 2 * torch.rand((1000, *shape), generator=gen, dtype=torch.float64) - 1
    u[:500] = torch.sign(u[:500])
    x = centre + half * u
    checked = 0
    with torch.no_grad():
        for k, block in enumerate(blocks):
            for net_name in ("s", "t"):
                net = getattr(block, net_name, None)
                if not isinstance(net, nn.Sequential):
                    continue
                for i, value in enumerate(_prefix_outputs(net, block.partition.cond(x)), 1):
                    box = ranges.range_of(net, i)
                    assert bool(((value >= box.lo) & (value <= box.hi)).all()), (k, net_name, i)
                    checked += 1
            x = block(x)
            box = ranges.boxes[k + 1]
            assert bool(((x >= box.lo) & (x <= box.hi)).all()), k
    assert checked > 0 or name == "linear"


def _glow_cell():
    model = _noisy(glow_like((3, 8, 8), 1, 4, 16, "affine"), 0.1, 0)
    x = torch.rand((1, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return model, x


def test_much_tighter_than_interval_propagation_on_a_dequantization_cell():
    model, x = _glow_cell()
    blocks = model.flat_blocks()
    shapes = _shapes(blocks, (3, 8, 8))
    r = 0.5 / 256
    box = Box(x - r, x + r)
    ranges = zonotope_ranges(blocks, shapes, box)
    interval = box
    for block in blocks:
        interval = block_rule(block).forward_box(block, interval)
    zono, last = ranges.boxes[-1], interval
    assert float((zono.hi - zono.lo).max()) * 5 < float((last.hi - last.lo).max())
    # and within a small factor of the spread of sampled vertices (a lower estimate of the range)
    with torch.no_grad():
        y = model(x + r * torch.sign(torch.randn((2000, 3, 8, 8), dtype=torch.float64)))
    sampled = (y.amax(0) - y.amin(0)).max()
    assert float((zono.hi - zono.lo).max()) < 20 * float(sampled)


def test_unsupported_block_ends_the_pass_and_the_bounds_still_hold():
    model = _noisy(residual_flow((4,), 2, 8), 0.1, 9)
    blocks = model.flat_blocks()
    box = Box.uniform(-0.1, 0.1, (4,))
    ranges = zonotope_ranges(blocks, [(4,)] * (len(blocks) + 1), box)
    assert ranges.boxes[1:] == [None] * len(blocks)
    assert "no zonotope rule" in ranges.reason
    jac = jacobian_bounds(blocks, [(4,)] * (len(blocks) + 1), box)
    assert jac.forward is None  # the Jacobian method does not take i-ResNet blocks either


def test_glow_local_bounds_are_sound_and_the_inverse_is_finite():
    model, x = _glow_cell()
    local = local_bounds(model, x)
    net = local.bounds[0]
    assert net.jacobian.forward is not None and math.isfinite(net.jacobian.inverse), \
        net.jacobian.reason
    box = net.boxes[0]
    search = {"n_samples": 16, "n_starts": 2, "n_steps": 8}
    assert max_jacobian_norm(model, box, **search) <= local.forward
    assert max_jacobian_norm(model, box, invert=True, **search) <= local.inverse
    # the forward bound stays within a few hundred of the truth (it was ~1e9 without the pass)
    assert local.forward < 300 * max_jacobian_norm(model, box, **search)
    whole = bound_model(model, (3, 8, 8), box=box)
    assert whole.forward == local.forward


def test_too_large_a_network_ends_the_pass_with_a_reason(monkeypatch):
    import lipbound.bounds.zonotope as zonotope
    model, shape = MODELS["glow_1x1"]()
    blocks = model.flat_blocks()
    shapes = _shapes(blocks, shape)
    monkeypatch.setattr(zonotope, "MAX_ENTRIES", 100)
    ranges = zonotope_ranges(blocks, shapes, Box.uniform(0, 0.01, shape))
    assert "too large for the zonotope pass" in ranges.reason
    assert ranges.boxes[0] is not None and ranges.boxes[-1] is None


def test_a_batch_of_boxes_gives_each_box_its_own_ranges():
    model, shape = MODELS["glow_lu_softclamp"]()
    blocks = model.flat_blocks()
    shapes = _shapes(blocks, shape)
    gen = torch.Generator().manual_seed(10)
    centres = torch.rand((3, *shape), generator=gen, dtype=torch.float64)
    half = torch.tensor([1e-3, 0.02, 0.1], dtype=torch.float64).reshape(3, 1, 1, 1)
    together = zonotope_ranges(blocks, shapes, Box(centres - half, centres + half))
    for i in range(3):
        alone = zonotope_ranges(blocks, shapes, Box(centres[i:i + 1] - half[i],
                                                    centres[i:i + 1] + half[i]))
        for a, b in zip(together.boxes, alone.boxes, strict=True):
            assert torch.allclose(a.lo[i:i + 1], b.lo, rtol=1e-12, atol=1e-15)
            assert torch.allclose(a.hi[i:i + 1], b.hi, rtol=1e-12, atol=1e-15)
        net = blocks[-1].s
        a, b = together.range_of(net, 1), alone.range_of(net, 1)
        assert torch.allclose(a.lo[i:i + 1], b.lo, rtol=1e-12, atol=1e-15)
    # the smallest box gives the narrowest ranges
    width = (together.boxes[-1].hi - together.boxes[-1].lo).flatten(1).amax(1)
    assert bool((width[0] < width[1]) & (width[1] < width[2]))


def _shared_block_model(scaling):
    torch.set_default_dtype(torch.float32)  # the weights of the case found in review
    torch.manual_seed(26)
    s = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1))
    torch.set_default_dtype(torch.float64)
    c = AdditiveCoupling(halves(2), s)
    tied = AdditiveCoupling(halves(2), s)  # another block, the same sub-network module
    return (InvertibleSequential(c, DiagonalScaling(torch.tensor(scaling)), c).double().eval(),
            InvertibleSequential(c, DiagonalScaling(torch.tensor(scaling)), tied).double().eval())


@pytest.mark.parametrize("which", [0, 1])
def test_a_subnetwork_used_twice_gets_ranges_that_hold_for_both_uses(which):
    from torch.func import jacrev, vmap
    model = _shared_block_model([1.5, 1.0])[which]
    x0 = torch.tensor([[-0.7074359821902302, -0.5640318342929853]], dtype=torch.float64)
    r = 0.3
    x = x0 + r * (torch.rand(20000, 2, dtype=torch.float64) * 2 - 1)
    with torch.no_grad():
        jac = vmap(jacrev(lambda v: model(v[None])[0]))(x)
    measured = torch.linalg.matrix_norm(jac, 2).max()
    bound = jacobian_bounds(model.flat_blocks(), [(2,)] * 4, Box(x0 - r, x0 + r)).forward
    assert float(measured) > 1.53 and bound >= float(measured)
    # with ranges that are disjoint between the uses: a number, never a crash
    far = _shared_block_model([-3.0, 5.0])[which]
    jac = jacobian_bounds(far.flat_blocks(), [(2,)] * 4, Box(x0 - 1e-3, x0 + 1e-3))
    assert jac.forward is not None and jac.forward >= 5.0


def test_leaky_relu_slopes_stay_float64_with_a_float32_default():
    from lipbound.bounds.jacobian import subnet_jacobian
    from lipbound.bounds.relax import relaxed_box
    torch.set_default_dtype(torch.float32)  # as in a user's session (the fixture restores)
    l1, l2 = nn.Linear(1, 1), nn.Linear(1, 1)
    with torch.no_grad():
        l1.weight.fill_(1.0)
        l1.bias.fill_(-5.0)
        l2.weight.fill_(1e5)
        l2.bias.fill_(0.0)
    net = nn.Sequential(l1, nn.LeakyReLU(0.01), l2).double()
    box = Box(torch.tensor([[-0.5]], dtype=torch.float64), torch.tensor([[0.5]],
                                                                       dtype=torch.float64))
    # net(x) = 1000 (x - 5): derivative exactly 1000, range [-5500, -4500]
    jac, _ = subnet_jacobian(net, box)
    assert float(jac.mid - jac.rad) <= 1000 <= float(jac.mid + jac.rad)
    out = relaxed_box(net, box)
    assert float(out.lo) <= -5500 and float(out.hi) >= -4500
    model = InvertibleSequential(AdditiveCoupling(halves(2), net)).double().eval()
    x = torch.zeros(1, 2, dtype=torch.float64)
    bound = jacobian_bounds(model.flat_blocks(), [(2,), (2,)], Box(x - 1e-3, x + 1e-3))
    assert bound.forward >= 1000.0 and bound.inverse >= 1000.0


def test_error_terms_do_not_grow_block_after_block_on_a_deep_glow():
    model = _noisy(glow_like((3, 8, 8), 1, 16, 16, "affine"), 0.1, 0)
    x = torch.rand((1, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    blocks = model.flat_blocks()
    r = 1 / 512
    ranges = zonotope_ranges(blocks, _shapes(blocks, (3, 8, 8)), Box(x - r, x + r))
    assert ranges.reason is None
    with torch.no_grad():
        y = model(x + r * torch.sign(torch.randn((2000, 3, 8, 8), dtype=torch.float64)))
    last = ranges.boxes[-1]
    assert bool(((y >= last.lo) & (y <= last.hi)).all())
    # after 49 blocks the box is within 20x of the sampled spread (it was 1e171x with the error
    # terms carried as |W| e)
    assert float((last.hi - last.lo).max()) < 20 * float((y.amax(0) - y.amin(0)).max())
