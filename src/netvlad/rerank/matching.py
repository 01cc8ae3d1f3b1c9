"""Patch matching and spatial scoring of Patch-NetVLAD (Hausler et al., CVPR 2021).

Mutual nearest neighbours between a query's and a candidate's patch descriptors, then one of the
paper's two scores of how well the matched patches agree in space:

- **rapid spatial scoring** (the "speed" setting): the matches' grid displacements should all be
  about the same; each match scores (x_max − |Δx − mean Δx|)² + (y_max − |Δy − mean Δy|)²;
- **RANSAC**: the number of matches a homography between the patch centres explains.

Both are divided by the query's patch count, as the authors do, so scales with different patch
counts weigh the same before :func:`fuse_scales` applies the user's weights. Scores here are
"higher is better" (Patch-NetVLAD negates them to sort ascending).

Shapes: descriptors P×D (L2-normalised), positions P×2 (row, col) of a patch's top-left cell on
the feature map, ``stride`` the patch stride in cells.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["fuse_scales", "homographies", "mutual_nn", "ransac_inliers", "ransac_score", "spatial_score"]


def mutual_nn(q: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours by inner product (= by L2 distance for unit vectors).

    Args:
        q: Pq×D query patch descriptors; d: Pd×D candidate patch descriptors.

    Returns:
        (qi, di): int64 arrays of equal length, the matched query and candidate patch indices, in
        increasing qi. Ties go to the lower index (numpy's argmax).
    """
    q = np.asarray(q, np.float32)
    d = np.asarray(d, np.float32)
    if len(q) == 0 or len(d) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sim = q @ d.T
    nn_q = sim.argmax(axis=1)  # best candidate patch of each query patch
    nn_d = sim.argmax(axis=0)  # best query patch of each candidate patch
    qi = np.flatnonzero(nn_d[nn_q] == np.arange(len(q)))
    return qi.astype(np.int64), nn_q[qi].astype(np.int64)


def spatial_score(q_pos: np.ndarray, d_pos: np.ndarray, qi: np.ndarray, di: np.ndarray,
                  stride: int = 1) -> float:
    """Rapid spatial scoring of the matches ``(qi, di)`` (the paper's Eq. 6-7).

    Positions become patch-grid indices (position // stride). With Δ = candidate − query index of
    each match and r = |Δ − mean Δ| per axis, the score is Σ (x_max − r_x)² + (y_max − r_y)²
    divided by the query's patch count, x_max / y_max being the largest grid column / row of the
    query. No match scores 0.

    Args:
        q_pos: Pq×2, d_pos: Pd×2 (row, col) patch positions in feature-map cells.
        qi, di: matched patch indices (from :func:`mutual_nn`).
        stride: the patch stride in cells.
    """
    if len(qi) == 0 or len(q_pos) == 0:
        return 0.0
    qg = np.asarray(q_pos, np.int64) // stride
    dg = np.asarray(d_pos, np.int64) // stride
    delta = (dg[di] - qg[qi]).astype(np.float64)
    r = np.abs(delta - delta.mean(axis=0))
    y_max, x_max = qg.max(axis=0).astype(np.float64)
    s = (x_max - r[:, 1]) ** 2 + (y_max - r[:, 0]) ** 2
    return float(s.sum() / len(q_pos))


def homographies(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Homographies mapping 4 source points onto 4 destination points (direct linear transform).

    Solved with h₃₃ = 1 (an 8×8 system per quadruple: one LU, several times cheaper than the SVD of
    the 8×9 system); a singular system (collinear points) falls back to the SVD's null vector.

    Args:
        src, dst: M×4×2 (x, y) point quadruples.

    Returns:
        M×3×3 float64 (a degenerate quadruple gives a matrix that explains little or nothing).
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    m = src.shape[0]
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    zero, one = np.zeros_like(x), np.ones_like(x)
    rows_u = np.stack([x, y, one, zero, zero, zero, -u * x, -u * y, -u], axis=-1)
    rows_v = np.stack([zero, zero, zero, x, y, one, -v * x, -v * y, -v], axis=-1)
    a = np.concatenate([rows_u, rows_v], axis=1)  # M×8×9
    try:
        h = np.linalg.solve(a[..., :8], -a[..., 8:])[..., 0]
        return np.concatenate([h, np.ones((m, 1))], axis=1).reshape(m, 3, 3)
    except np.linalg.LinAlgError:
        _, _, vt = np.linalg.svd(a)
        return vt[:, -1, :].reshape(m, 3, 3)


def _collinear(p: np.ndarray) -> np.ndarray:
    """(M,) True where three of the four points of a M×4×2 quadruple lie on one line."""
    out = np.zeros(len(p), bool)
    for i, j, k in ((0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)):
        d1, d2 = p[:, j] - p[:, i], p[:, k] - p[:, i]
        out |= np.abs(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]) < 1e-9
    return out


def _inlier_masks(h: np.ndarray, src: np.ndarray, dst: np.ndarray, threshold: float) -> np.ndarray:
    """M×n bool: |H·src − dst| ≤ threshold for each homography (non-finite projections are out)."""
    p = np.einsum("mij,nj->mni", h, np.c_[src, np.ones(len(src))])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        proj = p[..., :2] / p[..., 2:3]
        err = np.linalg.norm(proj - dst[None], axis=-1)
    return np.nan_to_num(err, nan=np.inf) <= threshold


def ransac_inliers(src: np.ndarray, dst: np.ndarray, threshold: float, max_iters: int = 1000,
                   seed: int = 0, confidence: float = 0.995, exhaustive: bool | None = None) -> np.ndarray:
    """The largest set of matches one homography explains (RANSAC, as ``cv2.findHomography``).

    Hypotheses are 4-match samples. Samples with three collinear points (in either image) are
    skipped, as OpenCV's subset check does. Exhaustive mode tries every sample (exact); otherwise
    ``max_iters`` samples are drawn with ``seed`` (deterministic) and tried in batches of 128, and
    the search stops once the usual bound log(1 − confidence) / log(1 − w⁴) on the iterations is
    reached, w being the best inlier ratio so far. A match is an inlier when the homography puts
    its source point within ``threshold`` of its destination point.

    Args:
        src, dst: n×2 (x, y) matched points (candidate → query, as Patch-NetVLAD).
        threshold: reprojection error bound, in the points' unit.
        exhaustive: None: exhaustive when there are at most 128 samples.

    Returns:
        (n,) bool inlier mask of the best hypothesis (all False when n < 4).
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = len(src)
    if n < 4:
        return np.zeros(n, bool)
    if exhaustive is None:
        exhaustive = math.comb(n, 4) <= 128
    if exhaustive:
        samples = np.array(list(itertools.combinations(range(n), 4)), np.int64)
    else:
        rng = np.random.default_rng(seed)
        samples = np.argpartition(rng.random((max_iters, n)), 4, axis=1)[:, :4]
    best, best_count = np.zeros(n, bool), 0
    needed, done = len(samples), 0
    while done < needed:
        s = samples[done:done + 128]
        done += len(s)
        s = s[~(_collinear(src[s]) | _collinear(dst[s]))]
        if len(s):
            masks = _inlier_masks(homographies(src[s], dst[s]), src, dst, threshold)
            counts = masks.sum(axis=1)
            i = int(counts.argmax())
            if counts[i] > best_count:
                best, best_count = masks[i], int(counts[i])
        if not exhaustive and best_count:
            w4 = (best_count / n) ** 4
            bound = 0 if w4 >= 1 else math.ceil(math.log(1 - confidence) / math.log(1 - w4))
            needed = min(len(samples), bound)
    return best


def ransac_score(q_pos: np.ndarray, d_pos: np.ndarray, qi: np.ndarray, di: np.ndarray, size: int,
                 stride: int = 1, threshold: float = 1.5, max_iters: int = 1000, seed: int = 0) -> float:
    """RANSAC scoring: homography inliers among the matches ÷ the query's patch count.

    Points are patch centres in feature-map cells, (x, y) = (col, row) + (size − 1)/2, mapped
    candidate → query. ``threshold`` is in patch strides: Patch-NetVLAD's 1.5·stride·16 pixels on
    VGG-16's 16-pixel cells. Fewer than 4 matches score 0.
    """
    if len(qi) < 4:
        return 0.0
    off = (size - 1) / 2.0
    src = np.asarray(d_pos, np.float64)[di][:, ::-1] + off
    dst = np.asarray(q_pos, np.float64)[qi][:, ::-1] + off
    inl = ransac_inliers(src, dst, threshold * stride, max_iters=max_iters, seed=seed)
    return float(inl.sum() / len(q_pos))


def fuse_scales(scores: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Multi-scale fusion: Σ_s w_s · z-score of scale s's scores over the candidates.

    As Patch-NetVLAD's ``normalise_func``: each scale is standardised across one query's
    candidates, then weighted and summed. A scale whose scores are all equal adds nothing.

    Args:
        scores: C×S, candidate × patch scale (higher is better).
        weights: S weights (default: equal).

    Returns:
        (C,) float64 fused scores (higher is better).
    """
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be candidates × scales, got shape {scores.shape}")
    s = scores.shape[1]
    w = np.ones(s) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (s,):
        raise ValueError(f"{len(w)} patch weights for {s} patch scales")
    if scores.shape[0] == 0:
        return np.zeros(0)
    std = scores.std(axis=0)
    z = np.divide(scores - scores.mean(axis=0), std, out=np.zeros_like(scores), where=std > 0)
    return z @ w
