"""Input splitting (:mod:`lipbound.bounds.split`) and the batched whole-network Jacobian behind it
(:mod:`lipbound.bounds.batched`): batched sub-box bounds agree with the one-box path on the same
boxes, the split bounds hold the largest Jacobian norms gradient ascent finds on the box (forward
and inverse) and never exceed the whole box's bound, for every block kind the batches take and
for a model they do not."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

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
    halves,
    mlp,
    randomize_parameters,
)
from lipbound.bounds.batched import batch_jacobian_bounds, batch_reason
from lipbound.bounds.blocks import block_rule
from lipbound.bounds.empirical import max_jacobian_norm
from lipbound.bounds.interval import Box
from lipbound.bounds.jacobian import jacobian_bounds
from lipbound.bounds.split import _halves, split_bounds
from lipbound.errors import InputError

SEARCH = {"n_samples": 32, "n_starts": 2, "n_steps": 10}


def _noisy(model: InvertibleSequential, std: float, seed: int) -> InvertibleSequential:
    return randomize_parameters(model.double(), std, torch.Generator().manual_seed(seed)).eval()


def _kinds() -> InvertibleSequential:
    """Every block kind the batches take, sub-networks with every activation they take."""
    torch.manual_seed(7)
    identity = nn.Sequential(nn.Linear(2, 8), nn.Identity(), nn.Linear(8, 2))
    return InvertibleSequential(
        ActNorm(4),
        AffineCoupling(halves(4), mlp(2, 2, 8, 1, "tanh"), mlp(2, 2, 8, 1, "leaky_relu"), "exp"),
        Invertible1x1Conv(4),
        AdditiveCoupling(halves(4, flip=True), identity),
        Permutation(4, "random", seed=3),
        AffineCoupling(checkerboard((4,), 1), mlp(4, 4, 8, 2, "sigmoid"), 0.3, "modified"),
        DiagonalScaling(torch.tensor([1.5, -0.5, 2.0, 0.8])),
        Invertible1x1Conv(4, lu=True))


MODELS = {
    "affine_relu_sigmoid": lambda: _noisy(coupling_mlp(4, 4, 16, "affine"), 0.1, 1),
    "additive_actnorm": lambda: _noisy(coupling_mlp(4, 3, 16, "additive", actnorm=True), 0.2, 2),
    "every_kind": lambda: _noisy(_kinds(), 0.1, 3),
    # g(h) = h: on some boxes the range of h holds 0 and the inverse factor is refused there
    "identity_scale": lambda: _noisy(InvertibleSequential(
        AffineCoupling(halves(4), mlp(2, 2, 8, 1, "relu"), 1.0, "identity"),
        AffineCoupling(halves(4, flip=True), mlp(2, 2, 8, 1, "tanh"),
                       nn.Sequential(nn.Linear(2, 2)), "identity")), 0.1, 4),
}


def _shapes(model: InvertibleSequential, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    shapes = [shape]
    for block in model.flat_blocks():
        shapes.append(tuple(block_rule(block).out_shape(block, shapes[-1])))
    return shapes


@pytest.mark.parametrize("name", sorted(MODELS))
def test_batched_bounds_agree_with_one_box_at_a_time(name):
    """Never looser than the one-box path (to rounding) and within the certified norms'
    tolerance of it: the batch continues the norm squarings until every box's bound is within
    1e-4 of its estimate (one box alone stops at the same point or earlier), and encloses the
    scale functions in float instead of ball arithmetic (a few ulps)."""
    model = MODELS[name]()
    blocks, shapes = model.flat_blocks(), _shapes(model, (4,))
    assert batch_reason(blocks) is None
    gen = torch.Generator().manual_seed(0)
    centre = torch.rand((6, 4), generator=gen, dtype=torch.float64) * 1.6 - 0.8
    radius = torch.tensor([0.01, 0.05, 0.1, 0.2, 0.05, 0.02], dtype=torch.float64)[:, None]
    lo, hi = centre - radius, centre + radius
    forward, inverse = batch_jacobian_bounds(blocks, shapes, lo, hi)
    for i in range(len(lo)):
        one = jacobian_bounds(blocks, shapes, Box(lo[i:i + 1], hi[i:i + 1]))
        for batched, alone in ((forward[i], one.forward), (inverse[i], one.inverse)):
            if alone is None:  # the method gives no number: neither does the batch
                assert batched == math.inf, one.reason
                continue
            assert float(batched) <= alone * (1 + 1e-12), (i, float(batched), alone)
            assert float(batched) >= alone * (1 - 1e-3), (i, float(batched), alone)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_split_bounds_hold_found_norms(name):
    model = MODELS[name]()
    box = (-0.6, 0.6)
    split = split_bounds(model, (4,), box, 1.5)
    assert split.batched and split.reason is None
    assert split.boxes >= 2 and split.rounds >= 1
    assert split.forward <= split.start.forward and split.inverse <= split.start.inverse
    whole = Box.uniform(*box, (4,))
    assert max_jacobian_norm(model, whole, **SEARCH) <= split.forward
    assert max_jacobian_norm(model, whole, invert=True, **SEARCH) <= split.inverse


def test_models_the_batches_do_not_take_are_split_one_box_at_a_time():
    torch.manual_seed(5)
    model = _noisy(InvertibleSequential(AffineCoupling(halves(4), mlp(2, 2, 8, 1, "silu"),
                                                       mlp(2, 2, 8, 1, "relu"))), 0.1, 5)
    assert "SiLU" in batch_reason(model.flat_blocks())
    split = split_bounds(model, (4,), (-0.5, 0.5), 0.5)
    assert not split.batched and "SiLU" in split.reason
    assert split.boxes >= 2 and split.forward <= split.start.forward
    whole = Box.uniform(-0.5, 0.5, (4,))
    assert max_jacobian_norm(model, whole, **SEARCH) <= split.forward
    assert max_jacobian_norm(model, whole, invert=True, **SEARCH) <= split.inverse


def test_splitting_tightens_a_deep_affine_flow():
    """Eight noisy affine couplings on [-1, 1]^4: the whole-box bound is loose by orders of
    magnitude, a few seconds of splitting bring it down a lot (and stay above the found norm)."""
    torch.manual_seed(0)
    model = _noisy(coupling_mlp(4, 8, 32, "affine"), 0.1, 0)
    split = split_bounds(model, (4,), (-1.0, 1.0), 3.0)
    found = max_jacobian_norm(model, Box.uniform(-1.0, 1.0, (4,)), **SEARCH)
    assert found <= split.forward <= split.start.forward / 10


def test_halves_cover_the_box_along_the_widest_relative_coordinate():
    lo = torch.tensor([[0.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    hi = torch.tensor([[1.0, 4.0], [2.0, 0.0]], dtype=torch.float64)
    full = torch.tensor([4.0, 8.0], dtype=torch.float64)
    new_lo, new_hi = _halves(lo, hi, full)
    # box 0: widths 1/4, 4/8 of the full ones: cut coordinate 1; box 1: 2/4 vs 1/8: coordinate 0
    assert new_lo.tolist() == [[0.0, 0.0], [0.0, -1.0], [0.0, 2.0], [1.0, -1.0]]
    assert new_hi.tolist() == [[1.0, 2.0], [1.0, 0.0], [1.0, 4.0], [2.0, 0.0]]


@pytest.mark.parametrize("budget", [-1.0, math.nan, math.inf, "1"])
def test_bad_budgets_are_refused(budget):
    model = MODELS["additive_actnorm"]()
    with pytest.raises(ValueError, match=r"split budget \(--split-budget\) must be a finite"):
        split_bounds(model, (4,), (-0.5, 0.5), budget)


def test_too_many_coordinates_are_refused():
    model = _noisy(coupling_mlp(18, 1, 8, "additive"), 0.1, 6)
    with pytest.raises(ValueError, match="input splitting is for low dimensions: the input has "
                                         "18 coordinates, at most 16"):
        split_bounds(model, (18,), (-0.5, 0.5), 1.0)


def test_cli_shows_the_splitting_progress_on_stderr(tmp_path, capsys):
    from lipbound.cli import main
    from lipbound.io import save_model

    path = tmp_path / "m.pt"
    save_model(MODELS["affine_relu_sigmoid"](), path)
    assert main(["bounds", str(path), "--box", "-0.5", "0.5", "--split-budget", "0.5"]) == 0
    captured = capsys.readouterr()
    assert "splitting" in captured.err and "boxes, Lip(F) <=" in captured.err
    assert "input splitting (" in captured.out and "rounds, in batches;" in captured.out
    assert main(["bounds", str(path), "--box", "-0.5", "0.5", "--split-budget", "0.5",
                 "--no-progress"]) == 0
    assert "splitting" not in capsys.readouterr().err


def test_batched_interval_matrices_hold_their_samples_and_match_one_at_a_time():
    from lipbound.bounds.intervalmatrix import IntervalMatrix

    gen = torch.Generator().manual_seed(3)

    def interval(*shape: int, scale: float) -> IntervalMatrix:
        return IntervalMatrix(torch.randn(shape, generator=gen, dtype=torch.float64),
                              scale * torch.rand(shape, generator=gen, dtype=torch.float64))

    def samples(im: IntervalMatrix, k: int) -> torch.Tensor:  # (k, *shape), vertices half
        u = torch.rand((k, *im.mid.shape), generator=gen, dtype=torch.float64) * 2 - 1
        u[: k // 2] = torch.sign(u[: k // 2])
        return im.mid + u * im.rad

    a, b = interval(5, 4, 4, scale=0.05), interval(5, 4, 3, scale=0.1)
    lo = torch.rand((5, 4), generator=gen, dtype=torch.float64) + 0.5
    d = IntervalMatrix.diagonals(lo, lo + 0.2 * torch.rand((5, 4), generator=gen,
                                                          dtype=torch.float64))
    assert d.is_diagonal and d.mid.shape == (5, 4, 4)
    sa, sb, sd = samples(a, 200), samples(b, 200), samples(d, 200)
    for prod, exact in ((a @ b, sa @ sb), (d @ b, sd @ sb), (d @ a, sd @ sa)):
        lo_p, hi_p = prod.ends()
        assert bool(((exact >= lo_p) & (exact <= hi_p)).all())
    norms, inverses = a.norm_upper_each(), a.inverse_norm_upper_each()
    found = torch.linalg.matrix_norm(sa, 2).amax(0)
    found_inverse = torch.linalg.matrix_norm(torch.linalg.inv(sa), 2).amax(0)
    assert bool((found <= norms).all() & (found_inverse <= inverses).all())
    for i in range(5):
        one = IntervalMatrix(a.mid[i], a.rad[i])
        assert one.norm_upper() * (1 - 1e-3) <= float(norms[i]) <= one.norm_upper() * (1 + 1e-12)
        assert float(inverses[i]) <= one.inverse_norm_upper() * (1 + 1e-12)
        assert float(a.cheap_norm_upper_each()[i]) == pytest.approx(one.cheap_norm_upper(),
                                                                    rel=1e-12)


def test_leaky_relu_models_under_a_float32_default_are_split_soundly():
    torch.set_default_dtype(torch.float32)  # as in a user's session (the fixture restores)
    torch.manual_seed(5)
    model = randomize_parameters(coupling_mlp(4, 3, 16, "affine", activation="leaky_relu"),
                                 0.1, torch.Generator().manual_seed(5)).eval()
    blocks, shapes = model.flat_blocks(), _shapes(model, (4,))
    lo = torch.full((3, 4), -0.3)  # float32 ends are accepted
    hi = lo + torch.tensor([0.05, 0.2, 0.6])[:, None]
    forward, inverse = batch_jacobian_bounds(blocks, shapes, lo, hi)
    for i in range(3):
        one = jacobian_bounds(blocks, shapes, Box(lo[i:i + 1].double(), hi[i:i + 1].double()))
        assert float(forward[i]) <= one.forward * (1 + 1e-12)
        box = Box(lo[i:i + 1].double(), hi[i:i + 1].double())
        assert max_jacobian_norm(model.double(), box, **SEARCH) <= float(forward[i])
        assert max_jacobian_norm(model.double(), box, invert=True, **SEARCH) <= float(inverse[i])


def test_batched_bounds_refuse_boxes_of_the_wrong_shape():
    model = MODELS["affine_relu_sigmoid"]()
    blocks, shapes = model.flat_blocks(), _shapes(model, (4,))
    with pytest.raises(InputError, match=r"lo must be a tensor of shape \(B, 4\) with B >= 1"):
        batch_jacobian_bounds(blocks, shapes, torch.zeros(0, 4), torch.zeros(0, 4))
    with pytest.raises(InputError, match=r"hi must be a tensor of shape \(B, 4\)"):
        batch_jacobian_bounds(blocks, shapes, torch.zeros(2, 4), torch.zeros(2, 3))


def test_a_box_that_cannot_be_halved_is_not_split():
    model = MODELS["affine_relu_sigmoid"]()
    split = split_bounds(model, (4,), (0.5, 0.5), 5.0)
    assert split.boxes == 1 and split.rounds == 0 and split.seconds < 5.0
    assert split.forward == split.start.forward


def test_library_functions_that_underflow_early_stay_enclosed():
    """torch's sigmoid is 0 below -709.8 where the true value is a subnormal: every enclosure
    built on it allows that (2^-1021 absolute)."""
    from lipbound.blocks.scale import make_scale
    from lipbound.bounds.interval import monotone_map
    from lipbound.bounds.jacobian import _DERIVATIVES
    from lipbound.bounds.scales import dg_box, g_box
    lo = torch.tensor([[-745.0, -722.0, -709.5]], dtype=torch.float64)
    hi = lo + 0.5
    true_at_hi = [math.exp(float(v)) for v in hi[0]]  # sigmoid(z) < e^z, > e^z / 2 here
    box = monotone_map(Box(lo, hi), torch.sigmoid)
    assert all(float(box.hi[0, j]) >= true_at_hi[j] for j in range(3))
    derivative = _DERIVATIVES[nn.Sigmoid](nn.Sigmoid(), Box(lo, hi))
    assert all(float(derivative.hi[0, j]) >= true_at_hi[j] / 2 for j in range(3))
    scale = make_scale("sigmoid")  # g(h) = sigmoid(h + 2); batches use float enclosures
    h = Box(lo.repeat(2, 1) - 2, hi.repeat(2, 1) - 2)
    g, dg = g_box(scale, h), dg_box(scale, h)
    assert bool((g.hi[:, :] >= torch.tensor(true_at_hi)).all())
    assert bool((dg.hi >= torch.tensor(true_at_hi) / 2).all())
