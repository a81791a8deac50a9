"""Trainers: exact resumption after Ctrl-C and after a crash, Ctrl-C checkpoints, stopping on a
non-finite loss, config validation."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from lipbound.errors import InputError
from lipbound.io import load_model
from lipbound.precision.verify_cli import load_network
from lipbound.training import load_checkpoint, save_checkpoint
from lipbound.training.trainers import TrainConfig, Trainer, train

TINY = {
    "regression": {"task": "regression", "levels": 1, "blocks": 2, "hidden": 8,
                   "mixing": "reverse", "n_train": 96, "batch_size": 32},
    "density": {"task": "density", "levels": 1, "blocks": 2, "hidden": 8, "mixing": "reverse",
                "actnorm": False, "n_train": 96, "batch_size": 32},
    "flow": {"task": "flow", "levels": 1, "blocks": 1, "hidden": 4, "mixing": "reverse",
             "batch_size": 32, "optimizer": "adamax", "warmup_steps": 3},
    "classifier": {"task": "classifier", "levels": 1, "blocks": 1, "hidden": 4,
                   "batch_size": 32, "lr_decay_at": [0.5]},
}


def tiny(task, **kw):
    values = {**TINY[task], "steps": 7, "dtype": "float64", "log_every": 1, "monitor_every": 3,
              "checkpoint_every": 2, "monitor_samples": 2, "monitor_batch": 8, **kw}
    return TrainConfig.from_dict(values)


def records(out, kinds=("train", "monitor", "eval", "warning", "done")):
    lines = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in lines if r["kind"] in kinds]


def interrupt_at(step, exc=KeyboardInterrupt):
    def callback(trainer, s, record):
        if s == step:
            raise exc("simulated")

    return callback


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("task", ["flow", "classifier", "regression"])
def test_resume_after_ctrl_c_is_bit_for_bit(tmp_path, task):
    cfg = tiny(task)
    full = train(cfg, tmp_path / "full", progress=False)
    assert full.status == "done" and full.step == 7
    part = train(cfg, tmp_path / "part", progress=False, callbacks=(interrupt_at(3),))
    assert part.status == "interrupted" and part.step == 3
    ck = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert ck["step"] == 3
    resumed = train(cfg, tmp_path / "part", resume=True, progress=False)
    assert resumed.status == "done" and resumed.step == 7
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert states_equal(a["flow"], b["flow"])
    if task == "classifier":
        assert states_equal(a["head"], b["head"])
    assert records(tmp_path / "full") == records(tmp_path / "part")
    assert full.eval == resumed.eval and full.monitor == resumed.monitor
    # the saved network is readable by the other lipbound commands
    model = load_model(tmp_path / "part" / "model.pt")
    assert states_equal(model.state_dict(), b["flow"])


def test_image_residual_flow_resumes_bit_for_bit_and_its_checkpoint_loads(tmp_path):
    """The spectrally normalised convolutions of an image Residual Flow learn their input shape,
    and create their power-iteration vectors, at the first forward call: a fresh network still
    loads a checkpoint's vectors, the resumed run continues their power iteration as the
    uninterrupted run does, and ``lipbound verify``'s loader rebuilds the saved network."""
    cfg = tiny("flow", arch="residual", steps=5, monitor_every=0, eval_every=0)
    full = train(cfg, tmp_path / "full", progress=False)
    part = train(cfg, tmp_path / "part", progress=False, callbacks=(interrupt_at(2),))
    assert full.status == "done" and part.status == "interrupted"
    resumed = train(cfg, tmp_path / "part", resume=True, progress=False)
    assert resumed.status == "done" and resumed.step == 5
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert any(k.endswith(".u") for k in b["flow"]) and states_equal(a["flow"], b["flow"])
    assert records(tmp_path / "full") == records(tmp_path / "part")
    network = load_network(tmp_path / "part" / "checkpoint.pt")
    model = load_model(tmp_path / "part" / "model.pt")
    assert states_equal(network.state_dict(), model.state_dict())
    x = torch.rand(3, *b["input_shape"], generator=torch.Generator().manual_seed(0))
    assert torch.equal(network(x), model.eval()(x))
    # a stored network that does not fit: the message keeps every line of torch's report
    bad = {**b, "flow": {**{k: v for k, v in b["flow"].items() if k != "blocks.1.bias"},
                         "blocks.1.extra": torch.zeros(1)}}
    save_checkpoint(bad, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="does not fit the architecture") as err:
        load_network(tmp_path / "bad.pt")
    assert "blocks.1.extra" in str(err.value) and "blocks.1.bias" in str(err.value)
    assert "\n" not in str(err.value)


def test_resume_with_memory_saving_and_fd_is_bit_for_bit(tmp_path):
    """The memory-saving counters (passes set the check schedule) are part of the checkpoint."""
    cfg = tiny("regression", memory_saving=True, regularizer="fd", every=2, coeff=1e-3,
               monitor_every=0)
    full = Trainer(cfg, tmp_path / "full", progress=False)
    full.fit()
    part = Trainer(cfg, tmp_path / "part", progress=False, callbacks=(interrupt_at(3),))
    assert part.fit().status == "interrupted"
    resumed = Trainer(cfg, tmp_path / "part", progress=False)
    resumed.resume()
    assert resumed.fit().status == "done"
    assert resumed.train_flow.counts() == full.train_flow.counts()
    assert full.train_flow.passes > 7
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert states_equal(a["flow"], b["flow"])
    assert a["memory_saving"] == b["memory_saving"] == full.train_flow.counts()
    assert records(tmp_path / "full") == records(tmp_path / "part")


def test_resume_after_crash_drops_log_lines_after_the_checkpoint(tmp_path):
    cfg = tiny("density")
    train(cfg, tmp_path / "full", progress=False)
    with pytest.raises(RuntimeError, match="simulated"):
        train(cfg, tmp_path / "crash", progress=False, callbacks=(interrupt_at(5, RuntimeError),))
    assert load_checkpoint(tmp_path / "crash" / "checkpoint.pt")["step"] == 4
    assert records(tmp_path / "crash", ("train",))[-1]["step"] == 5  # logged after the checkpoint
    train(cfg, tmp_path / "crash", resume=True, progress=False)
    assert records(tmp_path / "full") == records(tmp_path / "crash")
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["flow"]
    assert states_equal(a, load_checkpoint(tmp_path / "crash" / "checkpoint.pt")["flow"])


def test_real_sigint_finishes_the_step_and_checkpoints(tmp_path):
    def press_ctrl_c(trainer, step, record):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(tiny("regression", checkpoint_every=0), tmp_path, progress=False,
                   callbacks=(press_ctrl_c,))
    assert result.status == "interrupted" and result.step == 2
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 2 and state["config"]["task"] == "regression"
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_non_finite_loss_stops_the_run(tmp_path):
    result = train(tiny("regression", optimizer="sgd", lr=1e30), tmp_path, progress=False)
    assert result.status == "stopped" and result.step < 7
    stopped = [r for r in records(tmp_path, ("stopped",))]
    assert stopped and stopped[0]["reason"] == "the loss is not finite"


def test_new_run_refuses_a_folder_with_a_run_and_resume_refuses_other_settings(tmp_path):
    cfg = tiny("regression", steps=2)
    train(cfg, tmp_path, progress=False)
    with pytest.raises(InputError, match="already holds a run"):
        train(cfg, tmp_path, progress=False)
    with pytest.raises(InputError, match=r"other settings for \['lr'\]"):
        train(tiny("regression", steps=4, lr=0.5), tmp_path, resume=True, progress=False)
    longer = train(tiny("regression", steps=4), tmp_path, resume=True, progress=False)
    assert longer.step == 4


def test_config_validation_messages():
    with pytest.raises(InputError, match=r"unknown key\(s\) \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(InputError, match="lr must be a number, got 'fast'"):
        TrainConfig.from_dict({"lr": "fast"})
    with pytest.raises(InputError, match="task must be one of"):
        TrainConfig.from_dict({"task": "gan"})
    with pytest.raises(InputError, match="regularizer 'nf' is already the loss"):
        TrainConfig.from_dict({"task": "flow", "regularizer": "nf"})
    with pytest.raises(InputError, match="config: dtype must be one of"):
        TrainConfig.from_dict({"dtype": "float8"})
    with pytest.raises(InputError, match="batch_size must be >= 1"):
        TrainConfig.from_dict({"batch_size": 0})
    with pytest.raises(InputError, match="lr_decay_at must hold fractions"):
        TrainConfig.from_dict({"lr_decay_at": [60]})
    with pytest.raises(InputError, match="memory_saving needs analytic inverses"):
        TrainConfig.from_dict({"task": "density", "arch": "residual", "memory_saving": True})


def test_device_errors(tmp_path):
    with pytest.raises(InputError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
        Trainer(tiny("regression"), tmp_path, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            Trainer(tiny("regression"), tmp_path, device="cuda")


def _regression(**kw):
    values = {"task": "regression", "levels": 1, "blocks": 4, "hidden": 16, "mixing": "reverse",
              "n_train": 256, "batch_size": 256, "steps": 60, "lr": 1e-2, "dtype": "float64",
              "every": 1, "monitor_every": 0, "monitor_samples": 32, "monitor_batch": 64,
              "checkpoint_every": 0, "log_every": 0, **kw}
    return TrainConfig.from_dict(values)


@pytest.mark.filterwarnings("ignore::lipbound.training.StabilityWarning")
@pytest.mark.parametrize("regularizer", ["nf", "fd"])
def test_regularized_regression_has_smaller_condition_number(tmp_path, regularizer):
    """Appendix F: fitting y = (~0, x2) drives the Jacobian towards rank one; the NF objective
    and the FD penalty keep it well conditioned (same seed, same data, same steps)."""
    plain = train(_regression(), tmp_path / "plain", progress=False)
    reg = train(_regression(regularizer=regularizer, coeff=1e-2), tmp_path / regularizer,
                progress=False)
    assert reg.monitor["condition"] * 10 < plain.monitor["condition"]
    assert reg.monitor["sigma_min"] > 10 * plain.monitor["sigma_min"]
    assert "regularizer" in reg.train and "regularizer" not in plain.train


@pytest.mark.parametrize("task, regularizer", [("regression", "nf"), ("classifier", "fd")])
def test_memory_saving_training_follows_autograd_training(tmp_path, task, regularizer):
    cfg = dict(steps=4, regularizer=regularizer, coeff=1e-3, monitor_every=4,
               checkpoint_every=0)
    plain = train(tiny(task, **cfg), tmp_path / "plain", progress=False)
    saving = train(tiny(task, memory_saving=True, **cfg), tmp_path / "saving", progress=False)
    assert saving.fallbacks == 0 and saving.train["fallbacks"] == 0
    assert saving.train["loss"] == pytest.approx(plain.train["loss"], rel=1e-9)
    a = load_checkpoint(tmp_path / "plain" / "checkpoint.pt")["flow"]
    b = load_checkpoint(tmp_path / "saving" / "checkpoint.pt")["flow"]
    # Adam divides by sqrt(v): gradients that agree to ~1e-12 give updates that agree to ~1e-9
    # (a wrong gradient moves a parameter by about lr = 1e-3)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-7, atol=1e-9)
    # the monitor's gradient check: memory-saving and true gradients agree in float64
    grad = saving.monitor["gradient"]
    assert grad["batches"] == 1 and grad["nan_batches"] == 0
    assert grad["max_angle_deg"] < 1e-5 and grad["max_rel_norm_diff"] < 1e-7


def test_resume_from_a_checkpoint_without_memory_saving_counters_warns(tmp_path):
    """An older lipbound saved no counters: resuming warns that it may not be exact."""
    cfg = tiny("regression", memory_saving=True, monitor_every=0)
    part = Trainer(cfg, tmp_path / "part", progress=False, callbacks=(interrupt_at(3),))
    assert part.fit().status == "interrupted"
    path = tmp_path / "part" / "checkpoint.pt"
    state = load_checkpoint(path)
    del state["memory_saving"]
    save_checkpoint(state, path)
    resumed = Trainer(cfg, tmp_path / "part", progress=False)
    with pytest.warns(UserWarning, match="no memory-saving pass counters"):
        resumed.resume()
    assert resumed.fit().status == "done"
