"""The per-sample oracle over a dataset (``lipbound verify``/``diagnose --reference`` with
``--out``, ``--workers``, ``--scheduler``): the same JSON lines and summary serially, on local
processes and on a Dask ``LocalCluster``; resuming computes only the missing samples; the
summary against the batch decomposition; a ``lipbound train`` checkpoint as MODEL; the errors."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from cli_helpers import cli_error

from lipbound.blocks import coupling_mlp, figure1_chain, randomize_parameters
from lipbound.cli import main
from lipbound.diagnostics import checkerboard
from lipbound.errors import LipboundError
from lipbound.io import save_model
from lipbound.jsonio import jsonable
from lipbound.parallel import map_samples
from lipbound.precision.decompose import decompose
from lipbound.precision.samples import OracleSample, decomposition_from_dict, merge_decompositions
from lipbound.precision.verify_cli import load_network

N = 6
REF = "arb:64"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small 2D coupling flow and N checkerboard points on disk."""
    folder = tmp_path_factory.mktemp("parallel")
    gen = torch.Generator().manual_seed(1)
    model = randomize_parameters(coupling_mlp(2, n_blocks=2, hidden=8), std=0.1, generator=gen)
    save_model(model.double().eval(), folder / "m.pt")
    np.save(folder / "x.npy", checkerboard(N, generator=gen).double().numpy())
    return {"dir": folder, "model": str(folder / "m.pt"), "x": str(folder / "x.npy")}


def verify(files, out, *extra):
    """``lipbound verify`` of the test model per sample into ``out``; returns the summary JSON."""
    summary = out.with_suffix(".json")
    assert main(["verify", files["model"], files["x"], "--reference", REF, "--no-progress",
                 "--out", str(out), "--json", str(summary), *extra]) == 0
    return json.loads(summary.read_text())


def lines(path):
    """The header and the sample lines (in file order) of a results file."""
    rows = [json.loads(s) for s in path.read_text().splitlines()]
    return rows[0], rows[1:]


def by_sample(rows):
    return sorted(rows, key=lambda r: r["sample"])


@pytest.fixture(scope="module")
def serial(files):
    """The serial per-sample run: the reference for the other engines."""
    out = files["dir"] / "serial.jsonl"
    summary = verify(files, out)
    return out, summary


@pytest.fixture(scope="module")
def cluster():
    """One Dask LocalCluster of two single-threaded worker processes for the module."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as c:
        yield c.scheduler_address


def test_serial_lines_are_single_sample_decompositions_and_the_summary_their_worst(files,
                                                                                 serial):
    out, summary = serial
    header, rows = lines(out)
    assert [r["sample"] for r in rows] == list(range(N))  # serial: in order
    assert header["settings"] == {"precisions": ["float32"], "reference": REF,
                                  "parameter_rounding": False, "trace": True}
    assert header["n_samples"] == N and header["sample_shape"] == [2]
    model, x = load_network(files["model"]), torch.from_numpy(np.load(files["x"]))
    singles = [decompose(model, x[i:i + 1], "float32", REF) for i in range(N)]
    for r, d in zip(rows, singles):
        direct = jsonable(d.to_dict())
        del direct["per_sample"]
        assert r["results"] == [direct]
    # the summary: the worst sample of each term, every sample's numbers, the verdict counts
    for key in ("delta", "recon_exact", "delta2", "total", "lip_inverse", "bound"):
        assert summary[key] == max(getattr(d, key) for d in singles)
        assert summary["per_sample"][key] == [getattr(d, key) for d in singles]
    assert summary["amplification"] == max(d.amplification for d in singles)
    assert summary["comparison"]["delta"] == max(d.comparison["delta"] for d in singles)
    assert summary["n_samples"] == N and summary["amplification_samples"] == N
    assert summary["verdict"] == "rounding"
    assert summary["reasons"][0] == f"{N} of {N} samples: rounding"
    assert summary["reasons"][1:] == [f"sample 0: {r}" for r in singles[0].reasons]
    for j, row in enumerate(summary["trace"]):
        assert row["forward_error"] == max(d.trace[j].forward_error for d in singles)
        assert row["inverse_error"] == max(d.trace[j].inverse_error for d in singles)
    # the local Lip(F^-1) comes from the exact Jacobian: the batch run agrees with it (the float
    # terms do not need to: a float32 batch rounds differently from its rows one at a time)
    batch = decompose(model, x, "float32", REF)
    assert summary["per_sample"]["lip_inverse"] == pytest.approx(
        batch.per_sample["lip_inverse"], rel=1e-5)
    assert batch.verdict == summary["verdict"]


def test_workers_and_dask_give_the_serial_lines_and_summary(files, serial, cluster, tmp_path):
    out, summary = serial
    _, expected = lines(out)
    for extra in (["--workers", "2"], ["--scheduler", cluster]):
        path = tmp_path / f"{extra[0][2:]}.jsonl"
        assert verify(files, path, *extra) == summary, extra
        header, rows = lines(path)
        assert by_sample(rows) == expected, extra
        assert sorted(r["sample"] for r in rows) == list(range(N))


def test_a_rerun_on_the_cluster_computes_only_the_missing_samples(files, serial, cluster,
                                                                   tmp_path):
    out, summary = serial
    text = out.read_text().splitlines(keepends=True)
    half = N // 2
    # "killed halfway": the header, the first half of the lines, and the next one cut off
    path = tmp_path / "resumed.jsonl"
    path.write_text("".join(text[:1 + half]) + text[1 + half][:40])
    assert verify(files, path, "--scheduler", cluster) == summary
    header, rows = lines(path)
    assert [r["sample"] for r in rows[:half]] == list(range(half))  # kept as they were
    assert sorted(r["sample"] for r in rows[half:]) == list(range(half, N))  # computed once
    assert by_sample(rows) == lines(out)[1]
    # a complete file computes nothing and gives the same summary
    before = path.read_text()
    assert verify(files, path, "--workers", "2") == summary
    assert path.read_text() == before


class _InterruptAt:
    """A per-sample function that is interrupted (Ctrl-C) at sample ``stop``, else records the
    samples it computed."""

    def __init__(self, stop):
        self.stop, self.computed = stop, []

    def __call__(self, model, x, i):
        if i == self.stop:
            raise KeyboardInterrupt
        self.computed.append(i)
        with torch.no_grad():
            return {"value": float(model(x).sum())}


def test_an_interrupted_run_keeps_its_lines_and_a_rerun_finishes_it(files, tmp_path):
    model, x = load_network(files["model"]), torch.from_numpy(np.load(files["x"]))
    out = tmp_path / "run.jsonl"
    first = _InterruptAt(stop=4)
    with pytest.raises(KeyboardInterrupt):
        map_samples(first, model, x, out=out)
    assert first.computed == [0, 1, 2, 3]
    assert [r["sample"] for r in lines(out)[1]] == [0, 1, 2, 3]
    second = _InterruptAt(stop=None)
    rows = map_samples(second, model, x, out=out)
    assert second.computed == [4, 5]
    with torch.no_grad():
        assert [r["value"] for r in rows] == [float(model(x[i:i + 1]).sum()) for i in range(N)]


class _ExitAt:
    """A per-sample function whose process dies at sample ``stop`` (as if killed)."""

    def __init__(self, stop):
        self.stop = stop

    def __call__(self, model, x, i):
        if i == self.stop:
            os._exit(1)
        return {"value": i}


def test_a_worker_that_dies_is_a_clear_error_and_keeps_the_finished_lines(files, tmp_path):
    model, x = load_network(files["model"]), torch.from_numpy(np.load(files["x"]))
    out = tmp_path / "run.jsonl"
    with pytest.raises(LipboundError, match="a --workers process ended abruptly"):
        map_samples(_ExitAt(stop=2), model, x, workers=1, out=out)
    done = [r["sample"] for r in lines(out)[1]]
    assert 2 not in done and set(done) <= {0, 1}
    assert [r["value"] for r in lines(out)[1]] == done


def test_merge_takes_the_most_severe_verdict_and_the_worst_terms():
    """Samples of a stable and an unstable model merged: instability wins, the worst terms are
    the unstable sample's, per-sample lists keep both (through the JSON form of the lines)."""
    stable = randomize_parameters(coupling_mlp(2, n_blocks=1, hidden=4), std=0.1,
                                  generator=torch.Generator().manual_seed(0)).double()
    x = torch.tensor([[0.5, -0.25]], dtype=torch.float64)
    parts = [decompose(stable, x, "float32", "arb:256"),
             decompose(figure1_chain(3), x, "float32", "arb:256", trace=False)]
    parts[0].trace = []  # the two models have different blocks: compare the terms only
    assert [p.verdict for p in parts] == ["rounding", "instability"]
    back = [decomposition_from_dict(json.loads(json.dumps(jsonable(p.to_dict()))))
            for p in parts]
    merged = merge_decompositions(back, [3, 7])
    assert merged.verdict == "instability" and merged.n_samples == 2
    assert merged.reasons[0] == "1 of 2 samples: instability; 1 of 2 samples: rounding"
    assert merged.reasons[1].startswith("sample 7: ")
    assert merged.total == max(p.total for p in parts)
    assert merged.lip_inverse == max(p.lip_inverse for p in parts)
    assert merged.per_sample["total"] == [p.total for p in parts]


def test_diagnose_reference_on_the_cluster_writes_its_lines(files, cluster, tmp_path, capsys):
    out = tmp_path / "diag.jsonl"
    summary = tmp_path / "diag.json"
    argv = ["diagnose", files["model"], files["x"], "--reference", REF, "--reference-samples",
            "3", "--precision", "float32", "float64", "--spectrum-samples", "0",
            "--attack-samples", "0", "--no-progress", "--out", str(out), "--json", str(summary)]
    assert main([*argv, "--scheduler", cluster]) == 0
    header, rows = lines(out)
    assert header["command"] == "diagnose" and header["n_samples"] == 3
    assert sorted(r["sample"] for r in rows) == [0, 1, 2]
    assert [d["precision"] for d in rows[0]["results"]] == ["float32", "float64"]
    report = json.loads(summary.read_text())["oracle"]["decomposition"]
    assert [d["n_samples"] for d in report] == [3, 3]
    # the serial batch decomposition of diagnose gives the same worst totals
    model, x = load_network(files["model"]), torch.from_numpy(np.load(files["x"]))
    for d, p in zip(report, ("float32", "float64")):
        assert d["total"] == pytest.approx(decompose(model, x[:3], p, REF).total, rel=1e-9)
    capsys.readouterr()
    err = cli_error([*argv[:-4], "--precision", "float16", "--out", str(out)], capsys)
    assert "other settings (precisions: ['float32', 'float64'] in the file, ['float16'] now)" \
        in err


def test_verify_reads_a_train_checkpoint_and_its_run_folder(files, tmp_path, capsys):
    from lipbound.training.trainers import TrainConfig, train

    cfg = TrainConfig.from_dict({"task": "density", "levels": 1, "blocks": 2, "hidden": 8,
                                 "mixing": "reverse", "actnorm": False, "n_train": 64,
                                 "batch_size": 32, "steps": 2, "dtype": "float64",
                                 "monitor_every": 0, "monitor_samples": 2, "monitor_batch": 8})
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    net = load_network(run / "checkpoint.pt")
    assert net.state_dict().keys() == state["flow"].keys()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state["flow"].items())
    saved = load_network(run / "model.pt")
    x = torch.from_numpy(np.load(files["x"]))
    with torch.no_grad():
        assert torch.equal(net(x), saved(x))
    # the folder, its checkpoint and its model.pt are one model: a results file of one resumes
    out = tmp_path / "ck.jsonl"
    argv = [files["x"], "--reference", REF, "--no-progress", "--out", str(out)]
    assert main(["verify", str(run / "model.pt"), *argv]) == 0
    before = out.read_text()
    assert main(["verify", str(run), *argv]) == 0
    assert main(["verify", str(run / "checkpoint.pt"), *argv]) == 0
    assert out.read_text() == before
    # a dict that is not a checkpoint, a folder without either file
    torch.save({"flow": {}}, tmp_path / "other.pt")
    err = cli_error(["verify", str(tmp_path / "other.pt"), files["x"]], capsys)
    assert "holds a state dict, not a model" in err
    assert "nor is it a checkpoint of lipbound train, which holds 'config' and 'flow'" in err
    (tmp_path / "empty_run").mkdir()
    err = cli_error(["verify", str(tmp_path / "empty_run"), files["x"]], capsys)
    assert "is not a file, nor a run folder of lipbound train (holding checkpoint.pt or " \
           "model.pt)" in err


def test_engine_errors(files, tmp_path, capsys, monkeypatch):
    base = ["verify", files["model"], files["x"], "--reference", REF, "--no-progress"]
    err = cli_error([*base, "--workers", "0"], capsys)
    assert "--workers must be >= 1 (local processes), got 0" in err
    err = cli_error([*base, "--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"], capsys)
    assert "--workers and --scheduler exclude each other" in err
    err = cli_error([*base, "--out", str(tmp_path / "r.json")], capsys)
    assert "--out must end in .jsonl" in err
    err = cli_error([*base, "--scheduler", "tcp://x:1", "--scheduler-timeout", "0"], capsys)
    assert "--scheduler-timeout must be a finite number > 0, got 0.0" in err
    err = cli_error(["diagnose", files["model"], files["x"], "--workers", "2"], capsys)
    assert "add --reference" in err
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if Dask were not installed
    err = cli_error([*base, "--scheduler", "tcp://127.0.0.1:8786"], capsys)
    assert "--scheduler needs Dask distributed, which is not installed: pip install " \
           "'lipbound[cluster]'" in err


def test_an_unreachable_scheduler_is_a_clear_error(files, capsys):
    pytest.importorskip("distributed")
    err = cli_error(["verify", files["model"], files["x"], "--scheduler", "tcp://127.0.0.1:9",
                     "--scheduler-timeout", "1", "--no-progress"], capsys)
    assert "--scheduler 'tcp://127.0.0.1:9': no Dask scheduler answered within 1 s" in err
    assert "start one with 'dask scheduler'" in err
    err = cli_error(["verify", files["model"], files["x"], "--scheduler", "node1",
                     "--no-progress"], capsys)
    assert "--scheduler 'node1' is not a Dask scheduler address (missing port number in " \
           "address 'node1'); expected tcp://HOST:PORT, e.g. tcp://node1:8786" in err


def test_a_results_file_of_another_run_is_refused(files, serial, tmp_path, capsys):
    out, _ = serial
    path = tmp_path / "r.jsonl"
    shutil.copy(out, path)
    before = path.read_text()
    base = ["verify", files["model"], files["x"], "--reference", REF, "--no-progress"]
    err = cli_error([*base, "--precision", "float16", "--out", str(path)], capsys)
    assert "holds results of other settings (precisions: ['float32'] in the file, " \
           "['float16'] now)" in err
    np.save(tmp_path / "y.npy", np.load(files["x"]) * 2)
    err = cli_error(["verify", files["model"], str(tmp_path / "y.npy"), "--reference", REF,
                     "--out", str(path)], capsys)
    assert "holds results of other inputs" in err
    other = tmp_path / "other.pt"
    save_model(figure1_chain(2), other)
    err = cli_error(["verify", str(other), files["x"], "--reference", REF, "--out", str(path)],
                    capsys)
    assert "holds results of another model" in err
    assert path.read_text() == before  # refused files are never changed
    text = before.splitlines(keepends=True)
    path.write_text(text[0] + "{not json\n" + "".join(text[1:]))
    err = cli_error([*base, "--out", str(path)], capsys)
    assert f"--out {str(path)!r} line 2 is not JSON" in err
    path.write_text("some notes of mine\n")
    err = cli_error([*base, "--out", str(path)], capsys)
    assert "its first line is not the header of a lipbound results file" in err


def test_per_sample_function_is_the_same_in_every_engine(files):
    """OracleSample of a sample is what decompose of that sample alone gives."""
    model, x = load_network(files["model"]), torch.from_numpy(np.load(files["x"]))
    task = OracleSample(("float32",), REF)
    row = task(model, x[2:3], 2)
    direct = decompose(model, x[2:3], "float32", REF).to_dict()
    del direct["per_sample"]
    assert row == {"sample": 2, "results": [direct]}
