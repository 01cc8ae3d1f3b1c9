"""recall@N, AP/mAP and the evaluation protocol against naive oracles and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from netvlad.index import l2_normalize
from netvlad.metrics import (
    DEFAULT_NS,
    average_precision,
    crop_to_dim,
    dedup_ranked,
    evaluate,
    evaluate_dataset,
    evaluate_map,
    exclude_ranked,
    mean_average_precision,
    precision_at_k,
    rank_loss,
    recall_at_n,
    sample_queries,
)


def _oracle_recall(q, db, q_utm, db_utm, ns, radius=25.0, groups=None, exclude=None):
    """The original's recallAtN in plain loops, float64: squared-L2 ranking, ties by index, 25 m positives."""
    hits = []
    for i in range(len(q)):
        if not np.isfinite(q[i]).all():  # a failed image: retrieves nothing, stays in the denominator
            hits.append([False] * len(ns))
            continue
        dist = [
            float(((q[i].astype(np.float64) - db[j].astype(np.float64)) ** 2).sum()) for j in range(len(db))
        ]
        valid = [j for j in range(len(db)) if np.isfinite(db[j]).all()]  # failed db images never ranked
        order = sorted(valid, key=lambda j: (dist[j], j))
        if exclude is not None:
            order = [j for j in order if j not in set(exclude[i].tolist())]
        if groups is not None:
            seen, kept = set(), []
            for j in order:
                if groups[j] not in seen:
                    seen.add(groups[j])
                    kept.append(j)
            order = kept
        pos = {j for j in range(len(db)) if ((q_utm[i] - db_utm[j]) ** 2).sum() <= radius**2}
        hits.append([any(j in pos for j in order[:n]) for n in ns])
    return np.mean(np.array(hits, dtype=float), axis=0)


def _positives(q_utm, db_utm, radius=25.0):
    return [np.flatnonzero(((db_utm - u) ** 2).sum(1) <= radius**2) for u in q_utm]


def test_default_ns_match_the_original():
    assert DEFAULT_NS == [1, 2, 3, 4, 5] + list(range(10, 101, 5))


def test_recall_against_oracle_random_with_queries_without_positives():
    rng = np.random.default_rng(0)
    db = l2_normalize(rng.standard_normal((150, 12)))
    q = l2_normalize(rng.standard_normal((40, 12)))
    db_utm = rng.uniform(0, 300, size=(150, 2))
    q_utm = rng.uniform(0, 300, size=(40, 2))
    q_utm[:5] = 5000.0  # far from everything: no positive, must count as failures
    pos = _positives(q_utm, db_utm)
    assert sum(p.size == 0 for p in pos) >= 5
    ns = [1, 2, 5, 10, 50, 100, 200]
    res = evaluate(db, q, pos, ns=ns, block=17)
    expect = _oracle_recall(q, db, q_utm, db_utm, ns)
    np.testing.assert_allclose([res["recall"][n] for n in ns], expect)
    assert res["num_queries"] == 40
    assert res["recall"][200] < 1.0  # the 5 positive-less queries are in the denominator
    assert (res["first_hit"][:5] == -1).all()


def test_recall_with_ties_uses_database_order():
    # Integer vectors: exact ties. db 0..3 identical; only db 3 is a positive, so the hit rank
    # depends on the tie order (index order → rank 4).
    db = np.array([[1, 0], [1, 0], [1, 0], [1, 0], [0, 1]], np.float32)
    q = np.array([[1, 0]], np.float32)
    res = evaluate(db, q, [np.array([3])], ns=[1, 3, 4])
    assert res["recall"] == {1: 0.0, 3: 0.0, 4: 1.0}
    assert res["first_hit"].tolist() == [3]
    ranked = np.array([[0, 1, 2, 3, 4]])
    assert recall_at_n(ranked, [np.array([3])], ns=[3, 4]) == {3: 0.0, 4: 1.0}


def test_recall_crop_dim_against_oracle():
    rng = np.random.default_rng(1)
    db = l2_normalize(rng.standard_normal((80, 32)))
    q = l2_normalize(rng.standard_normal((25, 32)))
    db_utm = rng.uniform(0, 150, size=(80, 2))
    q_utm = rng.uniform(0, 150, size=(25, 2))
    ns = [1, 5, 10, 20]
    res = evaluate(db, q, _positives(q_utm, db_utm), ns=ns, crop_dim=8)
    dbc = db[:, :8] / (np.linalg.norm(db[:, :8], axis=1, keepdims=True) + 1e-12)
    qc = q[:, :8] / (np.linalg.norm(q[:, :8], axis=1, keepdims=True) + 1e-12)
    np.testing.assert_allclose([res["recall"][n] for n in ns], _oracle_recall(qc, dbc, q_utm, db_utm, ns))
    assert res["dim"] == 8
    # testFromFn warns and evaluates uncropped; here that is an error (the result would carry the wrong D)
    with pytest.raises(ValueError, match="crop dimension 64 exceeds the descriptor dimension 32"):
        crop_to_dim(db, 64)


def test_dedup_groups_and_exclusion_against_oracle():
    rng = np.random.default_rng(2)
    db = l2_normalize(rng.standard_normal((120, 8)))
    q = l2_normalize(rng.standard_normal((15, 8)))
    db_utm = rng.uniform(0, 100, size=(120, 2))
    q_utm = rng.uniform(0, 100, size=(15, 2))
    groups = np.arange(120) // 12
    ns = [1, 2, 3, 5]
    pos = _positives(q_utm, db_utm, 15.0)
    res = evaluate(db, q, pos, ns=ns, groups=groups)
    np.testing.assert_allclose(
        [res["recall"][n] for n in ns], _oracle_recall(q, db, q_utm, db_utm, ns, 15.0, groups=groups)
    )
    ts_db = rng.integers(0, 4, size=120)
    ts_q = rng.integers(0, 4, size=15)
    exclude = [np.flatnonzero(ts_db == t) for t in ts_q]
    res = evaluate(db, q, pos, ns=ns, exclude=exclude)
    np.testing.assert_allclose(
        [res["recall"][n] for n in ns], _oracle_recall(q, db, q_utm, db_utm, ns, 15.0, exclude=exclude)
    )
    # excluded ids never appear
    for t, top in zip(ts_q, res["top"]):
        assert not np.isin(top[top >= 0], np.flatnonzero(ts_db == t)).any()


def test_dedup_and_exclude_helpers():
    ranked = np.array([[5, 6, 13, 7, 30, 1], [0, 12, 24, 1, -1, -1]])
    groups = np.arange(40) // 12
    np.testing.assert_array_equal(dedup_ranked(ranked, groups), [[5, 13, 30], [0, 12, 24]])
    np.testing.assert_array_equal(dedup_ranked(ranked, groups, k=2), [[5, 13], [0, 12]])
    np.testing.assert_array_equal(
        exclude_ranked(ranked, [np.array([6, 7]), np.array([], int)]), [[5, 13, 30, 1], [0, 12, 24, 1]]
    )


def test_sampling_and_conditions():
    rng = np.random.default_rng(3)
    db = l2_normalize(rng.standard_normal((60, 6)))
    q = l2_normalize(rng.standard_normal((30, 6)))
    pos = [np.array([i]) for i in range(30)]
    sel = sample_queries(30, 10)
    np.testing.assert_array_equal(sel, np.random.default_rng(43).choice(30, 10, replace=False))
    conds = ["day", "sunset", "night"] * 10
    res = evaluate(db, q, pos, ns=[1, 10], sample=10, conditions=conds)
    np.testing.assert_array_equal(res["query_indices"], sel)
    full = evaluate(db, q, pos, ns=[1, 10], conditions=conds)
    hits = full["hits"][sel]
    np.testing.assert_allclose([res["recall"][1], res["recall"][10]], hits.mean(0))
    by = full["by_condition"]
    assert list(by) == ["day", "sunset", "night"]
    assert by["night"]["num_queries"] == 10
    np.testing.assert_allclose(by["night"]["recall"][10], full["hits"][2::3, 1].mean())


def test_rank_loss_matches_loops():
    rng = np.random.default_rng(4)
    db = l2_normalize(rng.standard_normal((20, 4)))
    q = l2_normalize(rng.standard_normal((3, 4)))
    pos = [np.array([0, 1]), np.array([], int), np.array([2])]
    neg = [np.array([5, 6, 7]), np.array([8]), np.array([9, 10])]
    expect = []
    for i in (0, 2):
        dp = min(float(((q[i] - db[j]) ** 2).sum()) for j in pos[i])
        expect.append(np.mean([max(0.0, dp + 0.1 - float(((q[i] - db[j]) ** 2).sum())) for j in neg[i]]))
    assert rank_loss(q, db, pos, neg) == pytest.approx(np.mean(expect), rel=1e-6)
    with pytest.raises(ValueError, match="no query has a positive"):
        rank_loss(q, db, [np.array([], int)] * 3, neg)


def test_average_precision_hand_computed():
    # Positives at ranks 1 and 3 of 5, |P| = 2:
    #   j=1 at rank 1: (p0=1 + p1=1/1)/2 · 1/2           = 0.5
    #   j=2 at rank 3: (p2=1/2 + p3=2/3)/2 · 1/2          = 7/24
    #   AP = 12/24 + 7/24 = 19/24
    assert average_precision(np.array([0, 1, 2, 3, 4]), np.array([0, 2])) == pytest.approx(19 / 24)
    # Junk removed first: [5, 0, 3, 2] minus junk {5, 3} = [0, 2] → both positives at the top, AP 1.
    assert average_precision(np.array([5, 0, 3, 2]), np.array([0, 2]), np.array([5, 3])) == pytest.approx(1.0)
    # Single positive at rank 4: (p3 = 0/3 + p4 = 1/4)/2 = 1/8.
    assert average_precision(np.array([0, 1, 2, 3]), np.array([3])) == pytest.approx(1 / 8)
    # A ground-truth image missing from the database (id −1) still counts in |P| (MATLAB ID 0):
    # positive 0 at rank 2, |P| = 2: (0/1 + 1/2)/2 · 1/2 = 1/8.
    assert average_precision(np.array([1, 0, 2]), np.array([0, -1])) == pytest.approx(1 / 8)
    # No positive retrieved → 0; no positive at all → NaN.
    assert average_precision(np.array([1, 2]), np.array([7])) == 0.0
    assert np.isnan(average_precision(np.array([1, 2]), np.array([], int)))


def test_map_and_precision_at_k():
    ranked = np.array([[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
    pos = [np.array([0, 2]), np.array([3]), np.array([], int)]
    m, aps = mean_average_precision(ranked, pos)
    np.testing.assert_allclose(aps[:2], [19 / 24, 1 / 8])
    assert np.isnan(aps[2])
    assert m == pytest.approx((19 / 24 + 1 / 8) / 2)  # empty query left out (revisited rule)
    # revisitop: ranks (1-based) {1, 3}; k=1 → kq=1: 1/1; k=5 → kq=min(3,5)=3: 2/3.
    np.testing.assert_allclose(precision_at_k(ranked[0], pos[0], None, (1, 5)), [1.0, 2 / 3])


def test_evaluate_map_full_ranking():
    # db 0..3 along axes; query close to db 2 then db 0.
    db = np.eye(4, dtype=np.float32)
    q = l2_normalize(np.array([[0.5, 0.0, 1.0, 0.1]]))
    res = evaluate_map(
        db,
        q,
        {
            "default": ([np.array([0, 3])], [np.array([], int)], None),
            "junk": ([np.array([0, 3])], [np.array([2])], None),
        },
    )
    # order: 2, 0, 3, 1. default: positives at ranks 2, 3 → (0/1+1/2)/2/2 + (1/2+2/3)/2/2 = 1/8 + 7/24
    assert res["protocols"]["default"]["map"] == pytest.approx(100 * (1 / 8 + 7 / 24))
    # junk {2} removed → positives at ranks 1, 2 → AP 1
    assert res["protocols"]["junk"]["map"] == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------
# `netvlad evaluate` / `netvlad plot` end to end with tiny HDF5 feature files


def _write_csv(path, db_utm, q_utm, rules="", groups=None, conditions=None):
    lines = ["# name: tinyplace"]
    if rules:
        lines.append(f"# rules: {rules}")
    cols = (
        ["split", "path", "easting", "northing"]
        + ["group"] * (groups is not None)
        + ["condition"] * (conditions is not None)
    )
    lines.append(",".join(cols))
    for i, (e, n) in enumerate(db_utm):
        extra = ([] if groups is None else [str(groups[i])]) + [""] * (conditions is not None)
        lines.append(",".join(["db", f"db/{i:04d}.jpg", repr(float(e)), repr(float(n)), *extra]))
    for i, (e, n) in enumerate(q_utm):
        extra = [""] * (groups is not None) + ([] if conditions is None else [conditions[i]])
        lines.append(",".join(["query", f"q/{i:04d}.jpg", repr(float(e)), repr(float(n)), *extra]))
    path.write_text("\n".join(lines) + "\n")
    return path


def _setup_eval(tmp_path, rules="", groups=None, conditions=None, nq=12):
    from netvlad.data import load_dataset
    from netvlad.io import write_features

    rng = np.random.default_rng(7)
    db_utm = rng.uniform(0, 200, size=(60, 2))
    q_utm = np.concatenate([db_utm[: nq - 2] + rng.normal(0, 5, size=(nq - 2, 2)), [[5000.0, 5000.0]] * 2])
    spec = _write_csv(tmp_path / "ds.csv", db_utm, q_utm, rules, groups, conditions)
    ds = load_dataset(spec)
    db = l2_normalize(rng.standard_normal((60, 16)))
    q = l2_normalize(db[:nq] + 0.8 * rng.standard_normal((nq, 16)))
    perm = rng.permutation(60)  # the file's order differs from the dataset's: the CLI reorders by name
    write_features(tmp_path / "db.h5", [ds.db_images[i] for i in perm], db[perm], {"fingerprint": "x"})
    write_features(tmp_path / "q.h5", ds.query_images, q, {"fingerprint": "x"})
    return ds, db, q, db_utm, q_utm


def test_evaluate_cli_report_and_plot(tmp_path, capsys):
    import json

    from netvlad.cli import main

    ds, db, q, db_utm, q_utm = _setup_eval(tmp_path)
    rc = main(
        [
            "evaluate",
            "--dataset",
            str(tmp_path / "ds.csv"),
            "--db",
            str(tmp_path / "db.h5"),
            "--queries",
            str(tmp_path / "q.h5"),
            "--report",
            str(tmp_path / "r.json"),
            "--plot",
            str(tmp_path / "r.png"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "12 queries, 60 database images, 16-D" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["num_queries"] == 12
    assert list(rep["recall"]) == [str(n) for n in DEFAULT_NS]
    expect = _oracle_recall(q, db, q_utm, db_utm, DEFAULT_NS)
    np.testing.assert_allclose([rep["recall"][str(n)] for n in DEFAULT_NS], expect)
    assert rep["recall"]["100"] == pytest.approx(10 / 12)  # the two far queries have no positive
    rows = rep["queries"]
    assert rows[-1]["rank"] is None and rows[-1]["num_positives"] == 0
    assert all(len(r["hits"]) == len(DEFAULT_NS) and len(r["top"]) == 5 for r in rows)
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # deterministic: a second run writes the same bytes
    first = (tmp_path / "r.json").read_bytes()
    main(
        [
            "evaluate",
            "--dataset",
            str(tmp_path / "ds.csv"),
            "--db",
            str(tmp_path / "db.h5"),
            "--queries",
            str(tmp_path / "q.h5"),
            "--report",
            str(tmp_path / "r.json"),
        ]
    )
    assert (tmp_path / "r.json").read_bytes() == first
    # crop-dim + sample + a second curve on one plot
    rc = main(
        [
            "evaluate",
            "--dataset",
            str(tmp_path / "ds.csv"),
            "--db",
            str(tmp_path / "db.h5"),
            "--queries",
            str(tmp_path / "q.h5"),
            "--crop-dim",
            "8",
            "--sample",
            "5",
            "--ns",
            "1",
            "5",
            "--report",
            str(tmp_path / "r8.json"),
        ]
    )
    assert rc == 0
    rep8 = json.loads((tmp_path / "r8.json").read_text())
    assert rep8["num_queries"] == 5 and rep8["dim"] == 8 and list(rep8["recall"]) == ["1", "5"]
    assert [r["index"] for r in rep8["queries"]] == sample_queries(12, 5).tolist()
    assert (
        main(["plot", str(tmp_path / "r.json"), str(tmp_path / "r8.json"), "--out", str(tmp_path / "p.png")])
        == 0
    )
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_evaluate_cli_tokyo_rules_and_conditions(tmp_path, capsys):
    import json

    from netvlad.cli import main

    groups = np.arange(60) // 12
    conds = ["day", "sunset", "night"] * 4
    ds, db, q, db_utm, q_utm = _setup_eval(tmp_path, "tokyo247_dedup", groups, conds)
    assert (
        main(
            [
                "evaluate",
                "--dataset",
                str(tmp_path / "ds.csv"),
                "--db",
                str(tmp_path / "db.h5"),
                "--queries",
                str(tmp_path / "q.h5"),
                "--ns",
                "1",
                "2",
                "3",
                "--report",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "night" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    ns = [1, 2, 3]
    gmap = np.asarray(ds.db_groups)
    expect = _oracle_recall(q, db, q_utm, db_utm, ns, groups=gmap)
    np.testing.assert_allclose([rep["recall"][str(n)] for n in ns], expect)
    assert list(rep["by_condition"]) == ["day", "sunset", "night"]
    for r in rep["queries"]:  # at most one image per panorama in each list
        assert len({gmap[ds.db_images.index(t)] for t in r["top"]}) == len(r["top"])


def test_evaluate_cli_errors(tmp_path, capsys, caplog):
    from netvlad.cli import main
    from netvlad.io import write_features

    ds, db, q, *_ = _setup_eval(tmp_path)
    write_features(tmp_path / "short.h5", ds.db_images[:50], db[:50])
    rc = main(
        [
            "evaluate",
            "--dataset",
            str(tmp_path / "ds.csv"),
            "--db",
            str(tmp_path / "short.h5"),
            "--queries",
            str(tmp_path / "q.h5"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert (
        "short.h5: 10 of the dataset's 60 database images are not in the feature file, e.g. db/0050.jpg"
        in err
    )
    rc = main(
        [
            "evaluate",
            "--dataset",
            str(tmp_path / "ds.csv"),
            "--db",
            str(tmp_path / "db.h5"),
            "--queries",
            str(tmp_path / "q.h5"),
            "--crop-dim",
            "64",
        ]
    )
    assert rc == 2 and "--crop-dim 64 exceeds the 16-D descriptors of" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["plot", str(tmp_path / "bad.json"), "--out", str(tmp_path / "p.png")]) == 2
    assert "bad.json: not an evaluate report" in capsys.readouterr().err


def test_evaluate_dataset_tokyotm_timestamps_and_rank_loss():
    from netvlad.data.places import PlaceDataset

    rng = np.random.default_rng(9)
    db_utm = rng.uniform(0, 60, size=(50, 2))
    q_utm = rng.uniform(0, 60, size=(10, 2))
    ts_db = rng.integers(0, 3, size=50)
    ts_q = rng.integers(0, 3, size=10)
    ds = PlaceDataset(
        name="tm",
        db_root=".",
        query_root=".",
        db_images=[f"d{i}" for i in range(50)],
        query_images=[f"q{i}" for i in range(10)],
        db_utm=db_utm,
        query_utm=q_utm,
        db_timestamps=ts_db,
        query_timestamps=ts_q,
        rules=frozenset({"tokyotm_timestamp"}),
    )
    db = l2_normalize(rng.standard_normal((50, 8)))
    q = l2_normalize(rng.standard_normal((10, 8)))
    ns = [1, 2, 5]
    res = evaluate_dataset(ds, db, q, ns=ns, rank_sample=5, num_negatives=4)
    exclude = [np.flatnonzero(ts_db == t) for t in ts_q]
    np.testing.assert_allclose(
        [res["recall"][n] for n in ns], _oracle_recall(q, db, q_utm, db_utm, ns, exclude=exclude)
    )
    # rank loss: same sampling and negatives as evaluate_dataset, computed with loops
    sel = sample_queries(10, 5)
    r = np.random.default_rng(43)
    losses = []
    for i in sel:
        p = ds.nontrivial_positives(int(i))
        if p.size == 0:
            continue
        n = ds.sample_negatives(int(i), min(4, 50 - len(ds.positives(int(i)))), r)
        dp = min(float(((q[i] - db[j]) ** 2).sum()) for j in p)
        losses.append(np.mean([max(0.0, dp + 0.1 - float(((q[i] - db[j]) ** 2).sum())) for j in n]))
    assert res["rank_loss"] == pytest.approx(np.mean(losses), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# NaN rows (images that failed extraction with --skip-bad)


@pytest.mark.parametrize("groups", [False, True])
def test_evaluate_nan_rows_against_oracle(groups):
    rng = np.random.default_rng(3)
    db = l2_normalize(rng.standard_normal((80, 10)))
    db_utm = rng.uniform(0, 150, size=(80, 2))
    q_utm = db_utm[:20] + rng.normal(0, 5, size=(20, 2))
    q = l2_normalize(db[:20] + 0.5 * rng.standard_normal((20, 10)))
    bad_db = [0, 3, 7, 40, 79]  # incl. positives and near-duplicates of queries
    db[bad_db] = np.nan
    q[[2, 11]] = np.nan
    g = np.arange(80) // 4 if groups else None
    pos = _positives(q_utm, db_utm)
    ns = [1, 2, 5, 10, 30]
    res = evaluate(db, q, pos, ns=ns, groups=g, block=13)
    expect = _oracle_recall(q, db, q_utm, db_utm, ns, groups=g)
    np.testing.assert_allclose([res["recall"][n] for n in ns], expect)
    assert res["num_queries"] == 20  # NaN queries stay in the denominator
    assert res["bad_queries"].tolist() == [2, 11] and res["bad_db"].tolist() == bad_db
    assert (res["first_hit"][[2, 11]] == -1).all() and (res["top"][[2, 11]] == -1).all()
    assert not np.isin(res["top"], bad_db).any()  # never returned
    # with sampling, bad queries are reported among the evaluated ones only
    res = evaluate(db, q, pos, ns=ns, sample=10)
    assert set(res["bad_queries"].tolist()) == {2, 11} & set(res["query_indices"].tolist())


def test_evaluate_all_nan_database_is_an_error():
    db = np.full((4, 3), np.nan, np.float32)
    with pytest.raises(ValueError, match="all 4 database descriptors are NaN"):
        evaluate(db, np.ones((1, 3), np.float32), [np.array([0])], ns=[1])


def test_evaluate_dataset_rank_loss_skips_nan_rows(tmp_path):
    ds, db, q, _, _ = _setup_eval(tmp_path)
    db, q = db.copy(), q.copy()
    db[[1, 5]] = np.nan
    q[0] = np.nan
    res = evaluate_dataset(ds, db, q, ns=[1, 5], rank_sample=8, num_negatives=20)
    assert np.isfinite(res["rank_loss"]) and res["rank_loss"] >= 0


def test_evaluate_cli_reports_nan_rows(tmp_path, capsys):
    import json

    from netvlad.cli import main
    from netvlad.io import write_features

    ds, db, q, db_utm, q_utm = _setup_eval(tmp_path)
    db, q = db.copy(), q.copy()
    db[[4, 9, 30]] = np.nan
    q[[1, 6]] = np.nan
    bad_db = [ds.db_images[i] for i in (4, 9, 30)]
    bad_q = [ds.query_images[i] for i in (1, 6)]
    write_features(tmp_path / "db.h5", ds.db_images, db, {"bad_images": bad_db})
    write_features(tmp_path / "q.h5", ds.query_images, q, {"bad_images": bad_q})
    args = ["evaluate", "--dataset", str(tmp_path / "ds.csv"), "--db", str(tmp_path / "db.h5")]
    args += ["--queries", str(tmp_path / "q.h5"), "--report", str(tmp_path / "r.json")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (
        f"2 of 12 queries have NaN descriptors (images that failed extraction), counted as failures: "
        f"{bad_q[0]}, {bad_q[1]}" in out
    )
    assert (
        f"3 of 60 database images have NaN descriptors (images that failed extraction), never "
        f"retrieved: {', '.join(bad_db)}" in out
    )
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["bad_queries"] == {"count": 2, "names": bad_q}
    assert rep["bad_db"] == {"count": 3, "names": bad_db}
    assert rep["num_queries"] == 12
    expect = _oracle_recall(q, db, q_utm, db_utm, DEFAULT_NS)
    np.testing.assert_allclose([rep["recall"][str(n)] for n in DEFAULT_NS], expect)
    assert rep["recall"]["100"] == pytest.approx(8 / 12)  # 2 far + 2 failed queries miss
    rows = {r["query"]: r for r in rep["queries"]}
    assert all(rows[n]["rank"] is None and rows[n]["top"] == [] for n in bad_q)
    assert not any(set(r["top"]) & set(bad_db) for r in rep["queries"])
