"""Two oracles that check each other: the traced oracle (captured ATen graphs run in ball
arithmetic) and the hand-written one (each block's map written from its formula) agree within
their radii on every lipbound block type and on the builders' models, forward and inverse.

The iterative blocks run the same iteration in both oracles (the i-ResNet fixed point on the
captured residual branch, the extrapolated ODE flow of the captured vector field); with
``iterations="as_float"`` the traced ODE is the captured graph of the block's own fixed-step
solver, which is the hand-written fixed-step map up to the solver constants the code rounds.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import reference
from lipbound.blocks import (
    AffineCoupling,
    DiagonalScaling,
    Invertible1x1Conv,
    InvertibleBlock,
    NeuralODE,
    ODEFunc,
    Permutation,
    checkerboard,
    coupling_mlp,
    figure1_chain,
    glow_like,
    randomize_parameters,
    residual_flow,
)

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

PREC = "arb:128"


def _models():
    torch.manual_seed(0)
    vec = torch.randn(3, 4, dtype=torch.float64)
    img = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    return {
        "coupling_mlp_affine": (coupling_mlp(4, 1, 8, "affine", actnorm=True), vec),
        "coupling_mlp_additive": (coupling_mlp(4, 2, 8, "additive", activation="tanh"), vec),
        "coupling_mlp_softclamp": (coupling_mlp(4, 1, 8, "affine", scale="softclamp"), vec),
        "coupling_mlp_exp": (coupling_mlp(4, 1, 8, "affine", scale="exp"), vec),
        "checkerboard_coupling": (AffineCoupling(checkerboard((2, 4, 4)), 0.5, 1.5), img),
        "figure1_chain": (figure1_chain(2, "affine"), vec[:, :2]),
        "DiagonalScaling": (DiagonalScaling(torch.rand(4) + 0.5), vec),
        "Permutation": (Permutation(4, "random"), vec),
        "Invertible1x1Conv": (Invertible1x1Conv(2), img),
        "Invertible1x1Conv_lu": (Invertible1x1Conv(2, lu=True), img),
        "glow_like": (glow_like((2, 4, 4), levels=1, steps=1, hidden=4, coupling="affine"), img),
        "residual_flow_mlp": (residual_flow((4,), n_blocks=2, hidden=8, actnorm=True), vec),
        "residual_flow_conv": (residual_flow((2, 4, 4), n_blocks=1, hidden=4), img),
        "neural_ode_rk4": (NeuralODE(ODEFunc(4, 8), T=0.25, steps=2), vec),
        "neural_ode_euler": (NeuralODE(ODEFunc(4, 8, time_dependent=False), T=0.25, steps=3,
                                       method="euler"), vec),
    }


MODELS = _models()

#: The soft clamp's code multiplies by the float ``2.0 / math.pi``, which the traced oracle reads
#: as stored; the hand-written one uses the exact ``2 / pi``: the maps differ by that rounding.
CONSTANT_ROUNDING = {"coupling_mlp_softclamp": 1e-15}


def _prepared(name: str) -> tuple[InvertibleBlock, torch.Tensor]:
    block, x = MODELS[name]
    model = block.double().eval()
    randomize_parameters(model, 0.3, generator=torch.Generator().manual_seed(1))
    return model, x


def agree(a: reference.RTensor, b: reference.RTensor, rel: float = 0.0) -> None:
    """The balls of ``a`` and ``b`` overlap entry by entry: ``a - b``, computed in the ball
    arithmetic, contains 0 (up to ``rel`` relative to the largest value where the two maps are
    known to differ by a rounded constant)."""
    assert a.shape == b.shape
    with a.backend.active():
        d = a - b
    gap, radius = np.abs(d.to_numpy()), d.radii()
    slack = radius + rel * np.abs(a.to_numpy()).max()
    assert (gap <= slack).all(), (float(gap.max()), float(radius.max()))


def test_every_lipbound_block_type_is_checked():
    """A block type registered in the hand-written oracle but missing from :data:`MODELS`
    fails here: the two oracles are compared on every type."""
    seen = set()
    for block, _ in MODELS.values():
        seen |= {type(m) for m in block.modules()}
    registered = {t for t in reference.registered_types()
                  if issubclass(t, InvertibleBlock) and t.__module__.startswith("lipbound.")}
    assert registered - seen == set()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_traced_and_handwritten_oracles_agree(name):
    model, x = _prepared(name)
    hand = reference.compile(model, PREC)
    traced = reference.compile_traced(model, PREC)
    rel = CONSTANT_ROUNDING.get(name, 0.0)
    y_hand, y_traced = hand.forward(x), traced.forward(x)
    agree(y_hand, y_traced, rel)
    assert float(y_traced.radii().max()) < 1e-25  # a real certificate, not an infinite ball
    x_hand, x_traced = hand.inverse(y_hand), traced.inverse(y_hand)
    agree(x_hand, x_traced, rel)
    assert float(x_traced.radii().max()) < 1e-25
    # the same fixed-point iteration: the same number of steps
    counts = [[b.last_convergence.iterations for b in ref.leaves()
               if b.name == "InvertibleResidual"] for ref in (hand, traced)]
    assert counts[0] == counts[1]
    assert all(k > 5 for k in counts[0])
    back = traced.inverse(y_traced)
    assert np.abs(back.to_numpy() - x.numpy()).max() <= 1e-25  # exact inverse of exact forward


@pytest.mark.parametrize("name", ["residual_flow_mlp", "neural_ode_rk4"])
def test_traced_jacobian_of_iterative_blocks_matches_handwritten(name):
    model, x = _prepared(name)
    x1 = x[:1]
    sv_hand = reference.singular_values(reference.compile(model, PREC), x1)
    sv_traced = reference.singular_values(reference.compile_traced(model, PREC), x1)
    for a, b, ea, eb in zip(sv_hand.values, sv_traced.values, sv_hand.errors, sv_traced.errors,
                            strict=True):
        assert abs(a - b) <= ea + eb + 1e-25 * abs(a)


def test_residual_as_float_runs_the_float_iteration_count():
    """``iterations="as_float"``: both oracles run exactly the float inverse's iteration count
    (a truncated fixed point, different from the converged one by more than rounding)."""
    model, x = _prepared("residual_flow_mlp")
    with torch.no_grad():
        y = model(x)
        model.inverse(y)
    counts = [b.last_convergence.iterations for b in model.flat_blocks()
              if b.last_convergence is not None]
    hand = reference.compile(model, PREC, iterations="as_float")
    traced = reference.compile_traced(model, PREC, iterations="as_float")
    x_hand, x_traced = hand.inverse(y), traced.inverse(y)
    assert [b.last_convergence.iterations for b in traced.leaves() if b.iterative] == counts
    # the iterates are midpoints (no radius): equal to far below float64 rounding
    assert np.abs(x_hand.to_numpy() - x_traced.to_numpy()).max() <= 1e-30
    converged = reference.compile_traced(model, PREC).inverse(y)
    assert np.abs(converged.to_numpy() - x_traced.to_numpy()).max() > 1e-25


@pytest.mark.parametrize("name", ["neural_ode_rk4", "neural_ode_euler"])
def test_traced_solver_graph_is_the_handwritten_fixed_step_map(name):
    """The captured graph of the block's fixed-step solver (``iterations="as_float"``) is the
    hand-written fixed-step map run exactly, up to the solver constants the code rounds to
    float64 (``h = T / steps``, ``t_0 + i h``, ``h / 2``, ``h / 6``): relative 1e-15. Both differ
    from the exact flow (``"converged"``) by the solver's truncation error, far more."""
    model, x = _prepared(name)
    hand = reference.compile(model, PREC, iterations="as_float")
    traced = reference.compile_traced(model, PREC, iterations="as_float")
    y_hand, y_traced = hand.forward(x), traced.forward(x)
    agree(y_hand, y_traced, 1e-15)
    agree(hand.inverse(y_hand), traced.inverse(y_hand), 1e-15)
    with torch.no_grad():
        y64 = model(x)
    assert np.abs(y_traced.to_numpy() - y64.numpy()).max() <= 1e-14  # the float map itself
    exact = reference.compile_traced(model, PREC).forward(x)
    assert np.abs(exact.to_numpy() - y_traced.to_numpy()).max() > 1e-9


@pytest.mark.parametrize("name", ["residual_flow_mlp", "neural_ode_euler"])
def test_decompose_is_the_same_through_either_oracle(name, monkeypatch):
    """The section 2 decomposition of an iterative model, truncation included, with the traced
    oracle in place of the hand-written one: the same numbers and verdict."""
    from lipbound.precision.decompose import decompose

    model, x = _prepared(name)
    x = x.float()
    hand = decompose(model, x, "float32", "arb:113", same_mantissa=False)

    used = []

    def traced_oracle(m, backend, max_prec=reference.traced.MAX_PREC, iterations="converged"):
        used.append(iterations)
        return reference.compile_traced(m, backend, max_prec, iterations)

    monkeypatch.setattr(reference, "oracle", traced_oracle)
    traced = decompose(model, x, "float32", "arb:113", same_mantissa=False)
    assert "as_float" in used and "converged" in used  # the truncation ran traced too
    assert traced.verdict == hand.verdict
    assert hand.truncation is not None and traced.truncation is not None
    for key, values in hand.per_sample.items():
        np.testing.assert_allclose(traced.per_sample[key], values, rtol=1e-9, err_msg=key)
    for key, value in hand.truncation.items():
        assert traced.truncation[key] == pytest.approx(value, rel=1e-6, abs=1e-30), key
