"""``lipbound train``: every preset at tiny size, config files, resume, clear errors."""

from __future__ import annotations

import argparse
import json
import sys

import pytest

from lipbound.cli import main
from lipbound.errors import InputError
from lipbound.training import load_checkpoint
from lipbound.training.cli import add_arguments
from lipbound.training.presets import CPU_PRESETS, PRESETS, load_config


def _log(out):
    return [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("preset", CPU_PRESETS)
def test_preset_smoke_run_writes_log_checkpoint_model(tmp_path, capsys, preset):
    out = tmp_path / preset
    assert main(["train", preset, "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert f"lipbound train: {preset} -> {out}: done at step 2" in text
    assert "monitor (float32): condition" in text
    assert "memory-saving vs true gradient on the monitor batch: angle" in text
    log = _log(out)
    kinds = [r["kind"] for r in log]
    assert kinds[0] == "monitor" and kinds[-1] == "done" and "train" in kinds and "eval" in kinds
    metric = {"digits-classifier": "accuracy", "digits-flow": "bpd", "regression-2d": "mse",
              "checkerboard": "nll"}[preset]
    train = [r for r in log if r["kind"] == "train"]
    assert train[-1]["step"] == 2 and metric in train[-1] and train[-1]["fallbacks"] == 0
    monitors = [r for r in log if r["kind"] == "monitor"]
    assert [m["step"] for m in monitors] == [0, 2]
    assert monitors[-1]["condition"] >= 1.0 and monitors[-1]["precision"] == "float32"
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 2 and state["config"]["steps"] == 2
    assert (out / "model.pt").is_file()
    assert json.loads((out / "config.json").read_text()) == state["config"]


def test_json_and_toml_configs_and_resume(tmp_path, capsys):
    cfg = {"preset": "checkerboard", "blocks": 2, "hidden": 8, "n_train": 200,
           "batch_size": 50, "monitor_every": 2, "steps": 3}
    (tmp_path / "run.json").write_text(json.dumps(cfg))
    (tmp_path / "run.toml").write_text(
        'preset = "checkerboard"\nblocks = 2\nhidden = 8\nn_train = 200\nbatch_size = 50\n'
        'monitor_every = 2\nsteps = 3\n')
    if sys.version_info >= (3, 11):
        assert load_config(str(tmp_path / "run.toml")) == load_config(str(tmp_path / "run.json"))
    else:
        with pytest.raises(InputError, match="TOML configs need Python >= 3.11"):
            load_config(str(tmp_path / "run.toml"))
    out = tmp_path / "out"
    assert main(["train", str(tmp_path / "run.json"), "--out", str(out), "--no-progress",
                 "--seed", "3"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["config"]["seed"] == 3
    assert main(["train", str(tmp_path / "run.json"), "--out", str(out), "--no-progress",
                 "--seed", "3", "--steps", "5", "--resume"]) == 0
    assert "done at step 5" in capsys.readouterr().out
    assert [r["step"] for r in _log(out) if r["kind"] == "train"][-1] == 5


@pytest.mark.parametrize("args, message", [
    (["nonexistent"], "config must be a preset (digits-classifier"),
    (["missing.json"], "config file 'missing.json' does not exist"),
    (["checkerboard", "--steps", "0"], "preset 'checkerboard': steps must be >= 1, got 0"),
    (["checkerboard", "--coeff", "-1"], "coeff and weight_decay must be >= 0"),
    (["digits-flow", "--regularizer", "nf"], "regularizer 'nf' is already the loss"),
    (["checkerboard", "--device", "tpu"], "device must be 'cpu', 'cuda' or 'cuda:N'"),
])
def test_bad_input_is_one_line_error(tmp_path, capsys, args, message):
    assert main(["train", *args, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lipbound train: error: ") and message in err


def test_bad_config_files(tmp_path, capsys):
    assert main(["train"]) == 2
    assert "give a PRESET (digits-classifier" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"lr": "fast"}')
    assert main(["train", str(tmp_path / "bad.json")]) == 2
    assert "config file" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    assert main(["train", str(tmp_path / "broken.json")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    (tmp_path / "keys.json").write_text('{"preset": "checkerboard", "depth": 3}')
    assert main(["train", str(tmp_path / "keys.json")]) == 2
    assert "unknown key(s) ['depth']" in capsys.readouterr().err


def test_list_and_help_state_defaults(capsys):
    assert main(["train", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in PRESETS)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 12
    for action in options:
        assert "default" in action.help, action.option_strings
