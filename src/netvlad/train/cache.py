"""The mining cache and the tests: descriptors of all images with the current network, sharded over
ranks (``computeAllFeats``), and recall@N / rank loss (``testNet``) on validation and on the
training set's cache."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from netvlad.extract import compute_descriptors
from netvlad.metrics import evaluate_dataset, rank_loss, sample_queries
from netvlad.train import dist as D
from netvlad.train.config import TrainConfig
from netvlad.whitening import fit_pca

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# ---------------------------------------------------------------------------------------------
# descriptors


def _descriptors(
    model, paths: Sequence[Path], config: TrainConfig, device, progress: bool, label: str,
    precision: str = "fp32",
) -> np.ndarray:
    """N×out_dim float32 descriptors, computed in contiguous shards over ranks and all-gathered;
    `label` names the progress bar, `precision` is extraction's (fp32 or bf16)."""
    rank, world = D.rank_world()
    sl = D.shard(len(paths), rank, world)
    mine_paths = list(paths)[sl]
    if mine_paths:
        local = compute_descriptors(
            model,
            mine_paths,
            batch_size=config.compute_batch_size,
            device=str(device),
            progress=progress and rank == 0,
            num_workers=config.num_workers,
            label=label,
            precision=precision,
        )
    else:
        local = np.zeros((0, int(model.out_dim)), np.float32)
    return D.gather_rows(local, len(paths), int(model.out_dim))


def _mining_pca(db: np.ndarray, q: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    # Mining only needs distances, so plain PCA (no whitening); a few thousand samples keep the
    # float64 Gram matrix cheap at every refresh.
    p = fit_pca(db, dim=min(dim, db.shape[1], db.shape[0]), max_samples=min(10000, max(2 * dim, 2000)))
    return p.transform(db, whiten=False), p.transform(q, whiten=False)


def refresh_cache(
    model,
    train_ds,
    query_ids: np.ndarray,
    config: TrainConfig,
    device,
    progress: bool = True,
    label: str = "cache refresh",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recompute the mining cache: (db N×d, queries len(query_ids)×d) in ``config.cache_dtype``.
    Progress bars: "`label` (database)" and "`label` (queries)". With ``config.amp`` the cache is
    computed in bf16 (mining only ranks distances); the tests stay fp32."""
    qpaths = train_ds.query_paths()
    prec = "bf16" if config.amp else "fp32"
    db = _descriptors(model, train_ds.db_paths(), config, device, progress, f"{label} (database)", prec)
    q = _descriptors(model, [qpaths[i] for i in query_ids], config, device, progress, f"{label} (queries)",
                     prec)
    if config.mining_pca_dim:
        db, q = _mining_pca(db, q, config.mining_pca_dim)
    dt = _DTYPES[config.cache_dtype]
    return torch.from_numpy(np.asarray(db, np.float32)).to(dt), torch.from_numpy(
        np.asarray(q, np.float32)
    ).to(dt)


# ---------------------------------------------------------------------------------------------
# evaluation


def evaluate_places(
    model, ds, config: TrainConfig, device, progress: bool = True, label: str = "validation"
) -> dict:
    """Val recall@N on ≤ ``n_test_sample`` queries and rank loss on ≤ ``n_test_rank_sample`` queries
    (both sampled with seed 43 as ``testNet``), computing descriptors for the sampled queries only.
    Progress bars: "`label` (database)" and "`label` (queries)".

    Returns:
        {"val_recall": {N: recall}, "val_rankloss": float or None}.
    """
    sel_recall, sel_rank = _test_samples(ds.num_queries, config)
    union = np.unique(np.concatenate([sel_recall, sel_rank]))
    qpaths = ds.query_paths()
    db = _descriptors(model, ds.db_paths(), config, device, progress, f"{label} (database)")
    qd = _descriptors(model, [qpaths[i] for i in union], config, device, progress, f"{label} (queries)")
    row = {int(q): i for i, q in enumerate(union)}
    out = _test_scores(ds, db, qd, [row[int(q)] for q in sel_recall], [row[int(q)] for q in sel_rank],
                       sel_recall, sel_rank, config)
    return {"val_recall": out["recall"], "val_rankloss": out["rankloss"]}


def evaluate_cached(
    train_ds, query_ids: np.ndarray, db_cache: torch.Tensor, q_cache: torch.Tensor, config: TrainConfig
) -> dict:
    """Recall@N and rank loss on the training set from the mining cache, as ``trainWeakly`` tests its
    train features at each epoch end (sampled as the validation test: seed 43, the same sizes).

    Args:
        train_ds: the training `PlaceDataset`.
        query_ids: the dataset query ids whose descriptors are the rows of `q_cache`.
        db_cache: num_db×d database descriptors; q_cache: len(query_ids)×d (any float dtype, any
            device; with ``mining_pca_dim`` they are the reduced ones mining uses).
        config: ``recall_ns``, ``n_test_sample``, ``n_test_rank_sample``, ``margin``, ``n_neg_choice``.

    Returns:
        {"recall": {N: recall}, "rankloss": float or None (skipped, or no query with a positive)}.
    """
    ds = train_ds if len(query_ids) == train_ds.num_queries else train_ds.subset_queries(query_ids)
    sel_recall, sel_rank = _test_samples(ds.num_queries, config)
    db = db_cache.float().cpu().numpy()
    qd = q_cache.float().cpu().numpy()
    return _test_scores(ds, db, qd, sel_recall, sel_rank, sel_recall, sel_rank, config)


def _test_samples(n_q: int, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """The queries of the recall test and of the rank-loss test (``testNet``: rng 43 for both)."""
    sel_recall = sample_queries(n_q, config.n_test_sample, 43)
    sel_rank = (
        sample_queries(n_q, config.n_test_rank_sample, 43) if config.n_test_rank_sample else np.zeros(0, int)
    )
    return sel_recall, sel_rank


def _test_scores(ds, db, qd, rows_recall, rows_rank, sel_recall, sel_rank, config: TrainConfig) -> dict:
    """Recall@N of the queries `sel_recall` (descriptors ``qd[rows_recall]``) and the rank loss of
    `sel_rank` (``qd[rows_rank]``), negatives drawn as ``testCoreRank`` (rng reseeded to 43)."""
    res = evaluate_dataset(ds.subset_queries(sel_recall), db, qd[rows_recall], ns=config.recall_ns)
    out = {"recall": {int(k): float(v) for k, v in res["recall"].items()}, "rankloss": None}
    if len(sel_rank):
        rng = np.random.default_rng(43)
        pos, negs = [], []
        for q in sel_rank:
            p = ds.nontrivial_positives(int(q))
            pos.append(p)
            avail = ds.num_db - len(ds.positives(int(q)))
            negs.append(
                ds.sample_negatives(int(q), min(config.n_neg_choice, avail), rng)
                if len(p)
                else np.zeros(0, int)
            )
        with contextlib.suppress(ValueError):  # no query with a positive: no rank loss
            out["rankloss"] = rank_loss(qd[rows_rank], db, pos, negs, config.margin)
    return out
