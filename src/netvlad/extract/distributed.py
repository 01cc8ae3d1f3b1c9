"""Extraction by the ranks of a torch.distributed process group (torchrun): each rank extracts its
shard (:mod:`netvlad.extract.shard`), rank 0 merges them (:mod:`netvlad.extract.merge`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from netvlad.extract.config import ExtractConfig
from netvlad.extract.merge import merge_shards, remove_shards
from netvlad.extract.run import _config, extract_features
from netvlad.extract.shard import extract_shard, shard_path
from netvlad.io import OutputStatus


def init_distributed(device: str) -> tuple[int, int, str]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1): gloo on CPU, nccl on CUDA.

    Returns ``(rank, world_size, device)``, the device being this rank's GPU (``cuda:LOCAL_RANK``)
    on CUDA. Without torchrun: ``(0, 1, device)`` and nothing is initialised.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    use_cuda = str(device).startswith("cuda")
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return dist.get_rank(), dist.get_world_size(), device


class RankFailedError(RuntimeError):
    """Another rank of a distributed extraction failed (its message says which and why)."""


def _all_ok(error: BaseException | None) -> list[str | None]:
    """Every rank's error message (None: it succeeded), gathered on every rank."""
    import torch.distributed as dist

    msgs: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(msgs, None if error is None else f"{type(error).__name__}: {error}")
    return msgs


def extract_distributed(model, paths: Sequence[str | Path], names: Sequence[str], out: str | Path,
                        config: ExtractConfig | None = None, *,
                        on_status: Callable[[OutputStatus], None] | None = None, **overrides) -> Path:
    """Extract into ``out`` with every rank of the initialised process group taking one shard;
    rank 0 merges the shards into ``out`` and removes them. Every rank returns ``out``.

    The same call on one process (no process group) is :func:`extract_features`. A rank that
    fails or is killed leaves its partial shard; rerunning the same command resumes every shard's
    missing rows. A failure on any rank raises on every rank (its own error there, a
    :class:`RankFailedError` naming the rank and the error on the others).
    """
    import torch.distributed as dist

    cfg = _config(config, overrides)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return extract_features(model, paths, names, out, cfg, on_status=on_status)
    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(out)
    error: BaseException | None = None
    try:
        result = extract_shard(model, paths, names, out, rank, world, cfg, on_status=on_status)
    except Exception as exc:  # noqa: BLE001 - reported to every rank below, then re-raised
        error, result = exc, None
    msgs = _all_ok(error)
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(msgs) if m is not None]
    if failed:
        r, m = failed[0]
        raise RankFailedError(f"rank {r} of {world} failed ({m}); its shard stays partial: rerun to resume")
    if result == out:  # up to date on every rank (the same check on the same file)
        return out
    if rank == 0:
        try:
            merge_shards([shard_path(out, i, world) for i in range(world)], out, overwrite=cfg.overwrite,
                         progress=cfg.progress)
            remove_shards(out, world)
        except Exception as exc:  # noqa: BLE001
            error = exc
    msgs = _all_ok(error)
    if error is not None:
        raise error
    if msgs[0] is not None:
        raise RankFailedError(f"rank 0 failed to merge the shards into {out} ({msgs[0]})")
    return out
