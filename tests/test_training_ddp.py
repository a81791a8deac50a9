"""Data-parallel training on two processes (Gloo on the CPU): the parameters follow a single
process trained on the same global batch, with and without memory-saving gradients and with the
FD regularizer every other step; a two-process run resumes exactly; torchrun starts the same run
through ``python -m lipbound train``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp_helpers import trainer_worker

from lipbound.cli import main
from lipbound.training import load_checkpoint
from lipbound.training.distributed import Context, GlobalBatchNorm, global_batch_norm
from lipbound.training.trainers import TrainConfig, train

CLASSIFIER = {"task": "classifier", "levels": 1, "blocks": 2, "hidden": 4, "batch_size": 32,
              "steps": 4, "dtype": "float64", "log_every": 1, "monitor_every": 2,
              "checkpoint_every": 2, "eval_every": 2, "monitor_samples": 2, "monitor_batch": 8,
              "lr": 1e-2}
RUNS = {
    "autograd": {},
    "memory_saving": {"memory_saving": True},
    "memory_saving_fd": {"memory_saving": True, "regularizer": "fd", "every": 2, "coeff": 1e-2},
}
#: parameters of the two-process run against one process on the global batch (float64; the
#: sums over the batch are split differently, and Adam divides by sqrt(v) of small gradients)
TOL = 1e-6


def _state(folder):
    state = load_checkpoint(folder / "checkpoint.pt")
    return {**{f"flow.{k}": v for k, v in state["flow"].items()},
            **{f"head.{k}": v for k, v in state["head"].items()}}


def _records(folder, kinds=("train", "eval")):
    lines = [json.loads(s) for s in (folder / "log.jsonl").read_text().splitlines()]
    return [r for r in lines if r["kind"] in kinds]


def _assert_close_states(a, b, tol):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            err = float((a[k] - b[k]).abs().max())
            assert err <= tol * max(1.0, float(a[k].abs().max())), (k, err)
        else:
            assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """The runs of RUNS on two processes (one spawn), and a resumed copy of the last one."""
    tmp = tmp_path_factory.mktemp("ddp")
    runs = [(name, {**CLASSIFIER, **values}, None) for name, values in RUNS.items()]
    runs.append(("resumed", {**CLASSIFIER, **RUNS["memory_saving_fd"]}, 2))
    mp.spawn(trainer_worker, args=(str(tmp / "rendezvous"), str(tmp), runs), nprocs=2)
    return tmp


@pytest.mark.parametrize("name", list(RUNS))
def test_two_processes_follow_one_process_on_the_global_batch(tmp_path, two_process_runs,
                                                               name):
    single = train(TrainConfig.from_dict({**CLASSIFIER, **RUNS[name]}), tmp_path / name,
                   progress=False)
    folder = two_process_runs / name
    for rank in range(2):
        seen = json.loads((folder / f"rank{rank}.json").read_text())
        assert seen == {"batches": [16] * 4, "net": "DistributedDataParallel",
                        "status": "done"}
    _assert_close_states(_state(tmp_path / name), _state(folder), TOL)
    # rank 0 logged the global batch's figures: the same as the single process's
    ours, theirs = _records(tmp_path / name), _records(folder)
    assert [r["kind"] for r in ours] == [r["kind"] for r in theirs]
    for a, b in zip(ours, theirs):
        for k, v in a.items():
            if isinstance(v, float):
                assert b[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (k, a["step"])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["precision"] == {"dtype": "float64",
                                                                  "amp": "none"}
    assert single.fallbacks == 0 and summary["fallbacks"] == 0
    if name == "memory_saving_fd":
        assert any("regularizer" in r for r in theirs)


def test_two_process_run_resumes_exactly(two_process_runs):
    full, resumed = two_process_runs / "memory_saving_fd", two_process_runs / "resumed"
    a, b = _state(full), _state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _records(full, ("train", "eval", "monitor", "done")) == _records(
        resumed, ("train", "eval", "monitor", "done"))
    assert json.loads((resumed / "rank1.json").read_text())["batches"] == [16] * 4


def test_global_batch_norm_is_batch_norm_on_one_process():
    """Without a process group GlobalBatchNorm is BatchNorm, parameters and buffers moved over."""
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(6), torch.nn.ReLU())
    torch.nn.init.normal_(head[1].weight)
    converted = global_batch_norm(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(6), torch.nn.ReLU()))
    converted.load_state_dict(head.state_dict())
    assert isinstance(converted[1], GlobalBatchNorm)
    x = torch.randn(10, 2, 3)
    torch.testing.assert_close(converted(x), head(x))
    torch.testing.assert_close(converted[1].running_var, head[1].running_var)


def _bf16_batch_norm_worker(rank, rendezvous, out):
    """Rank ``rank``'s half of a bf16 batch through GlobalBatchNorm under CPU autocast; saves
    the output, the input gradient and the running statistics to ``out/bn{rank}.pt``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        x = _bf16_batch()[8 * rank:8 * (rank + 1)].clone().requires_grad_()
        bn = GlobalBatchNorm(3, dtype=torch.float32)
        torch.nn.init.normal_(bn.weight, generator=torch.Generator().manual_seed(1))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = bn(x)
        y.float().square().sum().backward()
        torch.save({"y": y.detach(), "grad": x.grad, "mean": bn.running_mean,
                    "var": bn.running_var}, f"{out}/bn{rank}.pt")
        dist.barrier()  # leave together: a rank that tears Gloo down early can abort the other
    finally:
        dist.destroy_process_group()


def _bf16_batch():
    x = torch.randn(16, 3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    return (x * 3 + 2).bfloat16()


def test_global_batch_norm_under_bf16_autocast_on_two_processes(tmp_path):
    """A bf16 input (autocast) on two processes: the statistics are float32, the output is bf16
    and follows ``BatchNorm1d`` on the float32 global batch within bf16 rounding, and so do the
    running statistics (which stay float32) and the input gradients."""
    mp.spawn(_bf16_batch_norm_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)),
             nprocs=2)
    ranks = [torch.load(tmp_path / f"bn{r}.pt") for r in range(2)]
    x = _bf16_batch().float().requires_grad_()
    bn = torch.nn.BatchNorm1d(3, dtype=torch.float32)
    torch.nn.init.normal_(bn.weight, generator=torch.Generator().manual_seed(1))
    y = bn(x)
    y.square().sum().backward()
    assert all(r["y"].dtype == torch.bfloat16 for r in ranks)
    ddp_y = torch.cat([r["y"] for r in ranks]).float()
    torch.testing.assert_close(ddp_y, y.detach(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks]).float(), x.grad,
                               rtol=2e-2, atol=2e-2)
    for r in ranks:
        assert r["mean"].dtype == r["var"].dtype == torch.float32
        torch.testing.assert_close(r["mean"], bn.running_mean)
        torch.testing.assert_close(r["var"], bn.running_var)


def test_one_process_context_has_no_collectives():
    ctx = Context()
    x = torch.arange(6.0).reshape(3, 2)
    assert ctx.is_main and not ctx.distributed and ctx.shard(x) is x
    assert ctx.any(True) and not ctx.any(False) and ctx.from_main(lambda: 7) == 7
    assert ctx.wrap(torch.nn.Linear(2, 2)).__class__ is torch.nn.Linear


def test_torchrun_runs_lipbound_train_on_two_processes(tmp_path, capsys):
    """``torchrun --standalone --nproc_per_node 2 -m lipbound train``: the CLI joins the
    process group from torchrun's variables, rank 0 alone prints and writes, and the result
    follows the single-process CLI run (the resumption is tested above, through the same
    :meth:`Trainer.resume`)."""
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({**CLASSIFIER, **RUNS["memory_saving_fd"], "steps": 2}))
    torch.set_default_dtype(torch.float32)  # torchrun's processes build the network in it
    assert main(["train", str(cfg), "--out", str(tmp_path / "single"), "--no-progress"]) == 0
    capsys.readouterr()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "lipbound", "train", str(cfg), "--out",
               str(tmp_path / "ddp"), "--no-progress"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("lipbound train:") == 1
    assert "done at step 2 (epoch 0 on 2 processes; float64)" in run.stdout
    _assert_close_states(_state(tmp_path / "single"), _state(tmp_path / "ddp"), TOL)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        "checkpoint.pt", "config.json", "log.jsonl", "model.pt", "summary.json"]
