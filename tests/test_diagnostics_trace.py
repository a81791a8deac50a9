"""One round-trip tracer: ``InvertibleBlock.trace_forward``/``trace_inverse`` under the diagnostics'
per-sample first failure and under ``lipbound check``; failures in execution order."""

from __future__ import annotations

import math

import pytest
import torch
from test_diagnostics_reconstruction import FIRST, _fragile_affine
from torch import nn

from lipbound.blocks import (
    AdditiveCoupling,
    AffineCoupling,
    IdentityScale,
    InvertibleBlock,
    InvertibleSequential,
    coupling_mlp,
    figure1_chain,
    glow_like,
    mlp,
    randomize_parameters,
)
from lipbound.check import check_model
from lipbound.diagnostics import (
    Failure,
    Inverted,
    checkerboard,
    execution_step,
    reconstruction_stats,
    round_trip_trace,
)
from lipbound.diagnostics.views import at_precision, per_sample_norm
from lipbound.precision import torch_dtype


@torch.no_grad()
def _trace_as_before(model, x, tol):
    """The diagnostics tracer as it was before it used ``trace_forward``/``trace_inverse``: its own
    loops over the leaf blocks, marking each sample at the first failing step."""
    blocks = model.flat_blocks()
    failed = [None] * x.shape[0]

    def mark(bad, i, stage):
        for b in torch.nonzero(bad).flatten().tolist():
            if failed[b] is None:
                failed[b] = Failure(i, type(blocks[i]).__name__, stage)

    def non_finite(v):
        return ~torch.isfinite(v.reshape(v.shape[0], -1)).all(dim=1)

    trace = [x]
    for i, block in enumerate(blocks):
        trace.append(block(trace[-1]))
        mark(non_finite(trace[-1]), i, "forward")
    rec = trace[-1]
    for i in reversed(range(len(blocks))):
        rec = blocks[i].inverse(rec)
        err = per_sample_norm(rec - trace[i])
        mark(non_finite(rec) | ~(err <= tol * (1 + per_sample_norm(trace[i]))), i, "inverse")
    return rec, failed


def _cases():
    nan_inf = InvertibleSequential(AffineCoupling(FIRST, 0.0, nn.Identity(), IdentityScale()))
    mixed = coupling_mlp(2, n_blocks=4, hidden=8)
    randomize_parameters(mixed, 1.0, torch.Generator().manual_seed(3))
    return [
        (_fragile_affine(), 100 * checkerboard(256, torch.Generator().manual_seed(0)), "float32"),
        (nan_inf, torch.tensor([[0.0, 1.0], [1e200, 1e200], [2.0, 3.0], [0.0, -2.0]]),
         "float64"),
        (figure1_chain(12, "affine"), torch.ones(3, 2), "float32"),
        (mixed, 30 * torch.randn(200, 2, generator=torch.Generator().manual_seed(1)), "float32"),
    ]


@pytest.mark.parametrize("case", range(4))
@pytest.mark.parametrize("inverted", [False, True])
def test_round_trip_trace_is_the_tracer_it_replaced(case, inverted):
    model, x, precision = _cases()[case]
    run = at_precision(model, precision)
    if inverted:
        run = Inverted(run)
    xp = x.to(torch_dtype(precision))
    tol = 1e-4
    rec, failed = round_trip_trace(run, xp, tol)
    rec_before, failed_before = _trace_as_before(run, xp, tol)
    torch.testing.assert_close(rec, rec_before, rtol=0, atol=0, equal_nan=True)
    assert failed == failed_before
    if not inverted and case != 3:
        assert any(f is not None for f in failed)  # the comparison covers failures


def test_trace_forward_and_inverse_on_a_leaf_and_on_nested_sequentials():
    leaf = AdditiveCoupling(FIRST, mlp(1, 1, 8, 1, "tanh"))
    x = torch.randn(5, 2)
    h = leaf.trace_forward(x)
    assert len(h) == 2 and h[0] is x
    torch.testing.assert_close(h[1], leaf(x), rtol=0, atol=0)
    nested = InvertibleSequential(leaf, InvertibleSequential(_fragile_affine(), leaf))
    blocks = nested.flat_blocks()
    h = nested.trace_forward(x)
    r = nested.trace_inverse(h[-1])
    assert len(h) == len(r) == len(blocks) + 1 == 6
    for i, b in enumerate(blocks):
        torch.testing.assert_close(h[i + 1], b(h[i]), rtol=0, atol=0)
        torch.testing.assert_close(r[len(blocks) - i], b.inverse(r[len(blocks) - 1 - i]),
                                   rtol=0, atol=0)
    torch.testing.assert_close(r[-1], x, rtol=1e-12, atol=1e-12)


def test_check_rows_are_the_round_trips_of_each_blocks_traced_input():
    model = glow_like((3, 4, 4), levels=1, steps=2, hidden=8)
    randomize_parameters(model, 0.05, torch.Generator().manual_seed(0))
    x = torch.randn(3, 3, 4, 4)
    rows = check_model(model, x, ("float32",), include_model=False)
    blocks = model.flat_blocks()
    assert [r.index for r in rows] == list(range(len(blocks)))
    h = x
    for row, b in zip(rows, blocks, strict=True):  # the float64 forward, block by block
        b32 = at_precision(b, "float32")
        with torch.no_grad():
            hp = h.float()
            rec = b32.inverse(b32(hp)).double()
            expect = float(((hp.double() - rec).flatten(1).norm(dim=1)
                            / hp.double().flatten(1).norm(dim=1)).max())
            h = b(h)
        assert row.round_trip["float32"] == expect and row.kind == type(b).__name__


class _WrongInverseWhere(InvertibleBlock):
    """``F(x) = x``; its inverse adds 1 to coordinate ``k`` where that coordinate is positive: the
    round trip fails exactly at the samples with ``x_k > 0``."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def _forward(self, x, with_log_det):
        return x, None

    def _inverse(self, y, with_log_det):
        out = y.clone()
        out[:, self.k] += (y[:, self.k] > 0).to(y.dtype)
        return out, None


def test_first_failure_follows_execution_order_not_the_lowest_block():
    model = InvertibleSequential(_WrongInverseWhere(0), _WrongInverseWhere(1))
    x = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])
    st = reconstruction_stats(model, x, "float64")
    # x -> z -> x runs F_0, F_1, F_1^-1, F_0^-1: samples with x_1 > 0 fail at 1:inverse first
    assert [None if f is None else f.key for f in st.failures] == [
        "0:inverse", "1:inverse", "1:inverse", None]
    assert list(st.failure_counts().items()) == [("1:inverse", 2), ("0:inverse", 1)]
    assert st.first_failure == "1:inverse" and st.lowest_failing_block == 0
    # z -> x -> z runs F_1^-1, F_0^-1, F_0, F_1: F_0 sees the sample that F_0^-1 moved first
    back = reconstruction_stats(model, x, "float64", direction="z->x->z")
    assert [None if f is None else f.key for f in back.failures] == [
        "0:forward", "1:forward", "0:forward", None]
    assert list(back.failure_counts().items()) == [("0:forward", 2), ("1:forward", 1)]
    assert back.first_failure == "0:forward" and back.lowest_failing_block == 0


def test_execution_step_orders_both_directions():
    n = 3
    fwd = [Failure(i, "B", "forward") for i in range(n)]
    inv = [Failure(i, "B", "inverse") for i in range(n)]
    data = Failure(None, None, "input")
    x_order = [execution_step(f, n, "x->z->x") for f in [data, *fwd, *reversed(inv)]]
    z_order = [execution_step(f, n, "z->x->z") for f in [data, *reversed(inv), *fwd]]
    assert x_order == z_order == list(range(-1, 2 * n))


def test_non_finite_inputs_fail_at_the_input_not_at_block_0():
    model = _fragile_affine()
    x = torch.tensor([[math.nan, 1.0], [1.0, 2.0], [math.inf, 0.0]])
    st = reconstruction_stats(model, x, "float64")
    assert [None if f is None else f.key for f in st.failures] == ["input", None, "input"]
    assert st.first_failure == "input" and st.lowest_failing_block is None
    assert math.isnan(st.errors[0]) and not math.isfinite(st.errors[2])
