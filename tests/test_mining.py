"""Mining on cached descriptors vs a naive float64 loop written from trainWeakly's mining steps 1–6."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netvlad.data.places import PlaceDataset
from netvlad.mining import MiningConfig, NegativeMemory, mine, query_rng, squared_distances


def naive_mine(q, qf, dbf, pos, rand, mem, cfg):
    """Literal per-query loop: returns None (skipped), or (pos_id, memory, negatives)."""
    if len(pos) == 0:
        return None
    dpos = [float(((qf - dbf[p]) ** 2).sum()) for p in pos]
    best = min(range(len(pos)), key=lambda i: (dpos[i], i))
    pos_id, d_pos = int(pos[best]), dpos[best]
    pool = sorted(set(int(x) for x in mem) | set(int(x) for x in rand))
    d = {i: float(((qf - dbf[i]) ** 2).sum()) for i in pool}
    ranked = sorted(pool, key=lambda i: (d[i], i))[: min(cfg.rank_factor * cfg.n_neg_cap, len(pool))]
    memory = ranked[: cfg.n_neg_cache]
    viol = [i for i in ranked if d[i] < d_pos + cfg.margin and (not cfg.exclude_very_hard or d[i] >= d_pos)]
    return pos_id, memory, viol[: cfg.n_neg_cap]


def _places(n_db=300, n_q=40, seed=0):
    rng = np.random.default_rng(seed)
    return PlaceDataset(
        name="rand",
        db_root=".",
        query_root=".",
        db_images=[f"d{i}" for i in range(n_db)],
        query_images=[f"q{i}" for i in range(n_q)],
        db_utm=rng.uniform(0, 400, (n_db, 2)),
        query_utm=rng.uniform(0, 400, (n_q, 2)),
    )


@pytest.mark.parametrize("exclude_very_hard", [False, True])
@pytest.mark.parametrize("margin", [0.1, 0.6])
def test_mine_matches_naive_loop(exclude_very_hard, margin):
    ds = _places()
    rng = np.random.default_rng(1)
    dim = 16
    dbf = rng.normal(size=(ds.num_db, dim))
    dbf /= np.linalg.norm(dbf, axis=1, keepdims=True)
    qf = rng.normal(size=(ds.num_queries, dim))
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    cfg = MiningConfig(
        n_neg_choice=60,
        n_neg_cap=4,
        n_neg_cache=5,
        margin=margin,
        exclude_very_hard=exclude_very_hard,
        rank_factor=3,
    )
    memory = NegativeMemory(ds.num_queries, cfg.n_neg_cache)
    n_skipped = n_tuples = 0
    for visit in range(2):  # the second visit uses the memory of the first
        for start in range(0, ds.num_queries, 4):
            qids = list(range(start, start + 4))
            pos = [ds.nontrivial_positives(q) for q in qids]
            rand = [ds.sample_negatives(q, cfg.n_neg_choice, query_rng(0, visit, q)) for q in qids]
            mem = [memory.row(q) for q in qids]
            res = mine(qids, torch.from_numpy(qf), torch.from_numpy(dbf), pos, rand, mem, cfg)
            tuples = {t.query: t for t in res.tuples}
            for i, q in enumerate(qids):
                want = naive_mine(q, qf[q], dbf, pos[i], rand[i], mem[i], cfg)
                if want is None:
                    assert q in res.skipped and q not in res.memory
                    n_skipped += 1
                    continue
                pos_id, want_mem, want_negs = want
                assert res.memory[q].tolist() == want_mem
                if want_negs:
                    t = tuples[q]
                    assert t.positive == pos_id and t.negatives.tolist() == want_negs
                    assert t.db_ids.tolist() == [pos_id, *want_negs]
                    np.testing.assert_allclose(
                        t.d_neg, [((qf[q] - dbf[j]) ** 2).sum() for j in want_negs], rtol=1e-9, atol=1e-12
                    )
                    n_tuples += 1
                else:
                    assert q in res.no_violation and q not in tuples
                assert res.violators[q] == len(want_negs)
            memory.update(res.memory)
    assert n_skipped > 0 and n_tuples > 0  # both branches exercised


def test_mine_float16_cache_and_skips():
    rng = np.random.default_rng(2)
    db = torch.from_numpy(rng.normal(size=(50, 8))).half()
    q = torch.from_numpy(rng.normal(size=(3, 8))).half()
    res = mine(
        [0, 1, 2],
        q,
        db,
        [np.array([1, 2]), np.array([], np.int64), np.array([3])],
        [np.arange(10, 30), np.zeros(0, np.int64), np.arange(20, 50)],
        [np.array([5]), [], []],
        MiningConfig(margin=100.0, n_neg_cap=3, n_neg_cache=2),
    )
    assert res.skipped == [1] and res.n_mined == 2
    # margin 100 on unit-scale data: everything violates, so the tuples take the 3 nearest
    for t in res.tuples:
        d = squared_distances(q[t.query : t.query + 1], db, t.negatives)[0]
        assert torch.all(d[1:] >= d[:-1]) and len(t.negatives) == 3
    assert len(res.memory[0]) == 2 and set(res.memory[0]) <= {5, *range(10, 30)}


def test_squared_distances_blockwise():
    rng = np.random.default_rng(3)
    db = torch.from_numpy(rng.normal(size=(37, 5)))
    q = torch.from_numpy(rng.normal(size=(4, 5)))
    ids = np.array([3, 0, 36, 7, 7])
    d = squared_distances(q, db, ids, block=2)
    want = ((q[:, None, :] - db[ids][None]) ** 2).sum(-1)
    torch.testing.assert_close(d, want)


def test_memory_round_trip_and_config_errors():
    m = NegativeMemory(3, 4)
    m.update({1: np.array([7, 8])})
    m2 = NegativeMemory.from_state(m.state())
    assert m2.row(1).tolist() == [7, 8] and m2.row(0).size == 0
    with pytest.raises(ValueError, match="n_neg_cap"):
        MiningConfig(n_neg_cap=0)
    with pytest.raises(ValueError, match="equal length"):
        mine([0], np.zeros((1, 2)), np.zeros((3, 2)), [], [], [], MiningConfig())
