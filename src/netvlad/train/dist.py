"""torch.distributed helpers: rank/world, all-reduce of gradients, sharded descriptor computation.

Gradients are summed across ranks by hand (one flat all-reduce per step) rather than by DDP's
backward hooks: each rank back-propagates a *variable* number of tuples per batch (skipped and
non-violating queries have none) and the step divides by the batch's global triplet count, which
DDP's averaging hooks can neither skip nor express. Parameters are broadcast from rank 0 at the
start, as DDP does at construction.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_dist() else (0, 1)


def barrier() -> None:
    if is_dist():
        dist.barrier()


def comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, else the CPU."""
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_model(model: torch.nn.Module) -> None:
    if not is_dist():
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, 0)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks (a copy on the communication device; returned on t's device)."""
    if not is_dist():
        return t
    buf = t.to(comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks (missing grads count as zeros, so every rank joins)."""
    if not is_dist():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    off = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[off : off + n].view_as(p).clone()
        off += n


def shard(n: int, rank: int, world: int) -> slice:
    """Contiguous slice of n items owned by `rank`."""
    per = -(-n // world)
    return slice(min(n, rank * per), min(n, (rank + 1) * per))


def gather_rows(local: np.ndarray, n_total: int, dim: int) -> np.ndarray:
    """All-gather contiguous row shards (from `shard`) into the full (n_total, dim) float32 array."""
    if not is_dist():
        return local
    rank, world = rank_world()
    per = -(-n_total // world)
    buf = torch.zeros((per, dim), dtype=torch.float32, device=comm_device())
    buf[: len(local)] = torch.from_numpy(np.asarray(local, dtype=np.float32)).to(buf.device)
    out = [torch.zeros_like(buf) for _ in range(world)]
    dist.all_gather(out, buf)
    return torch.cat(out)[:n_total].cpu().numpy()


def init_distributed(device: str) -> str:
    """Join the torchrun process group when launched by torchrun (``WORLD_SIZE`` > 1 in the
    environment) and not joined yet; returns this rank's device (``cuda:LOCAL_RANK`` on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    use_cuda = str(device).startswith("cuda")
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device
