"""Peers' feature files (MATLAB .bin, Patch-NetVLAD globalfeats.npy, hloc HDF5) read by evaluate,
index build and pairs exactly as our own HDF5 files; hloc's pairs selection; dataset name vs folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netvlad.cli import main
from netvlad.io import (
    FeatureFileError,
    GlobalFeatures,
    align_features,
    export_hloc,
    feature_file_kind,
    load_global_features,
    read_image_list,
    write_bin,
    write_features,
)

NDB, NQ, DIM = 40, 10, 16
DB_NAMES = [f"db/{i:04d}.jpg" for i in range(NDB)]
Q_NAMES = [f"q/{i:04d}.jpg" for i in range(NQ)]


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def world(tmp_path):
    """A CSV dataset, its descriptors in dataset order, and the same descriptors in every format."""
    rng = np.random.default_rng(11)
    db_utm = rng.uniform(0, 150, size=(NDB, 2))
    q_utm = np.concatenate([db_utm[: NQ - 1] + rng.normal(0, 6, size=(NQ - 1, 2)), [[9000.0, 9000.0]]])
    lines = ["split,path,easting,northing"]
    lines += [f"db,{n},{float(e)!r},{float(m)!r}" for n, (e, m) in zip(DB_NAMES, db_utm)]
    lines += [f"query,{n},{float(e)!r},{float(m)!r}" for n, (e, m) in zip(Q_NAMES, q_utm)]
    (tmp_path / "ds.csv").write_text("\n".join(lines) + "\n")
    db = _unit(rng.standard_normal((NDB, DIM)))
    q = _unit(db[:NQ] + 0.9 * rng.standard_normal((NQ, DIM)))
    f = {}
    perm = rng.permutation(NDB)  # our file's rows in another order: readers must go by name
    f["h5"] = (
        write_features(tmp_path / "db.h5", [DB_NAMES[i] for i in perm], db[perm], {"fingerprint": "x"}),
        write_features(tmp_path / "q.h5", Q_NAMES, q, {"fingerprint": "x"}),
    )
    f["bin"] = (write_bin(tmp_path / "db.bin", db), write_bin(tmp_path / "q.bin", q))  # dataset order
    # Patch-NetVLAD: rows in the order of the list given as --dataset_file_path (here not the dataset's)
    perm2 = rng.permutation(NDB)
    np.save(tmp_path / "db_globalfeats.npy", db[perm2])
    (tmp_path / "db_list.txt").write_text("".join(f"./{DB_NAMES[i]}\n" for i in perm2))
    np.save(tmp_path / "q_globalfeats.npy", q)
    (tmp_path / "q_list.txt").write_text("\n".join(Q_NAMES) + "\n")
    f["npy"] = (tmp_path / "db_globalfeats.npy", tmp_path / "q_globalfeats.npy")
    f["hloc"] = (
        export_hloc(f["h5"][0], tmp_path / "db_hloc.h5"),
        export_hloc(f["h5"][1], tmp_path / "q_hloc.h5"),
    )
    return {
        "dir": tmp_path,
        "csv": tmp_path / "ds.csv",
        "db": db,
        "q": q,
        "db_utm": db_utm,
        "q_utm": q_utm,
        "files": f,
    }


def _feature_args(w, fmt):
    """evaluate's --db/--queries arguments (+ what the format needs) for one format."""
    db, q = w["files"][fmt]
    args = ["--db", str(db), "--queries", str(q)]
    if fmt == "bin":
        args += ["--dim", str(DIM)]
    if fmt == "npy":
        args += ["--db-names", str(w["dir"] / "db_list.txt"), "--query-names", str(w["dir"] / "q_list.txt")]
    return args


def _oracle_recall(w, ns):
    """recallAtN in loops, float64: squared-L2 ranking (ties by index), a hit within 25 m in the top N."""
    db, q = w["db"].astype(np.float64), w["q"].astype(np.float64)
    out = {}
    for n in ns:
        hits = 0
        for i in range(NQ):
            d2 = [float(((q[i] - db[j]) ** 2).sum()) for j in range(NDB)]
            top = sorted(range(NDB), key=lambda j: (d2[j], j))[:n]
            hits += any(np.hypot(*(w["db_utm"][j] - w["q_utm"][i])) <= 25.0 for j in top)
        out[str(n)] = hits / NQ
    return out


def _evaluate(w, fmt, capsys, tag):
    report = w["dir"] / f"r_{tag}.json"
    rc = main(
        [
            "evaluate",
            "--dataset",
            str(w["csv"]),
            *_feature_args(w, fmt),
            "--ns",
            "1",
            "2",
            "5",
            "--report",
            str(report),
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(report.read_text())["recall"]


# ----------------------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("fmt", ["bin", "npy", "hloc"])
def test_evaluate_each_format_gives_the_recall_of_our_hdf5(world, capsys, fmt):
    ours = _evaluate(world, "h5", capsys, "h5")
    assert ours == _oracle_recall(world, [1, 2, 5])
    assert 0 < ours["1"] < 1  # a recall that can tell a wrong row order from the right one
    assert _evaluate(world, fmt, capsys, fmt) == ours


def test_evaluate_one_hloc_file_holding_both(world, capsys):
    both = write_features(
        world["dir"] / "all.h5", DB_NAMES + Q_NAMES, np.concatenate([world["db"], world["q"]])
    )
    hloc = export_hloc(both, world["dir"] / "all_hloc.h5")
    report = world["dir"] / "r.json"
    assert (
        main(
            [
                "evaluate",
                "--dataset",
                str(world["csv"]),
                "--db",
                str(hloc),
                "--ns",
                "1",
                "2",
                "5",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    assert json.loads(report.read_text())["recall"] == _oracle_recall(world, [1, 2, 5])


def test_evaluate_bin_dimension_from_model(world, capsys):
    from netvlad.models import load_model

    dim = load_model("alexnet-netvlad").out_dim  # 16384: what --model alexnet-netvlad must give the .bin
    rng = np.random.default_rng(3)
    db = _unit(rng.standard_normal((NDB, dim)))
    q = _unit(db[:NQ] + 0.01 * rng.standard_normal((NQ, dim)))
    write_bin(world["dir"] / "big_db.bin", db)
    write_bin(world["dir"] / "big_q.bin", q)
    rc = main(
        [
            "evaluate",
            "--dataset",
            str(world["csv"]),
            "--db",
            str(world["dir"] / "big_db.bin"),
            "--queries",
            str(world["dir"] / "big_q.bin"),
            "--model",
            "alexnet-netvlad",
            "--ns",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and f"{dim}-D" in out
    assert "100.00%" not in out and " 90.00%" in out  # 9 of 10 queries have their own image within 25 m


def test_evaluate_count_mismatch_names_both_numbers(world, capsys):
    d = world["dir"]
    write_bin(d / "short.bin", world["db"][:-1])
    rc = main(
        [
            "evaluate",
            "--dataset",
            str(world["csv"]),
            "--db",
            str(d / "short.bin"),
            "--queries",
            str(world["files"]["bin"][1]),
            "--dim",
            str(DIM),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert (
        f"short.bin: {NDB - 1} rows of dim {DIM}, but the dataset's database list counts {NDB} images" in err
    )
    (d / "long_list.txt").write_text((d / "db_list.txt").read_text() + "db/extra.jpg\n")
    rc = main(
        [
            "evaluate",
            "--dataset",
            str(world["csv"]),
            "--db",
            str(world["files"]["npy"][0]),
            "--db-names",
            str(d / "long_list.txt"),
            "--queries",
            str(world["files"]["h5"][1]),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert f"db_globalfeats.npy: {NDB} rows, but {d / 'long_list.txt'} counts {NDB + 1} images" in err


def test_evaluate_bin_without_dim_is_a_clear_error(world, capsys):
    db, q = world["files"]["bin"]
    rc = main(["evaluate", "--dataset", str(world["csv"]), "--db", str(db), "--queries", str(q)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert (
        "db.bin: a MATLAB .bin file does not record its dimension: give it (dim=D / --dim D, or --model "
        "MODEL" in err
    )
    assert f"would be {DIM}-D for the {NDB} images of the dataset's database list" in err  # the hint
    rc = main(
        ["evaluate", "--dataset", str(world["csv"]), "--db", str(db), "--queries", str(q), "--dim", "8"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and f"db.bin: {2 * NDB} rows of dim 8, but the dataset's database list counts {NDB}" in err


def test_evaluate_name_options_errors(world, capsys):
    d, csv = world["dir"], str(world["csv"])
    rc = main(
        [
            "evaluate",
            "--dataset",
            csv,
            "--db",
            str(world["files"]["npy"][0]),
            "--queries",
            str(world["files"]["npy"][1]),
        ]
    )
    assert rc == 2
    assert (
        "db_globalfeats.npy: a .npy file stores no image names: give --db-names FILE"
        in capsys.readouterr().err
    )
    rc = main(
        ["evaluate", "--dataset", csv, *_feature_args(world, "h5"), "--db-names", str(d / "db_list.txt")]
    )
    assert rc == 2 and "--db-names names the rows of a .bin or .npy file" in capsys.readouterr().err
    rc = main(["evaluate", "--dataset", csv, "--db", str(world["files"]["bin"][0]), "--dim", str(DIM)])
    assert rc == 2 and "give the query features with --queries" in capsys.readouterr().err
    rc = main(["evaluate", "--dataset", csv, *_feature_args(world, "h5"), "--dim", "8"])
    assert rc == 2 and "db.h5: holds 16-D descriptors, not the 8-D expected" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- library


def test_load_global_features_by_content_not_name(world):
    d = world["dir"]
    db_h5, _ = world["files"]["h5"]
    # Every file copied under a misleading name is still recognised by its content.
    for src, kind in [
        (db_h5, "netvlad"),
        (world["files"]["hloc"][0], "hloc"),
        (world["files"]["bin"][0], "matlab-bin"),
        (world["files"]["npy"][0], "patchnetvlad-npy"),
    ]:
        fake = d / f"disguised_{kind}.h5"
        fake.write_bytes(Path(src).read_bytes())
        assert feature_file_kind(fake) == kind
    names = read_image_list(d / "db_list.txt")
    assert names[0] in DB_NAMES and not names[0].startswith("./")
    g = load_global_features(d / "disguised_patchnetvlad-npy.h5", names=names, names_from="db_list.txt")
    assert isinstance(g, GlobalFeatures) and g.fingerprint is None and g.source == "patchnetvlad-npy"
    np.testing.assert_array_equal(align_features(g, DB_NAMES), world["db"])
    ours = load_global_features(db_h5)
    assert ours.fingerprint == "x" and ours.source == "netvlad" and ours.dim == DIM
    np.testing.assert_array_equal(align_features(ours, DB_NAMES, "database"), world["db"])
    assert load_global_features(world["files"]["hloc"][0]).fingerprint is None
    with pytest.raises(
        FeatureFileError,
        match=r"3 of the dataset's 41 database images are not in the feature "
        r"file, e.g. x, y, z",
    ):
        align_features(ours, DB_NAMES[:38] + ["x", "y", "z"], "database")


def test_load_global_features_refusals(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(FeatureFileError, match=r"notes\.txt: a text file, not a feature file"):
        load_global_features(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match=r"nothing\.h5: feature file not found"):
        load_global_features(tmp_path / "nothing.h5")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FeatureFileError, match=r"obj\.npy: not a numeric \.npy array"):
        load_global_features(tmp_path / "obj.npy", names=["a"])
    np.save(tmp_path / "flat.npy", np.zeros(5, np.float32))
    with pytest.raises(FeatureFileError, match=r"flat\.npy: a float32 array of shape \(5,\), not N×D"):
        load_global_features(tmp_path / "flat.npy", names=list("abcde"))
    np.save(tmp_path / "two.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(FeatureFileError, match=r"lst: image 'a' is listed twice"):
        load_global_features(tmp_path / "two.npy", names=["a", "a"], names_from="lst")
    with pytest.raises(FeatureFileError, match="stores no image names"):
        load_global_features(tmp_path / "two.npy")
    import h5py

    with h5py.File(tmp_path / "local.h5", "w") as f:  # hloc local features: no global_descriptor
        f.create_group("a.jpg").create_dataset("keypoints", data=np.zeros((3, 2)))
    with pytest.raises(
        FeatureFileError, match=r"local\.h5: an HDF5 file that is neither a netvlad feature file"
    ):
        load_global_features(tmp_path / "local.h5")
    # A .bin whose first floats happen to look like a pickle header is still read as a .bin.
    x = np.zeros((2, 4), np.float32)
    x.view(np.uint8)[0, :2] = [0x80, 0x03]
    write_bin(tmp_path / "lucky.bin", x)
    np.testing.assert_array_equal(
        load_global_features(tmp_path / "lucky.bin", dim=4, names=["a", "b"]).descriptors, x
    )
    with pytest.raises(
        FeatureFileError,
        match=r"lucky\.bin: 2 rows of dim 4, but .* counts 3 images.*look like a "
        r"Python pickle",
    ):
        load_global_features(tmp_path / "lucky.bin", dim=4, names=["a", "b", "c"])


# -------------------------------------------------------------------------------------- index build


@pytest.mark.parametrize("fmt", ["bin", "npy", "hloc"])
def test_index_build_from_each_format(world, capsys, fmt):
    from netvlad.index import load_index

    d = world["dir"]
    ref = d / "ref.idx"
    assert (
        main(
            [
                "index",
                "build",
                str(world["files"]["h5"][0]),
                "--type",
                "exact",
                "--dataset",
                str(world["csv"]),
                "--out",
                str(ref),
            ]
        )
        == 0
    )
    extra = {"bin": ["--dim", str(DIM)], "npy": ["--names", str(d / "db_list.txt")], "hloc": []}[fmt]
    out = d / f"{fmt}.idx"
    rc = main(
        [
            "index",
            "build",
            str(world["files"][fmt][0]),
            "--type",
            "exact",
            "--dataset",
            str(world["csv"]),
            "--out",
            str(out),
            *extra,
        ]
    )
    assert rc == 0, capsys.readouterr().err
    a, b = load_index(ref), load_index(out)
    pos = {n: i for i, n in enumerate(b.names)}
    assert sorted(a.names) == sorted(b.names) == sorted(DB_NAMES)
    np.testing.assert_array_equal(b.utm[[pos[n] for n in DB_NAMES]], world["db_utm"])
    _, ia = a.search(world["q"], 5)
    _, ib = b.search(world["q"], 5)
    assert [[a.names[j] for j in r] for r in ia] == [[b.names[j] for j in r] for r in ib]
    assert b.meta["fingerprint"] == ("x" if fmt == "h5" else None)


def test_index_build_bin_needs_names_or_dataset(world, capsys):
    rc = main(
        [
            "index",
            "build",
            str(world["files"]["bin"][0]),
            "--dim",
            str(DIM),
            "--out",
            str(world["dir"] / "x.idx"),
        ]
    )
    assert (
        rc == 2 and "db.bin: a .bin file stores no image names: give --names FILE" in capsys.readouterr().err
    )
    assert not (world["dir"] / "x.idx").exists()


# -------------------------------------------------------------------------------------------- pairs


def _read_pairs(path):
    got: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        q, r = line.split()
        got.setdefault(q, []).append(r)
    return got


@pytest.mark.parametrize("fmt", ["bin", "npy", "hloc"])
def test_pairs_from_each_format_equal_pairs_from_ours(world, capsys, fmt):
    d = world["dir"]
    ref, out = d / "ref.txt", d / f"{fmt}.txt"
    assert (
        main(["pairs", *_feature_args(world, "h5"), "--k", "7", "--min-score", "none", "--out", str(ref)])
        == 0
    )
    args = _feature_args(world, fmt)
    if fmt == "bin":  # pairs has no dataset: name the rows
        (d / "db_names.txt").write_text("\n".join(DB_NAMES) + "\n")
        (d / "q_names.txt").write_text("\n".join(Q_NAMES) + "\n")
        args += ["--db-names", str(d / "db_names.txt"), "--query-names", str(d / "q_names.txt")]
    assert main(["pairs", *args, "--k", "7", "--min-score", "none", "--out", str(out)]) == 0, (
        capsys.readouterr().err
    )
    want = _read_pairs(ref)
    assert sum(map(len, want.values())) == 7 * NQ
    assert _read_pairs(out) == want


def hloc_pairs(
    q_all,
    q_desc,
    db_all,
    db_desc,
    num_matched,
    query_prefix=None,
    query_list=None,
    db_prefix=None,
    db_list=None,
    min_score=0.0,
):
    """hloc's pairs_from_retrieval.main/parse_names/pairs_from_score_matrix, transcribed with numpy:
    prefix (str or several) wins over list; the list file's glob, '#' and first-field rules; self
    pairs and scores below min_score masked with -inf; top num_matched; only finite ones kept."""

    def parse_list(path):
        names = []
        for lfile in Path(path.parent).glob(path.name):
            for line in open(lfile):
                line = line.strip("\n")
                if len(line) == 0 or line[0] == "#":
                    continue
                names.append(line.split()[0])
        return names

    def parse_names(prefix, names, names_all):
        if prefix is not None:
            prefix = prefix if isinstance(prefix, str) else tuple(prefix)
            return [n for n in names_all if n.startswith(prefix)]
        if names is not None:
            return parse_list(names)
        return names_all

    db_names = parse_names(db_prefix, db_list, db_all)
    query_names = parse_names(query_prefix, query_list, q_all)
    dbi, qi = {n: i for i, n in enumerate(db_all)}, {n: i for i, n in enumerate(q_all)}
    sim = q_desc[[qi[n] for n in query_names]] @ db_desc[[dbi[n] for n in db_names]].T
    invalid = np.array(query_names)[:, None] == np.array(db_names)[None]
    if min_score is not None:
        invalid |= sim < min_score
    sim = np.where(invalid, -np.inf, sim)
    pairs = {}
    for i, row in enumerate(sim):
        top = np.argsort(-row, kind="stable")[:num_matched]
        kept = [db_names[j] for j in top if np.isfinite(row[j])]
        if kept:
            pairs[query_names[i]] = kept
    return pairs


def test_pairs_selection_and_min_score_match_hloc(tmp_path, capsys):
    rng = np.random.default_rng(5)
    names = (
        [f"db/{i:03d}.jpg" for i in range(30)]
        + [f"query/day/{i}.jpg" for i in range(6)]
        + [f"query/night/{i}.jpg" for i in range(6)]
        + ["mapping/a.jpg", "mapping/b.jpg", "query/anti.jpg"]
    )
    desc = rng.standard_normal((len(names), 8))  # 8-D random: negative similarities are common
    desc[:30, 0] += 3.0  # database images lean towards +e1 ...
    desc[-1] = -np.eye(8)[0]  # ... and "query/anti.jpg" points away from all of them: every similarity < 0
    desc = _unit(desc)
    assert (desc[:30] @ desc[-1] < 0).all()
    feats = write_features(tmp_path / "all.h5", names, desc)
    hfile = export_hloc(feats, tmp_path / "all_hloc.h5")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "db_a.txt").write_text("# database, part 1\n" + "\n".join(names[:20]) + "\n\n")
    (tmp_path / "lists" / "db_b.txt").write_text(
        "\n".join(f"{n} PINHOLE 640 480 500 320 240" for n in names[20:30])
    )
    (tmp_path / "q.txt").write_text("\n".join(reversed(names[30:36])) + "\n")
    cases = [
        (dict(db_prefix="db/", query_prefix="query/"), ["--db-prefix", "db/", "--query-prefix", "query/"]),
        (
            dict(db_prefix=["db/00", "mapping/"], query_prefix=["query/night"]),
            ["--db-prefix", "db/00", "mapping/", "--query-prefix", "query/night"],
        ),
        (
            dict(db_list=tmp_path / "lists" / "db_*.txt", query_list=tmp_path / "q.txt"),
            ["--db-list", str(tmp_path / "lists" / "db_*.txt"), "--query-list", str(tmp_path / "q.txt")],
        ),
        (
            dict(db_prefix="db/", query_prefix="query/", min_score=0.3),
            ["--db-prefix", "db/", "--query-prefix", "query/", "--min-score", "0.3"],
        ),
        (
            dict(db_prefix="db/", query_prefix="query/", min_score=None),
            ["--db-prefix", "db/", "--query-prefix", "query/", "--min-score", "none"],
        ),
        (dict(), []),  # everything against everything, self pairs masked
    ]
    for src in (feats, hfile):
        got = []
        for kw, flags in cases:
            out = tmp_path / "pairs.txt"
            assert main(["pairs", "--db", str(src), "--k", "5", *flags, "--out", str(out)]) == 0, (
                capsys.readouterr().err
            )
            got.append(_read_pairs(out))
            assert got[-1] == hloc_pairs(names, desc, names, desc, 5, **kw), (src.name, flags)
        # The default floor (0, as hloc) drops the anti query's pairs; 'none' keeps all 5; 0.3 drops more.
        assert "query/anti.jpg" not in got[0] and len(got[4]["query/anti.jpg"]) == 5
        assert sum(map(len, got[3].values())) < sum(map(len, got[0].values())) < 5 * 13
        assert set(got[1]) == {f"query/night/{i}.jpg" for i in range(6)}
        assert all(r.startswith(("db/00", "mapping/")) for rs in got[1].values() for r in rs)
        assert list(got[2]) == [names[i] for i in range(35, 29, -1)]  # --query-list order
        assert all(q not in rs for q, rs in got[5].items())  # self pairs masked


def test_pairs_selection_errors(tmp_path, capsys):
    names = ["db/a.jpg", "db/b.jpg", "query/c.jpg"]
    feats = write_features(tmp_path / "all.h5", names, _unit(np.eye(3, 4, dtype=np.float32) + 0.1))
    out = str(tmp_path / "p.txt")
    assert main(["pairs", "--db", str(feats), "--db-prefix", "nope/", "--out", out]) == 2
    assert "all.h5: no image name starts with 'nope/'" in capsys.readouterr().err
    (tmp_path / "l.txt").write_text("db/a.jpg\ndb/zzz.jpg\n")
    assert main(["pairs", "--db", str(feats), "--db-list", str(tmp_path / "l.txt"), "--out", out]) == 2
    assert (
        f"all.h5: 1 of {tmp_path / 'l.txt'}'s 2 database images are not in the feature file, e.g. db/zzz.jpg"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):  # argparse: a prefix and a list of the same role exclude each other
        main(
            [
                "pairs",
                "--db",
                str(feats),
                "--db-prefix",
                "db/",
                "--db-list",
                str(tmp_path / "l.txt"),
                "--out",
                out,
            ]
        )
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pairs", "--db", str(feats), "--min-score", "high", "--out", out])
    assert "expected a number or 'none', got 'high'" in capsys.readouterr().err
    assert not Path(out).exists()


# ------------------------------------------------------------------------------- dataset name vs folder


def _fake_builtin(tmp_path, monkeypatch):
    """A stand-in for the installed patchnetvlad package with one ground truth, 'tokyo247'."""
    import netvlad.data.formats.patchnetvlad as pnv

    pkg = tmp_path / "pkg"
    (pkg / "dataset_gt_files").mkdir(parents=True)
    (pkg / "dataset_imagenames").mkdir()
    np.savez(
        pkg / "dataset_gt_files" / "tokyo247.npz",
        utmDb=np.zeros((2, 2)),
        utmQ=np.zeros((1, 2)),
        posDistThr=25,
    )
    (pkg / "dataset_imagenames" / "tokyo247_imageNames_index.txt").write_text("a.jpg\nb.jpg\n")
    (pkg / "dataset_imagenames" / "tokyo247_imageNames_query.txt").write_text("c.jpg\n")
    monkeypatch.setattr(pnv, "package_dir", lambda: pkg)
    return pkg / "dataset_gt_files" / "tokyo247.npz"


def test_folder_named_like_a_builtin_dataset_wins_with_a_warning(tmp_path, monkeypatch, caplog):
    from netvlad.data import load_dataset

    npz = _fake_builtin(tmp_path, monkeypatch)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with caplog.at_level(logging.WARNING):
        assert load_dataset("tokyo247").num_db == 2  # no folder: the built-in one
    assert not caplog.records
    for split, n in (("database", 3), ("queries", 1)):
        for i in range(n):
            p = work / "tokyo247" / split / f"@{381400 + i}.00@3946450.00@54@S@35.66@139.70@@@@@@@2013@@.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(p)
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("tokyo247")
    assert ds.num_db == 3  # the folder was taken ...
    msgs = [r.getMessage() for r in caplog.records]
    assert (
        len(msgs) == 1
        and "tokyo247: the folder of that name in the working directory was taken, not the "
        f"built-in Patch-NetVLAD dataset tokyo247 ({npz})"
        in msgs[0]
    )  # ... and the warning names both
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_dataset("./tokyo247").num_db == 3  # an explicit path: no ambiguity, no warning
        assert load_dataset(npz).num_db == 2  # the built-in one, by its path
    assert not caplog.records
    rc = main(["dataset", "info", "tokyo247"])
    assert rc == 0 and "was taken, not the built-in" in caplog.text


# ------------------------------------------------------------- reading files to compare (netvlad.io.compare)


@pytest.mark.parametrize("fmt", ["h5", "bin", "npy", "hloc"])
def test_load_db_and_queries_gives_the_dataset_order_in_every_format(world, fmt):
    from netvlad.data import load_dataset
    from netvlad.io import load_db_and_queries

    ds = load_dataset(world["csv"])
    db, q = world["files"][fmt]
    names = {"db_names": world["dir"] / "db_list.txt", "query_names": world["dir"] / "q_list.txt"} \
        if fmt == "npy" else {}
    pair = load_db_and_queries(ds, db, q, dim=DIM if fmt == "bin" else None, **names)
    np.testing.assert_allclose(pair.db, world["db"], atol=1e-3 if fmt == "hloc" else 0)
    np.testing.assert_allclose(pair.queries, world["q"], atol=1e-3 if fmt == "hloc" else 0)
    assert pair.db_features.path == Path(db) and pair.query_features.path == Path(q)


def test_load_db_and_queries_refusals_name_the_callers_options(world):
    from netvlad.data import load_dataset
    from netvlad.io import MixedModelsError, load_db_and_queries, write_features

    ds, f = load_dataset(world["csv"]), world["files"]
    with pytest.raises(ValueError, match="db.bin: its rows are the dataset's database images only; give the "
                       "query features with query_path"):
        load_db_and_queries(ds, f["bin"][0], dim=DIM)
    with pytest.raises(ValueError, match="--qn names the rows of a --q file; give --q too"):
        load_db_and_queries(ds, f["h5"][0], query_names="x.txt",
                            options={"query_names": "--qn", "query_path": "--q"})
    with pytest.raises(ValueError, match="crop_dim 32 exceeds the 16-D descriptors of"):
        load_db_and_queries(ds, f["h5"][0], f["h5"][1], crop_dim=32)
    write_features(world["dir"] / "other.h5", Q_NAMES, world["q"], {"fingerprint": "y"})
    with pytest.raises(MixedModelsError, match="pass allow_mixed=True to compare them anyway"):
        load_db_and_queries(ds, f["h5"][0], world["dir"] / "other.h5")
    pair = load_db_and_queries(ds, f["h5"][0], world["dir"] / "other.h5", allow_mixed=True)
    assert pair.query_features.fingerprint == "y"


def test_load_named_features_and_database_shards(world, caplog):
    from netvlad.io import check_same_model, load_database_features, load_named_features

    d = world["dir"]
    with pytest.raises(ValueError, match="db.bin: a .bin file stores no image names: give --names FILE"):
        load_named_features(d / "db.bin", dim=DIM, names_option="--names")
    with caplog.at_level(logging.INFO):
        feats = load_named_features(d / "db.bin", dim=DIM, default_names=DB_NAMES, default_from="the list")
    assert feats.names == DB_NAMES and feats.names_from == "the list"
    assert "rows taken as the list" in caplog.text
    npy = load_named_features(d / "db_globalfeats.npy", d / "db_list.txt")
    np.testing.assert_array_equal(align_features(npy, DB_NAMES), world["db"])
    with pytest.raises(ValueError, match="names_file names the rows of a .bin or .npy file"):
        load_named_features(d / "db.h5", d / "db_list.txt")
    write_features(d / "a.h5", DB_NAMES[:10], world["db"][:10], {"fingerprint": "x"})
    write_features(d / "b.h5", DB_NAMES[10:], world["db"][10:], {"fingerprint": "x"})
    both = load_database_features([d / "a.h5", d / "b.h5"])
    assert both.names == DB_NAMES and both.path == d / "a.h5"
    np.testing.assert_array_equal(both.descriptors, world["db"])
    with pytest.raises(ValueError, match="names the rows of one .bin/.npy file"):
        load_database_features([d / "a.h5", d / "b.h5"], d / "db_list.txt")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_same_model("a.h5", "x", "b.h5", None)
        check_same_model("a.h5", "x", "b.h5", "z", allow_mixed=True, allow_option="--allow")
    assert "b.h5: no model fingerprint" in caplog.text and "comparing them anyway (--allow)" in caplog.text
