"""`fit`: weakly supervised NetVLAD training (``trainWeakly``), resumable and distributed.

Read top-down: `fit` starts or resumes a run (`_start` / `_resume`), then runs its epochs
(`_run_epoch`: cache refresh, `_train_batch` = mine, forward/backward, SGD step, log) and ends
each epoch (`_end_epoch`: validation and training-set tests, cache refresh, checkpoints). Every
step reads and updates one `netvlad.train.state.RunState` (what a checkpoint saves, plus the cache
in memory). Elsewhere in this package: the options (`config`), which layers train (`layers`), the
cache and the tests (`cache`), tuples (`tuples`), what ranks share (`sync`, `dist`), checkpoints
(`state`), what a run writes and prints (`runlog`), runs as the CLI starts them (`runs`).

Run directory layout:
    config.json       effective TrainConfig + model config + datasets + world size
    metrics.jsonl     one JSON record per batch (loss, mining statistics, cache age) and per epoch
                      (val and train recall@N and rank loss; epoch 0 = off-the-shelf)
    curves.png        loss and recall curves
    ckpt_latest.pt    every ``save_frequency`` queries and at each epoch end (model, optimizer,
                      negative memory, RNG states, position)
    epoch_XXX.pt      at each epoch end (same content; `pick_best` chooses among them, and a run
                      can restart from any of them)
    cache_rNNNNNN.pt  the feature cache in use (so that a resume is bit-exact without a refresh)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from netvlad.data.images import load_image
from netvlad.losses import triplet_ranking_loss
from netvlad.mining import NegativeMemory, mine, query_rng
from netvlad.models import check_device, init_clusters
from netvlad.train import dist as D
from netvlad.train.cache import evaluate_cached, evaluate_places, refresh_cache
from netvlad.train.config import TrainConfig, resolve_backprop_from
from netvlad.train.layers import freeze_for_training
from netvlad.train.runlog import (
    EpochSums,
    MetricsLog,
    plot_curves,
    rankloss_text,
    recall_text,
    resume_message,
    write_run_config,
)
from netvlad.train.sampling import epoch_order, query_weights
from netvlad.train.state import (
    LATEST,
    Position,
    RunState,
    cache_path,
    load_cache,
    load_checkpoint,
    prune_caches,
    save_cache,
    save_run_checkpoint,
    set_rng_state,
)
from netvlad.train.sync import sgd_step, share_memory
from netvlad.train.tuples import embed, load_tuple_images

logger = logging.getLogger(__name__)


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
    resume: bool | str | Path = False,
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
        resume: True continues from ``out_dir/ckpt_latest.pt``; a path restarts from that
            checkpoint of the run (e.g. ``out_dir/epoch_003.pt``: records after it are dropped).
        run_info: extra entries for config.json (e.g. the CLI's dataset specs and model name).
        log: receives the user-facing lines (where a resume starts, one summary per epoch);
            default: this module's logger at INFO. Rank 0 only.

    Returns:
        the run directory.
    """
    run = _setup(model, train_ds, val_ds, config or TrainConfig(), Path(out_dir), device, progress, log)
    if resume:
        _resume(run, run.run_dir / LATEST if resume is True else Path(resume))
    else:
        _start(run, run_info)
    if run.cfg.jitter_scale:
        run.base_short = int(min(load_image(train_ds.db_paths()[0]).shape[:2]))
    for epoch in range(run.pos.epoch, run.cfg.epochs + 1):
        t_epoch = time.perf_counter()
        _run_epoch(run, epoch)
        _end_epoch(run, epoch, t_epoch)
    return run.run_dir


# ---------------------------------------------------------------------------------------------
# start or resume


def _setup(model, train_ds, val_ds, cfg: TrainConfig, run_dir: Path, device, progress, log) -> RunState:
    """Check the inputs, freeze the untrained layers and build the optimizer and the state."""
    rank, world = D.rank_world()
    device = check_device(device)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    D.barrier()
    if cfg.batch_size < world:
        raise ValueError(f"batch_size {cfg.batch_size} < world size {world}: some ranks would have no query")
    model.to(device)
    if device.type == "cpu":
        # oneDNN's convolutions and their backward take 15 % (fp32) and 11 % (bf16) less time on
        # channels_last tensors (ResNet-18 tuples at 240×320 on a Zen 4: benchmarks/train.py
        # --tuple-only).
        model.to(memory_format=torch.channels_last)
    layer = resolve_backprop_from(cfg, getattr(getattr(model, "config", None), "backbone", None))
    params = freeze_for_training(model, layer, cfg.fix_layers)
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    train_q = np.arange(train_ds.num_queries)
    if cfg.limit_queries is not None and cfg.limit_queries < len(train_q):
        rng = np.random.default_rng(cfg.seed)
        train_q = np.sort(rng.choice(len(train_q), cfg.limit_queries, replace=False))
    weights = query_weights(train_ds, cfg.query_sampling)
    return RunState(
        model=model, train_ds=train_ds, val_ds=val_ds, cfg=cfg, run_dir=run_dir, device=device,
        progress=progress, rank=rank, world=world, layer=layer, params=params, opt=opt,
        memory=NegativeMemory(train_ds.num_queries, cfg.n_neg_cache), train_q=train_q,
        weights=None if weights is None else weights[train_q],
        metrics=MetricsLog(run_dir / "metrics.jsonl", rank == 0), mining=cfg.mining(),
        say=(log or logger.info) if rank == 0 else _silent,
    )


def _silent(_msg: str) -> None:
    """The user-facing lines of ranks other than 0."""


def _start(run: RunState, run_info: dict | None) -> None:
    """A new run: config.json, NetVLAD initialisation, the off-the-shelf test, the first cache."""
    if (run.run_dir / LATEST).exists():
        raise ValueError(
            f"{run.run_dir}: already holds a training run ({LATEST}); resume it or choose another --out"
        )
    run.metrics.reset()  # records of an earlier run here that stopped before its first checkpoint
    if run.is_main:
        write_run_config(run, run_info)
    if not getattr(run.model, "initialized", True):
        init_clusters(
            run.model,
            run.train_ds.db_paths(),
            max_images=run.cfg.cluster_images,
            seed=43,
            progress=run.progress and run.is_main,
            loader=load_image,
        )
        run.model.to(run.device)
    D.broadcast_model(run.model)
    val = None
    if run.cfg.test0:
        val = evaluate_places(
            run.model, run.val_ds, run.cfg, run.device, run.progress, label="off-the-shelf validation"
        )
    _refresh(run, "cache refresh", run.progress)
    if val is not None:  # the training-set test uses the off-the-shelf cache, as MATLAB's test0
        ev = {**val, **_train_test(run)}
        run.metrics.write({"type": "epoch", "epoch": 0, **ev})
        run.say(f"epoch 0 (off-the-shelf): {recall_text(ev['val_recall'])}, {_tests_text(ev)}")


def _resume(run: RunState, checkpoint: Path) -> None:
    """Restore model, optimizer, negative memory, RNG states, position and cache from `checkpoint`."""
    ck = load_checkpoint(checkpoint)
    run.model.load_state_dict(ck["state_dict"])
    tr = ck["extra"]["train"]
    run.opt.load_state_dict(tr["optimizer"])
    run.memory = NegativeMemory.from_state(tr["memory"])
    run.pos = Position(**tr["position"])
    set_rng_state(tr["rng"])
    run.metrics.truncate_to(run.pos)
    run.say(resume_message(run.pos, run.cfg, checkpoint))
    if run.pos.batch:
        run.sums = EpochSums.of_records(run.metrics.batch_records(run.pos.epoch), resumed=True)
    cached = load_cache(run.run_dir, run.pos.refresh_id)
    if cached is None:
        logger.warning(
            "%s missing: recomputing the cache with the current weights (the resumed run "
            "will not be bit-identical)",
            cache_path(run.run_dir, run.pos.refresh_id),
        )
        cached = refresh_cache(
            run.model, run.train_ds, run.train_q, run.cfg, run.device, run.progress,
            label="cache refresh (missing cache)",
        )
    run.db_cache, run.q_cache = (t.to(run.device) for t in cached)


# ---------------------------------------------------------------------------------------------
# the cache, the tests, checkpoints


def _refresh(run: RunState, label: str, progress: bool) -> None:
    """Recompute the mining cache with the current network (``computeAllFeats``) and keep it on disk."""
    db, q = refresh_cache(run.model, run.train_ds, run.train_q, run.cfg, run.device, progress, label=label)
    run.db_cache, run.q_cache = db.to(run.device), q.to(run.device)
    run.pos.refresh_id += 1
    run.pos.cache_batch = run.pos.global_batch
    if run.is_main and run.cfg.save_cache:
        save_cache(run.run_dir, run.pos.refresh_id, run.db_cache, run.q_cache)


def _train_test(run: RunState) -> dict:
    """Recall and rank loss on the training set from the cache (MATLAB tests on its train features).
    Rank 0 only: the other ranks write no records."""
    if not run.is_main:
        return {"train_recall": {}, "train_rankloss": None}
    ev = evaluate_cached(run.train_ds, run.train_q, run.db_cache, run.q_cache, run.cfg)
    return {"train_recall": ev["recall"], "train_rankloss": ev["rankloss"]}


def _tests_text(ev: dict) -> str:
    """ "train recall@..., rank loss val ..., train ..." of an epoch record."""
    return ", ".join(t for t in (recall_text(ev["train_recall"], "train"), rankloss_text(ev)) if t)


# ---------------------------------------------------------------------------------------------
# an epoch


def _run_epoch(run: RunState, epoch: int) -> None:
    """The batches of `epoch` from the position on, refreshing the cache and saving as MATLAB does."""
    cfg = run.cfg
    lr, refresh_every = cfg.schedule(epoch)
    for g in run.opt.param_groups:
        g["lr"] = lr
    order = epoch_order(len(run.train_q), cfg.seed, epoch, run.weights)
    n_batches = len(order) // cfg.batch_size
    if cfg.limit_batches is not None:
        n_batches = min(n_batches, cfg.limit_batches)
    start = run.pos.batch if epoch == run.pos.epoch else 0
    bar = tqdm(
        range(start, n_batches),
        desc=f"train epoch {epoch}/{cfg.epochs} ({n_batches * cfg.batch_size} queries)",
        unit="batch",
        disable=not (run.progress and run.is_main),
        dynamic_ncols=True,
    )
    run.model.eval()  # no dropout in the cropped backbones; BatchNorm statistics stay frozen
    for b in bar:
        ib = b + 1  # MATLAB's 1-based iBatch
        if ib % refresh_every == 0 and ib not in (1, n_batches):
            _refresh(run, "cache refresh", progress=False)
        rows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        rec = _train_batch(run, epoch, b, rows)
        rec.update(epoch_float=epoch - 1 + (b + 1) / max(n_batches, 1), lr=lr)
        run.metrics.write(rec)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", trip=rec["triplets"])
        if ib % cfg.save_every_batches == 0 and ib < n_batches:
            save_run_checkpoint(run, run.run_dir / LATEST)
            if run.is_main and cfg.save_cache:
                prune_caches(run.run_dir, {run.pos.refresh_id})
    bar.close()


def _end_epoch(run: RunState, epoch: int, t_epoch: float) -> None:
    """Validation test, full training-set refresh (the next epoch's cache), training-set test,
    checkpoints and the summary line."""
    cfg = run.cfg
    label = f"epoch {epoch} validation"
    ev = evaluate_places(run.model, run.val_ds, cfg, run.device, run.progress, label=label)
    _refresh(run, f"epoch {epoch} cache refresh", run.progress)
    ev.update(_train_test(run))
    run.metrics.write({"type": "epoch", "epoch": epoch, **ev})
    logger.debug("epoch %d: %s", epoch, ev)
    run.say(run.sums.summary(epoch, cfg.epochs, ev, time.perf_counter() - t_epoch))
    run.sums = EpochSums()
    run.pos.epoch, run.pos.batch = epoch + 1, 0
    if run.is_main:
        save_run_checkpoint(run, run.run_dir / f"epoch_{epoch:03d}.pt")
        save_run_checkpoint(run, run.run_dir / LATEST)
        if cfg.save_cache:
            prune_caches(run.run_dir, {run.pos.refresh_id})
        plot_curves(run.run_dir)
    D.barrier()


# ---------------------------------------------------------------------------------------------
# a batch


def _train_batch(run: RunState, epoch: int, b: int, batch_rows: np.ndarray) -> dict:
    """Mine on the cache, forward/backward the tuples of this rank's queries, share the negative
    memory, take the SGD step; returns the batch's metrics record (without epoch_float and lr)."""
    t0 = time.perf_counter()
    res = _mine(run, epoch, batch_rows[run.rank :: run.world])
    t_mine = time.perf_counter() - t0
    loss_sum, n_trip = _forward_backward(run, epoch, res.tuples)
    counts = [loss_sum, res.n_mined, n_trip, len(res.skipped), sum(res.violators.values()), len(res.tuples)]
    stats = D.all_reduce_sum(torch.tensor(counts, dtype=torch.float64))
    loss_sum, n_mined, n_trip, n_skip, n_viol, n_tup = stats.tolist()
    share_memory(run, batch_rows, res.memory)
    sgd_step(run, n_trip)
    pos = run.pos
    pos.batch, pos.global_batch = b + 1, pos.global_batch + 1
    run.sums.add(loss_sum, n_mined, n_viol)
    return {
        "type": "batch",
        "epoch": epoch,
        "batch": b + 1,
        "global_batch": pos.global_batch,
        "loss": loss_sum / n_mined if n_mined else 0.0,
        "triplets": int(n_trip),
        "queries": len(batch_rows),
        "mined": int(n_mined),
        "skipped": int(n_skip),
        "tuples": int(n_tup),
        "violators_per_query": n_viol / n_mined if n_mined else 0.0,
        "violators": int(n_viol),
        "cache_age_queries": (pos.global_batch - 1 - pos.cache_batch) * run.cfg.batch_size,
        "seconds": time.perf_counter() - t0,
        "mining_seconds": t_mine,
    }


def _n_negatives(run: RunState, q: int) -> int:
    """Random negatives drawn for query `q` per visit: nNegChoice, or all there are."""
    if q not in run.n_avail:
        ds = run.train_ds
        run.n_avail[q] = min(run.cfg.n_neg_choice, ds.num_db - len(ds.positives(q)))
    return run.n_avail[q]


def _mine(run: RunState, epoch: int, my_rows: np.ndarray):
    """Hard-negative mining on the cached features for this rank's rows of the epoch order."""
    ds, seed = run.train_ds, run.cfg.seed
    qids = [int(run.train_q[r]) for r in my_rows]
    positives = [ds.nontrivial_positives(q) for q in qids]
    rand_negs = [
        ds.sample_negatives(q, _n_negatives(run, q), query_rng(seed, epoch, q, 0))
        if len(p)
        else np.zeros(0, np.int64)
        for q, p in zip(qids, positives)
    ]
    memory = [run.memory.row(q) for q in qids]
    return mine(my_rows, run.q_cache, run.db_cache, positives, rand_negs, memory, run.mining)


def _forward_backward(run: RunState, epoch: int, tuples) -> tuple[float, int]:
    """Loss of each mined tuple on the real network; backward where a triplet violates the margin.

    Returns:
        (Σ per-query losses, number of violating triplets) of this rank.
    """
    cfg, model = run.cfg, run.model
    q_paths, db_paths = run.train_ds.query_paths(), run.train_ds.db_paths()
    loss_sum, n_trip = 0.0, 0
    for tup in tuples:
        q = int(run.train_q[tup.query])
        paths = [q_paths[q]] + [db_paths[i] for i in tup.db_ids]
        imgs, flip = load_tuple_images(paths, cfg, query_rng(cfg.seed, epoch, q, 1), run.base_short)
        xs = [model.preprocess.apply(im) for im in imgs]
        if flip:
            xs = [torch.flip(x, dims=[-1]) for x in xs]
        emb = embed(model, xs, run.device, cfg.amp)
        loss, v = triplet_ranking_loss(emb[0], emb[1], emb[2:], cfg.margin, reduction="none")
        if int(v) > 0:
            loss.backward()  # Σ over the batch; divided by the global triplet count in _sgd_step
        loss_sum += float(loss.detach())
        n_trip += int(v)
    return loss_sum, n_trip


