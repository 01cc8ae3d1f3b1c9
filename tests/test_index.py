"""Exact blockwise search against brute force, FAISS indexes against exact, save/load round trips."""

from __future__ import annotations

import numpy as np
import pytest

from netvlad.index import build_index, l2_normalize, load_index, topk


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    # On a loaded 2-core machine FAISS's OpenMP spin-waits make tiny trainings ~50x slower.
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _brute(q, d, k, metric="ip"):
    """Naive oracle: float64 scores per pair in python loops, stable sort (ties → smaller id)."""
    out_i, out_s = [], []
    for qi in q.astype(np.float64):
        if metric == "ip":
            s = [float(np.dot(qi, di)) for di in d.astype(np.float64)]
            order = sorted(range(len(s)), key=lambda j: (-s[j], j))
        else:
            s = [float(((qi - di) ** 2).sum()) for di in d.astype(np.float64)]
            order = sorted(range(len(s)), key=lambda j: (s[j], j))
        order = order[:k]
        out_i.append(order)
        out_s.append([s[j] for j in order])
    return np.array(out_s), np.array(out_i, dtype=np.int64)


@pytest.mark.parametrize("backend", ["faiss", "numpy", "torch"])
@pytest.mark.parametrize("block", [None, 1, 7, 64, 1000])
def test_topk_equals_brute_force(backend, block):
    rng = np.random.default_rng(0)
    q = l2_normalize(rng.standard_normal((13, 24)))
    d = l2_normalize(rng.standard_normal((101, 24)))
    s, i = topk(q, d, 10, block=block, backend=backend)
    bs, bi = _brute(q, d, 10)
    assert s.shape == (13, 10) and i.dtype == np.int64
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(s, bs, atol=1e-5)


def test_topk_l2_metric_unnormalised():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((9, 8)) * 3
    d = rng.standard_normal((57, 8)) * 3
    s, i = topk(q, d, 6, block=10, metric="l2")
    bs, bi = _brute(q, d, 6, metric="l2")
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(s, bs, rtol=1e-5, atol=1e-4)


def test_topk_k_larger_than_n_is_clamped():
    rng = np.random.default_rng(2)
    q = l2_normalize(rng.standard_normal((4, 5)))
    d = l2_normalize(rng.standard_normal((6, 5)))
    s, i = topk(q, d, 50, block=4)
    assert i.shape == (4, 6)
    np.testing.assert_array_equal(i, _brute(q, d, 6)[1])
    np.testing.assert_array_equal(np.sort(i, 1), np.tile(np.arange(6), (4, 1)))


@pytest.mark.parametrize("block", [None, 3, 5])
def test_topk_ties_are_ordered_by_database_index(block):
    # Small integers: every dot product is exact in float32, so ties are real ties.
    rng = np.random.default_rng(3)
    base = rng.integers(-2, 3, size=(5, 6)).astype(np.float32)
    d = base[rng.integers(0, 5, size=40)]  # many exact duplicates
    q = rng.integers(-2, 3, size=(7, 6)).astype(np.float32)
    for backend in ("faiss", "numpy", "torch"):
        s, i = topk(q, d, 11, block=block, backend=backend)
        bs, bi = _brute(q, d, 11)
        np.testing.assert_array_equal(i, bi)
        np.testing.assert_array_equal(s, bs)


def test_topk_bad_input_messages():
    with pytest.raises(ValueError, match="dimension mismatch"):
        topk(np.zeros((2, 3)), np.zeros((4, 5)), 1)
    with pytest.raises(ValueError, match="metric"):
        topk(np.zeros((2, 3)), np.zeros((4, 3)), 1, metric="cos")


def _clustered(n, d, n_centres, noise, rng):
    centres = l2_normalize(rng.standard_normal((n_centres, d)))
    lab = rng.integers(0, n_centres, size=n)
    return l2_normalize(centres[lab] + noise * rng.standard_normal((n, d))), centres


def test_faiss_flat_equals_exact():
    rng = np.random.default_rng(4)
    d = l2_normalize(rng.standard_normal((500, 32)))
    q = l2_normalize(rng.standard_normal((20, 32)))
    s, i = build_index(d, "flat").search(q, 7)
    es, ei = topk(q, d, 7)
    np.testing.assert_array_equal(i, ei)
    np.testing.assert_allclose(s, es, atol=1e-5)


@pytest.mark.parametrize(
    "kind,params",
    [
        ("ivfflat", {"nprobe": 8}),
        ("hnsw", {}),
        ("ivfpq", {"pq_m": 4, "pq_bits": 6, "nprobe": 8}),
    ],
)
def test_approximate_indexes_have_high_recall_on_clustered_data(kind, params):
    rng = np.random.default_rng(5)
    db, centres = _clustered(2000, 16, 40, 0.15, rng)
    q = l2_normalize(centres[rng.integers(0, 40, size=100)] + 0.15 * rng.standard_normal((100, 16)))
    _, exact = topk(q, db, 1)
    _, got = build_index(db, kind, **params).search(q, 10)
    assert (got[:, 0] == exact[:, 0]).mean() >= 0.9
    assert np.mean([exact[j, 0] in got[j] for j in range(len(q))]) >= 0.95


@pytest.mark.parametrize("kind", ["exact", "flat", "ivfflat", "ivfpq", "hnsw"])
def test_index_save_load_round_trip(tmp_path, kind):
    rng = np.random.default_rng(6)
    db = l2_normalize(rng.standard_normal((400, 16)))
    q = l2_normalize(rng.standard_normal((5, 16)))
    names = [f"db/{j:04d}.jpg" for j in range(400)]
    utm = rng.uniform(0, 1000, size=(400, 2))
    meta = {"fingerprint": "abc123", "model": "vgg16-netvlad", "zone": "17T"}
    params = {} if kind == "exact" else {"nprobe": 5, "pq_m": 4, "ef_search": 33, "refine_k_factor": 7}
    idx = build_index(db, kind, names=names, utm=utm, meta=meta, **params)
    out = tmp_path / "idx"
    idx.save(out)
    idx.save(out)  # overwriting an existing index works and leaves no temporaries
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    back = load_index(out)
    assert back.kind == kind and back.dim == 16 and back.ntotal == 400
    assert back.names == names and back.meta == meta
    np.testing.assert_array_equal(back.utm, utm)
    s0, i0 = idx.search(q, 5)
    s1, i1 = back.search(q, 5)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_allclose(s0, s1)
    if kind in ("ivfflat", "ivfpq"):
        import faiss

        assert faiss.extract_index_ivf(back._faiss_index).nprobe == 5
    if kind == "ivfpq":
        assert back._faiss_index.k_factor == 7
    if kind == "hnsw":
        assert back._faiss_index.hnsw.efSearch == 33


def test_index_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown index kind 'lsh'"):
        build_index(np.zeros((3, 4), np.float32), "lsh")
    with pytest.raises(ValueError, match="unknown index parameters: bogus"):
        build_index(np.zeros((3, 4), np.float32), "flat", bogus=1)
    with pytest.raises(ValueError, match="2 names for 3 descriptors"):
        build_index(np.zeros((3, 4), np.float32), "flat", names=["a", "b"])
    with pytest.raises(FileNotFoundError, match="not a netvlad index"):
        load_index(tmp_path)
    idx = build_index(np.eye(4, dtype=np.float32), "exact")
    with pytest.raises(ValueError, match="query dimension 3 does not match the index dimension 4"):
        idx.search(np.zeros((1, 3)), 1)


# ------------------------------------------------------------------------------------------
# `netvlad index build` / `netvlad query` end to end (EfficientNet-Lite0 max pooling: real
# ImageNet weights installed offline, no cluster initialisation needed)


def _photos(folder, n):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    names = []
    for i in range(n):
        img = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
        img[: 8 * (i + 1)] = 30 * i  # distinct layouts
        Image.fromarray(img).save(folder / f"{i:04d}.png")
        names.append(f"db/{i:04d}.png")
    return names


@pytest.fixture(scope="module")
def query_setup(tmp_path_factory):
    from netvlad.extract import compute_descriptors
    from netvlad.io import write_features
    from netvlad.models import load_model

    root = tmp_path_factory.mktemp("q")
    names = _photos(root / "db", 6)
    model = load_model("lite0-max")
    desc = compute_descriptors(model, [root / n for n in names], progress=False, num_workers=0)
    write_features(root / "db.h5", names, desc, {"fingerprint": model.fingerprint()})
    utm = np.array([[500000.0 + 10 * i, 4000000.0 + 3 * i] for i in range(6)])
    rows = ["# name: photos", "# zone: 17T", "split,path,easting,northing,zone"]
    rows += [f"db,{n},{e!r},{m!r},17T" for n, (e, m) in zip(names, utm.tolist())]
    rows += [f"query,{names[0]},{float(utm[0, 0])!r},{float(utm[0, 1])!r},17T"]
    (root / "ds.csv").write_text("\n".join(rows) + "\n")
    return root, names, utm, desc


def test_index_build_and_query_cli(query_setup, capsys):
    import json

    from netvlad.cli import main

    root, names, utm, desc = query_setup
    assert (
        main(
            [
                "index",
                "build",
                str(root / "db.h5"),
                "--out",
                str(root / "idx"),
                "--type",
                "flat",
                "--dataset",
                str(root / "ds.csv"),
                "--model",
                "lite0-max",
            ]
        )
        == 0
    )
    assert "flat index of 6 320-D descriptors with coordinates" in capsys.readouterr().out
    idx = load_index(root / "idx")
    assert idx.names == names and idx.meta["model"] == "lite0-max" and idx.meta["zone"] == "17T"
    np.testing.assert_allclose(idx.utm, utm)
    assert (
        main(["query", str(root / "idx"), str(root / names[3]), str(root / names[5]), "--k", "3", "--json"])
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert [r["results"][0]["name"] for r in res] == [names[3], names[5]]
    assert res[0]["location"] == pytest.approx(utm[3].tolist())
    assert res[0]["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [len(r["results"]) for r in res] == [3, 3]
    _, exact = topk(desc[[3, 5]], desc, 3)
    assert [[x["id"] for x in r["results"]] for r in res] == exact.tolist()
    assert main(["query", str(root / "idx"), str(root / names[1])]) == 0
    out = capsys.readouterr().out
    assert "estimated location easting 500010.0 northing 4000003.0 (zone 17T)" in out


def test_query_cli_errors(query_setup, tmp_path, capsys):
    from netvlad.cli import main
    from netvlad.io import write_features

    root, names, utm, desc = query_setup
    write_features(tmp_path / "other.h5", names, desc, {"fingerprint": "deadbeef" * 8})
    assert (
        main(
            ["index", "build", str(tmp_path / "other.h5"), "--out", str(tmp_path / "idx"), "--type", "exact"]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["query", str(tmp_path / "idx"), str(root / names[0])]) == 2
    assert "records no model; pass --model MODEL" in capsys.readouterr().err
    assert main(["query", str(tmp_path / "idx"), str(root / names[0]), "--model", "lite0-max"]) == 2
    assert "is not the one that built" in capsys.readouterr().err
    assert (
        main(
            [
                "index",
                "build",
                str(tmp_path / "other.h5"),
                "--out",
                str(tmp_path / "idx2"),
                "--model",
                "lite0-max",
            ]
        )
        == 2
    )
    assert "did not produce" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# NaN rows (images that failed extraction with --skip-bad) and the model reference


@pytest.mark.parametrize("backend", ["faiss", "numpy", "torch"])
def test_topk_refuses_nan_rows(backend):
    rng = np.random.default_rng(5)
    db = l2_normalize(rng.standard_normal((20, 6)))
    q = l2_normalize(rng.standard_normal((9, 6)))
    bad = db.copy()
    bad[[9, 13]] = np.nan
    with pytest.raises(
        ValueError, match=r"database descriptors contain NaN/inf: row 9 and 1 more.*bad_images"
    ):
        topk(q, bad, 3, block=8, backend=backend)  # row 9 is in the second block
    qb = q.copy()
    qb[4, 2] = np.inf
    with pytest.raises(ValueError, match="query descriptors contain NaN/inf: row 4;"):
        topk(qb, db, 3, backend=backend)


@pytest.mark.parametrize("backend", ["faiss", "numpy", "torch"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("nq", [1, 70])  # 1: the tall GEMM path; 70: query chunk × block
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_topk_refuses_one_nonfinite_element(backend, metric, nq, value):
    # The numpy/torch backends find bad rows from one query's scores, not by a pass over the block:
    # a single NaN/±inf element must be caught wherever it is, also where that query is 0 (inf·0).
    rng = np.random.default_rng(6)
    db = l2_normalize(rng.standard_normal((40, 6)))
    q = l2_normalize(rng.standard_normal((nq, 6)))
    q[0, 3] = 0.0
    for row, col in [(0, 0), (17, 3), (39, 5)]:
        bad = db.copy()
        bad[row, col] = value
        with pytest.raises(ValueError, match=rf"database descriptors contain NaN/inf: row {row};"):
            topk(q, bad, 3 if nq > 1 else 1, block=16, backend=backend, metric=metric)


def test_topk_finite_rows_whose_scores_overflow_are_searched():
    # Huge but finite rows overflow to inf scores: they are not mistaken for NaN rows.
    db = np.array([[1e30, 1e30], [1.0, 0.0], [0.0, 1.0]], np.float32)
    q = np.array([[1e30, 1e30]], np.float32)
    for backend in ("numpy", "torch"):
        _, ids = topk(q, db, 1, backend=backend)
        assert ids[0, 0] == 0


def test_indexes_refuse_nan_rows():
    x = np.eye(4, dtype=np.float32)
    x[2] = np.nan
    for kind in ("exact", "flat"):
        with pytest.raises(ValueError, match="database descriptors contain NaN/inf: row 2"):
            build_index(x, kind)
    idx = build_index(np.eye(4, dtype=np.float32), "flat")
    with pytest.raises(ValueError, match="query descriptors contain NaN/inf: row 1"):
        idx.search(np.array([[1, 0, 0, 0], [np.nan, 0, 0, 0]], np.float32), 1)


def test_index_build_cli_drops_nan_rows(query_setup, tmp_path, capsys, caplog):
    from netvlad.cli import main
    from netvlad.io import write_features

    root, names, utm, desc = query_setup
    d = desc.copy()
    d[[1, 4]] = np.nan
    write_features(
        tmp_path / "bad.h5", names, d, {"fingerprint": "f" * 64, "bad_images": [names[1], names[4]]}
    )
    args = ["index", "build", str(tmp_path / "bad.h5"), "--out", str(tmp_path / "idx"), "--type", "exact"]
    with caplog.at_level("WARNING"):
        assert main([*args, "--dataset", str(root / "ds.csv")]) == 0
    msg = f"2 NaN descriptor(s) (images that failed extraction) left out of the index: {names[1]}, {names[4]}"
    assert msg in caplog.text
    assert "exact index of 4 320-D descriptors with coordinates" in capsys.readouterr().out
    idx = load_index(tmp_path / "idx")
    keep = [0, 2, 3, 5]
    assert idx.names == [names[i] for i in keep]
    np.testing.assert_allclose(idx.utm, utm[keep])  # coordinates follow the kept names
    scores, ids = idx.search(desc[keep], 1)
    assert [idx.names[i] for i in ids[:, 0]] == [names[i] for i in keep]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    d[:] = np.nan
    write_features(tmp_path / "allbad.h5", names, d)
    assert main(["index", "build", str(tmp_path / "allbad.h5"), "--out", str(tmp_path / "idx2")]) == 2
    assert "all 6 descriptors are NaN" in capsys.readouterr().err


def test_model_reference_from_extract_to_query(query_setup, tmp_path, monkeypatch, capsys):
    """extract records model_ref; index build and query use it without --model (preset and checkpoint)."""
    import json

    from netvlad.cli import main
    from netvlad.io import read_attrs
    from netvlad.models import load_model, save_model

    root, names, _, _ = query_setup
    imgs = root / "db"
    ext = ["--images", str(imgs), "--workers", "0", "--no-progress", "--max-side", "40"]
    assert main(["extract", "lite0-max", *ext, "--out", str(tmp_path / "p.h5")]) == 0
    assert read_attrs(tmp_path / "p.h5")["model_ref"] == "lite0-max"
    assert read_attrs(tmp_path / "p.h5")["preprocessing"]["max_side"] == 40
    assert main(["index", "build", str(tmp_path / "p.h5"), "--out", str(tmp_path / "p.idx")]) == 0
    assert "model lite0-max" in capsys.readouterr().out
    assert load_index(tmp_path / "p.idx").meta["model"] == "lite0-max"
    assert main(["query", str(tmp_path / "p.idx"), str(imgs / "0002.png"), "--k", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    top = res[0]["results"][0]
    # the photo is described at the database's resolution (max_side 40): an exact self-match
    assert top["name"] == "0002.png" and top["score"] == pytest.approx(1.0, abs=1e-5)

    # a checkpoint given by a relative path is recorded as an absolute one
    (tmp_path / "models").mkdir()
    save_model(load_model("lite0-max"), tmp_path / "models" / "m.pt")
    monkeypatch.chdir(tmp_path / "models")
    assert main(["extract", "m.pt", *ext, "--out", str(tmp_path / "c.h5")]) == 0
    ckpt = str((tmp_path / "models" / "m.pt").resolve())
    assert read_attrs(tmp_path / "c.h5")["model_ref"] == ckpt
    monkeypatch.chdir(tmp_path)
    assert main(["index", "build", str(tmp_path / "c.h5"), "--out", str(tmp_path / "c.idx")]) == 0
    assert load_index(tmp_path / "c.idx").meta["model"] == ckpt
    capsys.readouterr()
    assert main(["query", str(tmp_path / "c.idx"), str(imgs / "0004.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["results"][0]["name"] == "0004.png"
    # the recorded checkpoint moved: a clear error, and --model still overrides
    (tmp_path / "models" / "m.pt").rename(tmp_path / "moved.pt")
    assert main(["query", str(tmp_path / "c.idx"), str(imgs / "0004.png")]) == 2
    err = capsys.readouterr().err
    assert f"records model {ckpt}, which cannot be loaded" in err and "pass --model MODEL" in err
    assert (
        main(["query", str(tmp_path / "c.idx"), str(imgs / "0004.png"), "--model", "moved.pt", "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)[0]["results"][0]["name"] == "0004.png"


# ------------------------------------------------------------------ feature files -> index (library)


def _feature_files(tmp_path, n=40, d=8, fp="fp-a"):
    from netvlad.data import PlaceDataset
    from netvlad.io import write_features

    rng = np.random.default_rng(5)
    names = [f"db/{i:03d}.jpg" for i in range(n)]
    desc = l2_normalize(rng.standard_normal((n, d))).astype(np.float32)
    desc[3] = np.nan  # a failed image
    write_features(tmp_path / "a.h5", names[:25], desc[:25], {"fingerprint": fp, "model_ref": "lite0-max"})
    write_features(tmp_path / "b.h5", names[25:], desc[25:], {"fingerprint": fp, "model_ref": "lite0-max"})
    ds = PlaceDataset(name="t", db_root="/d", query_root="/q", db_images=names[::-1], query_images=["q.jpg"],
                      db_utm=np.c_[np.arange(n)[::-1] * 10.0, np.zeros(n)], query_utm=np.zeros((1, 2)),
                      zone="17T")
    return names, desc, ds


def test_build_index_from_files_equals_the_cli(tmp_path, capsys):
    from netvlad.cli import main
    from netvlad.index import build_index_from_files

    names, desc, ds = _feature_files(tmp_path)
    files = [tmp_path / "a.h5", tmp_path / "b.h5"]
    built = build_index_from_files(files, tmp_path / "lib.idx", "exact", dataset=ds, dataset_spec="t.csv")
    assert built.left_out == 1 and built.coordinates and built.model == "lite0-max"
    idx = load_index(tmp_path / "lib.idx")
    keep = [i for i in range(len(names)) if i != 3]
    assert idx.names == [names[i] for i in keep]
    np.testing.assert_array_equal(idx.utm[:, 0], [i * 10.0 for i in keep])
    assert idx.meta["zone"] == "17T" and idx.meta["features"] == [str(f) for f in files]
    argv = ["index", "build", *map(str, files), "--out", str(tmp_path / "cli.idx"), "--type", "exact"]
    assert main(argv) == 0
    cli = load_index(tmp_path / "cli.idx")
    assert cli.names == idx.names and cli.meta["fingerprint"] == idx.meta["fingerprint"] == "fp-a"
    q = desc[[0, 30]]
    np.testing.assert_array_equal(cli.search(q, 5)[1], idx.search(q, 5)[1])


def test_build_index_from_files_refusals(tmp_path):
    from netvlad.index import build_index_from_files, dataset_coordinates, index_meta
    from netvlad.io import write_features

    names, desc, ds = _feature_files(tmp_path)
    with pytest.raises(ValueError, match="2 of the 3 feature-file images are not database images"):
        dataset_coordinates(ds, [names[0], "x.jpg", "y.jpg"], "t.csv")

    class Model:
        def fingerprint(self):
            return "fp-b"

    with pytest.raises(ValueError, match="--model m .fingerprint fp-b. did not produce a.h5"):
        index_meta(["a.h5"], "fp-a", {}, model=Model(), model_label="--model m")
    assert index_meta(["a.h5"], None, {}, model=Model())["fingerprint"] == "fp-b"
    write_features(tmp_path / "c.h5", ["c.jpg"], np.ones((1, 4), np.float32), {"fingerprint": "fp-c"})
    with pytest.raises(ValueError, match="c.h5: not from the model of"):
        build_index_from_files([tmp_path / "a.h5", tmp_path / "c.h5"], tmp_path / "x.idx", "exact")
    write_features(tmp_path / "nan.h5", ["n.jpg"], np.full((1, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="all 1 descriptors are NaN"):
        build_index_from_files([tmp_path / "nan.h5"], tmp_path / "x.idx", "exact")
    assert not (tmp_path / "x.idx").exists()
