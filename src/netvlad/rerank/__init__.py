"""Re-ranking of a global search: Patch-NetVLAD patch matching, αQE, DBA, k-reciprocal, position priors.

A *re-ranker* is a callable ``reranker(query_ids (Q,), ranked Q×n) -> Q×n`` with a ``top_n``
attribute: it re-orders each query's first ``top_n`` candidates and leaves the rest of the list
alone. ``netvlad.metrics.evaluate(..., rerank=reranker)`` fetches at least ``top_n`` candidates,
calls it, and scores the new order; ``netvlad evaluate --rerank`` and ``netvlad query --rerank``
build one with :func:`build_reranker`.

- :mod:`netvlad.rerank.matching`: mutual nearest neighbours, rapid spatial scoring, RANSAC
  scoring, multi-scale fusion (pure functions on patch descriptors and positions).
- :mod:`netvlad.rerank.patch`: :class:`PatchReranker` (Patch-NetVLAD; patch features written by
  ``netvlad extract --patches`` / :func:`netvlad.extract.extract_patches`).
- :mod:`netvlad.rerank.expansion`: :func:`aqe`, :func:`dba`, :func:`k_reciprocal` and
  :class:`GlobalReranker` on global descriptors.
- :mod:`netvlad.rerank.prior`: a GPS fix with its uncertainty gating or re-weighting candidates.
- :mod:`netvlad.rerank.files`: re-rankers built from feature and patch files (what ``evaluate
  --rerank`` and ``query --rerank`` do).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netvlad.rerank.expansion import (
    GLOBAL_METHODS,
    GlobalReranker,
    aqe,
    dba,
    k_reciprocal,
    k_reciprocal_distances,
    reorder,
    rescore,
)
from netvlad.rerank.files import open_patch_file, rerank_photo_results, reranker_from_files
from netvlad.rerank.matching import (
    fuse_scales,
    homographies,
    mutual_nn,
    ransac_inliers,
    ransac_score,
    spatial_score,
)
from netvlad.rerank.patch import (
    PERFORMANCE_WEIGHTS,
    SCORERS,
    MemoryPatchStore,
    PatchMatchConfig,
    PatchReranker,
    patch_scores,
)

__all__ = [
    "DEFAULT_TOP_N",
    "GLOBAL_METHODS",
    "METHODS",
    "PERFORMANCE_WEIGHTS",
    "SCORERS",
    "GlobalReranker",
    "MemoryPatchStore",
    "PatchMatchConfig",
    "PatchReranker",
    "aqe",
    "build_reranker",
    "dba",
    "fuse_scales",
    "homographies",
    "k_reciprocal",
    "k_reciprocal_distances",
    "mutual_nn",
    "open_patch_file",
    "patch_scores",
    "ransac_inliers",
    "ransac_score",
    "reorder",
    "rerank_photo_results",
    "rerank_results",
    "reranker_from_files",
    "rescore",
    "spatial_score",
]

#: Re-rankings by name (``--rerank``).
METHODS = ("patch", *GLOBAL_METHODS)
#: Candidates of the global search that are re-ranked (Patch-NetVLAD's default).
DEFAULT_TOP_N = 100


def build_reranker(method: str, *, top_n: int = DEFAULT_TOP_N, queries: np.ndarray | None = None,
                   db: np.ndarray | None = None, query_patches=None, db_patches=None,
                   query_names: Sequence[str] | None = None, db_names: Sequence[str] | None = None,
                   scorer: str = "spatial", weights: Sequence[float] | None = None, **params):
    """A re-ranker by name (one of :data:`METHODS`).

    Args:
        method: "patch" needs ``query_patches``/``db_patches`` (patch stores) and the names of the
            query and database ids; "aqe", "dba", "kreciprocal" need ``queries`` (Q×D) and ``db``
            (N×D) global descriptors.
        top_n: candidates re-ranked per query.
        scorer, weights: Patch-NetVLAD's scorer ("spatial" | "ransac") and per-scale weights
            (default: :data:`PERFORMANCE_WEIGHTS` for three scales, else equal).
        params: further keyword arguments of :class:`GlobalReranker` (k, alpha, k1, k2, lambda_value)
            or :class:`PatchMatchConfig` (ransac_threshold, ransac_iters, seed).

    Raises:
        ValueError: unknown method, or the inputs it needs are missing.
    """
    if method not in METHODS:
        raise ValueError(f"unknown re-ranking {method!r}; choose from {', '.join(METHODS)}")
    if method == "patch":
        if query_patches is None or db_patches is None:
            raise ValueError("re-ranking 'patch' needs patch features of the queries and the database "
                             "(netvlad extract --patches)")
        if query_names is None or db_names is None:
            raise ValueError("re-ranking 'patch' needs the query and database image names")
        if weights is None and len(db_patches.scales) == len(PERFORMANCE_WEIGHTS):
            weights = PERFORMANCE_WEIGHTS
        cfg = PatchMatchConfig(scorer=scorer, weights=None if weights is None else tuple(weights),
                               top_n=top_n, **params)
        return PatchReranker(query_patches, db_patches, query_names, db_names, cfg)
    if queries is None or db is None:
        raise ValueError(f"re-ranking {method!r} needs the query and database global descriptors")
    return GlobalReranker(method, queries, db, top_n=top_n, **params)


def rerank_results(results: list[dict], reranker, k: int) -> list[dict]:
    """Re-order ``netvlad query``'s result objects (one per photo, each with a ``results`` list of
    {rank, id, ...} in search order) by ``reranker`` and keep the first ``k``; ``location`` (and
    ``location_latlon``) follow the new best match. Returns new objects; ``results`` is not modified.
    """
    width = max((len(r["results"]) for r in results), default=0)
    ranked = np.full((len(results), width), -1, np.int64)
    for i, r in enumerate(results):
        ranked[i, :len(r["results"])] = [x["id"] for x in r["results"]]
    order = reranker(np.arange(len(results)), ranked)
    out = []
    for r, row in zip(results, order):
        by_id = {x["id"]: x for x in r["results"]}
        items = [{**by_id[int(i)], "rank": n} for n, i in enumerate((i for i in row if i >= 0), 1)][:k]
        best = items[0] if items else None
        out.append({**r, "results": items, "location": best["utm"] if best else None,
                    "location_latlon": best.get("latlon") if best else None})
    return out
