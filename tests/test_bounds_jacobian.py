"""The whole-network interval Jacobian (:mod:`lipbound.bounds.jacobian`) and interval matrices
(:mod:`lipbound.bounds.intervalmatrix`): enclosures hold sampled matrices, norm bounds hold the
exact norms of matrices inside the intervals, the network bounds hold the largest Jacobian norms
that gradient ascent finds, forward and inverse, on boxes, balls around inputs and output boxes,
and the reported bound is never looser than the product of per-block bounds alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipbound.autodiff import batch_jacobian
from lipbound.blocks import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    DiagonalScaling,
    Invertible1x1Conv,
    InvertibleSequential,
    Permutation,
    checkerboard,
    coupling_mlp,
    glow_like,
    halves,
    mlp,
    randomize_parameters,
)
from lipbound.blocks.scale import make_scale
from lipbound.bounds import bound_model, local_bounds
from lipbound.bounds import compose as compose_module
from lipbound.bounds.blocks import shared_propagation
from lipbound.bounds.empirical import max_jacobian_norm
from lipbound.bounds.interval import Box
from lipbound.bounds.intervalmatrix import IntervalMatrix
from lipbound.bounds.jacobian import METHOD, ChainProduct, JacobianBound, subnet_jacobian
from lipbound.bounds.scales import dg_box
from lipbound.bounds.split import split_bounds

SEARCH = {"n_samples": 32, "n_starts": 2, "n_steps": 10}


def _random_interval(gen: torch.Generator, m: int, n: int, scale: float = 0.3
                     ) -> IntervalMatrix:
    mid = torch.randn(m, n, generator=gen, dtype=torch.float64)
    rad = scale * torch.rand(m, n, generator=gen, dtype=torch.float64)
    return IntervalMatrix(mid, rad)


def _inside(im: IntervalMatrix, gen: torch.Generator, k: int) -> torch.Tensor:
    """``k`` matrices inside ``im``: random points and random vertices (entries at the ends)."""
    u = torch.rand((k, *im.shape), generator=gen, dtype=torch.float64) * 2 - 1
    u[: k // 2] = torch.sign(u[: k // 2])
    return im.mid + u * im.rad


def _contains(im: IntervalMatrix, mats: torch.Tensor) -> bool:
    lo, hi = im.ends()
    return bool(((mats >= lo) & (mats <= hi)).all())


def test_interval_matrix_norms_hold_exact_norms_inside():
    gen = torch.Generator().manual_seed(0)
    for m, n, scale in ((5, 5, 0.3), (7, 3, 1.0), (4, 4, 0.01)):
        im = _random_interval(gen, m, n, scale)
        mats = _inside(im, gen, 400)
        assert _contains(im, mats)
        norms = torch.linalg.matrix_norm(mats, 2)
        bound, cheap = im.norm_upper(), im.cheap_norm_upper()
        assert float(norms.max()) <= bound <= cheap * (1 + 1e-12)
        # within the certified norms' tolerance (1e-4) of ||M|| + ||R||
        assert bound <= (float(torch.linalg.matrix_norm(im.mid, 2))
                         + float(torch.linalg.matrix_norm(im.rad, 2))) * (1 + 1e-3)
        if m == n:
            inverse = im.inverse_norm_upper()
            found = float(torch.linalg.matrix_norm(torch.linalg.inv(mats), 2).max())
            assert found <= inverse
            if scale == 0.01:
                assert inverse < float("inf")


def test_inverse_norm_is_infinite_when_a_singular_matrix_is_inside():
    im = IntervalMatrix(torch.eye(3, dtype=torch.float64), torch.full((3, 3), 1.0,
                                                                    dtype=torch.float64))
    assert im.inverse_norm_upper() == float("inf")  # 0 is inside: no finite bound can be true


def test_products_and_scalings_enclose_sampled_products():
    gen = torch.Generator().manual_seed(1)
    a, b = _random_interval(gen, 4, 6), _random_interval(gen, 6, 3)
    prod = a @ b
    pa, pb = _inside(a, gen, 300), _inside(b, gen, 300)
    assert _contains(prod, pa @ pb)
    lo = torch.randn(4, generator=gen, dtype=torch.float64)
    hi = lo + torch.rand(4, generator=gen, dtype=torch.float64)
    d = lo[:, None] + (hi - lo)[:, None] * torch.rand((300, 4, 1), generator=gen,
                                                     dtype=torch.float64)
    assert _contains(a.scale_rows(lo, hi), d * pa)
    assert _contains(a + a, pa + pa.flip(0))


def test_chain_product_encloses_products_and_bounds_their_norms():
    gen = torch.Generator().manual_seed(2)
    factors = [_random_interval(gen, 5, 5, 0.05) for _ in range(6)]
    factors[2] = IntervalMatrix.point(torch.randn(5, 5, generator=gen, dtype=torch.float64))
    chain = ChainProduct(5)
    for f in factors:
        chain.push(f)
    samples = [_inside(f, gen, 300) for f in factors]
    prod = torch.eye(5, dtype=torch.float64).expand(300, 5, 5)
    for s in samples:
        prod = s @ prod
    assert _contains(chain.best, prod)
    assert float(torch.linalg.matrix_norm(prod, 2).max()) <= chain.norm_upper()
    assert float(torch.linalg.matrix_norm(torch.linalg.inv(prod), 2).max()) <= \
        chain.inverse_norm_upper()
    plain = factors[0]
    for f in factors[1:]:
        plain = f @ plain
    lo, hi = chain.best.ends()
    plo, phi = plain.ends()
    assert bool((lo >= plo).all() and (hi <= phi).all())  # never wider than the plain product


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh", "sigmoid", "silu"])
def test_subnet_jacobian_holds_sampled_jacobians(activation):
    torch.manual_seed(0)
    net = mlp(3, 2, 16, 2, activation).double()
    randomize_parameters(net, 0.3, torch.Generator().manual_seed(1))
    centre = torch.randn(1, 3, dtype=torch.float64) * 0.5
    box = Box(centre - 0.2, centre + 0.2)
    jac, out = subnet_jacobian(net, box)
    x = box.lo + (box.hi - box.lo) * torch.rand((500, 3), dtype=torch.float64)
    assert _contains(jac, batch_jacobian(net, x))
    with torch.no_grad():
        y = net(x)
    assert bool(((y >= out.lo) & (y <= out.hi)).all())


@pytest.mark.parametrize("scale", ["sigmoid", "modified", "exp", "softclamp"])
def test_dg_box_holds_the_derivative(scale):
    g = make_scale(scale).double()
    lo = torch.tensor([[-3.0, -0.5, 0.2, 4.0]], dtype=torch.float64)
    box = Box(lo, lo + torch.tensor([[0.5, 1.0, 0.01, 2.0]], dtype=torch.float64))
    d = dg_box(g, box)
    h = (box.lo + (box.hi - box.lo) * torch.rand((400, 4), dtype=torch.float64)).requires_grad_()
    dg = torch.autograd.grad(g(h).sum(), h)[0]
    assert bool(((dg >= d.lo) & (dg <= d.hi)).all())
    assert bool((d.lo > 0).all())  # the ends give a positive inf here


def _noisy(model, std, seed):
    return randomize_parameters(model, std, torch.Generator().manual_seed(seed)).eval()


def _mask_coupling_model():
    torch.manual_seed(3)
    blocks = [AffineCoupling(checkerboard((4,), p), mlp(4, 4, 12, 1, "tanh"),
                             mlp(4, 4, 12, 1, "tanh"), "modified") for p in (0, 1)]
    return InvertibleSequential(DiagonalScaling(torch.tensor([1.5, 0.5, -2.0, 1.0])), *blocks,
                                Permutation(4, "random"))


MODELS = {
    "affine_mlp": lambda: (_noisy(coupling_mlp(4, 4, 16, "affine"), 0.2, 1), (4,)),
    "additive_mlp_actnorm": lambda: (_noisy(coupling_mlp(4, 3, 16, "additive", actnorm=True),
                                            0.2, 2), (4,)),
    "mask_tanh": lambda: (_noisy(_mask_coupling_model(), 0.1, 3), (4,)),
    "glow": lambda: (_noisy(glow_like((2, 4, 4), 1, 2, 8, "affine"), 0.1, 4), (2, 4, 4)),
    "glow_lu_exp": lambda: (_noisy(glow_like((2, 4, 4), 1, 2, 8, "affine", "lu",
                                             "exp"), 0.05, 5), (2, 4, 4)),
    "linear": lambda: (_noisy(InvertibleSequential(ActNorm(4), Invertible1x1Conv(4),
                                                   AdditiveCoupling(halves(4), 0.5)), 0.3, 6),
                       (4,)),
}


def _composed_only(monkeypatch):
    monkeypatch.setattr(compose_module, "jacobian_bounds",
                        lambda *args, **kwargs: JacobianBound(None, None, reason="off"))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_network_jacobian_bounds_are_sound_and_never_looser(name, monkeypatch):
    torch.manual_seed(0)
    model, shape = MODELS[name]()
    model = model.double()
    centre = torch.rand(shape, dtype=torch.float64)
    for half in (1e-3, 0.05):
        box = (centre - half, centre + half)
        net = bound_model(model, shape, box=box)
        jac = net.jacobian
        assert jac.forward is not None and jac.inverse is not None, jac.reason
        found = max_jacobian_norm(model, net.boxes[0], **SEARCH)
        found_inverse = max_jacobian_norm(model, net.boxes[0], invert=True, **SEARCH)
        assert found <= jac.forward and found <= net.forward
        assert found_inverse <= jac.inverse and found_inverse <= net.inverse
        assert net.forward == min(jac.forward, net.forward_composed)
        with monkeypatch.context() as patch:
            _composed_only(patch)
            old = bound_model(model, shape, box=box)
        assert old.jacobian.forward is None and old.forward_method.startswith("product")
        assert net.forward <= old.forward and net.inverse <= old.inverse
        assert net.forward_composed <= old.forward_composed  # the boxes are never wider
        if half == 1e-3:  # small boxes: the whole-network Jacobian wins, and is near the truth
            assert net.forward_method == METHOD
            assert net.forward <= 1.5 * found


def test_boxes_hold_the_images():
    model, shape = MODELS["glow"]()
    model = model.double()
    centre = torch.rand(shape, dtype=torch.float64)
    net = bound_model(model, shape, box=(centre - 0.01, centre + 0.01))
    box = net.jacobian.boxes[0]
    x = box.lo + (box.hi - box.lo) * torch.rand((300, *shape), dtype=torch.float64)
    with torch.no_grad():
        for k, block in enumerate(model.flat_blocks()):
            x = block(x)
            after = net.jacobian.boxes[k + 1]
            assert bool(((x >= after.lo) & (x <= after.hi)).all()), k


def test_inverse_on_an_output_box():
    torch.manual_seed(0)
    model, shape = MODELS["affine_mlp"]()
    model = model.double()
    y = torch.rand(shape, dtype=torch.float64)
    out_box = (y - 0.01, y + 0.01)
    net = bound_model(model, shape, output_box=out_box)
    assert net.jacobian.inverse is not None and net.jacobian.forward is None
    found = max_jacobian_norm(model.inverse, Box(out_box[0][None], out_box[1][None]), **SEARCH)
    assert found <= net.jacobian.inverse and net.inverse == min(net.jacobian.inverse,
                                                                net.inverse_composed)
    assert net.inverse_method == METHOD


def test_local_bounds_use_the_jacobian_on_dequantization_cells():
    torch.manual_seed(0)
    model, shape = MODELS["glow"]()
    model = model.double()
    x = torch.rand((2, *shape), dtype=torch.float64)
    local = local_bounds(model, x)
    for net in local.bounds:
        assert net.forward_method == METHOD and net.inverse_method == METHOD
        box = net.boxes[0]
        assert max_jacobian_norm(model, box, **SEARCH) <= net.forward
        assert max_jacobian_norm(model, box, invert=True, **SEARCH) <= net.inverse


def test_unsupported_blocks_fall_back_to_the_product():
    from lipbound.blocks import residual_flow
    model = residual_flow((2,), 2, 8).double().eval()
    net = bound_model(model, (2,), box=(-0.1, 0.1))
    assert net.jacobian.forward is None and "no Jacobian rule" in net.jacobian.reason
    assert net.forward == net.forward_composed and net.forward_method.startswith("product")
    unsupported = InvertibleSequential(AffineCoupling(halves(2), nn.Sequential(
        nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1), nn.Tanh()), 0.1)).double()
    net = bound_model(unsupported, (2,), box=(-0.1, 0.1))
    assert net.jacobian.forward is None and net.forward is not None


def test_split_bounds_are_sound_and_never_looser():
    torch.manual_seed(0)
    model, shape = MODELS["affine_mlp"]()
    model = model.double()
    box = (-0.5, 0.5)
    with shared_propagation():
        split = split_bounds(model, shape, box, 1.0)
    assert split.boxes >= 2
    assert split.forward <= split.start.forward and split.inverse <= split.start.inverse
    whole = Box.uniform(*box, shape)
    assert max_jacobian_norm(model, whole, **SEARCH) <= split.forward
    assert max_jacobian_norm(model, whole, invert=True, **SEARCH) <= split.inverse
    assert split_bounds(model, shape, box, 0).boxes == 1
    for bad, match in ((-1.0, "split budget"), (float("nan"), "split budget")):
        with pytest.raises(ValueError, match=match):
            split_bounds(model, shape, box, bad)
    glow, gshape = MODELS["glow"]()
    with pytest.raises(ValueError, match="low dimensions"):
        split_bounds(glow, gshape, (0.0, 1.0), 1.0)


def test_cli_names_the_method_and_splits(tmp_path, capsys):
    import json

    from lipbound.cli import main
    from lipbound.io import save_model

    model, _ = MODELS["affine_mlp"]()
    path = tmp_path / "m.pt"
    save_model(model.double(), path)
    assert main(["bounds", str(path), "--box", "-0.01", "0.01", "--format", "json",
                 "--no-progress"]) == 0
    network = json.loads(capsys.readouterr().out)["network"]
    assert network["forward_method"] == METHOD
    assert network["forward"] == min(network["forward_jacobian"], network["forward_composed"])
    assert main(["bounds", str(path), "--box", "-0.01", "0.01", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert any(line.strip().startswith("Lip(F) method") and line.endswith(METHOD)
               for line in text.splitlines())
    assert main(["bounds", str(path), "--box", "-0.5", "0.5", "--split-budget", "0.5",
                 "--format", "json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"]["boxes"] >= 2 and out["split"]["rounds"] >= 1
    assert out["split"]["batched"] is True and out["split"]["reason"] is None
    assert out["split"]["forward"] <= out["network"]["forward"]
    assert main(["bounds", str(path), "--box", "-0.5", "0.5", "--split-budget", "0.2",
                 "--no-progress"]) == 0
    assert "input splitting (" in capsys.readouterr().out
    data = tmp_path / "x.pt"
    torch.save(torch.zeros(1, 4, dtype=torch.float64), data)
    for args, message in (
            (["--split-budget", "1"], "--split-budget needs a saved model and --box A B"),
            (["--box", "0", "1", "--split-budget", "-1"],
             "split budget (--split-budget) must be a finite number of seconds >= 0"),
            (["--box", "0", "1", "--split-budget", "1", "--output-box", "0", "1"],
             "leave out --around and --output-box"),
            (["--threads", "0"], "--threads must be >= 1, got 0")):
        assert main(["bounds", str(path), *args, "--no-progress"]) == 2
        assert message in capsys.readouterr().err


def test_relu_kink_gives_the_clarke_derivative():
    """On [0, 1] the pre-activation reaches the kink: the enclosure must hold ReLU'(0) = 0 (torch's
    convention) and 1, the ends of the Clarke derivative."""
    net = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.weight.fill_(1.0)
            layer.bias.zero_()
    jac, _ = subnet_jacobian(net, Box.uniform(0.0, 1.0, (1,)))
    lo, hi = jac.ends()
    assert float(lo) <= 0.0 and float(hi) >= 1.0
    assert float(batch_jacobian(net, torch.zeros(1, 1, dtype=torch.float64)).detach()) == 0.0


@pytest.mark.parametrize("name", ["additive_mlp_actnorm", "linear"])
def test_global_bounds_are_unchanged(name):
    """Without a box there is no interval Jacobian: the global bound is the product of rows."""
    model, shape = MODELS[name]()
    net = bound_model(model.double(), shape)
    assert net.jacobian.reason == "no box" and net.jacobian.forward is None
    assert net.forward == net.forward_composed and net.inverse == net.inverse_composed
    assert net.forward_method.startswith("product")
    box = Box.uniform(-3.0, 3.0, shape)
    assert max_jacobian_norm(model.double(), box, **SEARCH) <= net.forward
    assert max_jacobian_norm(model.double(), box, invert=True, **SEARCH) <= net.inverse
