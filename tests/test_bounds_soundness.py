"""Soundness: on many small random models of every block kind (weights as built, and scaled up),
the largest Jacobian spectral norm found by sampling and by gradient ascent on ||J v|| inside the
box never exceeds the reported bound, forward and inverse, block by block and for the network."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from lipbound.blocks import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    DiagonalScaling,
    Invertible1x1Conv,
    InvertibleResidual,
    InvertibleSequential,
    NeuralODE,
    ODEFunc,
    Permutation,
    SigmoidScale,
    SoftClampScale,
    Squeeze,
    checkerboard,
    conv_subnet,
    coupling_mlp,
    figure1_chain,
    glow_like,
    halves,
    mlp,
    randomize_parameters,
    residual_flow,
)
from lipbound.blocks.residual import SpectralNormLinear, residual_mlp
from lipbound.bounds import Box, bound_model
from lipbound.bounds.blocks import block_rule
from lipbound.bounds.empirical import max_block_norms, max_jacobian_norm

SEARCH = {"n_samples": 64, "n_starts": 3, "n_steps": 15}
#: Image models have costlier Jacobians: a lighter search.
SEARCH_IMAGE = {"n_samples": 24, "n_starts": 2, "n_steps": 8}


def _affine_mask_image() -> InvertibleSequential:
    part = checkerboard((2, 4, 4))
    return InvertibleSequential(
        AffineCoupling(part, conv_subnet(2, 2, 4, "elu"), conv_subnet(2, 2, 4, "tanh"),
                       SigmoidScale(0.5, 1.0)))


def _affine_channels_image() -> InvertibleSequential:
    return InvertibleSequential(
        AffineCoupling(halves(4), conv_subnet(2, 2, 4), conv_subnet(2, 2, 4), "sigmoid"))


def _vector_linear_stack() -> InvertibleSequential:
    return InvertibleSequential(DiagonalScaling(torch.randn(3)), ActNorm(3),
                                Invertible1x1Conv(3), Invertible1x1Conv(3, lu=True),
                                Permutation(3, "random"))


def _image_linear_stack() -> InvertibleSequential:
    return InvertibleSequential(Squeeze(2), ActNorm(8), Invertible1x1Conv(8, lu=True),
                                DiagonalScaling((8, 1, 1)))


def _ode(method: str, time_dependent: bool) -> InvertibleSequential:
    return InvertibleSequential(NeuralODE(ODEFunc(2, 6, 1, "tanh", time_dependent), T=0.7,
                                          steps=3, method=method))


#: name -> (builder, per-sample shape, box, parameter noise std, inverse via J^-1)
CASES: dict[str, tuple[Callable[[], InvertibleSequential], tuple, tuple, float | None, bool]] = {
    "additive-mlp": (lambda: coupling_mlp(4, 2, 8, "additive", activation="silu"), (4,),
                     (-2, 2), 0.5, False),
    "additive-conv": (lambda: glow_like((2, 4, 4), 1, 1, 4, "additive", "reverse", actnorm=False),
                      (2, 4, 4), (0, 1), 0.2, False),
    "affine-sigmoid": (lambda: coupling_mlp(2, 2, 8, "affine"), (2,), (-3, 3), 0.5, False),
    "affine-modified": (lambda: coupling_mlp(2, 2, 8, "affine", "modified", activation="tanh"),
                        (2,), (-3, 3), 1.0, False),
    "affine-exp": (lambda: coupling_mlp(2, 1, 8, "affine", "exp", activation="elu"), (2,),
                   (-1, 1), 0.3, False),
    "affine-softclamp": (lambda: coupling_mlp(3, 1, 8, "affine", SoftClampScale(1.5),
                                              activation="softplus"), (3,), (-1, 2), 0.4, False),
    "affine-mask-image": (_affine_mask_image, (2, 4, 4), (-1, 1), 0.2, False),
    "affine-channel-image": (_affine_channels_image, (4, 2, 2), (-1, 1), 0.2, False),
    "figure1-affine": (lambda: figure1_chain(6, "affine", alternate=True), (2,), (0, 2), None,
                       False),
    "figure1-additive": (lambda: figure1_chain(6, "additive"), (2,), (0, 2), None, False),
    "linear-vector": (_vector_linear_stack, (3,), (-1, 1), 0.5, False),
    "linear-image": (_image_linear_stack, (2, 4, 4), (-1, 1), 0.5, False),
    "glow-affine": (lambda: glow_like((2, 4, 4), 1, 1, 4, "affine", "lu"), (2, 4, 4), (0, 1),
                    0.1, False),
    "iresnet-mlp": (lambda: residual_flow((2,), 2, 8, coeff=0.8), (2,), (-4, 4), None, True),
    "iresnet-conv": (lambda: residual_flow((1, 3, 3), 1, 2, coeff=0.9), (1, 3, 3), (-1, 1),
                     None, True),
    "ode-rk4": (lambda: _ode("rk4", True), (2,), (-2, 2), 0.4, False),
    "ode-euler": (lambda: _ode("euler", False), (2,), (-2, 2), 0.4, False),
}


def _check(model: InvertibleSequential, shape: tuple, box: tuple, invert: bool) -> None:
    search = SEARCH if len(shape) == 1 else SEARCH_IMAGE
    model.eval()
    net = bound_model(model, shape, box=box)
    for k, block in enumerate(model.flat_blocks()):
        row = net.blocks[k]
        # with invert: the i-ResNet inverse (fixed point) through 1 / sigma_min of J_F
        found, found_inv = max_block_norms(block, net.boxes[k], net.inverse_boxes[k], invert,
                                           **search)
        assert found <= row.forward.value, (k, row.kind, found, row.forward.value)
        assert found_inv <= row.inverse.value, (k, row.kind, found_inv, row.inverse.value)
    assert max_jacobian_norm(model, net.boxes[0], **search) <= net.forward
    if invert or any(row.scope != "global" for row in net.blocks):
        # with local rows the inverse bound holds on the image F([a, b]^d), where
        # J_{F^-1}(F(x)) = J_F(x)^-1 (the i-ResNet inverse is exact up to its tolerance)
        found_inv = max_jacobian_norm(model, net.boxes[0], invert=True, **search)
    else:  # global rows: the computed inverse (e.g. an ODE's backward solve) anywhere
        found_inv = max_jacobian_norm(model.inverse, net.inverse_boxes[-1], **search)
    assert found_inv <= net.inverse


PARAMS = [(name, scale) for name in sorted(CASES) for scale in (1.0, 4.0)]


@pytest.mark.parametrize("name,scale_up", PARAMS)
def test_bounds_hold_against_measured_jacobians(name, scale_up):
    build, shape, box, std, invert = CASES[name]
    torch.manual_seed(hash(name) % 1000)
    model = build()
    if std is not None:
        randomize_parameters(model, std * scale_up, torch.Generator().manual_seed(3))
    elif scale_up != 1.0:
        box = (box[0] * scale_up, box[1] * scale_up)  # no weights to scale: widen the box
    _check(model, shape, box, invert)


def test_iresnet_inverse_refused_when_lip_g_reaches_one():
    torch.manual_seed(0)
    g = torch.nn.Sequential(SpectralNormLinear(2, 8, coeff=3.0), torch.nn.Tanh(),
                            SpectralNormLinear(8, 2, coeff=3.0))
    with torch.no_grad():
        for layer in (g[0], g[2]):
            layer.weight.mul_(20.0)
    block = InvertibleResidual(g, check_contraction=False)
    net = bound_model(InvertibleSequential(block), (2,))
    row = net.blocks[0]
    assert row.forward.value is not None and row.forward.value >= 2.0
    assert row.inverse.value is None and "not < 1" in row.inverse.refused
    assert net.inverse is None and net.refusals()
    with pytest.raises(ValueError, match="not < 1"):
        bound_model(InvertibleSequential(block), (2,), output_box=(-1, 1))


def test_output_box_carried_backward_bounds_the_inverse():
    torch.manual_seed(2)
    model = coupling_mlp(2, 3, 8, "affine", "modified")
    randomize_parameters(model, 0.3, torch.Generator().manual_seed(5))
    net = bound_model(model, (2,), output_box=(-2, 2))
    assert all(row.forward.symbolic for row in net.blocks)  # no input box: symbolic, with reason
    for k, block in enumerate(model.flat_blocks()):
        found = max_jacobian_norm(block.inverse, net.inverse_boxes[k], **SEARCH)
        assert found <= net.blocks[k].inverse.value
    assert max_jacobian_norm(model.inverse, net.inverse_boxes[-1], **SEARCH) <= net.inverse
    y = -2 + 4 * torch.rand(500, 2)
    with torch.no_grad():
        trace = model.trace_inverse(y)  # [y, F_L^-1(y), ..., F^-1(y)]
    for k, values in enumerate(reversed(trace)):  # forward order: the input of block k
        box = net.inverse_boxes[k - 1] if k else None
        if box is not None:
            assert bool((values >= box.lo).all() and (values <= box.hi).all()), k


def test_boxes_enclose_the_forward_trace():
    torch.manual_seed(4)
    model = glow_like((2, 4, 4), 1, 2, 4, "affine", "1x1conv")
    randomize_parameters(model, 0.1, torch.Generator().manual_seed(1))
    net = bound_model(model, (2, 4, 4), box=(0, 1))
    x = torch.rand(64, 2, 4, 4)
    with torch.no_grad():
        trace = model.trace_forward(x)
    for k, box in enumerate(net.boxes):
        assert bool((trace[k] >= box.lo).all() and (trace[k] <= box.hi).all()), k
    assert bool((trace[-1] >= net.inverse_boxes[-1].lo).all())
    assert bool((trace[-1] <= net.inverse_boxes[-1].hi).all())


def test_additive_block_with_constant_and_mlp_translation_is_global():
    torch.manual_seed(0)
    part = halves(2)
    model = InvertibleSequential(AdditiveCoupling(part, 0.5),
                                 AdditiveCoupling(part.swapped(), mlp(1, 1, 4, 1)))
    net = bound_model(model, (2,))
    assert 1.0 <= net.blocks[0].forward.value <= 1.0 + 1e-15  # Lip(t) = 0 for a constant
    wide = Box.uniform(-50.0, 50.0, (2,))
    assert max_jacobian_norm(model, wide, **SEARCH) <= net.forward
    assert max_jacobian_norm(model.inverse, wide, **SEARCH) <= net.inverse


def test_residual_mlp_bound_respects_the_coefficients():
    torch.manual_seed(0)
    block = InvertibleResidual(residual_mlp(3, 8, n_layers=2, coeff=0.7))
    randomize_parameters(block, 1.0, torch.Generator().manual_seed(0))
    row = bound_model(InvertibleSequential(block), (3,)).blocks[0]
    lip_g = next(v for k, v in row.forward.values.items() if k.name.startswith("Lip(g)"))
    assert lip_g <= 0.7**3 * (1 + 1e-3)  # spectral normalisation to 0.7 per layer (exact=False
    # estimates sigma from below, so allow the power iteration's remaining error)


#: Blocks whose boxes are carried by enclosures of iterative maps: name -> (builder, parameter
#: noise std, or None for spectrally normalised weights, which noise does not scale).
ITERATIVE: dict[str, tuple[Callable[[float], torch.nn.Module], float | None]] = {
    "iresnet": (lambda c: InvertibleResidual(residual_mlp(2, 8, 2, c)), None),
    "iresnet-unconverged": (lambda c: InvertibleResidual(residual_mlp(2, 8, 2, c), max_iter=2),
                            None),
    "ode-rk4": (lambda c: NeuralODE(ODEFunc(2, 6, 1, "tanh"), T=0.7, steps=3), 0.4),
    "ode-euler": (lambda c: NeuralODE(ODEFunc(2, 6, 1, "elu", False), T=0.7, steps=5,
                                      method="euler"), 0.4),
}


def _exact_inverse(block: torch.nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The inverse the boxes enclose: the i-ResNet fixed point iterated to convergence (whatever
    the block's own cap), the ODE's backward solve."""
    if isinstance(block, InvertibleResidual):
        converged = InvertibleResidual(block.g, max_iter=1000, check_contraction=False)
        x = converged.inverse(y)
        assert converged.last_convergence.converged
        return x
    return block.inverse(y)


@pytest.mark.parametrize("scale_up", [1.0, 4.0])
@pytest.mark.parametrize("name", sorted(ITERATIVE))
def test_iterative_blocks_carry_boxes_rigorously(name, scale_up):
    """The i-ResNet inverse box (ball of radius (rho + ||r||) / (1 - Lip(g)) around the float
    fixed point, narrowed by x = y - g(x)) and the ODE boxes (interval solver steps) hold every
    image, also when the fixed point is stopped far from convergence and when the weights (or the
    contraction coefficient) are scaled up."""
    build, std = ITERATIVE[name]
    block = build(0.99 if scale_up > 1 else 0.8)
    if std is not None:
        randomize_parameters(block, std * scale_up, torch.Generator().manual_seed(7))
    block.eval()
    rule = block_rule(block)
    gen = torch.Generator().manual_seed(0)
    for centre, radius in ((1.5, 0.0), (0.0, 0.05), (0.0, 2.0 * scale_up)):
        box = Box.uniform(centre - radius, centre + radius, (2,))
        corners = torch.cartesian_prod(*[torch.tensor([-radius, radius])] * 2)
        points = centre + torch.cat([corners, radius * (2 * torch.rand(400, 2, generator=gen) - 1)])
        with torch.no_grad():
            images = {"forward": block(points), "inverse": _exact_inverse(block, points)}
        for direction, image in images.items():
            out = (rule.forward_box if direction == "forward" else rule.inverse_box)(block, box)
            assert out.is_finite(), (direction, radius)
            # the boxes hold the exact maps; the float images may differ from them by rounding
            slack = 1e-12 * (1 + image.abs())
            assert bool((image >= out.lo - slack).all() and (image <= out.hi + slack).all()), (
                direction, radius)
            if scale_up == 1.0 and radius > 0:  # not vacuous (scaled-up weights loosen the ball)
                spread = image.max(0).values - image.min(0).values
                assert float((out.hi - out.lo).max()) <= 10 * float(spread.max()) + 1e-9


@pytest.mark.parametrize("build", [lambda: residual_flow((2,), 3, 8, coeff=0.9),
                                   lambda: InvertibleSequential(*[
                                       NeuralODE(ODEFunc(2, 6, 1), T=0.5, steps=2)
                                       for _ in range(3)])], ids=["residual-flow", "ode-chain"])
def test_output_box_carried_backward_through_iterative_blocks(build):
    torch.manual_seed(3)
    model = build()
    randomize_parameters(model, 0.5, torch.Generator().manual_seed(2))
    model.eval()
    net = bound_model(model, (2,), box=(-2, 2), output_box=(-3, 3))
    y = -3 + 6 * torch.rand(500, 2)
    with torch.no_grad():
        trace = model.trace_inverse(y)  # [y, F_L^-1(y), ..., F^-1(y)]
    for k, values in enumerate(reversed(trace)):
        box = net.inverse_boxes[k - 1] if k else None
        if box is not None:
            assert bool((values >= box.lo).all() and (values <= box.hi).all()), k
    # ||J_{F^-1}(F(x))|| = ||J_F(x)^-1|| on the box holding F^-1([a*, b*]^d) (global rows)
    assert max_jacobian_norm(model, net.inverse_boxes[0], invert=True, **SEARCH) <= net.inverse

