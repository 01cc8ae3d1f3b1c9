"""Exact blockwise top-k by inner product or squared L2 distance.

The original ranks by squared L2 (``yael_nn``); inner product gives the same order only when the
database rows are unit-norm (‖q − d‖² = ‖q‖² − 2·q·d + ‖d‖²). Evaluation therefore ranks with
``metric="l2"``; :func:`check_unit_norm` guards the places that can only rank by inner product
(FAISS IP indexes). Ties are broken by database index (smaller first), so results do not depend on
the block size.
"""

from __future__ import annotations

import numpy as np

__all__ = ["UNIT_NORM_TOLERANCE", "check_unit_norm", "l2_normalize", "topk"]

# Memory budget (number of float32 scores) of one query-chunk × database-block score matrix: 32 M
# scores = 128 MiB. Keeps the exact search bounded on a shared 24 GB machine whatever N is.
_SCORE_BUDGET = 1 << 25
#: Largest |‖x‖ − 1| accepted as unit-norm: float16 storage moves norms by ~1e-3, a descriptor that
#: was never normalised is off by far more.
UNIT_NORM_TOLERANCE = 1e-2


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise x / (‖x‖₂ + eps) (the original MATLAB code's normalisation), as float32.

    Args:
        x: N×D array.

    Returns:
        N×D float32 array.
    """
    x = np.asarray(x, dtype=np.float32)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + np.float32(eps))


def _sq_norms(x: np.ndarray) -> np.ndarray:
    """Squared row norms (N,) float32.

    Summed in float32, like the scores' GEMM and like yael_nn: as accurate as the inner products
    they are combined with, at a quarter of the cost of a float64 sum (which doubled the time of a
    few-query search at 20k×4096).
    """
    x = np.asarray(x, dtype=np.float32)
    return np.einsum("ij,ij->i", x, x)


def check_unit_norm(x: np.ndarray, what: str, tol: float = UNIT_NORM_TOLERANCE) -> None:
    """ValueError unless every finite row of ``x`` (N×D) has an L2 norm within ``tol`` of 1.

    Inner-product ranking equals the original's L2 ranking only on unit-norm rows; this names the
    first offending row and its norm so the caller can normalise (:func:`l2_normalize`) knowingly.
    """
    norms = np.sqrt(_sq_norms(x))
    bad = np.flatnonzero(np.isfinite(norms) & (np.abs(norms - 1.0) > tol))
    if bad.size:
        raise ValueError(
            f"{what} descriptors are not L2-normalised: row {int(bad[0])} has norm {norms[bad[0]]:.4g}"
            f"{f' ({bad.size} rows off by more than {tol:g})' if bad.size > 1 else ''}; an "
            "inner-product index would rank them differently from the original's L2 search: "
            "normalise them first (netvlad.index.l2_normalize)"
        )


def _check_finite(x: np.ndarray, what: str, offset: int = 0) -> None:
    """ValueError naming the first non-finite row (NaN rows are images that failed extraction)."""
    if np.isfinite(x).all():
        return
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    raise ValueError(
        f"{what} descriptors contain NaN/inf: row {int(bad[0]) + offset}{more}; NaN rows are images that "
        f"failed extraction (feature-file attribute bad_images): drop them before searching"
    )


def _check_block_scores(row0: np.ndarray, dblk: np.ndarray, b0: int) -> None:
    """ValueError naming the first non-finite database row of a block, from one query's scores.

    ``row0`` is the block's scores (B,) against one finite query: a row holding NaN or ±inf scores
    NaN or ±inf against any finite query, so only the rows whose score is not finite need a look
    (a finite row whose product overflowed passes). This replaces a pass over the whole block,
    which cost a single query 2–4× the search itself (a 1 M × 256-D block: ~300 ms against ~85 ms).
    """
    bad = np.flatnonzero(~np.isfinite(row0))
    if bad.size and not np.isfinite(dblk[bad]).all():
        _check_finite(dblk, "database", b0)


def _select_stable(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best (score descending, id ascending) of the candidates ``scores``/``ids`` (R×C)."""
    order = np.lexsort((ids, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def _block_topk(s: np.ndarray, k: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact stable top-k of a score block s (R×B, higher is better), ids offset by ``offset``.

    argpartition picks an arbitrary subset among scores tied with the k-th; rows where such a tie
    straddles the boundary are redone with a full stable sort so that the smaller ids win.
    """
    r, b = s.shape
    if k >= b:
        idx = np.broadcast_to(np.arange(b), (r, b))
    else:
        idx = np.argpartition(-s, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(s, idx, 1)
    if k < b:
        kth = vals.min(axis=1)
        n_ge = (s >= kth[:, None]).sum(axis=1)
        for row in np.flatnonzero(n_ge > k):
            idx[row] = np.argsort(-s[row], kind="stable")[:k]
            vals[row] = s[row, idx[row]]
    return _select_stable(vals, idx.astype(np.int64) + offset, k)


def _faiss_module():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss_block_search(k: int, metric: str):
    """(prepare, block_topk) for :func:`topk` on FAISS's brute-force ``knn``.

    ``faiss.knn`` orders tied scores arbitrarily, so it is asked for k+1: where the (k+1)-th score
    equals the k-th, a tie may straddle the boundary and that row is redone with a stable sort.
    Scores are returned as the other backends return them ("l2": q·d − ‖d‖²/2, higher is better).
    """
    faiss = _faiss_module()
    if faiss is None:
        raise ImportError("backend='faiss' needs the faiss-cpu package (pip install faiss-cpu)")
    fmetric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2

    def prepare(dblk: np.ndarray, half: np.ndarray | None):
        return np.ascontiguousarray(dblk, dtype=np.float32), half

    def block_topk(qc: np.ndarray, prepared, b0: int):
        dblk, half = prepared
        kk = min(k + 1, dblk.shape[0])
        s, i = faiss.knn(qc, dblk, kk, metric=fmetric)
        if metric == "l2":
            s = np.float32(0.5) * (_sq_norms(qc)[:, None] - s)
        if kk > k:
            tied = np.flatnonzero(s[:, k - 1] == s[:, k])
            s, i = s[:, :k], i[:, :k]
            for row in tied:
                sc = dblk @ qc[row]
                if half is not None:
                    sc += half
                s[row], i[row] = (a[0] for a in _block_topk(sc[None, :], k, 0))
        return _select_stable(s, i.astype(np.int64) + b0, k)

    return prepare, block_topk


def _torch_block_search(k: int, device: str, tall: bool):
    """(prepare, block_topk) for :func:`topk` on torch matmuls on ``device``.

    With a bias (metric "l2") the −‖d‖²/2 term is added inside the GEMM (``addmm``): no extra pass
    over the scores. ``torch.topk`` picks arbitrarily among values tied with the k-th, so those rows
    are redone with a stable sort.
    """
    import torch

    dev = torch.device(device)

    def prepare(dblk: np.ndarray, half: np.ndarray | None):
        th = None if half is None else torch.from_numpy(half).to(dev)
        return torch.from_numpy(np.ascontiguousarray(dblk)).to(dev), th, dblk

    def block_topk(qc: np.ndarray, prepared, b0: int):
        tb, th, dblk = prepared
        ta = torch.from_numpy(qc).to(dev)
        if th is None:
            sc = (tb @ ta.T).T if tall else ta @ tb.T
        else:
            sc = torch.addmm(th[:, None], tb, ta.T).T if tall else torch.addmm(th[None, :], ta, tb.T)
        _check_block_scores(sc[0].cpu().numpy(), dblk, b0)
        if k == 1:
            v, i = sc.max(dim=1, keepdim=True)  # first maximal index: ties → smaller id
            return v.cpu().numpy(), i.cpu().numpy().astype(np.int64) + b0
        v, i = torch.topk(sc, min(k, sc.shape[1]), dim=1)
        v, i = v.cpu().numpy(), i.cpu().numpy().astype(np.int64)
        n_ge = (sc >= torch.from_numpy(v[:, -1:]).to(dev)).sum(dim=1).cpu().numpy()
        for row in np.flatnonzero(n_ge > v.shape[1]):
            sv, si = torch.sort(sc[row], descending=True, stable=True)
            v[row], i[row] = sv[: v.shape[1]].cpu().numpy(), si[: v.shape[1]].cpu().numpy()
        return _select_stable(v, i + b0, k)

    return prepare, block_topk


def _numpy_block_search(k: int, tall: bool):
    """(prepare, block_topk) for :func:`topk` on numpy's GEMM (ties handled by :func:`_block_topk`)."""

    # One score buffer for every block: a fresh Q×B result per block (128 MiB at the default
    # budget) is a fresh mmap whose page faults cost ~15 % of a 1,000-query search at 1M × 256-D.
    buf = np.empty(0, np.float32)

    def prepare(dblk: np.ndarray, half: np.ndarray | None):
        return dblk, half

    def block_topk(qc: np.ndarray, prepared, b0: int):
        nonlocal buf
        dblk, half = prepared
        # NaN/inf rows are refused just below, huge finite rows rank as they score: no warnings.
        with np.errstate(over="ignore", invalid="ignore"):
            if tall:
                sc = dblk @ qc.T
                if half is not None:
                    sc += half[:, None]
                sc = np.ascontiguousarray(sc.T)
            else:
                size = qc.shape[0] * dblk.shape[0]
                if buf.size < size:
                    buf = np.empty(size, np.float32)
                sc = np.matmul(qc, dblk.T, out=buf[:size].reshape(qc.shape[0], dblk.shape[0]))
                if half is not None:
                    sc += half[None, :]
        _check_block_scores(sc[0], dblk, b0)
        if k == 1:
            i = sc.argmax(axis=1)[:, None]  # first maximal index: ties → smaller id
            return np.take_along_axis(sc, i, 1), i.astype(np.int64) + b0
        return _block_topk(sc, k, b0)

    return prepare, block_topk


def _check_topk_inputs(
    queries: np.ndarray, database: np.ndarray, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """(queries as contiguous float32 Q×D, database as an array N×D) after validating metric and shapes."""
    if metric not in ("ip", "l2"):
        raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    db = np.asarray(database)
    if q.ndim != 2 or db.ndim != 2:
        raise ValueError(f"queries and database must be 2-D, got shapes {q.shape} and {db.shape}")
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"dimension mismatch: queries are {q.shape[1]}-D, database is {db.shape[1]}-D")
    _check_finite(q, "query")
    return q, db


def _resolve_backend(backend: str, device: str) -> str:
    """The concrete backend for ``backend`` ("auto": numpy on CPU, torch on other devices)."""
    if backend == "auto":
        backend = "numpy" if device == "cpu" else "torch"
    if backend not in ("faiss", "numpy", "torch"):
        raise ValueError(f"backend must be 'faiss', 'numpy', 'torch' or 'auto', got {backend!r}")
    return backend


def _block_search(backend: str, k: int, metric: str, device: str, tall: bool):
    """(prepare, block_topk) of ``backend``: ``prepare(dblk, half)`` once per database block,
    ``block_topk(query_chunk, prepared, b0)`` → the chunk's stable top-k (scores, ids + b0)."""
    if backend == "faiss":
        return _faiss_block_search(k, metric)
    if backend == "torch":
        return _torch_block_search(k, device, tall)
    return _numpy_block_search(k, tall)


def _search_blocks(q, db, k, block, q_chunk, metric, prepare, block_topk, progress, check_blocks):
    """Run ``block_topk`` over every (database block, query chunk); (scores Q×k, ids Q×k).

    Scores are the backends' "higher is better" scores (for "l2": q·d − ‖d‖²/2). With
    ``check_blocks`` every block is checked for non-finite rows here; otherwise ``block_topk`` checks
    its scores (:func:`_check_block_scores`).
    """
    nq, n = q.shape[0], db.shape[0]
    starts = range(0, n, block)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="search", unit="block", total=-(-n // block))
    # Query chunks inside database blocks: each database block is read once from memory.
    run_s = [None] * (-(-nq // q_chunk))
    run_i = [None] * len(run_s)
    for b0 in starts:
        dblk = np.asarray(db[b0 : b0 + block], dtype=np.float32)
        # A NaN row would score NaN against every query and land at an arbitrary rank, so refuse
        # instead of returning garbage (faiss.knn hides the scores: check the block itself).
        if check_blocks:
            _check_finite(dblk, "database", b0)
        # metric "l2" ranks by q·d − ‖d‖²/2 (= (‖q‖² − ‖q − d‖²)/2: ‖q‖² is constant per query).
        half = (np.float32(-0.5) * _sq_norms(dblk)) if metric == "l2" else None
        dprep = prepare(dblk, half)  # moved to the device once per block
        for c, q0 in enumerate(range(0, nq, q_chunk)):
            bs, bi = block_topk(q[q0 : q0 + q_chunk], dprep, b0)
            if run_s[c] is None:
                run_s[c], run_i[c] = bs, bi
            else:
                run_s[c], run_i[c] = _select_stable(
                    np.concatenate([run_s[c], bs], 1), np.concatenate([run_i[c], bi], 1), k
                )
    out_s = np.empty((nq, k), np.float32)
    out_i = np.empty((nq, k), np.int64)
    for c, q0 in enumerate(range(0, nq, q_chunk)):
        out_s[q0 : q0 + q_chunk] = run_s[c]
        out_i[q0 : q0 + q_chunk] = run_i[c]
    return out_s, out_i


def topk(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    block: int | None = None,
    device: str = "cpu",
    metric: str = "ip",
    backend: str = "auto",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest database vectors of each query, blockwise over the database.

    Memory is O(Q·k + q_chunk·block): the full Q×N score matrix is never formed. ``k`` is clamped
    to N (as ``rawNnSearch`` does). Ties are ordered by database index. Non-finite rows (the NaN
    rows of images that failed extraction) are refused with a ValueError naming the first one:
    callers drop them first (``netvlad.metrics.evaluate`` and ``netvlad index build`` do).

    Args:
        queries: Q×D array.
        database: N×D array (L2-normalised for the "ip" ranking to equal the L2 ranking).
        k: number of neighbours.
        block: database rows per block (default: a 128 MiB score budget).
        device: torch device for the matmul ("cpu", "cuda", ...); used by the torch backend.
        metric: "ip" (scores = inner products, descending) or "l2" (scores = squared L2
            distances, ascending; exact for unnormalised vectors too).
        backend: "numpy", "torch", "faiss" or "auto" (numpy on CPU, torch on other devices).
            At 1M × 256-D on the AVX-512 Xeon of benchmarks/RESULTS.md ("Search at 1 M"), numpy's
            GEMM + argmax per block ran 1,000 queries at FAISS ``IndexFlatIP``'s rate (1.05×) and
            one query in half its time; ``faiss.knn`` per block (asked for k+1 to see ties at the
            boundary) 0.96× and torch 0.59× batched.
        progress: show a progress bar over database blocks.

    Returns:
        (scores Q×k float32, ids Q×k int64).
    """
    q, db = _check_topk_inputs(queries, database, metric)
    nq, n = q.shape[0], db.shape[0]
    k = min(int(k), n)
    if k < 1 or nq == 0:
        return np.zeros((nq, max(k, 0)), np.float32), np.zeros((nq, max(k, 0)), np.int64)
    backend = _resolve_backend(backend, device)
    q_chunk = min(nq, 4096)
    if block is None:
        # faiss forms no block score matrix: the bound is the block's float32 copy (128 MiB).
        block = max(1024, _SCORE_BUDGET // (q.shape[1] if backend == "faiss" else q_chunk))
    block = max(1, int(block))
    # A few queries against a block: compute block @ q.T (a tall GEMM) and transpose; measured
    # single-threaded at 20k×256 with 4 queries: 1.8 ms vs 6.8 ms for q @ block.T.
    tall = q_chunk < 64
    prepare, block_topk = _block_search(backend, k, metric, device, tall)
    out_s, out_i = _search_blocks(
        q, db, k, block, q_chunk, metric, prepare, block_topk, progress, check_blocks=backend == "faiss"
    )
    if metric == "l2":
        qn = _sq_norms(q)
        out_s = np.maximum(qn[:, None] - 2.0 * out_s, 0.0).astype(np.float32)
    return out_s, out_i
