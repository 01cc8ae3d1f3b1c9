"""Model selection after training: ``pickBestNet`` / ``getBestEpoch`` and ``cleanup``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netvlad.models import load_model, save_model

TIE_TOL = 1e-6


def best_epoch(recalls: np.ndarray, recall_ns: Sequence[int], n: int = 5) -> int:
    """``getBestEpoch``: index of the column (epoch) with the best recall@`n`, with its tie-breaking.

    Rows are visited in the order: recall@n, then the lower Ns descending down to the first,
    then the higher Ns ascending. At each row only the epochs within 1e-6 of the maximum over
    the epochs still kept survive; it stops as soon as at most one remains and returns the
    first (earliest) survivor.

    Args:
        recalls: (len(recall_ns), E) recall values, one column per epoch.
        recall_ns: the N of each row.
        n: the N that decides.

    Returns:
        0-based column index.
    """
    recalls = np.asarray(recalls, dtype=np.float64)
    ns = [int(x) for x in recall_ns]
    if recalls.ndim != 2 or recalls.shape[0] != len(ns) or recalls.shape[1] == 0:
        raise ValueError(
            f"best_epoch: recalls shape {recalls.shape} does not match {len(ns)} recall Ns × epochs"
        )
    if n not in ns:
        raise ValueError(f"best_epoch: N={n} not among the recall Ns {ns}")
    i = ns.index(n)
    rows = [i, *range(i - 1, -1, -1), *range(i + 1, len(ns))]
    keep = np.arange(recalls.shape[1])
    for r in rows:
        vals = recalls[r, keep]
        keep = keep[vals >= vals.max() - TIE_TOL]
        if len(keep) <= 1:
            break
    return int(keep[0])


@dataclass
class RunRecalls:
    """Val recall per epoch read from a run's metrics.jsonl (epoch 0 = off-the-shelf)."""

    recall_ns: list[int]
    epochs: list[int]  # trained epochs (≥ 1) in order
    recalls: np.ndarray  # (len(recall_ns), len(epochs))
    offtheshelf: np.ndarray | None  # (len(recall_ns),) or None


def read_run_recalls(run_dir: str | Path) -> RunRecalls:
    """Collect per-epoch val recalls from ``RUN_DIR/metrics.jsonl`` (last record per epoch wins)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file (is {run_dir} a training run directory?)")
    per_epoch: dict[int, dict[int, float]] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON ({exc})") from exc
            if rec.get("type") == "epoch" and "val_recall" in rec:
                per_epoch[int(rec["epoch"])] = {int(k): float(v) for k, v in rec["val_recall"].items()}
    epochs = sorted(e for e in per_epoch if e >= 1)
    if not epochs:
        raise ValueError(f"{path}: no finished epoch with a val recall yet")
    ns = sorted(per_epoch[epochs[0]])
    rec = np.array([[per_epoch[e][n] for e in epochs] for n in ns])
    off = np.array([per_epoch[0][n] for n in ns]) if 0 in per_epoch else None
    return RunRecalls(ns, epochs, rec, off)


def epoch_checkpoint(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / f"epoch_{epoch:03d}.pt"


def pick_best(run_dir: str | Path, n: int = 5) -> tuple[int, Path]:
    """``pickBestNet``: the epoch with the best val recall@`n` (original tie-breaking).

    Returns:
        (best epoch, 1-based; path of its ``epoch_XXX.pt`` checkpoint).
    """
    rr = read_run_recalls(run_dir)
    ep = rr.epochs[best_epoch(rr.recalls, rr.recall_ns, n)]
    return ep, epoch_checkpoint(run_dir, ep)


def cleanup(run_dir: str | Path, n: int = 5, delete: bool = False) -> list[Path]:
    """``cleanup``: the epoch checkpoints other than the best one (by recall@`n`).

    Lists them, and deletes them only when ``delete=True``.
    """
    best, best_path = pick_best(run_dir, n)
    others = sorted(p for p in Path(run_dir).glob("epoch_*.pt") if p.name != best_path.name)
    if delete:
        for p in others:
            p.unlink()
    return others


def export_best(run_dir: str | Path, out: str | Path, n: int = 5) -> tuple[int, Path]:
    """Save the best epoch's model alone (no optimizer or training state) to `out`
    (``pickBestNet``'s ``bestNet``); the checkpoint records the run and the epoch.

    Returns:
        (best epoch, path of its checkpoint in the run).

    Raises:
        FileNotFoundError: the best epoch's checkpoint was deleted.
    """
    epoch, path = pick_best(run_dir, n)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint of the best epoch is missing")
    save_model(load_model(path), out, extra={"run": str(run_dir), "epoch": epoch})
    return epoch, path
