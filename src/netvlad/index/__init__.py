"""Nearest-neighbour search over global descriptors: exact blockwise top-k and FAISS indexes.

The original ranks database images by squared L2 distance with an exact search (``yael_nn`` in
its ``recallAtN``). On L2-normalised database rows, ranking by inner product gives the same order
(‖q − d‖² = ‖q‖² + 1 − 2·q·d), so the indexes work on inner products and refuse database rows that
are not unit-norm; the exact search also ranks by squared L2 (``metric="l2"``), which evaluation
uses so that any feature file is ranked as the original ranks it. Ties are broken by database
index (smaller index first), so results are deterministic whatever the block size.

:mod:`netvlad.index.build` turns feature files into a saved index (what ``netvlad index build``
does). Indexes larger than RAM (IVF lists on disk, built source by source) are in
:mod:`netvlad.index.ondisk`. FAISS is imported lazily, only by :func:`build_index` /
:func:`load_index`, and only for the FAISS index kinds (``kind="exact"`` needs nothing but numpy/torch).
"""

from __future__ import annotations

from netvlad.index.build import (
    IndexBuild,
    build_index_from_files,
    build_ondisk_index_from_files,
    dataset_coordinates,
    index_meta,
)
from netvlad.index.exact import check_unit_norm, l2_normalize, topk
from netvlad.index.faiss_index import INDEX_KINDS, IndexConfig, SearchIndex, build_index, load_index
from netvlad.index.ondisk import ONDISK_KINDS, OnDiskIndex, load_ondisk_index
from netvlad.index.ondisk_build import build_ondisk_index
from netvlad.index.pairs import pairs_from_retrieval

__all__ = [
    "INDEX_KINDS", "IndexConfig", "SearchIndex", "build_index", "check_unit_norm", "l2_normalize",
    "load_index", "pairs_from_retrieval", "topk",
    "ONDISK_KINDS", "OnDiskIndex", "build_ondisk_index", "load_ondisk_index",
    "IndexBuild", "build_index_from_files", "build_ondisk_index_from_files", "dataset_coordinates",
    "index_meta",
]
