"""The state of a training run (`Position`, `RunState`) and its checkpoint plumbing: atomic writes,
RNG states as plain tensors/lists, feature caches."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from netvlad._atomic import atomic_write
from netvlad._version import __version__
from netvlad.mining import MiningConfig, NegativeMemory
from netvlad.models import load_checkpoint as load_model_checkpoint
from netvlad.train.config import TrainConfig
from netvlad.train.runlog import EpochSums, MetricsLog

CKPT_FORMAT = "netvlad-checkpoint"
LATEST = "ckpt_latest.pt"


def atomic_torch_save(obj, path: str | Path) -> Path:
    """torch.save to a temp file in the same folder, then os.replace (never a half-written file)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def rng_state() -> dict:
    """torch, numpy (legacy global) and python RNG states in weights_only-loadable form."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": _py_state_to_list(random.getstate()),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    random.setstate(_py_state_from_list(state["python"]))


def _py_state_to_list(st) -> list:
    version, internal, gauss = st
    return [int(version), [int(x) for x in internal], gauss]


def _py_state_from_list(lst) -> tuple:
    version, internal, gauss = lst
    return (int(version), tuple(int(x) for x in internal), gauss)


def model_payload(model) -> dict:
    """The `netvlad.models.save_model` layout (format, version, config, state_dict) for `model`."""
    cfg = getattr(model, "config", None)
    cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else None
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"format": CKPT_FORMAT, "version": 1, "netvlad_version": __version__, "config": cfg_dict,
            "state_dict": state}


def save_checkpoint(path: str | Path, model, train_state: dict) -> Path:
    """Write a checkpoint that `netvlad.models.load_model` reads as a model, plus ``extra.train``."""
    payload = model_payload(model)
    payload["extra"] = {"train": train_state}
    return atomic_torch_save(payload, path)


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint → {"state_dict", "extra": {"train": ...}}.

    Read as every model checkpoint is (`netvlad.models.load_checkpoint`: recognised by content,
    weights_only, NaN/inf weights refused), so a resume cannot start from a diverged or unsafe file.

    Raises:
        FileNotFoundError, ValueError: one line naming ``path`` and the problem.
    """
    path = Path(path)
    _, state, extra = load_model_checkpoint(path)
    if not isinstance(extra.get("train"), dict):
        raise ValueError(f"{path}: a model checkpoint without training state; nothing to resume from")
    return {"format": CKPT_FORMAT, "state_dict": state, "extra": extra}


def cache_path(run_dir: str | Path, refresh_id: int) -> Path:
    return Path(run_dir) / f"cache_r{refresh_id:06d}.pt"


def save_cache(run_dir: str | Path, refresh_id: int, db: torch.Tensor, q: torch.Tensor) -> Path:
    return atomic_torch_save(
        {"refresh_id": int(refresh_id), "db": db.cpu(), "q": q.cpu()}, cache_path(run_dir, refresh_id)
    )


def load_cache(run_dir: str | Path, refresh_id: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    p = cache_path(run_dir, refresh_id)
    if not p.is_file():
        return None
    c = torch.load(p, map_location="cpu", weights_only=True)
    return c["db"], c["q"]


def prune_caches(run_dir: str | Path, keep: set[int]) -> None:
    for p in Path(run_dir).glob("cache_r*.pt"):
        try:
            rid = int(p.stem[len("cache_r") :])
        except ValueError:
            continue
        if rid not in keep:
            p.unlink(missing_ok=True)


@dataclass
class Position:
    """Where a run is: the next batch to run and the cache in use."""

    epoch: int = 1  # 1-based epoch in progress (or next)
    batch: int = 0  # next 0-based batch of that epoch
    global_batch: int = 0  # batches completed in total
    refresh_id: int = 0  # id of the cache in use (cache_rNNNNNN.pt)
    cache_batch: int = 0  # global_batch at the last refresh (cache age)


@dataclass
class RunState:
    """The state of a run that `netvlad.train.loop.fit`'s steps share: its inputs, what a
    checkpoint saves (position, optimizer, negative memory), and the cache in memory."""

    model: torch.nn.Module
    train_ds: object
    val_ds: object
    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    progress: bool
    rank: int
    world: int
    layer: str | int | None  # resolved backprop_from
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    memory: NegativeMemory
    train_q: np.ndarray  # dataset query ids trained on (all, or the limit_queries subset)
    weights: np.ndarray | None  # per-query sampling weights (msls) or None (each once)
    metrics: MetricsLog
    mining: MiningConfig
    say: Callable[[str], None]
    pos: Position = field(default_factory=Position)
    sums: EpochSums = field(default_factory=EpochSums)
    db_cache: torch.Tensor | None = None
    q_cache: torch.Tensor | None = None
    base_short: int | None = None  # shorter side of database image 1 (jitterScale)
    n_avail: dict[int, int] = field(default_factory=dict)  # random negatives drawable per query

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def save_run_checkpoint(run: RunState, path: Path) -> None:
    """A checkpoint of `run` at its position (rank 0 writes; a model checkpoint plus ``extra.train``)."""
    if run.is_main:
        save_checkpoint(
            path,
            run.model,
            {
                "config": run.cfg.to_dict(),
                "position": asdict(run.pos),
                "optimizer": run.opt.state_dict(),
                "memory": run.memory.state(),
                "rng": rng_state(),
                "world_size": run.world,
            },
        )
