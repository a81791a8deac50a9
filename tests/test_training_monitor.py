"""StabilityMonitor against direct computations, its warnings, its log; checkpoint primitives."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from conftest import functional_jacobian

from lipbound.blocks import coupling_mlp, figure1_chain, glow_like, randomize_parameters
from lipbound.errors import InputError, InputTypeError
from lipbound.training import (
    StabilityMonitor,
    StabilityWarning,
    default_cond_threshold,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _model(d=4, n_blocks=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return randomize_parameters(coupling_mlp(d, n_blocks, 8), 0.4, gen)


def _norms(v):
    return v.reshape(v.shape[0], -1).norm(dim=1)


def test_monitor_figures_match_autograd_jacobian_and_round_trips(tmp_path):
    model = _model()
    x, z = torch.randn(6, 4), torch.randn(6, 4)
    log = tmp_path / "monitor.jsonl"
    monitor = StabilityMonitor(model, x, every=3, latent=z, spectrum_samples=4, log=log)
    rec = monitor(0)
    assert monitor(1) is None and monitor(2) is None
    # direct: singular values of the autograd Jacobian (torch.autograd.functional, one sample at
    # a time, independent of torch.func) of the first 4 samples
    sv = torch.linalg.svdvals(functional_jacobian(model, x[:4]).detach())
    cond = sv[:, 0] / sv[:, -1]
    assert rec["spectrum_method"] == "full" and rec["precision"] == "float64"
    assert rec["sigma_max"] == pytest.approx(float(sv[:, 0].max()), rel=1e-10)
    assert rec["sigma_min"] == pytest.approx(float(sv[:, -1].min()), rel=1e-10)
    assert rec["condition"] == pytest.approx(float(cond.max()), rel=1e-10)
    assert rec["condition_median"] == pytest.approx(float(cond.median()), rel=1e-10)
    assert rec["condition"] > 1.5  # randomised couplings: far from orthogonal
    # the latent points: singular values of the autograd Jacobian of the inverse at z
    sv_inv = torch.linalg.svdvals(functional_jacobian(model.inverse, z[:4]).detach())
    assert rec["latent_sigma_max"] == pytest.approx(float(sv_inv[:, 0].max()), rel=1e-10)
    assert rec["latent_sigma_min"] == pytest.approx(float(sv_inv[:, -1].min()), rel=1e-10)
    assert rec["latent_condition"] == pytest.approx(float((sv_inv[:, 0] / sv_inv[:, -1]).max()),
                                                    rel=1e-10)
    assert rec["n_nonfinite_jacobian"] == rec["latent_n_nonfinite_jacobian"] == 0
    with torch.no_grad():
        fwd = _norms(x - model.inverse(model(x)))
        inv = _norms(z - model(model.inverse(z)))
    r = rec["reconstruction"]
    assert r["x->z->x"]["max"] == pytest.approx(float(fwd.max()), rel=1e-12)
    assert r["z->x->z"]["mean"] == pytest.approx(float(inv.mean()), rel=1e-12)
    assert r["x->z->x"]["n_nan"] == r["x->z->x"]["n_inf"] == 0
    lines = [json.loads(s) for s in log.read_text().splitlines()]
    assert lines == [json.loads(json.dumps(rec))]


def test_monitor_matrix_free_agrees_with_dense_svd():
    model = _model(d=6)
    x = torch.randn(2, 6)
    rec = StabilityMonitor(model, x, spectrum_samples=2, method="matrix_free").measure(5)
    sv = torch.linalg.svdvals(functional_jacobian(model, x).detach())
    assert rec["spectrum_method"] == "matrix_free" and rec["step"] == 5
    assert rec["sigma_max"] == pytest.approx(float(sv[:, 0].max()), rel=1e-6)
    assert rec["sigma_min"] == pytest.approx(float(sv[:, -1].min()), rel=1e-6)


def test_monitor_reports_float32_round_trips_of_the_model_as_it_runs():
    model = _model().to(torch.float32)
    x = torch.randn(8, 4, dtype=torch.float32)
    rec = StabilityMonitor(model, x, spectrum_samples=1).measure(0)
    assert rec["precision"] == "float32" and rec["spectrum_precision"] == "float64"
    with torch.no_grad():
        direct = _norms(x.double() - model.inverse(model(x)).double())
    assert rec["reconstruction"]["x->z->x"]["max"] == pytest.approx(float(direct.max()), rel=1e-6)
    assert 0 < rec["reconstruction"]["x->z->x"]["max"] < 1e-4


def test_condition_warning_once_per_crossing_and_logged():
    # Figure 1 affine chain: singular values 1 and 0.1^depth, so condition 10^depth
    events = []
    x = torch.tensor([[1.0, 1.0], [0.5, -2.0]])
    monitor = StabilityMonitor(figure1_chain(6), x, every=1, cond_threshold=1e3, log=events.append)
    with pytest.warns(StabilityWarning, match=r"condition number 1e\+06 .* exceeds 1e\+03"):
        rec = monitor(0)
    assert rec["condition"] == pytest.approx(1e6, rel=1e-8)
    assert rec["latent_condition"] == pytest.approx(1e6, rel=1e-8)  # the map is linear
    warnings_logged = [e for e in events if e["kind"] == "warning"]
    assert [e["event"] for e in warnings_logged] == ["condition_threshold"]
    monitor(1)  # still above: no new event
    assert len([e for e in events if e["kind"] == "warning"]) == 1
    monitor.cond_threshold = 1e7
    monitor(2)  # below again
    monitor.cond_threshold = 1e3
    with pytest.warns(StabilityWarning):
        monitor(3)  # crossed again
    assert len([e for e in events if e["kind"] == "warning"]) == 2


def test_default_threshold_warns_before_float32_turns_non_finite():
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float32)
    # depth 5: condition 1e5 > 0.01 / eps(float32) = 8.4e4, round trips still finite
    with pytest.warns(StabilityWarning, match="condition number"):
        rec = StabilityMonitor(figure1_chain(5).float(), x).measure(0)
    assert rec["reconstruction"]["z->x->z"]["n_inf"] == 0
    assert default_cond_threshold(torch.float32) == pytest.approx(0.01 / 2**-23)
    # depth 60: z -> x multiplies by 10^60, beyond float32's range: Inf, counted apart from NaN
    events = []
    with pytest.warns(StabilityWarning) as caught:
        rec = StabilityMonitor(figure1_chain(60).float(), x, log=events.append).measure(0)
    assert any("non-finite" in str(w.message) for w in caught)
    zxz = rec["reconstruction"]["z->x->z"]
    assert zxz["n_inf"] + zxz["n_nan"] == 1
    assert "non_finite" in [e.get("event") for e in events]


def test_monitor_leaves_the_model_untouched():
    """Measuring must not train: an uninitialised ActNorm stays so (its data-dependent
    initialisation belongs to the first training batch), and no parameter changes."""
    model = glow_like((1, 4, 4), levels=1, steps=2, hidden=4, coupling="affine").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    StabilityMonitor(model, torch.randn(3, 1, 4, 4), spectrum_samples=1).measure(0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training


def test_monitor_bad_input():
    model = _model()
    with pytest.raises(InputError, match="every must be >= 1"):
        StabilityMonitor(model, torch.randn(2, 4), every=0)
    with pytest.raises(InputError, match="x must be a non-empty batch"):
        StabilityMonitor(model, torch.randn(4))
    with pytest.raises(InputTypeError, match="model must be an InvertibleBlock"):
        StabilityMonitor(torch.nn.Linear(4, 4), torch.randn(2, 4))
    with pytest.raises(InputError, match="method must be"):
        StabilityMonitor(model, torch.randn(2, 4), method="lanczos")
    with pytest.raises(InputError, match="cond_threshold must be > 0"):
        StabilityMonitor(model, torch.randn(2, 4), cond_threshold=0)


def test_checkpoint_saves_and_restores_the_cuda_generator_of_the_trainers_device(
        tmp_path, monkeypatch):
    """Rank 0 saves its own device's CUDA generator (cuda:1 here), and every rank restores it
    into its own device (cuda:3 here): the ranks share that stream, the other devices of rank
    0's process are not saved. An old checkpoint (all devices, ``"cuda"``) restores as before.
    (torch.cuda's functions stand in for a GPU.)"""
    calls = []

    def get_state(device="cuda"):
        return torch.tensor([torch.device(device).index], dtype=torch.uint8)

    def get_all():
        raise AssertionError("only the trainer's device is saved")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", get_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", get_all)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device="cuda": calls.append(("one", state, device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all",
                        lambda states: calls.append(("all", states, None)))
    save_checkpoint({"rng": rng_state(torch.device("cuda:1"))}, tmp_path / "ck.pt")
    saved = load_checkpoint(tmp_path / "ck.pt")["rng"]
    set_rng_state(saved, torch.device("cuda:3"))
    assert len(calls) == 1 and calls[0][0] == "one"
    assert torch.equal(calls[0][1], torch.tensor([1], dtype=torch.uint8))
    assert calls[0][2] == torch.device("cuda:3")
    set_rng_state(saved, torch.device("cpu"))  # a CPU resume leaves CUDA alone
    assert len(calls) == 1
    assert rng_state(torch.device("cpu"))["cuda_device"] is None
    old = {**saved, "cuda": [torch.zeros(2, dtype=torch.uint8)] * 2}
    del old["cuda_device"]
    set_rng_state(old, torch.device("cuda:3"))
    assert calls[1][0] == "all" and len(calls[1][1]) == 2


def test_checkpoint_atomic_round_trip_and_random_states(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint({"a": torch.arange(3), "n": 1}, path)
    save_checkpoint({"a": torch.arange(4), "n": 2}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary file left
    state = load_checkpoint(path)
    assert state["n"] == 2 and torch.equal(state["a"], torch.arange(4))
    saved = rng_state()
    save_checkpoint({"rng": saved}, path)
    first = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    set_rng_state(load_checkpoint(path)["rng"])
    second = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2] == second[2]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    assert math.isfinite(float(first[0].sum()))
