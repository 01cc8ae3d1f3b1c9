"""Run-directory logging: metrics.jsonl records (truncated on resume), the curves PNG and the
lines a run prints (the epoch summary)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netvlad._atomic import atomic_write, atomic_write_text
from netvlad._outputs import disk_full_error, is_disk_full


@dataclass
class EpochSums:
    """Running totals of one epoch's batches, for its summary line."""

    loss: float = 0.0  # Σ per-query losses
    mined: float = 0.0  # queries that had a positive
    violators: float = 0.0
    resumed: bool = False  # the epoch's first batches ran in an earlier process

    def add(self, loss_sum: float, n_mined: float, n_viol: float) -> None:
        self.loss += loss_sum
        self.mined += n_mined
        self.violators += n_viol

    @classmethod
    def of_records(cls, records: list[dict], resumed: bool = False) -> EpochSums:
        """Totals of metrics.jsonl batch records (the batches run before a resume)."""
        sums = cls(resumed=resumed)
        for r in records:
            m = float(r.get("mined", 0))
            sums.add(
                float(r.get("loss", 0.0)) * m,
                m,
                float(r.get("violators", r.get("violators_per_query", 0.0) * m)),
            )
        return sums

    def summary(self, epoch: int, epochs: int, tests: dict, seconds: float) -> str:
        """The epoch's line: mean loss, violators, val and train recall, rank losses, time.

        Args:
            tests: the epoch record's ``val_recall``, ``val_rankloss`` and (optional)
                ``train_recall``, ``train_rankloss``.
        """
        loss = self.loss / self.mined if self.mined else float("nan")
        viol = self.violators / self.mined if self.mined else float("nan")
        since = " since the resume" if self.resumed else ""
        parts = [f"epoch {epoch}/{epochs}: mean loss {loss:.4f}", f"{viol:.2f} violators per query",
                 recall_text(tests["val_recall"])]
        if tests.get("train_recall"):
            parts.append(recall_text(tests["train_recall"], "train"))
        parts.append(rankloss_text(tests))
        return ", ".join(p for p in parts if p) + f", {seconds:.1f} s{since}"


def recall_text(recall: dict, which: str = "val") -> str:
    """The text "val recall@1/5/10 a/b/c" (the first three Ns when 1, 5 and 10 were not computed)."""
    ns = [n for n in (1, 5, 10) if n in recall] or sorted(recall)[:3]
    return f"{which} recall@{'/'.join(map(str, ns))} " + "/".join(f"{recall[n]:.3f}" for n in ns)


def rankloss_text(tests: dict) -> str:
    """The text "rank loss val a, train b" ("" when neither was computed)."""
    got = [(w, tests.get(f"{w}_rankloss")) for w in ("val", "train")]
    got = [f"{w} {v:.4f}" for w, v in got if v is not None]
    return "rank loss " + ", ".join(got) if got else ""


class MetricsLog:
    """metrics.jsonl of a run: one JSON record per line, appended; only rank 0 writes (`enabled`)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def reset(self) -> None:
        """Start an empty log (a new run in a folder whose earlier run stopped before a checkpoint)."""
        if self.enabled:
            self.path.unlink(missing_ok=True)

    def write(self, rec: dict) -> None:
        """Append one record; a full disk leaves no half record and is a DiskFullError naming the file."""
        if not self.enabled:
            return
        data = memoryview((json.dumps(rec) + "\n").encode())
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.fstat(fd).st_size
            try:
                while data:  # a full disk first shortens a write, then fails the next one
                    data = data[os.write(fd, data):]
            except OSError as exc:
                os.ftruncate(fd, start)
                if is_disk_full(exc):
                    then = "free some space and rerun (--resume goes on from the last checkpoint)"
                    raise disk_full_error(self.path, then=then) from exc
                raise
        finally:
            os.close(fd)

    def batch_records(self, epoch: int) -> list[dict]:
        """The batch records of `epoch` written so far."""
        if not self.enabled or not self.path.is_file():
            return []
        recs = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [r for r in recs if r.get("type") == "batch" and r.get("epoch") == epoch]

    def truncate_to(self, pos) -> None:
        """Drop records written after the checkpoint `pos` (they will be redone)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:  # blank, or a record cut short by a killed process
                continue
            if r.get("type") == "batch" and r["global_batch"] > pos.global_batch:
                continue
            if r.get("type") == "epoch" and r["epoch"] >= pos.epoch:
                continue
            keep.append(line)
        atomic_write_text(self.path, "".join(x + "\n" for x in keep))


def plot_curves(run_dir: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is optional
        return
    batches, epochs = [], {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["type"] == "batch":
            batches.append((r["epoch_float"], r["loss"]))
        elif "val_recall" in r:
            epochs[r["epoch"]] = r
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    if batches:
        x, y = np.array(batches).T
        win = max(1, min(int(math.ceil(0.05 * len(y))), 5000))  # plotResults' smoothing window
        ys = np.convolve(y, np.ones(win) / win, mode="valid")
        ax[0].plot(x[win - 1 :], ys)
    ax[0].set(xlabel="epoch", ylabel="training loss (smoothed)", title="loss")
    eps = sorted(epochs)
    for n in (1, 2, 5, 10, 30):
        vals = [epochs[e]["val_recall"].get(str(n), epochs[e]["val_recall"].get(n)) for e in eps]
        if eps and all(v is not None for v in vals):
            ax[1].plot(eps, vals, marker="o", label=f"R@{n}")
    ax[1].set(xlabel="epoch (0 = off-the-shelf)", ylabel="val recall", title="recall@N")
    ax[1].legend(loc="lower right")
    fig.tight_layout()
    try:
        atomic_write(run_dir / "curves.png", lambda tmp: fig.savefig(tmp, dpi=80), suffix=".png")
    finally:
        plt.close(fig)


def resume_message(pos, cfg, checkpoint: Path) -> str:
    """The line a resumed run prints: where it starts (and whether anything is left to do)."""
    where = f"resuming from epoch {pos.epoch}, query {pos.batch * cfg.batch_size} (checkpoint {checkpoint})"
    if pos.epoch > cfg.epochs:
        return f"{where}: all {cfg.epochs} epochs are done; pass a larger --epochs to train on"
    return where


def write_run_config(run, run_info: dict | None) -> None:
    """config.json of a new run: its TrainConfig, model config, datasets, world size and `run_info`."""
    info = {
        "train": run.cfg.to_dict(),
        "world_size": run.world,
        "device": str(run.device),
        "train_dataset": getattr(run.train_ds, "name", None),
        "val_dataset": getattr(run.val_ds, "name", None),
        "train_queries": len(run.train_q),
        "backprop_from": run.layer,
        **(run_info or {}),
    }
    mc = getattr(run.model, "config", None)
    if hasattr(mc, "to_dict"):
        info["model"] = mc.to_dict()
    atomic_write_text(run.run_dir / "config.json", json.dumps(info, indent=2, default=str))
