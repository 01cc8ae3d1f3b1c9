"""hloc's pairs from retrieval: each query's nearest database images, as ``(query, db)`` name pairs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netvlad.index.exact import topk


def pairs_from_retrieval(query_names: Sequence[str], query_desc: np.ndarray, db_names: Sequence[str],
                         db_desc: np.ndarray, k: int,
                         min_score: float | None = None) -> list[tuple[str, str]]:
    """Per query (in order) its ``k`` nearest database names, best first, as hloc's
    ``pairs_from_retrieval`` selects them.

    Neighbours are ranked by squared L2 distance (NetVLAD's search); on L2-normalised rows (every
    NetVLAD, Patch-NetVLAD and hloc global descriptor) that is hloc's inner-product order. As in
    hloc's ``pairs_from_score_matrix``: a database entry with the query's own name is never paired
    with it, and with ``min_score`` a pair whose similarity (inner product) is below it is dropped,
    so such a query gets fewer than ``k`` pairs (hloc's script passes ``min_score=0``).

    Args:
        query_names: Q names; query_desc: Q×D.
        db_names: N names; db_desc: N×D.
        k: pairs per query (fewer when the database is smaller).
        min_score: drop pairs whose inner product is below it; None keeps all ``k``.

    Returns:
        up to Q·k ``(query_name, db_name)`` pairs, grouped by query.
    """
    query_desc = np.asarray(query_desc, dtype=np.float32)
    db_desc = np.asarray(db_desc, dtype=np.float32)
    if query_desc.shape[1] != db_desc.shape[1]:
        raise ValueError(
            f"query descriptors are {query_desc.shape[1]}-D but database ones {db_desc.shape[1]}-D")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not len(query_names) or not len(db_names):
        return []
    db_index = {n: i for i, n in enumerate(db_names)}
    overlap = any(n in db_index for n in query_names)
    _, ids = topk(query_desc, db_desc, min(k + int(overlap), len(db_names)), metric="l2")
    pairs = []
    for qi, q in enumerate(query_names):
        row = [j for j in ids[qi] if j >= 0 and db_names[j] != q][:k]
        if min_score is not None and row:
            scores = db_desc[row] @ query_desc[qi]
            row = [j for j, s in zip(row, scores) if s >= min_score]
        pairs.extend((q, db_names[j]) for j in row)
    return pairs
