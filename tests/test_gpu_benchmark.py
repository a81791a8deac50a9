"""``benchmarks/gpu.py``: its CPU path (``--device cpu --small``, the same code as on a GPU)
prints one JSON line with every figure, and without a GPU the default run skips cleanly."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=600, check=False)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_small_cpu_run_prints_every_figure():
    proc = _run("--device", "cpu", "--small")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["device"] == "cpu" and out["batch"] == 4
    assert out["architecture"]["coupling"] == "affine"
    assert out["architecture"]["mixing"] == "1x1conv"
    for key in ("autograd_images_per_s", "memsave_images_per_s", "autograd_peak_bytes",
                "memsave_peak_bytes", "memsave_peak_ratio", "memsave_time_ratio",
                "fd_overhead_k1", "fd_overhead_k5", "fd_overhead_k10", "seconds"):
        assert _positive(out[key]), (key, out[key])
    assert out["memsave_peak_ratio"] == out["memsave_peak_bytes"] / out["autograd_peak_bytes"]
    amp = out["amp_bf16"]
    assert amp["steps"] == 3 and amp["fallbacks"] == 0 and math.isfinite(amp["final_loss"])
    for precision, unit in (("bfloat16", 2.0 ** -8), ("float32", 2.0 ** -24)):
        recon = amp[f"recon_{precision}"]
        assert recon["n_nan"] == 0 and recon["n_inf"] == 0
        assert _positive(recon["max"]) and recon["median"] <= recon["max"]
        # tens of unit roundoffs of inputs in [0, 1]^192 (norm up to 14), not thousands
        assert recon["max"] < 1e3 * unit
    assert amp["recon_bfloat16"]["max"] > amp["recon_float32"]["max"]
    oracle = out["oracle"]
    assert oracle["timed_out"] is False and oracle["precision"] == "bfloat16"
    assert oracle["verdict"] in ("wrong in exact arithmetic", "range", "instability", "rounding")
    assert _positive(oracle["total"]) and _positive(oracle["delta"])
    # the oracle's bfloat16 round trip of the first image is of the size of the batch's (the
    # same cast network; a batch may round differently from one image alone)
    recon = amp["recon_bfloat16"]
    assert 0.1 * recon["median"] <= oracle["total"] <= 10 * recon["max"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the run would not skip")
def test_without_a_gpu_the_default_run_skips(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("lipbound_gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look it up
    monkeypatch.setattr(sys, "path", list(sys.path))  # it adds benchmarks/ to the path
    had_training = "training" in sys.modules
    spec.loader.exec_module(module)
    if not had_training:  # benchmarks/training.py, imported by the script under that name
        sys.modules.pop("training", None)
    assert module.main([]) == 0
    out = capsys.readouterr().out
    assert "skipped: no CUDA GPU here" in out and "--device cpu --small" in out
    assert "{" not in out  # nothing was measured
