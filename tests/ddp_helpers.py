"""A worker for the two-process DistributedDataParallel test (spawned, so importable by name)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from lipbound.blocks import coupling_mlp, randomize_parameters
from lipbound.training import fd_regularizer, memory_saving, nf_loss


def ddp_model():
    torch.manual_seed(0)
    return randomize_parameters(coupling_mlp(4, 3, 8, "affine", actnorm=True), 0.1,
                                torch.Generator().manual_seed(1))


def ddp_data(rank):
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(10 + rank)) * 2 + 1


LOSSES = {
    "nf": lambda net, x: nf_loss(net, x).loss,
    "fd": lambda net, x: fd_regularizer(net, x, coeff=0.5, generator=torch.Generator()
                                        .manual_seed(4)).loss,
}


def ddp_worker(rank, rendezvous, out):
    """Each rank's parameter gradients of every loss through ``DDP(memory_saving(model))`` on its
    own data, saved to ``out/rank{rank}.pt``."""
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        flow = ddp_model()
        flow(ddp_data(0))  # ActNorm's initialisation, the same on both ranks
        ddp = torch.nn.parallel.DistributedDataParallel(memory_saving(flow, policy="raise"))
        grads = {}
        for name, loss in LOSSES.items():
            flow.zero_grad()
            loss(ddp, ddp_data(rank)).backward()
            grads[name] = [p.grad.clone() for p in flow.parameters()]
        torch.save(grads, f"{out}/rank{rank}.pt")
        dist.barrier()  # leave together: a rank that tears Gloo down early can abort the other
    finally:
        dist.destroy_process_group()


def trainer_worker(rank, rendezvous, out, runs):
    """Train each ``(name, config values, interrupt step or None)`` of ``runs`` on this rank of
    two (Gloo); an interrupted run is resumed to its end. Saves, per run, the batch sizes this
    rank trained on and the type of the network it stepped to ``out/name/rank{rank}.json``."""
    import json
    from pathlib import Path

    from lipbound.training.trainers import TrainConfig, Trainer

    torch.set_default_dtype(torch.float64)  # as in the test process: the same initial weights
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        for name, values, stop in runs:
            folder = Path(out) / name
            seen = []

            def interrupt(trainer, step, record, stop=stop):
                if step == stop:
                    raise KeyboardInterrupt

            for resume in (False, True) if stop else (False,):
                trainer = Trainer(TrainConfig.from_dict(values), folder, progress=False,
                                  callbacks=() if resume else (interrupt,))
                step = trainer.train_step
                trainer.train_step = lambda x, y, step=step, seen=seen: (seen.append(len(x)),
                                                                 step(x, y))[1]
                if resume:
                    trainer.resume()
                status = trainer.fit().status
                trainer.close()
            (folder / f"rank{rank}.json").write_text(json.dumps(
                {"batches": seen, "net": type(trainer.net).__name__, "status": status}))
        dist.barrier()  # leave together: a rank that tears Gloo down early can abort the other
    finally:
        dist.destroy_process_group()
