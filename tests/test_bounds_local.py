"""Local bounds: per-coordinate boxes and L-inf balls around inputs (``bound_model`` with tensor
boxes, :func:`local_bounds`, ``lipbound bounds MODEL --around DATA``), held against the largest
Jacobian norms that projected gradient ascent finds inside the boxes, forward and inverse."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch

from lipbound.blocks import (
    InvertibleSequential,
    coupling_mlp,
    glow_like,
    randomize_parameters,
    residual_flow,
)
from lipbound.bounds import bound_model, local_bounds
from lipbound.bounds.compose import dequantization_radius, linf_ball
from lipbound.bounds.empirical import max_jacobian_norm
from lipbound.cli import main
from lipbound.io import save_model

SEARCH = {"n_samples": 32, "n_starts": 2, "n_steps": 10}


def _noisy(model: InvertibleSequential, std: float, seed: int) -> InvertibleSequential:
    return randomize_parameters(model, std, torch.Generator().manual_seed(seed)).eval()


MODELS = {
    "affine_mlp": lambda: (_noisy(coupling_mlp(4, 3, 16, "affine"), 0.3, 1), (4,)),
    "additive_mlp": lambda: (_noisy(coupling_mlp(4, 3, 16, "additive"), 0.3, 2), (4,)),
    "glow_affine": lambda: (_noisy(glow_like((2, 4, 4), 1, 2, 8, "affine"), 0.1, 3), (2, 4, 4)),
    "residual": lambda: (_noisy(residual_flow((2,), 2, 16), 0.0, 4), (2,)),
}


def _held(model, net, box) -> None:
    """No Jacobian norm found in ``box`` exceeds the bounds, forward and inverse (the inverse's
    Jacobian at ``F(x)`` is ``J(x)^-1``: the inverse bound holds on the forward image)."""
    found = max_jacobian_norm(model, box, **SEARCH)
    assert found <= net.forward, (found, net.forward)
    found_inverse = max_jacobian_norm(model, box, invert=True, **SEARCH)
    assert found_inverse <= net.inverse, (found_inverse, net.inverse)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_per_coordinate_box_is_sound_and_within_its_hull(name):
    torch.manual_seed(0)
    model, shape = MODELS[name]()
    lo = -1 + 0.5 * torch.rand(shape, dtype=torch.float64)
    hi = lo + 0.1 + torch.rand(shape, dtype=torch.float64)
    net = bound_model(model, shape, box=(lo, hi))
    assert torch.equal(net.boxes[0].lo[0], lo) and torch.equal(net.boxes[0].hi[0], hi)
    _held(model, net, net.boxes[0])
    hull = bound_model(model, shape, box=(float(lo.min()), float(hi.max())))
    # interval arithmetic is monotone in the box: a sub-box never gives a larger bound
    assert net.forward <= hull.forward and net.inverse <= hull.inverse


@pytest.mark.parametrize("name", sorted(MODELS))
def test_local_bounds_around_inputs_are_sound(name):
    torch.manual_seed(1)
    model, shape = MODELS[name]()
    inputs = torch.rand((3, *shape), dtype=torch.float64)
    local = local_bounds(model, inputs, radius=0.05)
    assert len(local.bounds) == 3 and local.radius == 0.05
    assert local.forward == max(b.forward for b in local.bounds)
    assert local.inverse == max(b.inverse for b in local.bounds)
    for x, net in zip(inputs, local.bounds, strict=True):
        box = net.boxes[0]
        assert bool((box.lo[0] <= x - 0.05).all() and (box.hi[0] >= x + 0.05).all())
        assert float((box.hi[0] - box.lo[0]).max()) <= 0.1 * (1 + 1e-12)
        _held(model, net, box)
        alone = bound_model(model, shape, box=(box.lo[0], box.hi[0]))
        assert (alone.forward, alone.inverse) == (net.forward, net.inverse)  # sharing is exact


def test_smaller_balls_give_smaller_affine_bounds():
    model, shape = MODELS["affine_mlp"]()
    x = torch.full((1, 4), 0.5, dtype=torch.float64)
    big, small = local_bounds(model, x, radius=0.5), local_bounds(model, x)
    assert small.radius == 0.5 / 256 == dequantization_radius(8)
    assert small.forward <= big.forward and small.inverse <= big.inverse
    assert local_bounds(model, x, bits=4).radius == 0.5 / 16


def test_ball_holds_the_exact_ball():
    x = torch.tensor([0.1, 1 / 3, -7.0], dtype=torch.float64)
    ball = linf_ball(x, 0.1)
    r = Fraction(0.1)
    for v, lo, hi in zip(x.tolist(), ball.lo[0].tolist(), ball.hi[0].tolist(), strict=True):
        assert Fraction(lo) <= Fraction(v) - r and Fraction(hi) >= Fraction(v) + r


@pytest.mark.parametrize("bad, match", [
    ({"radius": -1.0}, "radius"), ({"radius": float("nan")}, "radius"),
    ({"bits": 0}, "bits"), ({"bits": 2.5}, "bits"), ({"shape": (5,)}, "shape"),
])
def test_local_bounds_bad_input(bad, match):
    model, _ = MODELS["affine_mlp"]()
    with pytest.raises(ValueError, match=match):
        local_bounds(model, torch.zeros(2, 4), **bad)


@pytest.mark.parametrize("box, match", [
    ((torch.zeros(3), torch.ones(3)), "3 entries"),
    ((torch.ones(4), torch.zeros(4)), "lower <= upper"),
    ((torch.zeros(4), 1.0), "two numbers or two tensors"),
    ((torch.zeros(4), torch.full((4,), float("inf"))), "finite"),
    ((1.0, 0.0), "a <= b"),
])
def test_tensor_box_bad_input(box, match):
    model, _ = MODELS["affine_mlp"]()
    with pytest.raises(ValueError, match=match):
        bound_model(model, (4,), box=box)


def test_cli_around(tmp_path, capsys):
    model, _ = MODELS["affine_mlp"]()
    path, data = tmp_path / "m.pt", tmp_path / "x.pt"
    save_model(model, path)
    inputs = torch.rand(2, 4, dtype=torch.float64)
    torch.save(inputs, data)
    assert main(["bounds", str(path), "--around", str(data), "--format", "json",
                 "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    local = local_bounds(model, inputs)
    assert out["radius"] == 0.5 / 256 and len(out["inputs"]) == 2
    assert out["forward"] == local.forward and out["inverse"] == local.inverse
    assert [e["forward"] for e in out["inputs"]] == [b.forward for b in local.bounds]
    assert main(["bounds", str(path), "--around", str(data), "--radius", "0.25", "--bits", "4",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    wide = local_bounds(model, inputs, radius=0.25)
    assert "radius 0.25" in text and text.splitlines()[-1].split()[0] == "max"
    assert float(text.splitlines()[-1].split()[1]) >= wide.forward
    for args, message in (
            (["--radius", "1"], "--radius applies to --around"),
            (["--around", str(data), "--box", "0", "1"], "leave out --box"),
            (["--around", str(data), "--radius", "-1"], "radius (--radius)"),
            (["--around", str(data), "--bits", "0"], "bits (--bits)"),
            (["--around", str(data), "--shape", "5"], "entries per sample")):
        assert main(["bounds", str(path), *args, "--no-progress"]) == 2
        assert message in capsys.readouterr().err
    spec = tmp_path / "s.json"
    spec.write_text("[]")
    assert main(["bounds", str(spec), "--around", str(data)]) == 2
    assert "needs a saved model" in capsys.readouterr().err
