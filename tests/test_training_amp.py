"""Device and precision options of the trainer on the CPU: bf16 and fp16 autocast (with the
gradient scaler, its skipped steps and its state in the checkpoint), channels-last, compile,
deterministic kernels, and the messages that refuse bad combinations."""

from __future__ import annotations

import json

import pytest
import torch

import lipbound.training.amp as amp_module
import lipbound.training.trainers as trainers_module
from lipbound.cli import main
from lipbound.errors import InputError
from lipbound.training import load_checkpoint, save_checkpoint
from lipbound.training.distributed import Context
from lipbound.training.trainers import TrainConfig, Trainer, train

CLASSIFIER = {"task": "classifier", "levels": 1, "blocks": 2, "hidden": 4, "batch_size": 32,
              "steps": 3, "log_every": 1, "monitor_every": 3, "checkpoint_every": 0,
              "monitor_samples": 2, "monitor_batch": 8, "lr": 1e-2}


def config(**kw):
    return TrainConfig.from_dict({**CLASSIFIER, **kw})


def conv_dtypes(trainer):
    """The set of dtypes of the flow's Conv2d outputs while training (the hooks are removed
    after the last step, so that the network can be saved)."""
    seen = set()
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.add(out.dtype))
             for m in trainer.flow.modules() if isinstance(m, torch.nn.Conv2d)]

    def remove(t, step, record):
        if step == t.total_steps:
            for h in hooks:
                h.remove()

    trainer.callbacks += (remove,)
    return seen


def fit(trainer):
    try:
        return trainer.fit()
    finally:
        trainer.close()


@pytest.mark.parametrize("memory_saving", [False, True])
def test_bf16_autocast_runs_the_convolutions_in_bf16(tmp_path, memory_saving):
    trainer = Trainer(config(dtype="float32", amp="bf16", memory_saving=memory_saving,
                             regularizer="fd", every=2, coeff=1e-3), tmp_path, progress=False)
    seen = conv_dtypes(trainer)
    result = fit(trainer)
    assert torch.bfloat16 in seen
    assert result.status == "done" and torch.isfinite(torch.tensor(result.train["loss"]))
    assert result.fallbacks == 0  # the memory-saving check at bf16's tolerance
    assert all(p.dtype == torch.float32 for p in trainer.flow.parameters())
    assert result.monitor["precision"] == "float32" and result.monitor["amp"] == "bf16"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["precision"] == {"dtype": "float32", "amp": "bf16"}
    assert "skipped_steps" not in result.train  # no scaler for bf16


@pytest.mark.skipif(not amp_module._autocast_works(torch.device("cpu"), torch.float16),
                    reason="this torch cannot autocast to float16 on the CPU (see the refusal "
                           "test)")
def test_fp16_gradient_scaler_skips_overflowing_steps_and_counts_them(tmp_path):
    cfg = config(dtype="float32", amp="fp16", steps=3)
    # a scale of 2^40 overflows float16 gradients: every step is skipped, the scale halves
    huge = Trainer(cfg, tmp_path / "huge", progress=False)
    huge.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40)
    seen = conv_dtypes(huge)
    before = {k: v.clone() for k, v in huge.flow.state_dict().items()}
    result = fit(huge)
    assert torch.float16 in seen
    assert result.skipped_steps == 3 and result.train["skipped_steps"] == 3
    assert huge.scaler.get_scale() == 2.0 ** 37
    coupling = [k for k in before if ".t." in k]
    assert coupling and all(torch.equal(before[k], huge.flow.state_dict()[k]) for k in coupling)
    # the default scale trains
    normal = train(cfg, tmp_path / "normal", progress=False)
    assert normal.skipped_steps == 0 and normal.status == "done"
    state = load_checkpoint(tmp_path / "normal" / "checkpoint.pt")
    assert state["scaler"]["scale"] == 2.0 ** 16 and state["skipped_steps"] == 0


def test_fp16_resume_is_bit_for_bit_with_the_scaler_state(tmp_path):
    if not amp_module._autocast_works(torch.device("cpu"), torch.float16):
        pytest.skip("this torch cannot autocast to float16 on the CPU")
    cfg = config(dtype="float32", amp="fp16", steps=4, checkpoint_every=2, monitor_every=0)

    def stop(trainer, step, record):
        if step == 2:
            raise KeyboardInterrupt

    def run(folder, callbacks=(), resume=False):
        trainer = Trainer(cfg, folder, progress=False, callbacks=callbacks)
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 20, growth_interval=1)
        if resume:
            trainer.resume()
        return fit(trainer)

    full = run(tmp_path / "full")
    assert run(tmp_path / "part", (stop,)).status == "interrupted"
    resumed = run(tmp_path / "part", resume=True)
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert a["scaler"] == b["scaler"] and a["scaler"]["scale"] != 2.0 ** 20
    assert all(torch.equal(a["flow"][k], b["flow"][k]) for k in a["flow"])
    assert full.train == resumed.train


def test_a_checkpoint_written_before_amp_existed_resumes(tmp_path):
    cfg = config(dtype="float64", steps=2, monitor_every=0)
    train(cfg, tmp_path, progress=False)
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    del state["config"]["amp"], state["scaler"], state["skipped_steps"]
    save_checkpoint(state, path)
    assert train(config(dtype="float64", steps=3, monitor_every=0), tmp_path, resume=True,
                 progress=False).step == 3
    with pytest.raises(InputError, match=r"other settings for \['amp', 'dtype'\]"):
        train(config(dtype="float32", amp="bf16", steps=4, monitor_every=0), tmp_path,
              resume=True, progress=False)


def test_fp16_refused_where_autocast_cannot_run_it(tmp_path, monkeypatch):
    monkeypatch.setattr(amp_module, "_autocast_works", lambda device, dtype: False)
    with pytest.raises(InputError, match=r"--amp fp16: torch .* cannot autocast to "
                                         r"torch.float16 on cpu; use --amp bf16 or train in "
                                         r"float32 \(--amp none\)"):
        Trainer(config(dtype="float32", amp="fp16"), tmp_path, progress=False)


@pytest.mark.parametrize("args, message", [
    (["--amp", "bf16", "--dtype", "float64"],
     "amp 'bf16' (--amp) needs dtype float32 (autocast runs float32 operations in bf16; the "
     "weights stay float32), got dtype 'float64'"),
    (["--amp", "fp16", "--dtype", "bfloat16"], "amp 'fp16' (--amp) needs dtype float32"),
    (["--channels-last"], "--channels-last is for image models (inputs (B, C, H, W) through "
                          "convolutions); task 'density' has inputs of shape (2,)"),
])
def test_bad_option_combinations_are_one_line_errors(tmp_path, capsys, args, message):
    assert main(["train", "checkerboard", "--steps", "1", "--out", str(tmp_path / "o"),
                 "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lipbound train: error: ") and message in err


def test_compile_refuses_memory_saving_and_amp_values_are_checked(tmp_path):
    with pytest.raises(InputError, match="--compile: memory-saving gradients cannot be compiled"):
        Trainer(config(memory_saving=True), tmp_path, progress=False, compile=True)
    with pytest.raises(InputError, match=r"amp must be one of \['none', 'bf16', 'fp16'\], "
                                         r"got 'fp8'"):
        config(amp="fp8")


def test_batch_size_must_split_evenly_over_the_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(trainers_module, "context",
                        lambda device: Context(rank=0, world_size=3))
    with pytest.raises(InputError, match=r"batch_size 32 is not divisible by the 3 processes "
                                         r"\(WORLD_SIZE\)"):
        Trainer(config(dtype="float64"), tmp_path, progress=False)


@pytest.mark.parametrize("options, regularizer", [
    ({"channels_last": True}, "fd"), ({"deterministic": True}, "fd"),
    ({"compile": "eager"}, "none"),  # Dynamo's tracing alone: inductor takes minutes here
])
def test_options_train_the_same_network_in_float64(tmp_path, options, regularizer):
    """Channels-last, deterministic kernels and a compiled network compute the same maps: in
    float64 the parameters agree with the default run to rounding."""
    cfg = config(dtype="float64", regularizer=regularizer, every=2, coeff=1e-3, steps=2)
    plain = train(cfg, tmp_path / "plain", progress=False)
    flags = []
    trainer = Trainer(cfg, tmp_path / "opt", progress=False, callbacks=(
        lambda t, s, r: flags.append(torch.are_deterministic_algorithms_enabled()),), **options)
    if options.get("channels_last"):
        x, _ = trainer.next_batch()
        assert x.is_contiguous(memory_format=torch.channels_last)
        trainer.position = 0
        trainer.data_gen.manual_seed(cfg.seed + 1)
        trainer.order = torch.randperm(trainer.task.n_train, generator=trainer.data_gen)
    if options.get("compile"):
        assert type(trainer.net).__name__ == "OptimizedModule"
    result = fit(trainer)
    assert flags == [bool(options.get("deterministic"))] * 2
    assert not torch.are_deterministic_algorithms_enabled()  # restored by close()
    assert result.train["loss"] == pytest.approx(plain.train["loss"], rel=1e-9)
    a = load_checkpoint(tmp_path / "plain" / "checkpoint.pt")["flow"]
    b = load_checkpoint(tmp_path / "opt" / "checkpoint.pt")["flow"]
    # Adam divides by sqrt(v): rounding differences of 1e-16 become ~1e-9 in the updates
    # (a wrong map moves a parameter by about lr = 1e-2)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("task", ["classifier", "flow"])
def test_evaluation_under_bf16_training_is_float32(tmp_path, task):
    """``--amp`` speeds up training only: the logged evaluation (test loss, accuracy, bits per
    dimension) is the float32 evaluation of the trained network (the monitor reports the
    round trips under amp separately)."""
    values = {"task": "flow", "mixing": "reverse", "optimizer": "adamax"} if task == "flow" else {}
    trainer = Trainer(config(dtype="float32", amp="bf16", monitor_every=0, **values), tmp_path,
                      progress=False)
    result = fit(trainer)
    with trainer._aside(), torch.no_grad():
        reference = trainer.task.evaluate(trainer.flow, trainer.head)
    logged = {k: v for k, v in result.eval.items() if k not in ("kind", "step")}
    assert logged == reference
