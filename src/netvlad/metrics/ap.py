"""Average precision (trapezoidal, ``relja_retrievalMAP`` / Oxford ``compute_ap``), mAP and the
revisited Oxford/Paris mP@k."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netvlad.metrics.ranking import _as_rows, _check_crop, crop_to_dim


def _positive_ranks(ranked: np.ndarray, positives: np.ndarray, junk: np.ndarray | None) -> np.ndarray:
    ranked = np.asarray(ranked, dtype=np.int64)
    if junk is not None and len(junk):
        ranked = ranked[~np.isin(ranked, np.asarray(junk, dtype=np.int64))]
    return np.flatnonzero(np.isin(ranked, np.asarray(positives, dtype=np.int64)))


def average_precision(
    ranked: np.ndarray,
    positives: np.ndarray,
    junk: np.ndarray | None = None,
    num_positives: int | None = None,
) -> float:
    """Trapezoidal AP of one ranked list (``relja_retrievalMAP`` / Oxford ``compute_ap``).

    Junk images are removed from the list first (they neither help nor hurt). With precision
    p_i and recall r_i at rank i of the remaining list, p_0 = 1, r_0 = 0:
    AP = Σ_i (r_i − r_{i−1})·(p_{i−1} + p_i)/2, recall divided by the number of positives.

    Args:
        ranked: (M,) database ids, best first (the full ranking).
        positives: positive database ids; ids < 0 stand for ground-truth images missing from the
            database (Paris corrupt images): they count in the denominator but are never found.
        junk: ids to ignore.
        num_positives: denominator override (default: number of distinct positive entries).

    Returns:
        AP in [0, 1]; NaN when there are no positives.
    """
    positives = np.asarray(positives, dtype=np.int64)
    n_pos = (
        int(num_positives)
        if num_positives is not None
        else int(np.unique(positives[positives >= 0]).size + (positives < 0).sum())
    )
    if n_pos == 0:
        return float("nan")
    ranks = _positive_ranks(ranked, positives[positives >= 0], junk).astype(np.float64)
    j = np.arange(ranks.size, dtype=np.float64)
    prec0 = np.where(ranks == 0, 1.0, j / np.maximum(ranks, 1.0))
    prec1 = (j + 1.0) / (ranks + 1.0)
    return float(((prec0 + prec1) / 2.0).sum() / n_pos)


def precision_at_k(
    ranked: np.ndarray, positives: np.ndarray, junk: np.ndarray | None, kappas: Sequence[int] = (1, 5, 10)
) -> np.ndarray:
    """Revisited Oxford/Paris precision@k (revisitop ``compute_map``): with the 1-based positive
    ranks after junk removal, k_q = min(max rank, k) and P@k = #(ranks ≤ k_q) / k_q.

    Returns:
        (len(kappas),) float64; NaN when there are no positives or none is ranked.
    """
    ranks = _positive_ranks(ranked, positives, junk) + 1
    if ranks.size == 0:
        return np.full(len(kappas), np.nan)
    out = []
    for k in kappas:
        kq = min(int(ranks.max()), int(k))
        out.append((ranks <= kq).sum() / kq)
    return np.asarray(out, dtype=np.float64)


def mean_average_precision(
    ranked,
    positives: Sequence[np.ndarray],
    junk: Sequence[np.ndarray] | None = None,
    num_positives: Sequence[int] | None = None,
) -> tuple[float, np.ndarray]:
    """mAP over queries (×1, not ×100). Queries without positives get AP NaN and are left out of
    the mean (revisited protocol; the classic benchmarks always have positives).

    Returns:
        (mAP, per-query APs (Q,)).
    """
    rows = _as_rows(ranked)
    aps = np.array(
        [
            average_precision(
                r,
                positives[i],
                None if junk is None else junk[i],
                None if num_positives is None else num_positives[i],
            )
            for i, r in enumerate(rows)
        ],
        dtype=np.float64,
    )
    valid = ~np.isnan(aps)
    if not valid.any():
        raise ValueError("mAP: no query has a positive")
    return float(aps[valid].mean()), aps


def _full_ranking(db: np.ndarray, q: np.ndarray, block: int | None) -> np.ndarray:
    from netvlad.index import topk

    return topk(q, db, db.shape[0], block=block, metric="l2")[1]


def evaluate_map(
    db_desc: np.ndarray,
    q_desc: np.ndarray,
    protocols: dict[str, tuple],
    crop_dim: int | None = None,
    kappas: Sequence[int] = (1, 5, 10),
    block: int | None = None,
) -> dict:
    """mAP of a retrieval benchmark: rank all database images by L2 (exact, full sort), then AP.

    Args:
        db_desc: N×D database descriptors (ranked by squared L2, normalised or not).
        q_desc: Q×D query descriptors.
        protocols: {name: (positives, junk, num_positives or None)}, Q entries each; e.g.
            {"default": ...} for Oxford/Paris/Holidays, {"easy", "medium", "hard"} for revisited.
        crop_dim: keep the first D dimensions and re-normalise.
        kappas: k of mP@k (revisited).

    Returns:
        {"dim", "num_queries", "protocols": {name: {"map" (×100), "mp@k" (×100), "ap": [...]}}}.
    """
    crop_dim = _check_crop(crop_dim, np.shape(db_desc)[1])
    db = crop_to_dim(db_desc, crop_dim)
    q = crop_to_dim(q_desc, crop_dim)
    ranked = _full_ranking(db, q, block)
    out = {"dim": int(db.shape[1]), "num_queries": int(q.shape[0]), "protocols": {}}
    for name, (pos, junk, npos) in protocols.items():
        m, aps = mean_average_precision(ranked, pos, junk, npos)
        prs = np.array(
            [
                precision_at_k(r, pos[i], None if junk is None else junk[i], kappas)
                for i, r in enumerate(ranked)
            ]
        )
        entry = {"map": 100.0 * m}
        valid = ~np.isnan(aps)
        for j, k in enumerate(kappas):
            entry[f"mp@{k}"] = 100.0 * float(np.nan_to_num(prs[valid, j]).mean())
        entry["ap"] = [None if np.isnan(a) else float(a) for a in aps]
        out["protocols"][name] = entry
    return out
