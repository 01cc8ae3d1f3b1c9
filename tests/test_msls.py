"""Mapillary SLS: the loader on small trees in MSLS's layout, and its protocol checked against a
transcription of Mapillary's own code (mapillary_sls/datasets/msls.py val mode, evaluate.py,
utils/eval.py) written here, independently of ours.

The tree: two validation cities (cph, sf) whose coordinates overlap numerically (positives must
not cross cities), panoramas in both splits, a query without a positive, a query exactly 25 m from
a database image, subtask columns that differ from ``all``, a training city (zurich) and a test
city without coordinates (miami).
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netvlad.cli import main
from netvlad.data import load_dataset
from netvlad.data.formats import check_layout, parse_spec
from netvlad.data.formats.msls import MSLS_CITIES, load_msls
from netvlad.io import write_features
from netvlad.metrics import evaluate_dataset, image_key, rank_dataset, read_predictions, write_predictions
from netvlad.train import epoch_order, msls_sampling_weights, query_weights

SUBTASK_COLS = ("all", "s2w", "w2s", "o2n", "n2o", "d2n", "n2d")

# key, easting, northing, extra fields (pano, night, view, subtasks that are False)
CITIES = {
    "cph": {
        "database": [
            ("cdb0", 1000.0, 5000.0, {"off": ("n2d",)}),
            ("cdb1", 1010.0, 5000.0, {}),
            ("cdb2", 1001.0, 5000.0, {"pano": True}),
            ("cdb3", 1200.0, 5000.0, {}),
            ("cdb4", 1300.0, 5000.0, {"night": True, "off": ("s2w",)}),
            ("cdb5", 1500.0, 5000.0, {}),
        ],
        "query": [
            ("cq0", 1003.0, 5000.0, {}),
            ("cq1", 5000.0, 5000.0, {}),  # no database image within 25 m
            ("cq2", 1000.0, 5000.0, {"pano": True}),
            ("cq3", 1205.0, 5000.0, {"night": True, "view": "Sideways"}),
            ("cq4", 1025.0, 5000.0, {"off": ("n2d",)}),  # cdb0 exactly 25 m away
            ("cq5", 1302.0, 5003.0, {"view": "Sideways", "off": ("n2d", "s2w")}),
        ],
    },
    "sf": {
        "database": [
            ("sdb0", 1000.0, 5000.0, {}),  # same numbers as cph's cdb0
            ("sdb1", 1400.0, 5000.0, {}),
            ("sdb2", 1401.0, 5001.0, {"pano": True}),
            ("sdb3", 1600.0, 5000.0, {"off": ("n2d",)}),
        ],
        "query": [
            ("sq0", 1402.0, 5000.0, {"night": True}),
            ("sq1", 1001.0, 5000.0, {}),
            ("sq2", 1605.0, 5000.0, {"view": "Backward"}),
            ("sq3", 9000.0, 9000.0, {"off": ("n2d",)}),  # no positive
        ],
    },
    "zurich": {
        "database": [(f"zdb{i}", 2000.0 + 30 * i, 7000.0, {"pano": i == 3}) for i in range(8)],
        "query": [
            ("zq0", 2005.0, 7000.0, {"night": True}),
            ("zq1", 2031.0, 7000.0, {"view": "Sideways"}),
            ("zq2", 2062.0, 7000.0, {"night": True, "view": "Sideways"}),
            ("zq3", 2095.0, 7000.0, {}),
            ("zq4", 2500.0, 7000.0, {}),  # no positive within 10 m
        ],
    },
}
TEST_CITY = {"database": ["mdb0", "mdb1", "mdb2"], "query": ["mq0", "mq1"]}


def _jpg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(path, quality=90)


def _write(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_split(folder: Path, rows, shuffle_raw: bool = False, subtask_key: bool = True) -> None:
    """One split in MSLS's file layout; columns in the order of the released files, plus extras."""
    folder.mkdir(parents=True, exist_ok=True)
    post, raw, seq, sub = [], [], [], []
    for i, (key, e, n, x) in enumerate(rows):
        pano, night = x.get("pano", False), x.get("night", False)
        post.append([i, key, f"({e}, {n})", 3, str(night), 0, e, n, x.get("view", "Forward"), 55.6, 12.5])
        raw.append([i, key, 12.5 + e * 1e-5, 55.6 + n * 1e-5, 90.0 + i, f"2017-0{1 + i % 9}-01", str(pano)])
        seq.append([i, key, f"seq{i // 3}", i % 3])
        flags = [str(c not in x.get("off", ())) for c in SUBTASK_COLS]
        sub.append([i, key, *flags] if subtask_key else [i, *flags])
        _jpg(folder / "images" / f"{key}.jpg", sum(map(ord, key)) * 31 + i)
    if shuffle_raw:
        raw = raw[::-1]
    _write(folder / "postprocessed.csv",
           ["", "key", "utm", "unique_cluster", "night", "control_panel", "easting", "northing",
            "view_direction", "lat", "lon"], post)
    _write(folder / "raw.csv", ["", "key", "lon", "lat", "ca", "captured_at", "pano"], raw)
    _write(folder / "seq_info.csv", ["", "key", "sequence_key", "frame_number"], seq)
    header = ["", "key", *SUBTASK_COLS] if subtask_key else ["", *SUBTASK_COLS]
    _write(folder / "subtask_index.csv", header, sub)


def build_msls(root: Path, **kw) -> Path:
    """The tree of this module's docstring under ``root``."""
    for city, splits in CITIES.items():
        for split, rows in splits.items():
            write_split(root / "train_val" / city / split, rows, **kw)
    for split, keys in TEST_CITY.items():
        d = root / "test" / "miami" / split
        d.mkdir(parents=True)
        _write(d / "subtask_index.csv", ["", "key", *SUBTASK_COLS],
               [[i, k, *(["True"] * len(SUBTASK_COLS))] for i, k in enumerate(keys)])
        _write(d / "seq_info.csv", ["", "key", "sequence_key", "frame_number"],
               [[i, k, "s", i] for i, k in enumerate(keys)])
        for i, k in enumerate(keys):
            _jpg(d / "images" / f"{k}.jpg", 7 + 10 * i + len(split))
    return root


@pytest.fixture(scope="module")
def msls_root(tmp_path_factory):
    return build_msls(tmp_path_factory.mktemp("msls"))


# ----------------------------------------------------------------------------- the transcription
# mapillary_sls/datasets/msls.py (mode="val", task="im2im", seq_length=1, exclude_panos=True) and
# evaluate.py + utils/eval.py, transcribed with the csv module instead of pandas. Rows are
# addressed by position, as msls.py does (index_col=0, np.where(...)[0], seqInfo.iloc[idx]).


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def official_val(root: Path, cities: list[str], subtask: str = "all", thr: float = 25.0):
    q_images, db_images, q_idx, p_idx, no_match = [], [], [], [], []
    for city in cities:
        sub = "test" if city in MSLS_CITIES["test"] else "train_val"
        base = root / sub / city
        data = {s: _read(base / s / "postprocessed.csv") for s in ("query", "database")}
        rawd = {s: _read(base / s / "raw.csv") for s in ("query", "database")}
        subt = {s: _read(base / s / "subtask_index.csv") for s in ("query", "database")}
        seqi = {s: _read(base / s / "seq_info.csv") for s in ("query", "database")}
        seqs = {}
        for s in ("query", "database"):
            # arange_as_seq: for idx in data.index -> seqInfo.iloc[[idx]]['key']
            keys = [(str(base / s / "images" / (seqi[s][int(r[""])]["key"] + ".jpg")), int(r[""]))
                    for r in data[s]]
            val_frames = {i for i, r in enumerate(subt[s]) if r[subtask] == "True"}
            keys = [(k, i) for k, i in keys if i in val_frames]
            not_pano = {i for i, r in enumerate(rawd[s]) if r["pano"] == "False"}
            seqs[s] = [(k, i) for k, i in keys if i in not_pano]
        if not seqs["query"] or not seqs["database"]:
            continue
        len_q, len_db = len(q_images), len(db_images)
        q_images += [k for k, _ in seqs["query"]]
        db_images += [k for k, _ in seqs["database"]]
        by_index = {s: {int(r[""]): r for r in data[s]} for s in data}
        utm_q = np.array([[float(by_index["query"][i]["easting"]), float(by_index["query"][i]["northing"])]
                          for _, i in seqs["query"]])
        utm_db = np.array([[float(by_index["database"][i]["easting"]),
                            float(by_index["database"][i]["northing"])] for _, i in seqs["database"]])
        for qi, (key, _) in enumerate(seqs["query"]):
            # NearestNeighbors.radius_neighbors: points on the boundary are included
            d = np.sqrt(((utm_db - utm_q[qi]) ** 2).sum(1))
            pos = np.flatnonzero(d <= thr)
            if pos.size:
                p_idx.append(pos + len_db)
                q_idx.append(qi + len_q)
            else:
                no_match.append(key.split("/")[-1][:-4])
    return np.asarray(q_images), np.asarray(db_images), q_idx, p_idx, no_match


def official_recall(ranks, pidx, ks):
    recall_at_k = np.zeros(len(ks))
    for qidx in range(ranks.shape[0]):
        for i, k in enumerate(ks):
            if np.sum(np.isin(ranks[qidx, :k], pidx[qidx])) > 0:
                recall_at_k[i:] += 1
                break
    return recall_at_k / ranks.shape[0]


def official_apk(pidx, rank, k):
    if len(rank) > k:
        rank = rank[:k]
    score, num_hits = 0.0, 0.0
    for i, p in enumerate(rank):
        if p in pidx and p not in rank[:i]:
            num_hits += 1.0
            score += num_hits / (i + 1.0)
    return score / min(len(pidx), k)


def official_evaluate(root: Path, prediction_file: Path, cities: list[str], subtask: str = "all",
                      ks=(1, 5, 10, 20)):
    """evaluate.py: keys, the prediction file's checks, then eval()."""
    q_images, db_images, q_idx, p_idx, no_match = official_val(root, cities, subtask)

    def bn(p):
        return p.split("/")[-1][:-4]

    database_keys = [bn(p) for p in db_images]
    positive_keys = [[bn(p) for p in db_images[pos]] for pos in p_idx]
    query_keys = [bn(p) for p in q_images[q_idx]]
    with warnings.catch_warnings():  # numpy notes that the '#' lines hold no data
        warnings.simplefilter("ignore", UserWarning)
        predictions = np.loadtxt(prediction_file, ndmin=2, dtype=str)
    for k in query_keys:
        assert k in predictions[:, 0]
    for row in predictions[:, 1:]:
        assert np.isin(row, database_keys).all()
        assert len(row) == len(np.unique(row))
    assert len(predictions[:, 0]) == len(np.unique(predictions[:, 0]))
    predictions = np.array([line for line in predictions if line[0] in query_keys])
    pred2gt = [np.where(predictions[:, 0:1] == key)[0][0] for key in query_keys]
    ranks = predictions[pred2gt, 1:]
    recall = official_recall(ranks, positive_keys, list(ks))
    maps = [np.mean([official_apk(a, p, k) for a, p in zip(positive_keys, ranks)]) for k in ks]
    return dict(zip(ks, recall)), dict(zip(ks, maps)), query_keys, no_match


# ----------------------------------------------------------------------------- helpers


def _descriptors(ds, seed: int, dim: int = 6):
    rng = np.random.default_rng(seed)
    db = rng.normal(size=(ds.num_db, dim)).astype(np.float32)
    # queries near their first positive half of the time, so recall is neither 0 nor 1
    q = rng.normal(size=(ds.num_queries, dim)).astype(np.float32)
    if np.isnan(ds.db_utm).all():  # a test city
        return db, q
    for i, p in enumerate(ds.all_positives()):
        if p.size and rng.random() < 0.5:
            q[i] = db[p[-1]] + 0.3 * rng.normal(size=dim)
    return db, q


# ----------------------------------------------------------------------------- the loader


def test_loader_layout_panoramas_cities_and_radius(msls_root):
    ds = load_dataset(msls_root)
    assert ds.name == "msls_val" and ds.protocol == "msls"
    assert ds.db_root == msls_root and ds.query_root == msls_root
    keys_db = [image_key(n) for n in ds.db_images]
    keys_q = [image_key(n) for n in ds.query_images]
    # panoramas (raw.csv pano True) are left out of both splits; file order kept; cph before sf
    assert keys_db == ["cdb0", "cdb1", "cdb3", "cdb4", "cdb5", "sdb0", "sdb1", "sdb3"]
    assert keys_q == ["cq0", "cq1", "cq3", "cq4", "cq5", "sq0", "sq1", "sq2", "sq3"]
    assert ds.query_images[0] == "train_val/cph/query/images/cq0.jpg"
    assert all((msls_root / n).is_file() for n in ds.db_images + ds.query_images)
    pos = {k: sorted(keys_db[i] for i in p) for k, p in zip(keys_q, ds.all_positives())}
    assert pos["cq0"] == ["cdb0", "cdb1"]
    assert pos["cq4"] == ["cdb0", "cdb1"]  # 25 m exactly is a positive (sklearn's radius includes it)
    assert pos["cq1"] == [] and pos["sq3"] == []
    assert pos["sq1"] == ["sdb0"]  # not cph's cdb0 at the same easting/northing: cities never meet
    assert ds.query_conditions[keys_q.index("cq3")] == "night_sideways"
    assert ds.query_conditions[keys_q.index("sq2")] == "day_backward"
    assert ds.trivial_radius == 0 and ds.pos_radius == 25 and ds.train_pos_radius == 10
    np.testing.assert_allclose(ds.query_headings[:2], [90.0, 91.0])
    assert any("panorama" in n for n in ds.notes) and any("1000 km" in n for n in ds.notes)
    # one city: its own coordinates, no shift
    sf = load_dataset(f"{msls_root}?cities=sf")
    assert sf.name == "msls_sf" and sf.db_utm[0].tolist() == [1000.0, 5000.0]


def test_subtask_filter_and_city_selection(msls_root):
    ds = load_dataset(f"msls:{msls_root}?cities=cph,sf&subtask=n2d")
    assert ds.name == "msls_val_n2d"
    assert [image_key(n) for n in ds.query_images] == ["cq0", "cq1", "cq3", "sq0", "sq1", "sq2"]
    assert "cdb0" not in {image_key(n) for n in ds.db_images} and "sdb3" not in {
        image_key(n) for n in ds.db_images}
    same = load_dataset(msls_root, options={"cities": "cph,sf", "subtask": "n2d"})
    assert same.query_images == ds.query_images and same.db_images == ds.db_images
    sf = load_dataset(f"{msls_root}?cities=sf")
    assert load_msls(msls_root, cities=["sf"]).query_images == sf.query_images
    # a single city folder is a SPEC too
    cph = load_dataset(msls_root / "train_val" / "cph")
    assert cph.name == "msls_cph" and cph.query_images[0] == "train_val/cph/query/images/cq0.jpg"
    # training: no subtask filter, the training cities by default
    with pytest.raises(FileNotFoundError, match="trondheim, london.*present: cph, sf, zurich, miami"):
        load_dataset(msls_root, purpose="train")
    tr = load_dataset(f"{msls_root}?cities=zurich", purpose="train")
    assert tr.name == "msls_zurich" and len(tr.db_images) == 7  # one panorama out
    assert load_dataset(f"{msls_root}?cities=present").name == "msls_cph+sf+zurich+miami"


def test_test_city_has_no_coordinates(msls_root):
    ds = load_dataset(f"{msls_root}?cities=miami")
    assert [image_key(n) for n in ds.query_images] == ["mq0", "mq1"]
    assert ds.query_images[0] == "test/miami/query/images/mq0.jpg"
    assert np.isnan(ds.db_utm).all()
    db, q = _descriptors(ds, 0)
    with pytest.raises(ValueError, match="no coordinates"):
        evaluate_dataset(ds, db, q)


def test_columns_by_name_and_rows_by_key(tmp_path):
    root = build_msls(tmp_path / "m", shuffle_raw=True, subtask_key=False)
    ds = load_dataset(f"{root}?cities=cph")
    # raw.csv rows reversed: panoramas still found by key, not by position
    assert [image_key(n) for n in ds.db_images] == ["cdb0", "cdb1", "cdb3", "cdb4", "cdb5"]
    sub = load_dataset(f"{root}?cities=cph&subtask=n2d")  # subtask_index.csv without key: by position
    assert "cq4" not in {image_key(n) for n in sub.query_images}
    post = root / "train_val" / "cph" / "database" / "postprocessed.csv"
    text = post.read_text().replace("easting", "east_m", 1)
    post.write_text(text)
    with pytest.raises(ValueError, match=r"postprocessed.csv: columns: no column 'easting'"):
        load_dataset(f"{root}?cities=cph")


def test_spec_options_and_errors(msls_root, tmp_path):
    assert parse_spec(f"msls:{msls_root}?cities=cph,sf&subtask=all").options == {"cities": "cph,sf",
                                                                                 "subtask": "all"}
    with pytest.raises(ValueError, match="unknown MSLS subtask 'x2y'"):
        load_dataset(f"{msls_root}?subtask=x2y")
    with pytest.raises(ValueError, match="unknown MSLS option"):
        load_dataset(f"{msls_root}?split=val")
    with pytest.raises(ValueError, match="given both"):
        load_dataset(f"{msls_root}?cities=sf", options={"cities": "cph"})
    with pytest.raises(FileNotFoundError, match="MSLS cities oslo not found"):
        load_dataset(f"{msls_root}?cities=oslo")
    with pytest.raises(ValueError, match="not a msls folder"):
        load_dataset(f"msls:{tmp_path}")


# ----------------------------------------------------------------------------- the protocol


@pytest.mark.parametrize("cities,subtask,seed", [
    ("cph,sf", "all", 0), ("cph,sf", "all", 1), ("cph,sf", "n2d", 2), ("sf", "all", 3), ("cph", "s2w", 4),
])
def test_protocol_matches_official_evaluation(msls_root, tmp_path, cities, subtask, seed):
    ds = load_dataset(msls_root, options={"cities": cities, "subtask": subtask})
    db, q = _descriptors(ds, seed)
    res = evaluate_dataset(ds, db, q)
    assert res["protocol"] == "msls" and res["ns"] == [1, 5, 10, 20]
    pred = write_predictions(tmp_path / "p.txt", ds.query_images, ds.db_images, rank_dataset(ds, db, q, 20))
    recall, maps, counted, no_match = official_evaluate(msls_root, pred, cities.split(","), subtask)
    assert [image_key(ds.query_images[i]) for i in res["query_indices"]] == counted
    assert sorted(image_key(ds.query_images[i]) for i in res["no_positive"]) == sorted(no_match)
    assert res["num_queries"] == len(counted) < res["num_queries_total"]
    for k in (1, 5, 10, 20):
        assert res["recall"][k] == pytest.approx(recall[k], abs=1e-12)
        assert res["map"][k] == pytest.approx(maps[k], abs=1e-12)
    assert 0 < res["recall"][1] < 1  # the draw exercises hits and misses
    # the NetVLAD protocol on the same ranking: every query in the denominator
    nv = evaluate_dataset(ds, db, q, ns=[1, 5], protocol="netvlad")
    assert nv["num_queries"] == res["num_queries_total"]
    assert nv["recall"][5] == pytest.approx(res["recall"][5] * len(counted) / res["num_queries_total"])


def test_prediction_file_format(msls_root, tmp_path):
    ds = load_dataset(msls_root)
    db, q = _descriptors(ds, 5)
    q[2] = np.nan  # a failed image: its line is still complete
    ranked = rank_dataset(ds, db, q, 20)
    assert ranked.shape == (ds.num_queries, ds.num_db)  # fewer than 20 database images
    path = write_predictions(tmp_path / "p.txt", ds.query_images, ds.db_images, ranked)
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    assert len(lines) == ds.num_queries
    assert all(len(ln.split()) == 1 + ds.num_db and ".jpg" not in ln for ln in lines)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = np.loadtxt(path, ndmin=2, dtype=str)  # evaluate.py's reader
    assert table.shape == (ds.num_queries, 1 + ds.num_db)
    pred = read_predictions(path)
    assert list(pred) == [image_key(n) for n in ds.query_images]
    assert pred["cq0"] == [image_key(ds.db_images[i]) for i in ranked[0]]
    with pytest.raises(ValueError, match="two query images have the key 'cq0'"):
        write_predictions(tmp_path / "x.txt", ["a/cq0.jpg", "b/cq0.jpg"], ds.db_images, ranked[:2])


def test_map_at_k_hand_example():
    """utils/eval.py's own __main__ example (Q1: positives DB4, DB5; Q2: DB0, DB1), via our functions."""
    from netvlad.metrics import msls_metrics

    ranked = np.array([[0, 1, 2, 3, 4, 5], [0, 5, 4, 1, 3, 2]])
    positives = [np.array([4, 5]), np.array([0, 1])]
    m = msls_metrics(ranked, positives, ks=[1, 2, 3])
    for k in (1, 2, 3):
        want = np.mean([official_apk(list(p), list(r), k) for p, r in zip(positives, ranked)])
        assert m["map"][k] == pytest.approx(want)
        assert m["recall"][k] == pytest.approx(official_recall(ranked, positives, [1, 2, 3])[k - 1])


# ----------------------------------------------------------------------------- the command line


def _features(tmp_path, ds, seed=0):
    db, q = _descriptors(ds, seed)
    write_features(tmp_path / "db.h5", ds.db_images, db, {"fingerprint": "x"})
    write_features(tmp_path / "q.h5", ds.query_images, q, {"fingerprint": "x"})
    return db, q


def test_evaluate_cli_protocols_report_and_predictions(msls_root, tmp_path, capsys):
    ds = load_dataset(load_dataset_spec := str(msls_root))
    _features(tmp_path, ds)
    base = ["evaluate", "--dataset", load_dataset_spec, "--db", str(tmp_path / "db.h5"),
            "--queries", str(tmp_path / "q.h5")]
    rc = main(base + ["--report", str(tmp_path / "r.json"), "--predictions", str(tmp_path / "p.txt")])
    out = capsys.readouterr().out
    assert rc == 0 and "protocol msls" in out and "mAP@N" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    recall, maps, counted, no_match = official_evaluate(msls_root, tmp_path / "p.txt", ["cph", "sf"])
    assert rep["protocol"] == "msls" and rep["ns"] == [1, 5, 10, 20]
    assert rep["num_queries"] == len(counted) and rep["num_queries_total"] == ds.num_queries
    assert sorted(image_key(n) for n in rep["no_positive"]["names"]) == sorted(no_match)
    for k in (1, 5, 10, 20):
        assert rep["recall"][str(k)] == pytest.approx(recall[k])
        assert rep["map"][str(k)] == pytest.approx(maps[k])
    assert "by_condition" in rep and "night_sideways" in rep["by_condition"]
    # --protocol netvlad: every query counted; --ns given: those Ns
    rc = main(base + ["--protocol", "netvlad", "--ns", "1", "5", "--report", str(tmp_path / "n.json")])
    rep = json.loads((tmp_path / "n.json").read_text())
    assert rc == 0 and rep["protocol"] == "netvlad" and rep["num_queries"] == ds.num_queries
    assert rep["ns"] == [1, 5] and "map" not in rep
    # --cities / --subtask
    rc = main(base + ["--cities", "sf", "--subtask", "n2d", "--report", str(tmp_path / "s.json")])
    rep = json.loads((tmp_path / "s.json").read_text())
    assert rc == 0 and rep["dataset"] == "msls_sf_n2d" and rep["num_queries_total"] == 3
    capsys.readouterr()


def test_evaluate_cli_test_city_and_errors(msls_root, tmp_path, capsys):
    ds = load_dataset(f"{msls_root}?cities=miami")
    _features(tmp_path, ds)
    base = ["evaluate", "--dataset", str(msls_root), "--db", str(tmp_path / "db.h5"),
            "--queries", str(tmp_path / "q.h5"), "--cities", "miami"]
    assert main(base) == 2
    assert "has no coordinates" in capsys.readouterr().err
    assert main(base + ["--predictions", str(tmp_path / "p.txt")]) == 0
    assert "no recall here" in capsys.readouterr().out
    pred = read_predictions(tmp_path / "p.txt")
    assert list(pred) == ["mq0", "mq1"] and all(len(v) == 3 for v in pred.values())
    # an existing file that is not ours is refused; our own is replaced
    (tmp_path / "mine.txt").write_text("my notes\n")
    assert main(base + ["--predictions", str(tmp_path / "mine.txt")]) == 2
    assert "mine.txt" in capsys.readouterr().err
    assert main(base + ["--predictions", str(tmp_path / "p.txt")]) == 0
    # MSLS options on another format
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("split,path,easting,northing,zone\ndb,a.jpg,0,0,32U\nquery,b.jpg,1,0,32U\n")
    assert main(["evaluate", "--dataset", str(csv_path), "--db", str(tmp_path / "db.h5"),
                 "--cities", "cph"]) == 2
    assert "apply to MSLS folders" in capsys.readouterr().err


def test_dataset_info_and_check(msls_root, tmp_path, capsys):
    assert main(["dataset", "info", str(msls_root)]) == 0
    out = capsys.readouterr().out
    assert "protocol       msls" in out and "panorama(s) left out" in out
    # the doctor runs city by city: no outliers from the 1000 km between cities
    rc = main(["dataset", "check", f"{msls_root}?cities=cph,sf,miami", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "outlier-coordinates" not in out
    assert "WARNING [no-positive] cph: 1 of 5 queries" in out and "leaves them out of the denominator" in out
    assert "INFO [msls-test-city] miami: a test city: no coordinates" in out
    assert check_layout(msls_root) == []
    # metadata files that disagree are errors naming the file
    root = build_msls(tmp_path / "m")
    raw = root / "train_val" / "sf" / "query" / "raw.csv"
    raw.write_text(raw.read_text().replace("sq2", "sq9"))
    found = check_layout(f"{root}?cities=sf")
    assert [(f[0], f[1], f[3]) for f in found] == [("error", "msls-keys", ["sq2", "sq9"])]
    assert "sf/query/raw.csv: keys differ from postprocessed.csv" in found[0][2]
    assert main(["dataset", "check", f"{root}?cities=sf", "--no-progress", "--no-images"]) == 1
    assert "[msls-keys]" in capsys.readouterr().out


# ----------------------------------------------------------------------------- training weights


def official_weights(n_queries, night, sideways):
    """__calcSamplingWeights__: over the queries with a positive (qIdx), night / sideways positions."""
    weights = np.ones(n_queries)
    if len(night) != 0:
        weights[night] += n_queries / len(night)
    if len(sideways) != 0:
        weights[sideways] += n_queries / len(sideways)
    return weights


def test_sampling_weights_match_msls_py(msls_root):
    tr = load_dataset(f"{msls_root}?cities=zurich", purpose="train")
    w = query_weights(tr, "auto")
    # transcription: queries with a database image within 10 m (msls.py train mode), in order
    d = np.sqrt(((tr.query_utm[:, None] - tr.db_utm[None]) ** 2).sum(-1))
    q_idx = np.flatnonzero((d <= 10).any(1))
    night = [j for j, i in enumerate(q_idx) if tr.query_conditions[i].startswith("night")]
    side = [j for j, i in enumerate(q_idx) if tr.query_conditions[i].endswith("sideways")]
    want = np.zeros(tr.num_queries)
    want[q_idx] = official_weights(len(q_idx), night, side)
    np.testing.assert_allclose(w, want)
    assert w[-1] == 0  # zq4: no positive, never drawn
    assert query_weights(tr, "uniform") is None
    np.testing.assert_allclose(msls_sampling_weights(["day_forward"] * 3, [True, True, False]), [1, 1, 0])
    order = epoch_order(tr.num_queries, 42, 3, w)
    assert order.shape == (tr.num_queries,) and np.array_equal(order, epoch_order(tr.num_queries, 42, 3, w))
    assert 4 not in epoch_order(5, 0, 1, w) and len(np.unique(epoch_order(50, 0, 1, np.ones(50)))) < 50
    np.testing.assert_array_equal(epoch_order(6, 42, 2), np.random.default_rng(44).permutation(6))
    cph = load_dataset(f"{msls_root}?cities=cph")
    cph.query_conditions = None
    with pytest.raises(ValueError, match="night/view-direction labels"):
        query_weights(cph, "msls")


def test_fit_draws_queries_with_msls_weights(msls_root, tmp_path, monkeypatch):
    import netvlad.train.loop as loop
    from netvlad.train import TrainConfig, fit
    from train_helpers import tiny_model

    tr = load_dataset(f"{msls_root}?cities=zurich", purpose="train")
    seen = []
    real = loop.epoch_order

    def spy(n, seed, epoch, weights=None):
        seen.append(None if weights is None else np.array(weights))
        return real(n, seed, epoch, weights)

    monkeypatch.setattr(loop, "epoch_order", spy)
    cfg = TrainConfig(epochs=1, batch_size=2, n_neg_choice=3, num_workers=0, test0=False, limit_batches=1,
                      n_test_rank_sample=0, recall_ns=(1,), save_frequency=100)
    fit(tiny_model(), tr, tr, cfg, tmp_path / "run", progress=False)
    np.testing.assert_allclose(seen[0], query_weights(tr, "msls"))
    with pytest.raises(ValueError, match="query_sampling must be auto, uniform or msls"):
        TrainConfig(query_sampling="night")
