"""Patch-NetVLAD re-ranking: score each candidate of the global search by patch matching.

A query's top-N candidates (default 100) are re-ordered by the fused patch score alone (as the
paper does; ties keep the global order). Patch descriptors come from a *store*: any object with
``scales`` (a list of (patch size, patch stride) in feature-map cells), ``rows(names)`` (store rows
of image names) and ``get(row)`` (one (descriptors P×D, positions P×2) pair per scale), such as
:class:`netvlad.io.PatchFile`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from netvlad.rerank.matching import fuse_scales, mutual_nn, ransac_score, spatial_score

__all__ = ["PERFORMANCE_WEIGHTS", "SCORERS", "MemoryPatchStore", "PatchMatchConfig", "PatchReranker",
           "patch_scores"]

#: Patch-NetVLAD's scorers: "spatial" (rapid spatial scoring) and "ransac".
SCORERS = ("spatial", "ransac")
#: The paper's multi-scale weights for patch sizes 2, 5, 8 (its "performance" setting).
PERFORMANCE_WEIGHTS = (0.45, 0.15, 0.4)

Patches = Sequence[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class PatchMatchConfig:
    """How candidates are scored.

    Attributes:
        scorer: "spatial" (rapid spatial scoring, the speed setting) or "ransac".
        weights: one weight per patch scale for :func:`fuse_scales` (None: equal weights).
        top_n: candidates of the global search re-ranked per query.
        ransac_threshold: RANSAC reprojection bound in patch strides (the paper: 1.5).
        ransac_iters: RANSAC hypotheses (all 4-match samples when there are fewer).
        seed: RANSAC sampling seed.
    """

    scorer: str = "spatial"
    weights: tuple[float, ...] | None = None
    top_n: int = 100
    ransac_threshold: float = 1.5
    ransac_iters: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.scorer not in SCORERS:
            raise ValueError(f"unknown patch scorer {self.scorer!r}; choose from {', '.join(SCORERS)}")
        if self.top_n < 1:
            raise ValueError(f"top_n must be >= 1, got {self.top_n}")


def patch_scores(query: Patches, candidates: Sequence[Patches], scales: Sequence[tuple[int, int]],
                 config: PatchMatchConfig | None = None) -> np.ndarray:
    """Fused patch scores of one query against its candidates (higher is better).

    Args:
        query: per scale, (descriptors Pq×D, positions Pq×2) of the query.
        candidates: C such lists, one per candidate.
        scales: per scale, (patch size, patch stride) in feature-map cells.

    Returns:
        (C,) float64: per scale the spatial or RANSAC score, fused with :func:`fuse_scales`.
    """
    config = config or PatchMatchConfig()
    per = np.zeros((len(candidates), len(scales)))
    # Each similarity matrix is tiny (~100 × 100 patches): a multi-threaded BLAS only adds thread
    # hand-offs, which cost 40× the product itself on a loaded 2-core machine (benchmarks/rerank.py).
    with threadpool_limits(1, user_api="blas"):
        for c, cand in enumerate(candidates):
            for s, ((qd, qp), (dd, dp), (size, stride)) in enumerate(zip(query, cand, scales)):
                qi, di = mutual_nn(qd, dd)
                if config.scorer == "spatial":
                    per[c, s] = spatial_score(qp, dp, qi, di, stride)
                else:
                    per[c, s] = ransac_score(qp, dp, qi, di, size, stride, config.ransac_threshold,
                                             config.ransac_iters, config.seed)
    return fuse_scales(per, config.weights)


class MemoryPatchStore:
    """A patch store held in memory (e.g. a user's photos described on the fly).

    Args:
        names: image names; patches: per image, per scale (descriptors P×D, positions P×2);
        scales: per scale (patch size, patch stride).
    """

    def __init__(self, names: Sequence[str], patches: Sequence[Patches], scales: Sequence[tuple[int, int]]):
        if len(names) != len(patches):
            raise ValueError(f"{len(names)} names for {len(patches)} patch lists")
        self.names = [str(n) for n in names]
        self.scales = [tuple(map(int, s)) for s in scales]
        self._patches = list(patches)
        self._index = {n: i for i, n in enumerate(self.names)}

    def rows(self, names: Sequence[str]) -> np.ndarray:
        missing = [n for n in names if n not in self._index]
        if missing:
            raise ValueError(f"no patches for image {missing[0]!r}")
        return np.array([self._index[n] for n in names], np.int64)

    def get(self, row: int) -> Patches:
        return self._patches[int(row)]


class PatchReranker:
    """Re-rank global search results with Patch-NetVLAD (a callable for ``evaluate(rerank=)``).

    Args:
        query_store, db_store: patch stores (see the module docstring) with equal ``scales``.
        query_names, db_names: the image names of query ids and database ids, looked up in the
            stores once.
        config: :class:`PatchMatchConfig`.

    Calling it with (query ids (Q,), ranked Q×n database ids) returns the ranked lists with each
    query's first ``config.top_n`` candidates re-ordered. ``seconds`` accumulates the time spent.
    """

    def __init__(self, query_store, db_store, query_names: Sequence[str], db_names: Sequence[str],
                 config: PatchMatchConfig | None = None):
        config = config or PatchMatchConfig()
        scales = [tuple(map(int, s)) for s in db_store.scales]
        if [tuple(map(int, s)) for s in query_store.scales] != scales:
            raise ValueError(f"query patches have scales {list(query_store.scales)} but database patches "
                             f"{list(db_store.scales)}")
        if config.weights is not None and len(config.weights) != len(scales):
            raise ValueError(f"{len(config.weights)} patch weights for {len(scales)} patch scales {scales}")
        self.scales = scales
        self.config = config
        self.top_n = config.top_n
        self._q = query_store
        self._db = db_store
        self._q_rows = np.asarray(query_store.rows(list(query_names)), np.int64)
        self._db_rows = np.asarray(db_store.rows(list(db_names)), np.int64)
        self.seconds = 0.0

    def __call__(self, query_ids: np.ndarray, ranked: np.ndarray,
                 progress: Callable[[int], None] | None = None) -> np.ndarray:
        from netvlad.rerank.expansion import reorder

        t0 = time.perf_counter()
        ranked = np.asarray(ranked, np.int64)
        m = min(self.top_n, ranked.shape[1])
        scores = np.full((len(ranked), m), -np.inf)
        for i, (qid, row) in enumerate(zip(np.asarray(query_ids, np.int64), ranked)):
            cand = row[:m]
            ok = cand >= 0
            if ok.any():
                query = self._q.get(int(self._q_rows[qid]))
                sets = [self._db.get(int(self._db_rows[c])) for c in cand[ok]]
                scores[i, ok] = patch_scores(query, sets, self.scales, self.config)
            if progress is not None:
                progress(i + 1)
        out = reorder(ranked, scores, m)
        self.seconds += time.perf_counter() - t0
        return out
