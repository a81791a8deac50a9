"""The trace cache: a module's graphs are captured once and shared across oracles, backends,
precisions and calls, and captured again when the module changes (weights in place, a loaded
state dict, a cast, a plain attribute)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import reference
from lipbound.blocks import coupling_mlp, randomize_parameters, residual_flow
from reference import traced as traced_module

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

PREC = "arb:128"


@pytest.fixture
def captures(monkeypatch):
    """The list of ``(what, input shapes)`` captured during the test (the cache starts empty)."""
    seen = []
    capture = traced_module._capture

    def counting(fn, examples, mode="auto"):
        seen.append((traced_module._describe(fn), tuple(tuple(e.shape) for e in examples)))
        return capture(fn, examples, mode)

    monkeypatch.setattr(traced_module, "_capture", counting)
    reference.clear_trace_cache()
    yield seen
    reference.clear_trace_cache()


def _model():
    model = coupling_mlp(2, 2, 8, "affine").double().eval()
    return randomize_parameters(model, 0.3, generator=torch.Generator().manual_seed(0))


def test_graphs_are_captured_once_across_oracles_backends_and_calls(captures):
    model = _model()
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    first = reference.compile_traced(model, PREC)
    y = first.forward(x)
    back = first.inverse(y)
    assert len(captures) == 4  # 2 blocks x (forward, inverse)
    again = reference.compile_traced(model, "arb:200")  # a new oracle, another precision
    assert np.abs(again.inverse(again.forward(x)).to_numpy() - back.to_numpy()).max() < 1e-30
    first.at(256).forward(x)
    first.with_backend("mp:128").forward(x)
    reference.oracle(model, PREC).trace_forward(x)  # hand-written: no graphs at all
    assert len(captures) == 4
    first.forward(x[:1])  # a new input shape: its own graphs
    assert len(captures) == 6 and all(shape == ((1, 2),) for _, shape in captures[4:])


def test_weights_changed_in_place_capture_again(captures):
    model = _model()
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    oracle = reference.compile_traced(model, PREC)
    before = oracle.forward(x).to_numpy()
    n = len(captures)
    with torch.no_grad():
        model.flat_blocks()[0].t[0].weight.mul_(2)
        expected = model(x).numpy()
    after = oracle.forward(x).to_numpy()
    assert len(captures) == n + 1  # the changed block only
    assert captures[-1][0].endswith(".forward")
    assert np.abs(after - expected).max() <= 1e-14 and np.abs(after - before).max() > 1e-3
    oracle.forward(x)
    assert len(captures) == n + 1  # and then cached again


def test_loaded_state_dict_and_cast_capture_again(captures):
    model = _model()
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    reference.compile_traced(model, PREC).forward(x)
    n = len(captures)
    other = randomize_parameters(_model(), 0.5, generator=torch.Generator().manual_seed(5))
    model.load_state_dict(other.state_dict())
    y = reference.compile_traced(model, PREC).forward(x)
    assert len(captures) == 2 * n
    with torch.no_grad():
        assert np.abs(y.to_numpy() - other(x).numpy()).max() <= 1e-14
    model.float()
    reference.compile_traced(model, PREC).forward(x.float())
    assert len(captures) == 3 * n


class _Clamp(nn.Module):
    """``clamp(x, -c, c)`` with ``c`` a plain attribute: it is baked into the graph."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x):
        return torch.clamp(x, -self.c, self.c)


def test_plain_attribute_change_captures_again(captures):
    f = _Clamp(0.5)
    x = torch.tensor([[0.75, -2.0]], dtype=torch.float64)
    assert reference.trace(f, x).evaluate(x, PREC).to_numpy().tolist() == [[0.5, -0.5]]
    assert reference.trace(f, x) is reference.trace(f, x) and len(captures) == 1
    f.c = 1.0
    assert reference.trace(f, x).evaluate(x, PREC).to_numpy().tolist() == [[0.75, -1.0]]
    assert len(captures) == 2
    assert reference.trace(f, x, cache=False) is not reference.trace(f, x)
    assert len(captures) == 3


def test_residual_branch_and_forward_captured_once_per_shape(captures):
    """The i-ResNet oracle captures ``forward`` and ``g`` per input shape; the fixed point runs
    hundreds of evaluations of ``g`` on that one graph."""
    model = randomize_parameters(residual_flow((2,), n_blocks=1, hidden=8).double().eval(), 0.3,
                                 generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    oracle = reference.compile_traced(model, PREC)
    back = oracle.inverse(oracle.forward(x))
    assert np.abs(back.to_numpy() - x.numpy()).max() <= 1e-30
    assert sorted(name for name, _ in captures) == ["InvertibleResidual.forward",
                                                    "Sequential"]
    assert oracle.leaves()[0].last_convergence.iterations > 10


def test_state_key_sees_what_the_graph_depends_on():
    model = _model()
    key = reference.traced.state_key(model)
    assert reference.traced.state_key(model) == key
    model.flat_blocks()[0].last_convergence = object()  # not plain: not part of the state
    assert reference.traced.state_key(model) == key
    model.train()
    assert reference.traced.state_key(model) != key


def test_decompose_shares_graphs_across_calls_and_precisions(captures):
    """``decompose`` keeps its cast copies per model and dtype, so a second call captures
    nothing, another precision only its own new shapes, and a weight change everything again;
    the numbers do not depend on the cache."""
    from lipbound.blocks import AdditiveCoupling, halves
    from lipbound.precision.decompose import decompose

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.GELU(), nn.Linear(8, 2))  # GELU: traced oracle
    model = AdditiveCoupling(halves(4), net)
    x = torch.randn(3, 4)
    first = decompose(model, x, "float32", "arb:113")
    # float32: forward and inverse (batch 3), forward (batch 1, the Jacobian); float64: the
    # second precision's forward and inverse
    assert len(captures) == 5
    again = decompose(model, x, "float32", "arb:113")
    assert len(captures) == 5
    assert again.per_sample == first.per_sample and again.verdict == first.verdict
    decompose(model, x, "float64", "arb:113")
    assert len(captures) == 6 and captures[-1][1] == ((1, 4),)
    with torch.no_grad():
        net[0].weight.mul_(1.5)
    changed = decompose(model, x, "float32", "arb:113")
    assert len(captures) == 11
    assert changed.per_sample["delta"] != first.per_sample["delta"]
