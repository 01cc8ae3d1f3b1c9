"""netvlad.rerank maths against independent oracles: Patch-NetVLAD patch descriptors (the layer on
the window), mutual NN, rapid spatial scoring, RANSAC, multi-scale fusion, αQE, DBA, k-reciprocal
(a transcription of OpenIBL's loops), and re-ranked orders on hand-made cases."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from netvlad.extract import patch_descriptors, patch_positions
from netvlad.layers import NetVLAD, whole_l2n
from netvlad.metrics import evaluate
from netvlad.rerank import (
    GlobalReranker,
    PatchMatchConfig,
    PatchReranker,
    aqe,
    build_reranker,
    dba,
    fuse_scales,
    homographies,
    k_reciprocal,
    mutual_nn,
    ransac_inliers,
    ransac_score,
    reorder,
    spatial_score,
)

# ------------------------------------------------------------------------------ patch descriptors


def _head_model(order="matlab", whiten=None, vladv2=False, seed=0):
    torch.manual_seed(seed)
    head = NetVLAD(6, 4, vladv2=vladv2, intra_norm=True, pre_l2=True, order=order)
    head.initialized.fill_(True)
    whitening = None
    if whiten:
        whitening = nn.Linear(head.out_dim, whiten)
    return SimpleNamespace(head=head, whitening=whitening, out_dim=whiten or head.out_dim)


@pytest.mark.parametrize("order", ["matlab", "torch"])
@pytest.mark.parametrize("whiten,dim", [(None, None), (10, None), (10, 7)])
@pytest.mark.parametrize("size,stride", [(1, 1), (3, 1), (2, 2), (4, 3)])
def test_patch_descriptor_is_the_layer_on_that_window(order, whiten, dim, size, stride):
    model = _head_model(order, whiten, vladv2=order == "torch")
    fmap = torch.randn(2, 6, 7, 9, dtype=torch.float64).float()
    desc, pos = patch_descriptors(model, fmap, size, stride, dim=dim, chunk=5)
    assert desc.shape == (2, len(pos), dim or model.out_dim)
    assert len(pos) == len(range(0, 7 - size + 1, stride)) * len(range(0, 9 - size + 1, stride))
    with torch.no_grad():
        for b in range(2):
            for p, (r, c) in enumerate(pos):
                ref = model.head(fmap[b:b + 1, :, r:r + size, c:c + size])
                if whiten:
                    n = dim or whiten
                    w = model.whitening
                    ref = whole_l2n(nn.functional.linear(ref, w.weight[:n], w.bias[:n]))
                torch.testing.assert_close(desc[b, p], ref[0], rtol=1e-5, atol=1e-6)


def test_patch_positions_row_major_and_empty_when_map_too_small():
    pos = patch_positions(3, 4, 2, 1)
    assert pos.tolist() == [[r, c] for r in range(2) for c in range(3)]
    assert patch_positions(2, 2, 3, 1).shape == (0, 2)
    model = _head_model()
    desc, pos = patch_descriptors(model, torch.randn(1, 6, 2, 2), 3, 1)
    assert desc.shape == (1, 0, model.out_dim) and pos.shape == (0, 2)


def test_patch_dim_needs_whitening():
    with pytest.raises(ValueError, match="PCA-whitening"):
        patch_descriptors(_head_model(), torch.randn(1, 6, 4, 4), 2, 1, dim=3)


# ------------------------------------------------------------------------------ matching + scores


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _mutual_naive(q, d):
    pairs = []
    for i in range(len(q)):
        best_j = max(range(len(d)), key=lambda j: (float(q[i] @ d[j]), -j))
        best_i = max(range(len(q)), key=lambda k: (float(q[k] @ d[best_j]), -k))
        if best_i == i:
            pairs.append((i, best_j))
    return pairs


@pytest.mark.parametrize("seed", range(5))
def test_mutual_nn_equals_loops(seed):
    rng = np.random.default_rng(seed)
    q, d = _unit(rng, 17, 8), _unit(rng, 13, 8)
    qi, di = mutual_nn(q, d)
    assert list(zip(qi.tolist(), di.tolist())) == _mutual_naive(q, d)
    assert mutual_nn(q[:0], d)[0].size == 0


def _spatial_naive(q_pos, d_pos, pairs, stride, num_q):
    """Patch-NetVLAD's compare_two_spatial, one match at a time (indices[0] = column)."""
    if not pairs:
        return 0.0
    qx = [q_pos[i][1] // stride for i, _ in pairs]
    qy = [q_pos[i][0] // stride for i, _ in pairs]
    dx = [d_pos[j][1] // stride for _, j in pairs]
    dy = [d_pos[j][0] // stride for _, j in pairs]
    sx = [a - b for a, b in zip(dx, qx)]
    sy = [a - b for a, b in zip(dy, qy)]
    mx, my = sum(sx) / len(sx), sum(sy) / len(sy)
    xmax = max(p[1] // stride for p in q_pos)
    ymax = max(p[0] // stride for p in q_pos)
    total = 0.0
    for a, b in zip(sx, sy):
        total += (xmax - abs(a - mx)) ** 2 + (ymax - abs(b - my)) ** 2
    return total / num_q


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("seed", range(4))
def test_spatial_score_equals_loops(stride, seed):
    rng = np.random.default_rng(seed)
    q_pos = patch_positions(6, 8, 2, stride)
    d_pos = patch_positions(6, 8, 2, stride)
    q, d = _unit(rng, len(q_pos), 5), _unit(rng, len(d_pos), 5)
    qi, di = mutual_nn(q, d)
    got = spatial_score(q_pos, d_pos, qi, di, stride)
    want = _spatial_naive(q_pos.tolist(), d_pos.tolist(), list(zip(qi.tolist(), di.tolist())), stride, len(q))
    assert got == pytest.approx(want, rel=1e-12)
    assert spatial_score(q_pos, d_pos, qi[:0], di[:0], stride) == 0.0


def test_homographies_map_their_points():
    rng = np.random.default_rng(5)
    src = rng.uniform(0, 10, (6, 4, 2))
    dst = rng.uniform(0, 10, (6, 4, 2))
    h = homographies(src, dst)
    p = np.einsum("mij,mnj->mni", h, np.concatenate([src, np.ones((6, 4, 1))], axis=2))
    np.testing.assert_allclose(p[..., :2] / p[..., 2:], dst, atol=1e-8)
    naive = np.stack([_homography_naive(a, b) for a, b in zip(src, dst)])
    np.testing.assert_allclose(h, naive / naive[:, 2:, 2:], rtol=1e-6, atol=1e-8)


def _homography_naive(src, dst):
    a = []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y, -u])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y, -v])
    return np.linalg.svd(np.array(a, float))[2][-1].reshape(3, 3)


def _collinear_naive(pts):
    for a, b, c in itertools.combinations(pts, 3):
        if abs((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])) < 1e-9:
            return True
    return False


def _ransac_naive(src, dst, thr):
    best = 0
    for comb in itertools.combinations(range(len(src)), 4):
        if _collinear_naive(src[list(comb)]) or _collinear_naive(dst[list(comb)]):
            continue
        h = _homography_naive(src[list(comb)], dst[list(comb)])
        count = 0
        for (x, y), (u, v) in zip(src, dst):
            p = h @ np.array([x, y, 1.0])
            if p[2] != 0 and np.hypot(p[0] / p[2] - u, p[1] / p[2] - v) <= thr:
                count += 1
        best = max(best, count)
    return best


@pytest.mark.parametrize("seed", range(3))
def test_ransac_exhaustive_equals_naive_search(seed):
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, 20, (8, 2))
    src[:3, 1] = 4.0  # three collinear points: samples holding them are skipped by both
    h = np.array([[1.05, 0.02, 3.0], [-0.03, 0.97, -2.0], [1e-3, 2e-3, 1.0]])
    p = np.c_[src, np.ones(8)] @ h.T
    dst = p[:, :2] / p[:, 2:]
    dst[5:] += rng.uniform(5, 9, (3, 2))  # three outliers
    mask = ransac_inliers(src, dst, 1.5, exhaustive=True)
    assert mask.sum() == _ransac_naive(src, dst, 1.5)
    assert mask[:5].all()
    # Sampled with early stopping: the planted homography's 5 inliers are found too.
    assert ransac_inliers(src, dst, 1.5, max_iters=500, exhaustive=False).sum() == mask.sum()


def test_ransac_sampled_finds_planted_homography_and_score():
    rng = np.random.default_rng(4)
    q_pos = patch_positions(8, 10, 3, 1)  # 48 patches
    n = len(q_pos)
    qi = np.arange(0, n, 2)  # 24 matches: 20 shifted by (1, 2) cells, 4 thrown far off
    off = np.tile(np.array([1, 2]), (n, 1))
    off[qi[-4:]] = rng.choice([-1, 1], (4, 2)) * rng.integers(6, 12, (4, 2))
    d_pos = q_pos + off
    di = qi
    score = ransac_score(q_pos, d_pos, qi, di, size=3, stride=1, max_iters=200, seed=0)
    assert score == pytest.approx(20 / n)
    assert ransac_score(q_pos, d_pos, qi[:3], di[:3], size=3) == 0.0


def test_fuse_scales_is_patchnetvlads_normalise_func():
    rng = np.random.default_rng(0)
    scores = rng.random((7, 3))
    w = [0.45, 0.15, 0.4]
    diffs = -scores  # Patch-NetVLAD sorts negated scores ascending
    ref = sum(w[i] * (diffs[:, i] - diffs[:, i].mean()) / diffs[:, i].std() for i in range(3))
    fused = fuse_scales(scores, w)
    np.testing.assert_allclose(fused, -ref, rtol=1e-12)
    assert np.argsort(-fused, kind="stable").tolist() == np.argsort(ref, kind="stable").tolist()
    np.testing.assert_array_equal(fuse_scales(np.ones((4, 1))), np.zeros(4))
    with pytest.raises(ValueError, match="2 patch weights for 3"):
        fuse_scales(scores, [1, 1])


# ------------------------------------------------------------------------------ re-ranked orders


class _Store:
    """A patch store in memory: names -> per-scale (descriptors, positions)."""

    def __init__(self, items, scales):
        self.names = list(items)
        self.scales = scales
        self._items = [items[n] for n in self.names]

    def rows(self, names):
        return np.array([self.names.index(n) for n in names])

    def get(self, row):
        return self._items[row]


def test_patch_rerank_hand_made_order():
    """Candidate 'c' shares the query's patches at one consistent shift; 'a' matches them scrambled,
    'b' not at all: re-ranking puts c first, then a, then b, whatever the global order."""
    rng = np.random.default_rng(0)
    pos = patch_positions(5, 6, 2, 1)  # 20 patches
    q = _unit(rng, len(pos), 16)
    perm = rng.permutation(len(pos))
    stores = {
        "a": [(q[perm], pos)],  # same descriptors, scattered positions
        "b": [(_unit(rng, len(pos), 16), pos)],
        "c": [(q, pos)],  # identical layout
    }
    qstore = _Store({"q0": [(q, pos)]}, [(2, 1)])
    db = _Store(stores, [(2, 1)])
    for scorer in ("spatial", "ransac"):
        rr = PatchReranker(qstore, db, ["q0"], ["a", "b", "c"], PatchMatchConfig(scorer=scorer, top_n=3))
        out = rr(np.array([0]), np.array([[1, 0, 2, -1]]))
        assert out.tolist() == [[2, 0, 1, -1]], scorer
    # top_n=2 leaves the third candidate where it is.
    rr = PatchReranker(qstore, db, ["q0"], ["a", "b", "c"], PatchMatchConfig(top_n=2))
    assert rr(np.array([0]), np.array([[1, 0, 2]])).tolist() == [[0, 1, 2]]


def test_reorder_is_stable_and_keeps_pads_and_tail():
    ranked = np.array([[4, 2, 7, 9, -1], [1, 0, 3, 5, 6]])
    scores = np.array([[0.5, 0.9, 0.5, 0.0], [1.0, 1.0, 2.0, 0.0]])
    out = reorder(ranked, scores[:, :3], top_n=3)
    assert out.tolist() == [[2, 4, 7, 9, -1], [3, 1, 0, 5, 6]]


def test_evaluate_scores_the_reranked_order():
    db = np.eye(4, dtype=np.float32)
    q = np.array([[1, 0.9, 0, 0], [0, 0, 1, 0.8]], np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    positives = [np.array([1]), np.array([3])]
    plain = evaluate(db, q, positives, ns=[1, 2])
    assert plain["recall"] == {1: 0.0, 2: 1.0}

    class Swap:
        top_n = 3

        def __call__(self, ids, ranked):
            assert ranked.shape[1] >= 3 and ids.tolist() == [0, 1]
            out = ranked.copy()
            out[:, [0, 1]] = ranked[:, [1, 0]]
            return out

    assert evaluate(db, q, positives, ns=[1, 2], rerank=Swap())["recall"] == {1: 1.0, 2: 1.0}


# ------------------------------------------------------------------------------ αQE, DBA, k-reciprocal


def test_aqe_equals_loop():
    rng = np.random.default_rng(0)
    db, q = _unit(rng, 30, 8), _unit(rng, 4, 8)
    ranked = np.argsort(-(q @ db.T), axis=1)
    ranked[2, 1] = -1
    got = aqe(q, db, ranked, k=3, alpha=3.0)
    for i in range(4):
        acc = q[i].astype(np.float64).copy()
        for j in ranked[i, :3]:
            if j >= 0:
                acc += max(float(q[i] @ db[j]), 0.0) ** 3 * db[j]
        np.testing.assert_allclose(got[i], acc / np.linalg.norm(acc), rtol=1e-5, atol=1e-6)


def test_dba_equals_loop_and_rows_subset():
    rng = np.random.default_rng(1)
    db = _unit(rng, 25, 6)
    got = dba(db, k=4, alpha=2.0)
    for i in range(25):
        sims = db @ db[i]
        nn_ = np.argsort(-sims, kind="stable")[:4]
        acc = sum(max(float(sims[j]), 0.0) ** 2 * db[j].astype(np.float64) for j in nn_)
        np.testing.assert_allclose(got[i], acc / np.linalg.norm(acc), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dba(db, 4, 2.0, rows=np.array([3, 7])), got[[3, 7]], rtol=1e-6)


def _openibl_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """OpenIBL's ibl/utils/rerank.py re_ranking, transcribed loop for loop."""
    original_dist = np.concatenate([np.concatenate([q_q_dist, q_g_dist], axis=1),
                                    np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)
    query_num = q_g_dist.shape[0]
    all_num = gallery_num = q_g_dist.shape[0] + q_g_dist.shape[1]
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, :k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            cf = initial_rank[candidate, :int(np.around(k1 / 2.0)) + 1]
            cb = initial_rank[cf, :int(np.around(k1 / 2.0)) + 1]
            fi_candidate = np.where(cb == candidate)[0]
            candidate_k_reciprocal_index = cf[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > \
                    2.0 / 3 * len(candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index,
                                                         candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = 1.0 * weight / np.sum(weight)
    original_dist = original_dist[:query_num, ]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    invIndex = [np.where(V[:, i] != 0)[0] for i in range(gallery_num)]
    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, gallery_num], dtype=np.float32)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            both = np.minimum(V[i, indNonZero[j]], V[indImages[j], indNonZero[j]])
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + both
        jaccard_dist[i] = 1 - temp_min / (2.0 - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


@pytest.mark.parametrize("k1,k2,lam", [(25, 1, 0.0), (6, 3, 0.3), (4, 1, 0.5)])
def test_k_reciprocal_equals_openibl(k1, k2, lam):
    rng = np.random.default_rng(k1)
    # Clustered data so that k-reciprocal sets are non-trivial.
    centres = _unit(rng, 5, 8)
    db = centres[rng.integers(0, 5, 40)] + 0.3 * rng.standard_normal((40, 8)).astype(np.float32)
    q = centres[rng.integers(0, 5, 6)] + 0.3 * rng.standard_normal((6, 8)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)

    def sq(a, b):
        return (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T

    ref = _openibl_re_ranking(sq(q, db), sq(q, q), sq(db, db), k1=k1, k2=k2, lambda_value=lam)
    np.testing.assert_allclose(k_reciprocal(q, db, k1, k2, lam), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["aqe", "dba", "kreciprocal"])
def test_global_reranker_reorders_shortlist_by_its_scores(method):
    rng = np.random.default_rng(2)
    db, q = _unit(rng, 40, 8), _unit(rng, 5, 8)
    ranked = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :12]
    rr = build_reranker(method, queries=q, db=db, top_n=10)
    out = rr(np.arange(5), ranked)
    assert out.shape == ranked.shape
    np.testing.assert_array_equal(out[:, 10:], ranked[:, 10:])  # the tail is not touched
    for i in range(5):
        assert sorted(out[i, :10]) == sorted(ranked[i, :10])
    if method == "aqe":
        want = aqe(q, db, ranked, 3, 3.0) @ db.T
    elif method == "dba":
        want = q @ dba(db, 3, 3.0).T
    else:
        want = None
    if want is not None:
        for i in range(5):
            s = want[i, out[i, :10]]
            assert np.all(np.diff(s) <= 1e-6)


def test_global_reranker_kreciprocal_equals_full_on_shortlist_union():
    rng = np.random.default_rng(3)
    db, q = _unit(rng, 20, 6), _unit(rng, 3, 6)
    ranked = np.argsort(-(q @ db.T), axis=1, kind="stable")
    rr = GlobalReranker("kreciprocal", q, db, top_n=20, k1=5)
    out = rr(np.arange(3), ranked)
    dist = k_reciprocal(q, db, k1=5)
    for i in range(3):
        assert dist[i, out[i]].tolist() == sorted(dist[i, out[i]].tolist())


def test_build_reranker_errors():
    with pytest.raises(ValueError, match="unknown re-ranking 'x'"):
        build_reranker("x")
    with pytest.raises(ValueError, match="netvlad extract --patches"):
        build_reranker("patch")
    with pytest.raises(ValueError, match="global descriptors"):
        build_reranker("aqe")
    with pytest.raises(ValueError, match="patch scorer"):
        PatchMatchConfig(scorer="sift")


# ------------------------------------------------------------------ re-rankers from files (rerank.files)


def _patch_file(path, stores: dict, fingerprint: str):
    from netvlad.io import PatchWriter

    w = PatchWriter(path, list(stores), scales=[(2, 1)], dim=16, dtype="float32",
                    attrs={"fingerprint": fingerprint})
    w.open()
    for row, sets in enumerate(stores.values()):
        w.write(row, sets, (5, 6))
    w.finish()
    return path


def test_reranker_from_files_reads_the_patch_files_next_to_the_features(tmp_path):
    from netvlad.rerank import build_reranker, reranker_from_files

    rng = np.random.default_rng(0)
    pos = patch_positions(5, 6, 2, 1)
    q = _unit(rng, len(pos), 16)
    db = {"a": [(q[rng.permutation(len(pos))], pos)], "b": [(_unit(rng, len(pos), 16), pos)], "c": [(q, pos)]}
    _patch_file(tmp_path / "db.patches.h5", db, "fp")
    _patch_file(tmp_path / "q.patches.h5", {"q0": [(q, pos)]}, "fp")
    names = {"query_names": ["q0"], "db_names": ["a", "b", "c"]}
    glob_q, glob_db = _unit(rng, 1, 8), _unit(rng, 3, 8)
    rr = reranker_from_files("patch", queries=glob_q, db=glob_db, db_features=tmp_path / "db.h5",
                             query_features=tmp_path / "q.h5", top_n=3, **names)
    assert rr(np.array([0]), np.array([[1, 0, 2]])).tolist() == [[2, 0, 1]]
    ranked = np.array([[2, 0, 1]])
    got = reranker_from_files("aqe", queries=glob_q, db=glob_db, db_features="unused.h5", top_n=3, **names)
    want = build_reranker("aqe", top_n=3, queries=glob_q, db=glob_db)
    assert got(np.array([0]), ranked).tolist() == want(np.array([0]), ranked).tolist()
    with pytest.raises(FileNotFoundError, match=r"none.patches.h5: no patch features there \(--dbp\)"):
        reranker_from_files("patch", queries=glob_q, db=glob_db, db_features=tmp_path / "none.h5",
                            options={"db_patches": "--dbp"}, **names)
    _patch_file(tmp_path / "other.patches.h5", {"q0": [(q, pos)]}, "fp2")
    with pytest.raises(ValueError, match="written by different models; pass allow_mixed=True"):
        reranker_from_files("patch", queries=glob_q, db=glob_db, db_features=tmp_path / "db.h5",
                            query_patches=tmp_path / "other.patches.h5", **names)
    mixed = reranker_from_files("patch", queries=glob_q, db=glob_db, db_features=tmp_path / "db.h5",
                                query_patches=tmp_path / "other.patches.h5", allow_mixed=True, top_n=3,
                                **names)
    assert mixed(np.array([0]), np.array([[1, 0, 2]])).tolist() == [[2, 0, 1]]


def test_rerank_photo_results_refusals(tmp_path):
    from netvlad.rerank import rerank_photo_results

    class Model:
        def fingerprint(self):
            return "other"

    rng = np.random.default_rng(1)
    pos = patch_positions(5, 6, 2, 1)
    _patch_file(tmp_path / "db.patches.h5", {"a": [(_unit(rng, len(pos), 16), pos)]}, "fp")
    args = ([], np.zeros((0, 8)), [], None, Model())
    with pytest.raises(ValueError, match="re-ranking 'aqe' needs --dbf FILE"):
        rerank_photo_results(*args, "aqe", 5, options={"db_features": "--dbf"})
    with pytest.raises(ValueError, match="re-ranking 'patch' needs db_patches FILE"):
        rerank_photo_results(*args, "patch", 5)
    with pytest.raises(ValueError, match="db.patches.h5 was written by another model than m's"):
        rerank_photo_results(*args, "patch", 5, db_patches=tmp_path / "db.patches.h5", model_label="m")
