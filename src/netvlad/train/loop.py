"""`fit`: weakly supervised NetVLAD training (``trainWeakly``, spec §1.6), resumable and distributed.

Run directory layout:
    config.json       effective TrainConfig + model config + datasets + world size
    metrics.jsonl     one JSON record per batch (loss, mining statistics, cache age) and per epoch
                      (val recall@N and rank loss; epoch 0 = off-the-shelf)
    curves.png        loss and recall curves
    ckpt_latest.pt    every ``save_frequency`` queries and at each epoch end (model, optimizer,
                      negative memory, RNG states, position)
    epoch_XXX.pt      at each epoch end (same content; `pick_best` chooses among them)
    cache_rNNNNNN.pt  the feature cache in use (so that a resume is bit-exact without a refresh)
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from netvlad._atomic import atomic_write_text
from netvlad.losses import triplet_ranking_loss
from netvlad.mining import NegativeMemory, mine, query_rng
from netvlad.models import check_device
from netvlad.train import dist as D
from netvlad.train.cache import evaluate_places, refresh_cache
from netvlad.train.config import TrainConfig, resolve_backprop_from
from netvlad.train.runlog import MetricsLog, plot_curves
from netvlad.train.sampling import epoch_order, query_weights
from netvlad.train.state import (
    LATEST,
    cache_path,
    load_cache,
    load_checkpoint,
    prune_caches,
    rng_state,
    save_cache,
    save_checkpoint,
    set_rng_state,
)

logger = logging.getLogger(__name__)


@dataclass
class Position:
    """Where a run is: the next batch to run and the cache in use."""

    epoch: int = 1  # 1-based epoch in progress (or next)
    batch: int = 0  # next 0-based batch of that epoch
    global_batch: int = 0  # batches completed in total
    refresh_id: int = 0  # id of the cache in use (cache_rNNNNNN.pt)
    cache_batch: int = 0  # global_batch at the last refresh (cache age)


# ---------------------------------------------------------------------------------------------
# tuples


def _load_tuple_images(
    paths: list[Path], config: TrainConfig, rng: np.random.Generator, base_short_side: int | None
) -> tuple[list[np.ndarray], bool]:
    from netvlad.data.images import load_image

    imgs = [load_image(p) for p in paths]
    if config.jitter_scale:
        # jitterScale: one factor per tuple; shorter side = round(sc·S0), S0 = db image 1's.
        sc = config.jitter_scale[int(rng.integers(len(config.jitter_scale)))]
        target = int(round(sc * base_short_side))
        out = []
        for im in imgs:
            h, w = im.shape[:2]
            f = target / min(h, w)
            size = (max(1, int(round(w * f))), max(1, int(round(h * f))))
            out.append(np.asarray(Image.fromarray(im).resize(size, Image.BILINEAR)))
        imgs = out
    flip = bool(config.jitter_flip and rng.random() < 0.5)
    return imgs, flip


def _embed(model, tensors: list[torch.Tensor], device, amp: bool) -> torch.Tensor:
    """Forward images, batching the ones of equal size together; rows in input order."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(tensors)
    ctx = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if amp and torch.device(device).type == "cuda"
        else contextlib.nullcontext()
    )
    for idx in groups.values():
        x = torch.stack([tensors[i] for i in idx]).to(device)
        with ctx:
            y = model(x).float()
        for j, i in enumerate(idx):
            out[i] = y[j]
    return torch.stack(out)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# what the user is told


def _resume_message(pos: Position, cfg: TrainConfig, checkpoint: Path) -> str:
    where = f"resuming from epoch {pos.epoch}, query {pos.batch * cfg.batch_size} (checkpoint {checkpoint})"
    if pos.epoch > cfg.epochs:
        return f"{where}: all {cfg.epochs} epochs are done; pass a larger --epochs to train on"
    return where


@dataclass
class _EpochSums:
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
    def of_records(cls, records: list[dict], resumed: bool = False) -> _EpochSums:
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

    def summary(self, epoch: int, epochs: int, recall: dict, seconds: float) -> str:
        loss = self.loss / self.mined if self.mined else float("nan")
        viol = self.violators / self.mined if self.mined else float("nan")
        since = " since the resume" if self.resumed else ""
        return (
            f"epoch {epoch}/{epochs}: mean loss {loss:.4f}, {viol:.2f} violators per query, "
            f"{_recall_text(recall)}, {seconds:.1f} s{since}"
        )


def _recall_text(recall: dict) -> str:
    """The text "val recall@1/5/10 a/b/c" (the first three Ns when 1, 5 and 10 were not computed)."""
    ns = [n for n in (1, 5, 10) if n in recall] or sorted(recall)[:3]
    return f"val recall@{'/'.join(map(str, ns))} " + "/".join(f"{recall[n]:.3f}" for n in ns)


# ---------------------------------------------------------------------------------------------
# fit


def fit(
    model,
    train_ds,
    val_ds,
    config: TrainConfig | None = None,
    out_dir: str | Path = "run",
    device: str | torch.device = "cpu",
    progress: bool = True,
    resume: bool = False,
    run_info: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train `model` with the weakly supervised triplet ranking loss (``trainWeakly``).

    Args:
        model: a `netvlad.models.PlaceModel` (B×3×H×W → B×out_dim, ``preprocess``, ``backbone``).
            An uninitialised NetVLAD head is initialised first from the training database.
        train_ds, val_ds: `netvlad.data.PlaceDataset` (geometry + image paths).
        config: `TrainConfig` (defaults = the paper's).
        out_dir: run directory (created; must not hold a run unless ``resume``).
        device: torch device ("cpu", "cuda", "cuda:1"); under torchrun each rank passes its own.
        progress: tqdm bars (rank 0 only).
        resume: continue from ``out_dir/ckpt_latest.pt``.
        run_info: extra entries for config.json (e.g. the CLI's dataset specs and model name).
        log: receives the user-facing lines (where a resume starts, one summary per epoch);
            default: this module's logger at INFO. Rank 0 only.

    Returns:
        the run directory.
    """
    cfg = config or TrainConfig()
    rank, world = D.rank_world()
    is_main = rank == 0
    run_dir = Path(out_dir)
    device = check_device(device)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    D.barrier()
    if not resume and (run_dir / LATEST).exists():
        raise ValueError(
            f"{run_dir}: already holds a training run ({LATEST}); resume it or choose another --out"
        )
    if cfg.batch_size < world:
        raise ValueError(f"batch_size {cfg.batch_size} < world size {world}: some ranks would have no query")
    model.to(device)
    layer = resolve_backprop_from(cfg, getattr(getattr(model, "config", None), "backbone", None))
    if hasattr(model.backbone, "freeze_below"):
        model.backbone.freeze_below(layer)
    elif layer is not None:
        raise ValueError(
            f"backbone {type(model.backbone).__name__} cannot freeze layers (backprop_from={layer!r})"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    memory = NegativeMemory(train_ds.num_queries, cfg.n_neg_cache)
    train_q = np.arange(train_ds.num_queries)
    if cfg.limit_queries is not None and cfg.limit_queries < len(train_q):
        train_q = np.sort(
            np.random.default_rng(cfg.seed).choice(len(train_q), cfg.limit_queries, replace=False)
        )
    weights = query_weights(train_ds, cfg.query_sampling)
    weights = None if weights is None else weights[train_q]
    metrics = MetricsLog(run_dir / "metrics.jsonl", is_main)
    mcfg = cfg.mining()
    pos = Position()
    say = (log or logger.info) if is_main else (lambda _msg: None)
    epoch_sums = _EpochSums()

    def save(path: Path) -> None:
        if is_main:
            save_checkpoint(
                path,
                model,
                {
                    "config": cfg.to_dict(),
                    "position": asdict(pos),
                    "optimizer": opt.state_dict(),
                    "memory": memory.state(),
                    "rng": rng_state(),
                    "world_size": world,
                },
            )

    if resume:
        ck = load_checkpoint(run_dir / LATEST)
        model.load_state_dict(ck["state_dict"])
        tr = ck["extra"]["train"]
        opt.load_state_dict(tr["optimizer"])
        memory = NegativeMemory.from_state(tr["memory"])
        pos = Position(**tr["position"])
        set_rng_state(tr["rng"])
        metrics.truncate_to(pos)
        say(_resume_message(pos, cfg, run_dir / LATEST))
        if pos.batch:
            epoch_sums = _EpochSums.of_records(metrics.batch_records(pos.epoch), resumed=True)
        cached = load_cache(run_dir, pos.refresh_id)
        if cached is None:
            logger.warning(
                "%s missing: recomputing the cache with the current weights (the resumed run "
                "will not be bit-identical)",
                cache_path(run_dir, pos.refresh_id),
            )
            db_cache, q_cache = refresh_cache(
                model, train_ds, train_q, cfg, device, progress, label="cache refresh (missing cache)"
            )
        else:
            db_cache, q_cache = cached
    else:
        metrics.reset()  # records of an earlier run here that stopped before its first checkpoint
        if is_main:
            info = {
                "train": cfg.to_dict(),
                "world_size": world,
                "device": str(device),
                "train_dataset": getattr(train_ds, "name", None),
                "val_dataset": getattr(val_ds, "name", None),
                "train_queries": len(train_q),
                "backprop_from": layer,
                **(run_info or {}),
            }
            mc = getattr(model, "config", None)
            if hasattr(mc, "to_dict"):
                info["model"] = mc.to_dict()
            atomic_write_text(run_dir / "config.json", json.dumps(info, indent=2, default=str))
        if not getattr(model, "initialized", True):
            from netvlad.data.images import load_image
            from netvlad.models import init_clusters

            init_clusters(
                model,
                train_ds.db_paths(),
                max_images=cfg.cluster_images,
                seed=43,
                progress=progress and is_main,
                loader=load_image,
            )
            model.to(device)
        D.broadcast_model(model)
        if cfg.test0:
            ev = evaluate_places(model, val_ds, cfg, device, progress, label="off-the-shelf validation")
            metrics.write({"type": "epoch", "epoch": 0, **ev})
            say(f"epoch 0 (off-the-shelf): {_recall_text(ev['val_recall'])}")
        db_cache, q_cache = refresh_cache(model, train_ds, train_q, cfg, device, progress)
        pos.refresh_id = 1
        if is_main and cfg.save_cache:
            save_cache(run_dir, pos.refresh_id, db_cache, q_cache)
    db_cache, q_cache = db_cache.to(device), q_cache.to(device)

    db_paths, q_paths = train_ds.db_paths(), train_ds.query_paths()
    base_short = None
    if cfg.jitter_scale:
        from netvlad.data.images import load_image

        base_short = int(min(load_image(db_paths[0]).shape[:2]))
    n_avail = {}

    def n_negatives(q: int) -> int:
        if q not in n_avail:
            n_avail[q] = min(cfg.n_neg_choice, train_ds.num_db - len(train_ds.positives(q)))
        return n_avail[q]

    from tqdm import tqdm

    for epoch in range(pos.epoch, cfg.epochs + 1):
        lr, refresh_every = cfg.schedule(epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        order = epoch_order(len(train_q), cfg.seed, epoch, weights)
        n_batches = len(order) // cfg.batch_size
        if cfg.limit_batches is not None:
            n_batches = min(n_batches, cfg.limit_batches)
        start = pos.batch if epoch == pos.epoch else 0
        t_epoch = time.perf_counter()
        bar = tqdm(
            range(start, n_batches),
            desc=f"train epoch {epoch}/{cfg.epochs} ({n_batches * cfg.batch_size} queries)",
            unit="batch",
            disable=not (progress and is_main),
            dynamic_ncols=True,
        )
        model.eval()  # no dropout in the cropped backbones; BatchNorm statistics stay frozen
        for b in bar:
            ib = b + 1  # MATLAB's 1-based iBatch
            if ib % refresh_every == 0 and ib not in (1, n_batches):
                db_cache, q_cache = (
                    t.to(device) for t in refresh_cache(model, train_ds, train_q, cfg, device, progress=False)
                )
                pos.refresh_id += 1
                pos.cache_batch = pos.global_batch
                if is_main and cfg.save_cache:
                    save_cache(run_dir, pos.refresh_id, db_cache, q_cache)
            t0 = time.perf_counter()
            batch_rows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            my_rows = batch_rows[rank::world]
            qids = [int(train_q[r]) for r in my_rows]
            positives = [train_ds.nontrivial_positives(q) for q in qids]
            rand_negs = [
                train_ds.sample_negatives(q, n_negatives(q), query_rng(cfg.seed, epoch, q, 0))
                if len(p)
                else np.zeros(0, np.int64)
                for q, p in zip(qids, positives)
            ]
            res = mine(my_rows, q_cache, db_cache, positives, rand_negs, [memory.row(q) for q in qids], mcfg)
            t_mine = time.perf_counter() - t0
            loss_sum, n_trip = 0.0, 0
            for tup in res.tuples:
                q = int(train_q[tup.query])
                paths = [q_paths[q]] + [db_paths[i] for i in tup.db_ids]
                imgs, flip = _load_tuple_images(paths, cfg, query_rng(cfg.seed, epoch, q, 1), base_short)
                xs = [model.preprocess.apply(im) for im in imgs]
                if flip:
                    xs = [torch.flip(x, dims=[-1]) for x in xs]
                emb = _embed(model, xs, device, cfg.amp)
                loss, v = triplet_ranking_loss(emb[0], emb[1], emb[2:], cfg.margin, reduction="none")
                if int(v) > 0:
                    loss.backward()  # Σ over the batch; divided by the global triplet count below
                loss_sum += float(loss.detach())
                n_trip += int(v)
            stats = D.all_reduce_sum(
                torch.tensor(
                    [
                        loss_sum,
                        res.n_mined,
                        n_trip,
                        len(res.skipped),
                        sum(res.violators.values()),
                        len(res.tuples),
                    ],
                    dtype=torch.float64,
                )
            )
            loss_sum, n_mined, n_trip, n_skip, n_viol, n_tup = stats.tolist()
            # negative memory: each rank owns its queries' rows; share them (sum of +1-shifted rows)
            mem_rows = torch.zeros((len(batch_rows), cfg.n_neg_cache), dtype=torch.int64)
            for j, r in enumerate(batch_rows):
                if j % world == rank:
                    q = int(train_q[r])
                    row = res.memory.get(int(r), memory.row(q))
                    mem_rows[j, : len(row)] = torch.as_tensor(row[: cfg.n_neg_cache]) + 1
            mem_rows = D.all_reduce_sum(mem_rows) - 1
            memory.update(
                {int(train_q[r]): mem_rows[j][mem_rows[j] >= 0].numpy() for j, r in enumerate(batch_rows)}
            )
            D.all_reduce_grads(params)
            if n_trip > 0:
                with torch.no_grad():
                    for p in params:
                        if p.grad is not None:
                            p.grad.div_(n_trip)
                opt.step()
            opt.zero_grad(set_to_none=True)
            pos.batch, pos.global_batch = b + 1, pos.global_batch + 1
            batch_loss = loss_sum / n_mined if n_mined else 0.0
            epoch_sums.add(loss_sum, n_mined, n_viol)
            metrics.write(
                {
                    "type": "batch",
                    "epoch": epoch,
                    "batch": b + 1,
                    "global_batch": pos.global_batch,
                    "epoch_float": epoch - 1 + (b + 1) / max(n_batches, 1),
                    "loss": batch_loss,
                    "triplets": int(n_trip),
                    "queries": len(batch_rows),
                    "mined": int(n_mined),
                    "skipped": int(n_skip),
                    "tuples": int(n_tup),
                    "violators_per_query": n_viol / n_mined if n_mined else 0.0,
                    "violators": int(n_viol),
                    "cache_age_queries": (pos.global_batch - 1 - pos.cache_batch) * cfg.batch_size,
                    "lr": lr,
                    "seconds": time.perf_counter() - t0,
                    "mining_seconds": t_mine,
                }
            )
            bar.set_postfix(loss=f"{batch_loss:.4f}", trip=int(n_trip))
            if (b + 1) % cfg.save_every_batches == 0 and b + 1 < n_batches:
                save(run_dir / LATEST)
                if is_main and cfg.save_cache:
                    prune_caches(run_dir, {pos.refresh_id})
        bar.close()
        # end of epoch: val test, full train refresh (the next epoch's cache), checkpoints
        ev = evaluate_places(model, val_ds, cfg, device, progress, label=f"epoch {epoch} validation")
        metrics.write({"type": "epoch", "epoch": epoch, **ev})
        logger.debug("epoch %d val recall@%s rank loss %s", epoch, ev["val_recall"], ev["val_rankloss"])
        say(epoch_sums.summary(epoch, cfg.epochs, ev["val_recall"], time.perf_counter() - t_epoch))
        epoch_sums = _EpochSums()
        db_cache, q_cache = (
            t.to(device)
            for t in refresh_cache(
                model, train_ds, train_q, cfg, device, progress, label=f"epoch {epoch} cache refresh"
            )
        )
        pos.refresh_id += 1
        pos.epoch, pos.batch, pos.cache_batch = epoch + 1, 0, pos.global_batch
        if is_main:
            if cfg.save_cache:
                save_cache(run_dir, pos.refresh_id, db_cache, q_cache)
            save(run_dir / f"epoch_{epoch:03d}.pt")
            save(run_dir / LATEST)
            if cfg.save_cache:
                prune_caches(run_dir, {pos.refresh_id})
            plot_curves(run_dir)
        D.barrier()
    return run_dir
