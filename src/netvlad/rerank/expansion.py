"""Cheap re-ranking on global descriptors: αQE, DBA and k-reciprocal re-ranking.

- αQE (Radenović et al., TPAMI 2018): the query is replaced by the L2-normalised sum of itself and
  its top-k database descriptors, each weighted by (cosine similarity)^α.
- DBA (database-side augmentation, same paper): every database descriptor is replaced by the same
  weighted sum over its own k nearest database neighbours (itself included).
- k-reciprocal re-ranking (Zhong et al., CVPR 2017) with the distance transformations and defaults
  of OpenIBL's ``re_ranking`` (k1 = 25, k2 = 1, λ = 0 as its evaluator calls it).

Each is a pure function on descriptors (rows L2-normalised, float32) and ranked lists; none keeps
state. Shapes: queries Q×D, database N×D, ranked Q×n database ids (−1 pads a short list).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "GLOBAL_METHODS", "GlobalReranker", "aqe", "dba", "k_reciprocal", "k_reciprocal_distances", "reorder",
    "rescore",
]


def _l2n(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _weighted_sum(anchor: np.ndarray, neigh: np.ndarray, alpha: float) -> np.ndarray:
    """L2n(Σ_j max(0, a·n_j)^α n_j) for each row a (``neigh`` B×k×D, the anchor included or not)."""
    sims = np.einsum("bd,bkd->bk", anchor, neigh)
    w = np.maximum(sims, 0.0) ** alpha
    return _l2n(np.einsum("bk,bkd->bd", w, neigh)).astype(np.float32)


def aqe(q: np.ndarray, db: np.ndarray, ranked: np.ndarray, k: int = 3, alpha: float = 3.0) -> np.ndarray:
    """α-weighted query expansion.

    q'_i = L2n(q_i + Σ_{j<k} max(0, q_i·d_j)^α d_j) over the query's top-k database images
    ``ranked[i, :k]`` (−1 entries are skipped).

    Args:
        q: Q×D queries; db: N×D database; ranked: Q×n (n ≥ k) the global search's ranked ids.
        k: database neighbours added; alpha: weight exponent (0: plain average QE).

    Returns:
        Q×D float32 expanded queries.
    """
    q = np.asarray(q, np.float32)
    db = np.asarray(db, np.float32)
    top = np.asarray(ranked, np.int64)[:, :k]
    neigh = np.where((top >= 0)[..., None], db[np.maximum(top, 0)], 0.0)
    # The query's own term: weight 1 = max(0, q·q)^α for a unit query.
    neigh = np.concatenate([q[:, None, :], neigh], axis=1)
    return _weighted_sum(q, neigh, alpha)


def dba(db: np.ndarray, k: int = 3, alpha: float = 3.0, rows: np.ndarray | None = None,
        block: int | None = None) -> np.ndarray:
    """Database-side augmentation: d'_i = L2n(Σ_{j ∈ kNN(i)} max(0, d_i·d_j)^α d_j), kNN(i) the k
    nearest database descriptors of d_i, itself included (exact search).

    Args:
        db: N×D database descriptors.
        k: neighbours (itself included; 1 leaves the database as it is).
        alpha: weight exponent.
        rows: augment only these database rows (e.g. a query's candidates); default all.
        block: database block size of the exact search.

    Returns:
        len(rows)×D float32 augmented descriptors (N×D without ``rows``).
    """
    from netvlad.index import topk

    db = np.asarray(db, np.float32)
    rows = np.arange(len(db)) if rows is None else np.asarray(rows, np.int64)
    anchor = db[rows]
    _, nn = topk(anchor, db, min(int(k), len(db)), block=block)
    return _weighted_sum(anchor, db[nn], alpha)


def k_reciprocal_distances(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, k1: int = 25, k2: int = 1,
                           lambda_value: float = 0.0) -> np.ndarray:
    """k-reciprocal re-ranking distances (Zhong et al. 2017) as OpenIBL's ``re_ranking`` computes them.

    The inputs are squared Euclidean distances (OpenIBL's ``pairwise_distance``); as there, they
    are squared once more and each column of the joint (Q+G)² matrix is divided by its maximum.
    Each image's k-reciprocal set (with the 2/3 expansion at k1/2) weighted by exp(−distance), an
    optional local query expansion over k2 neighbours, then the Jaccard distance, mixed with the
    original distance by λ.

    Args:
        q_g: Q×G query-gallery, q_q: Q×Q, g_g: G×G squared distances.

    Returns:
        Q×G float32 re-ranked distances (lower is better).
    """
    q_g = np.asarray(q_g, np.float32)
    nq = q_g.shape[0]
    d = np.block([[np.asarray(q_q, np.float32), q_g], [q_g.T, np.asarray(g_g, np.float32)]])
    d = np.power(d, 2).astype(np.float32)
    d = np.transpose(d / np.max(d, axis=0))
    n = d.shape[0]
    initial = np.argsort(d, axis=1, kind="stable").astype(np.int64)
    v = np.zeros_like(d)
    half = int(np.around(k1 / 2.0))
    for i in range(n):
        recip = _k_reciprocal(initial, i, k1)
        expansion = recip
        for c in recip:
            cand = _k_reciprocal(initial, int(c), half)
            if len(np.intersect1d(cand, recip)) > 2.0 / 3 * len(cand):
                expansion = np.append(expansion, cand)
        expansion = np.unique(expansion)
        w = np.exp(-d[i, expansion])
        v[i, expansion] = w / w.sum()
    if k2 != 1:
        v = v[initial[:, :k2]].mean(axis=1)
    vq = v[:nq]
    # Jaccard via Σ_j min(V_qj, V_gj) over the columns both use: one dense minimum per query.
    inter = np.stack([np.minimum(vq[i][None, :], v).sum(axis=1) for i in range(nq)])
    jaccard = 1.0 - inter / (2.0 - inter)
    final = jaccard * (1 - lambda_value) + d[:nq] * lambda_value
    return final[:, nq:].astype(np.float32)


def _k_reciprocal(initial: np.ndarray, i: int, k: int) -> np.ndarray:
    forward = initial[i, :k + 1]
    backward = initial[forward, :k + 1]
    return forward[np.flatnonzero((backward == i).any(axis=1))]


def k_reciprocal(q: np.ndarray, db: np.ndarray, k1: int = 25, k2: int = 1,
                 lambda_value: float = 0.0) -> np.ndarray:
    """:func:`k_reciprocal_distances` from descriptors: Q×N re-ranked distances (lower is better).

    Squared distances as OpenIBL computes them (‖x‖² + ‖y‖² − 2x·y). Memory and time grow with
    (Q+N)²: use it on a shortlist (see :class:`netvlad.rerank.GlobalReranker`).
    """
    q = np.asarray(q, np.float32)
    db = np.asarray(db, np.float32)

    def sq(a, b):
        return (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T

    return k_reciprocal_distances(sq(q, db), sq(q, q), sq(db, db), k1=k1, k2=k2, lambda_value=lambda_value)


def rescore(q: np.ndarray, db: np.ndarray, ranked: np.ndarray) -> np.ndarray:
    """Inner products of each query with its ranked candidates: Q×n float32 (−inf where id is −1)."""
    ranked = np.asarray(ranked, np.int64)
    cand = np.asarray(db, np.float32)[np.maximum(ranked, 0)]
    s = np.einsum("qd,qnd->qn", np.asarray(q, np.float32), cand)
    return np.where(ranked >= 0, s, -np.inf).astype(np.float32)


def reorder(ranked: np.ndarray, scores: np.ndarray, top_n: int | None = None) -> np.ndarray:
    """Re-order each query's first ``top_n`` candidates by ``scores`` (higher first; ties keep the
    original order); the rest of the list and −1 pads stay where they are.

    Args:
        ranked: Q×n ids; scores: Q×m (m = min(top_n, n)) scores of ``ranked[:, :m]``.

    Returns:
        Q×n int64.
    """
    ranked = np.asarray(ranked, np.int64)
    m = ranked.shape[1] if top_n is None else min(int(top_n), ranked.shape[1])
    scores = np.asarray(scores, np.float64)[:, :m]
    head = ranked[:, :m]
    scores = np.where(head >= 0, scores, -np.inf)  # pads stay last
    order = np.argsort(-scores, axis=1, kind="stable")
    out = ranked.copy()
    out[:, :m] = np.take_along_axis(head, order, axis=1)
    return out


#: The cheap re-rankings :class:`GlobalReranker` offers.
GLOBAL_METHODS = ("aqe", "dba", "kreciprocal")


class GlobalReranker:
    """Re-rank each query's first ``top_n`` candidates with αQE, DBA or k-reciprocal distances
    (a callable for ``evaluate(rerank=)``; only the order inside the shortlist changes).

    - "aqe": candidates re-scored against the expanded query (:func:`aqe`, top ``k``).
    - "dba": candidates re-scored after augmenting them (:func:`dba`; their neighbours are searched
      in the whole database, so only the shortlist is augmented).
    - "kreciprocal": :func:`k_reciprocal` on the queries of a chunk (``chunk`` of them) together with
      the union of their shortlists: OpenIBL runs it on all queries and the whole gallery, which is
      (Q+N)² memory; on a shortlist it costs (chunk + chunk·top_n)² at most.

    Args:
        method: one of :data:`GLOBAL_METHODS`.
        queries: Q×D query descriptors (indexed by the query ids given at call time); db: N×D.
        top_n: shortlist length; k, alpha: αQE / DBA parameters; k1, k2, lambda_value: k-reciprocal's.
    """

    def __init__(self, method: str, queries: np.ndarray, db: np.ndarray, top_n: int = 100, k: int = 3,
                 alpha: float = 3.0, k1: int = 25, k2: int = 1, lambda_value: float = 0.0,
                 chunk: int = 256):
        if method not in GLOBAL_METHODS:
            raise ValueError(f"unknown re-ranking {method!r}; choose from {', '.join(GLOBAL_METHODS)}")
        if top_n < 1:
            raise ValueError(f"top_n must be >= 1, got {top_n}")
        self.method = method
        self.queries = np.asarray(queries, np.float32)
        self.db = np.asarray(db, np.float32)
        self.top_n = int(top_n)
        self.k, self.alpha = int(k), float(alpha)
        self.k1, self.k2, self.lambda_value = int(k1), int(k2), float(lambda_value)
        self.chunk = int(chunk)
        self.seconds = 0.0

    def __call__(self, query_ids: np.ndarray, ranked: np.ndarray) -> np.ndarray:
        import time

        t0 = time.perf_counter()
        ranked = np.asarray(ranked, np.int64)
        m = min(self.top_n, ranked.shape[1])
        head = ranked[:, :m]
        q = self.queries[np.asarray(query_ids, np.int64)]
        ok = head[:, 0] >= 0 if m else np.zeros(len(head), bool)  # a NaN query retrieved nothing
        scores = np.full(head.shape, -np.inf, np.float32)
        if ok.any():
            scores[ok] = self._scores(q[ok], head[ok])
        out = reorder(ranked, scores, m)
        self.seconds += time.perf_counter() - t0
        return out

    def _scores(self, q: np.ndarray, head: np.ndarray) -> np.ndarray:
        if self.method == "aqe":
            return rescore(aqe(q, self.db, head, self.k, self.alpha), self.db, head)
        if self.method == "dba":
            cand = np.unique(head[head >= 0])
            table = np.full(len(self.db), -1, np.int64)
            table[cand] = np.arange(len(cand))
            rows = dba(self.db, self.k, self.alpha, rows=cand)
            sub = np.where(head >= 0, table[np.maximum(head, 0)], -1)
            return rescore(q, rows, sub)
        out = np.full(head.shape, -np.inf, np.float32)
        for s in range(0, len(q), self.chunk):
            h = head[s:s + self.chunk]
            cand = np.unique(h[h >= 0])
            dist = k_reciprocal(q[s:s + self.chunk], self.db[cand], self.k1, self.k2, self.lambda_value)
            col = np.searchsorted(cand, np.maximum(h, 0))
            sc = -np.take_along_axis(dist, col, axis=1)
            out[s:s + self.chunk] = np.where(h >= 0, sc, -np.inf)
        return out
