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
    finally:
        dist.destroy_process_group()
