"""Reading a model never changes it: compiling and running the reference (the oracle never runs
the code it checks) and computing bounds leave every parameter and buffer bit-identical, for every
block type of lipbound.blocks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import reference
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
    Squeeze,
    conv_subnet,
    coupling_mlp,
    figure1_chain,
    glow_like,
    halves,
    mlp,
    randomize_parameters,
    refresh_spectral_norm,
    residual_conv,
    residual_flow,
    residual_mlp,
)
from lipbound.bounds import bound_model

F64 = torch.float64


def _rand(model: nn.Module, seed: int = 0) -> nn.Module:
    return randomize_parameters(model.double(), generator=torch.Generator().manual_seed(seed)
                                ).eval()


def _vec(d: int) -> torch.Tensor:
    return torch.linspace(-0.7, 0.9, d, dtype=F64).reshape(1, d)


def _img(c: int, h: int, w: int) -> torch.Tensor:
    return torch.linspace(-0.6, 0.8, c * h * w, dtype=F64).reshape(1, c, h, w)


#: name -> (model, one input); every block type, couplings with every scale function
CASES: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    **{f"affine-{scale}": (lambda scale=scale: (
        _rand(AffineCoupling(halves(4), mlp(2, 2, 6, 1), mlp(2, 2, 6, 1), scale)), _vec(4)))
       for scale in ("sigmoid", "modified", "exp", "softclamp", "identity")},
    "additive": lambda: (_rand(AdditiveCoupling(halves(4), mlp(2, 2, 6, 1, "tanh"))), _vec(4)),
    "affine-conv": lambda: (_rand(AffineCoupling(halves(4), conv_subnet(2, 2, 3),
                                                 conv_subnet(2, 2, 3))), _img(4, 3, 3)),
    "iresnet-mlp": lambda: (_rand(InvertibleResidual(residual_mlp(3, 5, coeff=0.6))), _vec(3)),
    "iresnet-conv": lambda: (_rand(InvertibleResidual(
        residual_conv(2, 3, coeff=0.5, input_shape=(2, 3, 3)))), _img(2, 3, 3)),
    "neural-ode": lambda: (_rand(NeuralODE(ODEFunc(2, 4, 1), steps=4)), _vec(2)),
    "actnorm": lambda: (_rand(ActNorm(3)), _img(3, 2, 2)),
    "diagonal": lambda: (_rand(DiagonalScaling(torch.tensor([1.5, -0.5, 2.0]))), _vec(3)),
    "1x1conv": lambda: (_rand(Invertible1x1Conv(3, generator=torch.Generator().manual_seed(1))),
                        _img(3, 2, 2)),
    "1x1conv-lu": lambda: (_rand(Invertible1x1Conv(3, lu=True,
                                                   generator=torch.Generator().manual_seed(2))),
                           _img(3, 2, 2)),
    "permutation": lambda: (Permutation(4, "random", seed=3).double(), _vec(4)),
    "squeeze": lambda: (InvertibleSequential(Squeeze(2)).double(), _img(1, 2, 2)),
    "figure1": lambda: (figure1_chain(4, "affine").double(), _vec(2)),
    "coupling-mlp": lambda: (_rand(coupling_mlp(2, 2, 6, actnorm=True)), _vec(2)),
    "glow-like": lambda: (_rand(glow_like((2, 4, 4), 1, 1, 4, "affine", "lu")), _img(2, 4, 4)),
    "residual-flow-mlp": lambda: (_rand(residual_flow((2,), 2, 6, coeff=0.5)), _vec(2)),
    "residual-flow-conv": lambda: (_rand(residual_flow((1, 2, 2), 1, 3, coeff=0.5)),
                                   _img(1, 2, 2)),
}


def _state(model: nn.Module) -> dict[str, tuple[torch.dtype, tuple[int, ...], bytes]]:
    """Every parameter and buffer (non-persistent ones included), as raw bytes."""
    named = list(model.named_parameters()) + list(model.named_buffers())
    return {name: (t.dtype, tuple(t.shape), t.detach().cpu().contiguous().numpy().tobytes())
            for name, t in named}


def _assert_unchanged(before: dict, model: nn.Module) -> None:
    after = _state(model)
    assert after.keys() == before.keys()
    changed = [k for k in before if after[k] != before[k]]
    assert not changed, f"changed: {changed}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_compiling_and_running_the_reference_leaves_the_model_bit_identical(name):
    model, x = CASES[name]()
    before = _state(model)
    assert before or name in ("permutation", "squeeze")  # only these have no float state
    for backend in ("arb:64", "mp:64"):
        ref = reference.compile(model, backend)
        y = ref.forward(x)
        ref.inverse(y)
        if x.numel() <= 4:
            ref.jacobian(x)
    reference.compile(model, "arb:64", iterations="as_float").forward(x)
    _assert_unchanged(before, model)


@pytest.mark.parametrize("name", sorted(CASES))
def test_computing_a_bound_leaves_the_model_bit_identical(name):
    model, x = CASES[name]()
    before = _state(model)
    bound_model(model, tuple(x.shape[1:]), box=(-1.0, 1.0))
    _assert_unchanged(before, model)


def _stale_iresnet() -> nn.Module:
    """An i-ResNet whose weights changed after its power-iteration vectors were computed."""
    model = InvertibleResidual(residual_mlp(3, 5, coeff=0.6)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    return model


def test_stale_spectral_norm_vectors_are_refused_not_recomputed():
    model = _stale_iresnet()
    before = _state(model)
    with pytest.raises(ValueError, match=r"SpectralNormLinear: .*refresh_spectral_norm"):
        reference.compile(model, "arb:64")
    _assert_unchanged(before, model)
    refresh_spectral_norm(model)  # what the next forward call would do; now they belong
    assert _state(model) != before
    x = _vec(3)
    ref = reference.compile(model, "arb:128")
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(ref.forward(x).to_numpy()), model(x),
                                   rtol=0, atol=1e-14)


def test_bounds_on_stale_vectors_leave_the_model_unchanged_and_hold():
    """A bound on a stale layer is the bound of the map the next forward call applies (the
    recomputed vectors), computed without storing them."""
    model = _stale_iresnet()
    before = _state(model)
    stale = bound_model(model, (3,))
    _assert_unchanged(before, model)
    refresh_spectral_norm(model)
    fresh = bound_model(model, (3,))
    assert stale.forward == fresh.forward and stale.inverse == fresh.inverse


def test_copies_and_casts_keep_the_stored_vectors():
    """The same network at another precision has the same stored u, v: a deep copy or a cast
    compiles without a refresh, and the reference uses the cast vectors."""
    import copy

    model = _rand(residual_flow((2,), 1, 4, coeff=0.5))
    for other in (copy.deepcopy(model), copy.deepcopy(model).float(), model.to(F64)):
        before = _state(other)
        reference.compile(other, "arb:64")
        _assert_unchanged(before, other)
    state = model.state_dict()
    fresh = residual_flow((2,), 1, 4, coeff=0.5).double().eval()
    fresh.load_state_dict(state)  # weight, u and v loaded together: they belong together
    reference.compile(fresh, "arb:64")
