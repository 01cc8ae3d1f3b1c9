"""Nearest-neighbour search over global descriptors: exact blockwise top-k and FAISS indexes.

The original ranks database images by squared L2 distance with an exact search (``yael_nn``,
spec §1.11). On L2-normalised descriptors, ranking by inner product gives the same order
(‖q − d‖² = 2 − 2·q·d), so the exact search here works on inner products and can also report
squared L2 distances. Ties are broken by database index (smaller index first), so results are
deterministic whatever the block size.

FAISS is imported lazily, only by :func:`build_index` / :func:`load_index`, and only for the FAISS
index kinds (``kind="exact"`` needs nothing but numpy/torch).
"""

from __future__ import annotations

from netvlad.index.exact import l2_normalize, topk
from netvlad.index.faiss_index import INDEX_KINDS, IndexConfig, SearchIndex, build_index, load_index
from netvlad.index.pairs import pairs_from_retrieval

__all__ = [
    "INDEX_KINDS", "IndexConfig", "SearchIndex", "build_index", "l2_normalize", "load_index",
    "pairs_from_retrieval", "topk",
]
