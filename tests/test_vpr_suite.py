"""The VPR suite in gmberton's layout (VPR-datasets-downloader / deep-visual-geo-localization-benchmark /
CosPlace), checked against a transcription of the benchmark's ``BaseDataset`` and ``test.py``, and
``netvlad benchmark vpr`` on tiny trees.

Each tree is built here as the downloader's scripts name their files:
``@easting@northing@zone@letter@lat@lon@pano@tile@heading@pitch@roll@height@timestamp@note@.jpg``.
"""

from __future__ import annotations

import json
import os
from glob import glob
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netvlad.cli import main
from netvlad.data import load_dataset
from netvlad.data.formats import SUITE, check_layout, detect_format, find_suite_dataset
from netvlad.geo import latlon_to_utm
from netvlad.metrics import evaluate_dataset
from netvlad.retrieval import benchmark_vpr, reported_results
from netvlad.weights import load_catalogue


def _fmt(num, left, right):
    # util.format_coord of VPR-datasets-downloader
    return f"{float(num):0={left + right + 1}.{right}f}"


def at_name(lat=None, lon=None, east=None, north=None, zone="", letter="", pano="", tile="", heading="",
            timestamp="", note="", ext=".jpg"):
    """util.get_dst_image_name (from lat/lon), or the dummy-coordinate names of Nordland and SPED."""
    if lat is not None:
        e, n, z, b = latlon_to_utm(lat, lon)
        east, north, zone, letter = _fmt(e, 7, 2), _fmt(n, 7, 2), f"{int(z):02d}", str(b)
        la, lo = _fmt(lat, 3, 5), _fmt(lon, 4, 5)
    else:
        la = lo = ""
    return f"@{east}@{north}@{zone}@{letter}@{la}@{lo}@{pano}@{tile}@{heading}@@@@{timestamp}@{note}@{ext}"


def _img(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(path)


def _walk(lat0, lon0, n, step_deg, seed):
    rng = np.random.default_rng(seed)
    return [(lat0 + step_deg * i + rng.normal(0, 2e-5), lon0 + rng.normal(0, 2e-5)) for i in range(n)]


def write_split(split_dir: Path, db_names, q_names) -> None:
    for i, n in enumerate(db_names):
        _img(split_dir / "database" / n, i)
    for i, n in enumerate(q_names):
        _img(split_dir / "queries" / n, 100 + i)


def build_pitts(root: Path, name: str = "pitts30k") -> Path:
    d = root / name
    for s, split in enumerate(("train", "val", "test")):
        db = [at_name(la, lo, pano=f"{1000 * s + i:06d}", tile=f"{i % 24:02d}", note=f"pitch1_yaw{i + 1}")
              for i, (la, lo) in enumerate(_walk(40.44, -79.99 + 0.01 * s, 10, 1.5e-4, s))]
        q = [at_name(la, lo, pano=f"q{i:05d}", note=f"pitch1_yaw{i + 1}")
             for i, (la, lo) in enumerate(_walk(40.44004, -79.99 + 0.01 * s, 6, 2.3e-4, 10 + s))]
        write_split(d / "images" / split, db, q)
    _img(d / "images" / "test" / "database" / "not_read.png", 0)  # the benchmark globs *.jpg only
    return d


def build_tokyo(root: Path) -> Path:
    d = root / "tokyo247"
    db = [at_name(la, lo, pano=f"pano{i // 3:03d}xxxxxxxxxxxxxxx", tile=f"{i % 3:02d}")
          for i, (la, lo) in enumerate(np.repeat(_walk(35.66, 139.70, 4, 1e-4, 3), 3, axis=0))]
    q = [at_name(la, lo, pano=f"{i:05d}") for i, (la, lo) in enumerate(_walk(35.66002, 139.70, 3, 1e-4, 4))]
    write_split(d / "images" / "test", db, q)
    return d


def build_nordland(root: Path, n: int = 12) -> Path:
    # download_nordland.py: UTM_east 0, UTM_north num*25/10.5, the image number as pano_id
    d = root / "nordland"
    names = [f"@0@{_fmt(i * 25 / 10.5, 5, 1)}@@@@@{i}@@@@@@@@.jpg" for i in range(n)]
    write_split(d / "images" / "test", names, names)
    return d


def build_sped(root: Path, n: int = 5) -> Path:
    # download_sped.py: f"@0@{int(stem) * 1000}@@@@@{stem}@@@@@@@@.jpg", the same name on both sides
    d = root / "sped"
    names = [f"@0@{int(stem) * 1000}@@@@@{stem}@@@@@@@@.jpg" for stem in ("00012", "00040", "00041", "00100",
                                                                        "00222")[:n]]
    write_split(d / "images" / "test", names, names)
    return d


def build_st_lucia(root: Path) -> Path:
    d = root / "st_lucia"
    db = [at_name(la, lo, pano=f"100909_0845_{i:05d}") for i, (la, lo) in enumerate(_walk(-27.4975, 153.01, 8,
                                                                                            6e-5, 5))]
    q = [at_name(la, lo, pano=f"180809_1545_{i:05d}") for i, (la, lo) in enumerate(_walk(-27.49752, 153.01, 5,
                                                                                           9e-5, 6))]
    write_split(d / "images" / "test", db, q)
    return d


def build_sf_xl(root: Path) -> Path:
    # CosPlace: sf_xl/processed/test/{database,queries_v1}
    d = root / "sf_xl" / "processed" / "test"
    db = [at_name(la, lo, pano=f"p{i}", tile="00", heading=f"{30 * i:03d}") for i, (la, lo) in
          enumerate(_walk(37.7749, -122.4194, 8, 1e-4, 7))]
    q = [at_name(la, lo, pano=f"{i}") for i, (la, lo) in enumerate(_walk(37.77495, -122.4194, 4, 2e-4, 8))]
    for i, n in enumerate(db):
        _img(d / "database" / n, i)
    for i, n in enumerate(q):
        _img(d / "queries_v1" / n, 50 + i)
    return root / "sf_xl" / "processed"


def build_msls_vg(root: Path) -> Path:
    # format_mapillary.py: msls/{train,val}/{database,queries}, test -> val, notes day_forward_<city>
    d = root / "msls"
    db, q = [], []
    for city, (lat, lon) in (("cph", (55.6761, 12.5683)), ("sf", (37.7749, -122.4194))):
        db += [at_name(la, lo, pano=f"{city}db{i}", timestamp="20170101", note=f"day_forward_{city}")
               for i, (la, lo) in enumerate(_walk(lat, lon, 5, 1e-4, 9))]
        views = ("forward", "sideways", "backward", "forward")
        q += [at_name(la, lo, pano=f"{city}q{i}", timestamp="20180101",
                      note=f"{'night' if i == 1 else 'day'}_{views[i]}_{city}")
              for i, (la, lo) in enumerate(_walk(lat + 5e-5, lon, 4, 1.4e-4, 10))]
    write_split(d / "val", db, q)
    os.symlink(d / "val", d / "test")
    return d


# ----------------------------------------------------------------------------- the transcription
# datasets_ws.BaseDataset and test.test of deep-visual-geo-localization-benchmark.


def vg_dataset(split_dir: Path, queries="queries", thr=25.0):
    database_paths = sorted(glob(os.path.join(split_dir, "database", "**", "*.jpg"), recursive=True))
    queries_paths = sorted(glob(os.path.join(split_dir, queries, "**", "*.jpg"), recursive=True))
    database_utms = np.array([(p.split("@")[1], p.split("@")[2]) for p in database_paths]).astype(float)
    queries_utms = np.array([(p.split("@")[1], p.split("@")[2]) for p in queries_paths]).astype(float)
    d = np.sqrt(((queries_utms[:, None] - database_utms[None]) ** 2).sum(-1))
    positives = [np.flatnonzero(row <= thr) for row in d]  # radius_neighbors includes the boundary
    return database_paths, queries_paths, positives


def vg_recall(db_desc, q_desc, positives, recall_values=(1, 5, 10)):
    d = ((q_desc[:, None].astype(np.float64) - db_desc[None]) ** 2).sum(-1)
    predictions = d.argsort(axis=1)[:, : max(recall_values)]
    recalls = np.zeros(len(recall_values))
    for query_index, pred in enumerate(predictions):
        for i, n in enumerate(recall_values):
            if np.any(np.isin(pred[:n], positives[query_index])):
                recalls[i:] += 1
                break
    return recalls / len(q_desc)


def _rel(paths, folder):
    return [os.path.relpath(p, folder).replace(os.sep, "/") for p in paths]


SUITE_TREES = {
    "pitts30k_test": (build_pitts, "images/test", "queries"),
    "tokyo247": (build_tokyo, "images/test", "queries"),
    "nordland": (build_nordland, "images/test", "queries"),
    "st_lucia": (build_st_lucia, "images/test", "queries"),
    "sf_xl_test": (build_sf_xl, "test", "queries_v1"),
    "sped": (build_sped, "images/test", "queries"),
    "msls_val": (build_msls_vg, "val", "queries"),
}


@pytest.mark.parametrize("name", list(SUITE_TREES))
def test_layout_matches_vg_benchmark(tmp_path, name):
    build, sub, queries = SUITE_TREES[name]
    root = build(tmp_path)
    spec = find_suite_dataset(name, tmp_path)
    assert spec.startswith("vg:") and detect_format(spec) == "vg"
    ds = load_dataset(spec)
    db_paths, q_paths, positives = vg_dataset(root / sub, queries)
    assert ds.db_images == _rel(db_paths, root / sub / "database")
    assert ds.query_images == _rel(q_paths, root / sub / queries)
    assert [sorted(p.tolist()) for p in ds.all_positives()] == [sorted(p.tolist()) for p in positives]
    assert sum(p.size > 0 for p in positives) > 0 and ds.pos_radius == 25
    rng = np.random.default_rng(len(name))
    db = rng.normal(size=(ds.num_db, 8)).astype(np.float32)
    q = rng.normal(size=(ds.num_queries, 8)).astype(np.float32)
    for i, p in enumerate(positives):
        if p.size and i % 2 == 0:
            q[i] = db[p[0]] + 0.2 * rng.normal(size=8)
    res = evaluate_dataset(ds, db, q, ns=[1, 5, 10], protocol="netvlad")
    if name == "tokyo247":
        # NetVLAD's Tokyo 24/7 protocol de-duplicates panoramas; the VG benchmark does not
        assert ds.rules == {"tokyo247_dedup"} and ds.db_groups is not None
        return
    np.testing.assert_allclose([res["recall"][n] for n in (1, 5, 10)], vg_recall(db, q, positives))


def test_dataset_specific_rules(tmp_path):
    nord = load_dataset((build_nordland(tmp_path), find_suite_dataset("nordland", tmp_path))[1])
    # 25 m = the 10 neighbouring frames on each side (download_nordland.py's THRESHOLD_FRAMES)
    assert [int(p.size) for p in nord.all_positives()][:3] == [11, 12, 12] and nord.zone is None
    sped = load_dataset((build_sped(tmp_path), find_suite_dataset("sped", tmp_path))[1])
    # one image per 1000 m: the positive of each query is the database image of the same number
    assert [p.tolist() for p in sped.all_positives()] == [[i] for i in range(sped.num_queries)]
    pitts = load_dataset((build_pitts(tmp_path), find_suite_dataset("pitts30k_test", tmp_path))[1])
    assert pitts.name == "pitts30k_test" and pitts.zone == "17T" and pitts.protocol == "netvlad"
    assert any("not_read.png" not in n for n in pitts.db_images)
    assert any("ignored" in n for n in pitts.notes)
    val = load_dataset(f"{tmp_path / 'pitts30k'}?split=val")
    assert val.name == "pitts30k_val" and val.db_images != pitts.db_images
    msls = load_dataset((build_msls_vg(tmp_path), find_suite_dataset("msls_val", tmp_path))[1])
    assert msls.protocol == "msls" and msls.zone is None
    assert msls.query_conditions[:2] == ["day_forward", "night_sideways"]
    assert any("kept as written" in n for n in msls.notes)
    from netvlad.metrics import image_key

    assert image_key(msls.db_images[0]) == "cphdb0"  # the MSLS key, for the challenge's prediction file
    # the same split folder as a plain database/+queries/ folder: zones far apart are not re-projected
    plain = load_dataset(tmp_path / "msls" / "val")
    assert [p.tolist() for p in plain.all_positives()] == [p.tolist() for p in msls.all_positives()]
    sfxl = load_dataset((build_sf_xl(tmp_path), find_suite_dataset("sf_xl_test", tmp_path))[1])
    assert sfxl.name == "sf_xl_test" and sfxl.zone == "10S"


def test_layout_checks(tmp_path):
    pitts = build_pitts(tmp_path)
    codes = {(f[0], f[1]) for f in check_layout(pitts)}
    assert ("warning", "vg-not-jpg") in codes
    sped = build_sped(tmp_path)
    assert check_layout(sped) == []
    os.remove(next((sped / "images" / "test" / "queries").glob("*00040*")))
    found = check_layout(sped)
    assert [(f[1], f[3]) for f in found] == [("vg-unpaired", ["00040"])]
    nord = build_nordland(tmp_path / "n")
    assert check_layout(nord) == []
    db = nord / "images" / "test" / "database"
    last = sorted(db.glob("*.jpg"), key=lambda p: float(p.name.split("@")[2]))[-1]
    last.rename(db / "@0@00100.0@@@@@11@@@@@@@@.jpg")
    assert [f[1] for f in check_layout(nord)] == ["vg-nordland-spacing"]
    (pitts / "images" / "val" / "database" / "@abc@1@.jpg").write_bytes(b"")
    assert ("error", "vg-bad-name") in {(f[0], f[1]) for f in check_layout(pitts)}
    rc = main(["dataset", "check", f"{tmp_path / 'sped'}", "--no-progress", "--no-images"])
    assert rc == 0


def test_find_suite_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="pitts250k_test: not found under .*known suite names"):
        find_suite_dataset("pitts250k_test", tmp_path)
    build_pitts(tmp_path, "pitts250k")
    assert find_suite_dataset("pitts250k_val", tmp_path) == f"vg:{tmp_path / 'pitts250k'}?split=val"
    rows = "split,path,easting,northing,zone\ndb,a.jpg,0,0,17T\nquery,b.jpg,1,0,17T\n"
    (tmp_path / "mine.csv").write_text(rows)
    assert find_suite_dataset("mine", tmp_path) == str(tmp_path / "mine.csv")
    (tmp_path / "tokyo247.csv").write_text(rows)  # a known name in another format
    assert find_suite_dataset("tokyo247", tmp_path) == str(tmp_path / "tokyo247.csv")
    assert {"msls_val", "pitts30k_test", "pitts250k_test", "tokyo247", "nordland", "st_lucia", "sf_xl_test",
            "sped"} <= set(SUITE)


def test_catalogue_results_are_all_placed():
    """Every published number in the catalogue lands on a suite dataset and protocol."""
    cat = load_catalogue()
    placed = 0
    for e in cat.entries:
        rep = reported_results(e.results, e.project)
        assert sum(len(v) for v in rep.values()) == len(e.results), e.name
        placed += len(e.results)
        for (ds_name, protocol), _ in rep.items():
            assert ds_name in SUITE
            # the VG benchmark counts every MSLS query; Mapillary's protocol leaves some out
            if ds_name == "msls_val":
                assert protocol == ("netvlad" if e.name.startswith("vgbench") else "msls")
    assert placed > 20


# ----------------------------------------------------------------------------- benchmark vpr


def _official_msls(db, q, db_keys, q_keys, positives, ks=(1, 5, 10)):
    """Brute-force ranking, then utils/eval.py's recall (queries with a positive only)."""
    keep = [i for i, p in enumerate(positives) if len(p)]
    d = ((q[:, None].astype(np.float64) - db[None]) ** 2).sum(-1)
    ranks = np.array(db_keys)[d.argsort(1)][keep]
    pos_keys = [[db_keys[j] for j in positives[i]] for i in keep]
    out = np.zeros(len(ks))
    for r, p in zip(ranks, pos_keys):
        for i, k in enumerate(ks):
            if np.isin(r[:k], p).any():
                out[i:] += 1
                break
    return out / len(keep)


def test_benchmark_vpr_cli_on_tiny_trees(tmp_path, capsys):
    from test_msls import build_msls

    root = tmp_path / "datasets"
    build_msls(root / "msls")
    build_pitts(root)
    build_nordland(root)
    argv = ["benchmark", "vpr", "lite0-max", "--datasets", "msls_val", "pitts30k_test", "nordland",
            "--root", str(root), "--features", str(tmp_path / "feats"), "--reported",
            "vgbench-resnet18-netvlad-msls", "--report", str(tmp_path / "r.json"), "--plot",
            str(tmp_path / "r.png"), "--no-progress", "--batch-size", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rep = json.loads((tmp_path / "r.json").read_text())
    rows = [(r["dataset"], r["protocol"]) for r in rep["results"]]
    assert rows == [("msls_val", "msls"), ("msls_val", "netvlad"), ("pitts30k_test", "netvlad"),
                    ("nordland", "netvlad")]
    entry = load_catalogue().get("vgbench-resnet18-netvlad-msls")
    by = {(r["dataset"], r["protocol"]): r for r in rep["results"]}
    assert by[("msls_val", "netvlad")]["reported"] == {"1": entry.results["MSLS R@1"]}
    assert by[("pitts30k_test", "netvlad")]["reported"] == {"1": entry.results["Pitts30k R@1"]}
    assert by[("msls_val", "msls")]["reported"] == {} and by[("nordland", "netvlad")]["reported"] == {}
    assert f"/ {entry.results['MSLS R@1']:.1f}" in out and "R@1 / paper" in out
    # measured numbers: recomputed here from the kept feature files
    from netvlad.io import read_features

    for name, prot in rows:
        ds = load_dataset(find_suite_dataset(name, root))
        _, db, _ = read_features(tmp_path / "feats" / f"{name}_db.h5")
        _, q, _ = read_features(tmp_path / "feats" / f"{name}_query.h5")
        positives = [p.tolist() for p in ds.all_positives()]
        if prot == "msls":
            from netvlad.metrics import image_key

            want = _official_msls(db, q, [image_key(n) for n in ds.db_images],
                                  [image_key(n) for n in ds.query_images], positives)
            assert by[(name, prot)]["num_queries"] < by[(name, prot)]["num_queries_total"]
        else:
            want = vg_recall(db, q, positives)
        got = [by[(name, prot)]["recall"][str(n)] for n in (1, 5, 10)]
        np.testing.assert_allclose(got, want, err_msg=f"{name} {prot}")
    from netvlad._outputs import png_text

    assert png_text(tmp_path / "r.png").get("netvlad") == "benchmark vpr"
    # a second run reuses the finished feature files
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "feats").iterdir()}
    assert main(argv + ["--overwrite"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "feats").iterdir()} == before
    assert json.loads((tmp_path / "r.json").read_text())["results"] == rep["results"]
    capsys.readouterr()
    # errors: an unknown dataset is named before any work
    assert main(["benchmark", "vpr", "lite0-max", "--datasets", "pitts30k_test", "oxford", "--root",
                 str(root), "--no-progress"]) == 2
    assert "oxford: not found under" in capsys.readouterr().err


def test_benchmark_vpr_library_protocols(tmp_path, monkeypatch):
    """benchmark_vpr with a stand-in for compute_descriptors: the protocols asked for, in order."""
    import netvlad.extract

    build_pitts(tmp_path)

    def fake(model, paths, config=None, **kw):
        rng = np.random.default_rng(len(paths))
        return rng.normal(size=(len(paths), 4)).astype(np.float32)

    monkeypatch.setattr(netvlad.extract, "compute_descriptors", fake)
    res = benchmark_vpr(object(), ["pitts30k_test"], tmp_path, protocols=["msls", "netvlad"], ns=[1, 2],
                        reported={("pitts30k_test", "netvlad"): {1: 50.0}})
    assert [r.protocol for r in res.rows] == ["msls", "netvlad"] and res.ns == [1, 2]
    assert res.rows[1].reported == {1: 50.0} and res.rows[0].map is not None
    assert "50.0" in res.table() and json.loads(json.dumps(res.to_json()))["benchmark"] == "vpr"
    with pytest.raises(ValueError, match="unknown protocol"):
        benchmark_vpr(object(), ["pitts30k_test"], tmp_path, protocols=["vg"])
