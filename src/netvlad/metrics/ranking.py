"""recall@N on ranked lists (``recallAtN``), crop-dim, sampling and rank loss; the ranked-list rules
(`dedup_ranked`, `exclude_ranked`) come from `netvlad.protocol`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netvlad.protocol import as_rows, dedup_ranked, exclude_ranked, pad_rows  # noqa: F401 - re-exported

# recallNs of testFromFn: [1:5, 10:5:100].
DEFAULT_NS: list[int] = [1, 2, 3, 4, 5, *range(10, 101, 5)]
# The original fixes rng(43) for query sampling; we use numpy's default_rng(43) (MATLAB's
# randsample stream cannot be reproduced, the seed keeps our runs repeatable).
SAMPLE_SEED = 43


# The ranked-list rules live in netvlad.protocol (one implementation for data and metrics).
_as_rows, _pad = as_rows, pad_rows


def first_hit_rank(ranked, positives: Sequence[np.ndarray], groups: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of the first positive in each ranked list, −1 when none was retrieved.

    Args:
        ranked: Q×M int array of database ids (−1 = no result) or list of 1-D arrays.
        positives: Q arrays of positive database ids (may be empty).
        groups: optional group id per database image; ranked lists are de-duplicated first.

    Returns:
        (Q,) int64.
    """
    rows = _as_rows(dedup_ranked(ranked, groups) if groups is not None else ranked)
    if len(positives) != len(rows):
        raise ValueError(f"positives has {len(positives)} entries for {len(rows)} queries")
    out = np.full(len(rows), -1, np.int64)
    for i, (r, p) in enumerate(zip(rows, positives)):
        hit = np.flatnonzero(np.isin(r, np.asarray(p, dtype=np.int64)))
        if hit.size:
            out[i] = hit[0]
    return out


def hits_at_n(
    ranked, positives: Sequence[np.ndarray], ns: Sequence[int] = DEFAULT_NS, groups: np.ndarray | None = None
) -> np.ndarray:
    """Per-query hit indicators (``allRecalls`` of the original).

    hit@N uses the first min(N, number returned) results, so a short list simply cannot hit beyond
    its length.

    Returns:
        Q×len(ns) bool array.
    """
    first = first_hit_rank(ranked, positives, groups)
    ns = np.asarray(list(ns), dtype=np.int64)
    return (first[:, None] >= 0) & (first[:, None] < ns[None, :])


def recall_at_n(
    ranked, positives: Sequence[np.ndarray], ns: Sequence[int] = DEFAULT_NS, groups: np.ndarray | None = None
) -> dict[int, float]:
    """recall@N over all queries. Queries without positives count as failures.

    Args:
        ranked: Q×M int array of database ids, best first (−1 = no result), or list of arrays.
        positives: Q arrays of positive database ids.
        ns: the Ns.
        groups: optional group id per database image (de-duplicate ranked lists first).

    Returns:
        {N: fraction of queries with a positive in the top N}.
    """
    hits = hits_at_n(ranked, positives, ns, groups)
    if hits.shape[0] == 0:
        raise ValueError("recall@N of zero queries")
    return {int(n): float(h) for n, h in zip(ns, hits.mean(axis=0))}


def crop_to_dim(desc: np.ndarray, dim: int | None) -> np.ndarray:
    """Keep the first ``dim`` dimensions and L2-normalise rows with x/(‖x‖ + 1e-12) (cropToDim).

    Meaningful after PCA, whose dimensions are sorted by variance. Unlike testFromFn, which warns
    and evaluates uncropped when ``dim`` exceeds the dimension (results then carry the wrong
    dimension), that is an error here.

    Args:
        desc: N×D array.
        dim: target dimension, or None/0 for no cropping.

    Returns:
        N×dim float32.

    Raises:
        ValueError: ``dim`` negative or larger than D.
    """
    desc = np.asarray(desc, dtype=np.float32)
    dim = _check_crop(dim, desc.shape[1])
    if not dim:
        return desc
    x = desc[:, :dim]
    return (x / (np.linalg.norm(x, axis=1, keepdims=True) + np.float32(1e-12))).astype(np.float32)


def _check_crop(crop_dim: int | None, dim: int) -> int | None:
    if crop_dim is not None and crop_dim < 0:
        raise ValueError(f"crop dimension must be ≥ 0 (0: no cropping), got {crop_dim}")
    if crop_dim and crop_dim > dim:
        raise ValueError(
            f"crop dimension {crop_dim} exceeds the descriptor dimension {dim}: cannot keep "
            f"{crop_dim} of {dim} dimensions"
        )
    return crop_dim or None


def sample_queries(num_queries: int, n: int | None, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Indices of the evaluated queries: all of them, or n drawn without replacement (seed 43).

    Returns:
        int64 indices in evaluation (sampled) order.
    """
    if n is None or n >= num_queries:
        return np.arange(num_queries, dtype=np.int64)
    if n < 1:
        raise ValueError(f"sample size must be ≥ 1, got {n}")
    return np.random.default_rng(seed).choice(num_queries, size=n, replace=False).astype(np.int64)


def rank_loss(
    q_desc: np.ndarray,
    db_desc: np.ndarray,
    positives: Sequence[np.ndarray],
    negatives: Sequence[np.ndarray],
    margin: float = 0.1,
) -> float:
    """Validation rank loss of ``testCoreRank``.

    For each query with at least one (non-trivial) positive: dPos = min squared distance to its
    positives, loss = mean over its sampled negatives of max(0, dPos + margin − dNeg); the result
    is the mean over those queries.

    Args:
        q_desc: Q×D query descriptors.
        db_desc: N×D database descriptors.
        positives: Q arrays of (non-trivial) positive database ids.
        negatives: Q arrays of sampled negative database ids (outside the positive radius).
        margin: m of the ranking loss (0.1).

    Raises:
        ValueError: no query has a positive.
    """
    losses = []
    for i, (p, n) in enumerate(zip(positives, negatives)):
        p = np.asarray(p, dtype=np.int64)
        if p.size == 0:
            continue
        q = q_desc[i].astype(np.float64)
        d_pos = ((db_desc[p].astype(np.float64) - q) ** 2).sum(1).min()
        d_neg = ((db_desc[np.asarray(n, dtype=np.int64)].astype(np.float64) - q) ** 2).sum(1)
        losses.append(np.maximum(0.0, d_pos + margin - d_neg).mean() if d_neg.size else 0.0)
    if not losses:
        raise ValueError("rank loss: no query has a positive")
    return float(np.mean(losses))
