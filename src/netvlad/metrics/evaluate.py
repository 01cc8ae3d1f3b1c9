"""recall@N evaluation of query descriptors against a database (testCore + recallAtN)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netvlad.metrics.ranking import (
    DEFAULT_NS,
    SAMPLE_SEED,
    _check_crop,
    crop_to_dim,
    first_hit_rank,
    rank_loss,
    sample_queries,
)
from netvlad.protocol import RETRIEVE_FACTOR, apply_rules, ranking_rules

# Over-fetch factors of the MATLAB nnSearchPostprocess implementations.
DEDUP_OVERFETCH = RETRIEVE_FACTOR["tokyo247_dedup"]
EXCLUDE_OVERFETCH = RETRIEVE_FACTOR["tokyotm_timestamp"]
#: Queries of the rank loss (``testCoreRank``'s nTestRankSample), drawn with seed 43.
RANK_SAMPLE = 5000


def evaluate(
    db_desc: np.ndarray,
    q_desc: np.ndarray,
    positives: Sequence[np.ndarray],
    ns: Sequence[int] = DEFAULT_NS,
    crop_dim: int | None = None,
    groups: np.ndarray | None = None,
    exclude: Sequence[np.ndarray] | None = None,
    sample: int | None = None,
    conditions: Sequence[str] | None = None,
    seed: int = SAMPLE_SEED,
    block: int | None = None,
    keep: int = 5,
    rerank=None,
) -> dict:
    """recall@N of query descriptors against a database (testCore + recallAtN).

    Exact squared-L2 ranking, as the original's ``yael_nn``, whether or not the rows are
    L2-normalised (ties: smaller database id first).
    NaN rows (images that failed extraction with ``skip_bad``): a NaN database image is never
    ranked; a NaN query retrieves nothing and counts as a failure (it stays in the denominator).

    Args:
        db_desc: N×D database descriptors.
        q_desc: Q×D query descriptors.
        positives: Q arrays of positive database ids (within the evaluation radius).
        ns: the Ns (default 1–5, 10–100 step 5).
        crop_dim: keep the first D dimensions and re-normalise (ValueError if D exceeds the
            dimension: the original's warn-and-ignore would label results with the wrong D).
        groups: (N,) group id per database image: keep the first image of each group in each
            ranked list (Tokyo 24/7 panoramas; retrieves 12·max(ns) first, as the original).
        exclude: Q arrays of database ids removed from each query's list (TokyoTM same-timestamp
            rule; retrieves 10·max(ns) first, as the original).
        sample: evaluate n queries drawn with ``default_rng(seed)`` (in sampled order).
        conditions: Q labels (e.g. Tokyo 24/7 day/sunset/night): adds a per-condition breakdown.
        seed: sampling seed (43).
        block: database block size of the exact search.
        keep: top results per query kept in the output (for reports).
        rerank: a re-ranker (``netvlad.rerank``): called as ``rerank(query_ids, ranked)`` on at least
            its ``top_n`` candidates per query, after the ranked-list rules; recall scores its order.

    Returns:
        dict with "num_queries", "num_db", "dim", "ns", "recall" ({N: fraction}, N ascending),
        "query_indices" (evaluated queries, in order), "first_hit" (0-based rank of the first
        positive, −1 if none in the top max(ns)), "num_positives", "top" (Q×keep ids),
        "hits" (Q×len(ns) bool), "bad_queries" (evaluated query indices with NaN descriptors),
        "bad_db" (database indices with NaN descriptors, left out of the ranking) and
        "by_condition" ({label: {"num_queries", "recall"}}) when
        conditions are given.
    """
    ns = sorted({int(n) for n in ns})
    crop_dim = _check_crop(crop_dim, np.shape(db_desc)[1])
    db = crop_to_dim(db_desc, crop_dim)
    qall = crop_to_dim(np.asarray(q_desc), crop_dim)
    _check_inputs(ns, db, qall, positives, groups, exclude, conditions)
    sel = sample_queries(qall.shape[0], sample, seed)
    q = qall[sel]
    pos = [np.asarray(positives[i], dtype=np.int64) for i in sel]
    sel_exclude = None if exclude is None else [exclude[i] for i in sel]
    ranked, db_ok, q_ok = _ranked(db, q, sel, max(ns), groups, sel_exclude, block, rerank)
    out = _result(ranked, pos, sel, ns, db, crop_dim, sample, seed, keep, db_ok, q_ok)
    if conditions is not None:
        out["conditions"] = [str(conditions[i]) for i in sel]
        out["by_condition"] = _by_condition(out["conditions"], ns, out["hits"])
    return out


def _result(ranked, pos, sel, ns, db, crop_dim, sample, seed, keep, db_ok, q_ok) -> dict:
    """The dict of `evaluate` from the ranked lists (Q×≥max(ns) ids) and the positives."""
    first = first_hit_rank(ranked, pos)
    hits = (first[:, None] >= 0) & (first[:, None] < np.asarray(ns)[None, :])
    return {
        "num_queries": int(len(sel)),
        "num_db": int(db.shape[0]),
        "dim": int(db.shape[1]),
        "crop_dim": int(crop_dim) if crop_dim else None,
        "sample": int(sample) if sample is not None else None,
        "seed": int(seed),
        "ns": ns,
        "recall": {n: float(h) for n, h in zip(ns, hits.mean(axis=0))},
        "query_indices": sel,
        "first_hit": first,
        "num_positives": np.array([p.size for p in pos], dtype=np.int64),
        "top": ranked[:, :keep],
        "hits": hits,
        "bad_queries": sel[~q_ok],
        "bad_db": np.flatnonzero(~db_ok),
    }


def _ranked(db, q, sel, n_top: int, groups, exclude, block, rerank):
    """The ranked lists of `evaluate` (re-ranked when asked: fetching ``rerank.top_n`` first)."""
    fetch = max(n_top, int(getattr(rerank, "top_n", 0)))
    ranked, db_ok, q_ok = rank_lists(db, q, fetch, groups=groups, exclude=exclude, block=block)
    if rerank is not None:
        ranked = rerank(sel, ranked)[:, :n_top]
    return ranked, db_ok, q_ok


def _check_inputs(ns, db, qall, positives, groups, exclude, conditions) -> None:
    """`evaluate`'s argument checks: one ValueError naming what does not match."""
    if not ns or ns[0] < 1:
        raise ValueError(f"Ns must be positive integers, got {ns}")
    n_q = qall.shape[0]
    if len(positives) != n_q:
        raise ValueError(f"{len(positives)} positive lists for {n_q} queries")
    if db.shape[1] != qall.shape[1]:
        raise ValueError(f"dimension mismatch: database {db.shape[1]}-D, queries {qall.shape[1]}-D")
    if groups is not None and len(groups) != db.shape[0]:
        raise ValueError(f"groups has {len(groups)} entries for {db.shape[0]} database images")
    if exclude is not None and len(exclude) != n_q:
        raise ValueError(f"exclude has {len(exclude)} entries for {n_q} queries")
    if conditions is not None and len(conditions) != n_q:
        raise ValueError(f"conditions has {len(conditions)} entries for {n_q} queries")


def _by_condition(labels: list[str], ns: list[int], hits: np.ndarray) -> dict:
    """{label: {"num_queries", "recall": {N: fraction}}} over the evaluated queries' labels."""
    by = {}
    for lab in dict.fromkeys(labels):
        m = np.array([x == lab for x in labels])
        by[lab] = {
            "num_queries": int(m.sum()),
            "recall": {n: float(h) for n, h in zip(ns, hits[m].mean(axis=0))},
        }
    return by


def rank_lists(
    db: np.ndarray,
    q: np.ndarray,
    n_top: int,
    groups: np.ndarray | None = None,
    exclude: Sequence[np.ndarray] | None = None,
    block: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top ``n_top`` database ids of each query after the ranked-list rules (exact squared L2).

    Images that failed extraction (NaN rows): such a database image is never ranked, such a query
    retrieves nothing (a row of −1).

    Args:
        db: N×D, q: Q×D descriptors (already cropped).
        groups: keep the first image of each group (Tokyo 24/7; over-fetches 12×).
        exclude: Q arrays of database ids removed from each list (TokyoTM; over-fetches 10×).

    Returns:
        (ranked Q×n_top int64 padded with −1, database rows that are finite (N,), query rows (Q,)).
    """
    from netvlad.index import topk

    factor = (DEDUP_OVERFETCH if groups is not None else 1) * (
        EXCLUDE_OVERFETCH if exclude is not None else 1
    )
    db_ok = np.isfinite(db).all(axis=1)
    q_ok = np.isfinite(q).all(axis=1)
    if not db_ok.any():
        raise ValueError(f"all {db.shape[0]} database descriptors are NaN (images that failed extraction)")
    if db_ok.all() and q_ok.all():
        _, ranked = topk(q, db, n_top * factor, block=block, metric="l2")
    else:
        db_ids = np.flatnonzero(db_ok)
        _, r = topk(q[q_ok], db[db_ok], n_top * factor, block=block, metric="l2")
        ranked = np.full((q.shape[0], r.shape[1]), -1, np.int64)
        ranked[q_ok] = db_ids[r]
    return apply_rules(ranked, groups, exclude, n_top), db_ok, q_ok


def dataset_rules(ds) -> tuple[np.ndarray | None, list[np.ndarray] | None]:
    """(groups, exclude) of a ``PlaceDataset``'s rules (`netvlad.protocol.ranking_rules`):
    "tokyo247_dedup" (``ds.db_groups``, or id // 12 when absent) and "tokyotm_timestamp" (database
    images with the query's timestamp)."""
    return ranking_rules(
        getattr(ds, "rules", ()) or (),
        len(ds.db_images),
        db_groups=getattr(ds, "db_groups", None),
        db_timestamps=getattr(ds, "db_timestamps", None),
        query_timestamps=getattr(ds, "query_timestamps", None),
        name=getattr(ds, "name", "dataset"),
    )


def rank_dataset(ds, db_desc: np.ndarray, q_desc: np.ndarray, k: int, crop_dim: int | None = None,
                 block: int | None = None) -> np.ndarray:
    """Each query's top ``k`` database ids under the dataset's ranked-list rules.

    Returns:
        Q×min(k, N) int64, −1 where a query retrieved nothing (a NaN descriptor).
    """
    crop_dim = _check_crop(crop_dim, np.shape(db_desc)[1])
    groups, exclude = dataset_rules(ds)
    k = min(int(k), len(ds.db_images))
    ranked, _, _ = rank_lists(crop_to_dim(db_desc, crop_dim), crop_to_dim(q_desc, crop_dim), k,
                              groups=groups, exclude=exclude, block=block)
    return ranked


def evaluate_dataset(
    ds,
    db_desc: np.ndarray,
    q_desc: np.ndarray,
    ns: Sequence[int] | None = None,
    crop_dim: int | None = None,
    sample: int | None = None,
    block: int | None = None,
    rank_sample: int = 0,
    margin: float = 0.1,
    num_negatives: int = 1000,
    protocol: str | None = None,
    rerank=None,
) -> dict:
    """:func:`evaluate` (or :func:`netvlad.metrics.msls.evaluate_msls`) with the positives and rules
    of a ``PlaceDataset``.

    Applies ``ds.rules``: "tokyo247_dedup" (``ds.db_groups``, or id // 12 when absent) and
    "tokyotm_timestamp" (database images with the query's timestamp are excluded), and breaks
    results down by ``ds.query_conditions`` when present.

    ``protocol`` (default ``ds.protocol``): "netvlad" (recallAtN, every query in the denominator,
    Ns default 1–5, 10–100 step 5) or "msls" (Mapillary's evaluation: queries without a positive
    left out, recall@N and mAP@N, Ns default 1, 5, 10, 20). The result names it in "protocol".

    Args:
        ds: a ``netvlad.data.PlaceDataset`` (duck-typed: only its attributes are read).
        db_desc: ds.num_db × D descriptors, in ``ds.db_images`` order.
        q_desc: ds.num_queries × D descriptors, in ``ds.query_images`` order.
        rerank: a re-ranker, as :func:`evaluate` takes it (netvlad protocol only).
        rank_sample: if > 0, also compute the rank loss (``testCoreRank``) on this many queries
            sampled with seed 43, ``num_negatives`` random negatives each (rng reseeded to 43).
        margin: rank-loss margin m.

    Returns:
        the :func:`evaluate` dict plus "dataset" (and "rank_loss").
    """
    from netvlad.metrics.msls import PROTOCOLS, evaluate_msls, protocol_ns

    protocol = protocol or getattr(ds, "protocol", "netvlad")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if len(ds.db_images) and np.isnan(np.asarray(ds.db_utm, dtype=np.float64)).all():
        raise ValueError(f"dataset {ds.name}: no coordinates for its images (MSLS test cities): recall "
                         "cannot be computed here; write the challenge's prediction file instead")
    groups, exclude = dataset_rules(ds)
    if rerank is not None and protocol == "msls":
        raise ValueError("re-ranking is evaluated under the netvlad protocol only (pass protocol='netvlad')")
    extra = {} if rerank is None else {"rerank": rerank}
    out = (evaluate_msls if protocol == "msls" else evaluate)(
        db_desc,
        q_desc,
        ds.all_positives(),
        ns=protocol_ns(protocol, ns),
        crop_dim=crop_dim,
        groups=groups,
        exclude=exclude,
        sample=sample,
        conditions=getattr(ds, "query_conditions", None),
        block=block,
        **extra,
    )
    out["dataset"] = ds.name
    out["protocol"] = protocol
    if rank_sample > 0:
        out["rank_loss"] = dataset_rank_loss(ds, db_desc, q_desc, rank_sample, margin, num_negatives,
                                             crop_dim)
    return out


def dataset_rank_loss(
    ds,
    db_desc: np.ndarray,
    q_desc: np.ndarray,
    sample: int | None = RANK_SAMPLE,
    margin: float = 0.1,
    num_negatives: int = 1000,
    crop_dim: int | None = None,
) -> float:
    """The rank loss of ``testCoreRank`` on a ``PlaceDataset``: ≤ `sample` queries drawn with seed 43,
    each with its non-trivial positives and `num_negatives` random negatives (rng reseeded to 43).

    NaN rows (failed images) have no distance: a NaN query is skipped (no positives), NaN database
    images are left out of its positives and negatives.

    Args:
        ds: a ``netvlad.data.PlaceDataset`` (duck-typed).
        db_desc: ds.num_db × D; q_desc: ds.num_queries × D descriptors, in the dataset's order.
        sample: queries evaluated (None: all).
        margin: m of the ranking loss.
        crop_dim: keep the first D dimensions and re-normalise first.

    Returns:
        the mean over queries with a positive of mean_j max(0, dPos + m − dNeg_j).

    Raises:
        ValueError: no sampled query has a positive.
    """
    db = crop_to_dim(db_desc, _check_crop(crop_dim, np.shape(db_desc)[1]))
    q = crop_to_dim(q_desc, _check_crop(crop_dim, np.shape(db_desc)[1]))
    sel = sample_queries(len(ds.query_images), sample, SAMPLE_SEED)
    rng = np.random.default_rng(SAMPLE_SEED)  # testCoreRank reseeds rng(43) before the loop
    pos, neg = [], []
    db_ok = np.isfinite(db).all(axis=1)
    q_ok = np.isfinite(q).all(axis=1)
    for i in sel:
        p = ds.nontrivial_positives(int(i))
        avail = len(ds.db_images) - len(ds.positives(int(i)))  # small datasets: fewer negatives
        n = ds.sample_negatives(int(i), min(num_negatives, avail), rng) if p.size else np.zeros(0, np.int64)
        p = p[db_ok[p]] if q_ok[i] else np.zeros(0, np.int64)
        pos.append(p)
        neg.append(n[db_ok[n]])
    return rank_loss(q[sel], db, pos, neg, margin)
