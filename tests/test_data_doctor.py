"""The dataset doctor finds each planted defect; the `netvlad dataset` CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from netvlad.cli import main
from netvlad.data import PlaceDataset, load_dataset
from netvlad.data.doctor import CheckConfig, check_dataset
from netvlad.data.formats.patchnetvlad import package_dir

QUIET = CheckConfig(progress=False)


def _img(path, size=(16, 12), color=(10, 20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def clean_set(tmp_path):
    """6 db images on a 2-place grid (30 m apart) and 2 queries, all present and 16x12."""
    rows = []
    for i in range(6):
        _img(tmp_path / "db" / f"d{i}.jpg", color=(i * 30, 0, 0))
        rows.append(f"db,db/d{i}.jpg,{1000 + 40 * (i % 2)},{2000 + i},17T")
    for i in range(2):
        _img(tmp_path / "q" / f"q{i}.jpg", color=(0, i * 30 + 5, 0))
        rows.append(f"query,q/q{i}.jpg,{1002 + 40 * i},2001,17T")
    return rows


def write(tmp_path, rows, name="set.csv"):
    p = tmp_path / name
    p.write_text("split,path,easting,northing,zone\n" + "\n".join(rows) + "\n")
    return p


def test_clean_dataset_only_warns_about_negatives(tmp_path):
    p = write(tmp_path, clean_set(tmp_path))
    rep = check_dataset(load_dataset(p), QUIET)
    assert not rep.errors
    assert rep.codes() == {"few-negatives"}  # 6 db images < nNegChoice 1000: a warning by default
    assert main(["dataset", "check", str(p), "--no-progress"]) == 0


def test_doctor_finds_each_planted_defect(tmp_path, capsys):
    rows = clean_set(tmp_path)
    rows.append("db,db/missing.jpg,1000,2000,17T")  # missing file
    (tmp_path / "db" / "broken.jpg").write_bytes(b"this is not a jpeg")
    rows.append("db,db/broken.jpg,1000,2000,17T")  # unreadable
    _img(tmp_path / "db" / "wide.jpg", size=(20, 10))
    rows.append("db,db/wide.jpg,1040,2003,17T")  # mixed sizes
    rows.append("db,db/far.jpg,101000,2000,17T")  # outlier: 100 km away
    _img(tmp_path / "db" / "far.jpg")
    rows.append("query,q/lonely.jpg,5000,9000,17T")  # no positive
    _img(tmp_path / "q" / "lonely.jpg", color=(1, 2, 3))
    shutil.copy(tmp_path / "db" / "d3.jpg", tmp_path / "q" / "copy.jpg")
    rows.append("query,q/copy.jpg,1040,2003,17T")  # byte-identical to a db image
    rows.append("query,db/d1.jpg,1040,2001,17T")  # the same file as a db image
    rows.append("db,db/d0.jpg,1000,2000,17T")  # listed twice
    p = write(tmp_path, rows)
    rep = check_dataset(load_dataset(p), QUIET)
    by = {f.code: f for f in rep.findings}
    assert by["missing-image"].severity == "error" and by["missing-image"].items == [
        str(tmp_path / "db/missing.jpg")
    ]
    assert by["unreadable-image"].severity == "error" and "broken.jpg" in by["unreadable-image"].items[0]
    assert by["mixed-sizes"].severity == "warning" and by["mixed-sizes"].items[0].startswith("16x12")
    assert by["outlier-coordinates"].items == ["db db/far.jpg (100.0 km)"]
    assert by["no-positive"].items == ["q/lonely.jpg"] and "count as failures" in by["no-positive"].message
    assert by["query-in-database"].severity == "error"
    assert sorted(by["query-in-database"].items) == sorted(
        [f"q/copy.jpg (identical to {tmp_path / 'db/d3.jpg'})", "db/d1.jpg (= db db/d1.jpg)"]
    )
    assert by["duplicate-name"].items == ["db/d0.jpg"]
    # CLI: exit 1 and the report names the files.
    assert main(["dataset", "check", str(p), "--no-progress", "--max-listed", "1"]) == 1
    out = capsys.readouterr().out
    assert "ERROR [missing-image] 1 image(s) not found:" in out and "missing.jpg" in out
    assert "WARNING [no-positive]" in out and "q/lonely.jpg" in out
    assert "error(s)" in out.splitlines()[-1]


def test_doctor_negatives_threshold(tmp_path):
    p = write(tmp_path, clean_set(tmp_path))
    ds = load_dataset(p)
    rep = check_dataset(ds, CheckConfig(progress=False, min_negatives=4))
    # each query has 3 positives among 6 db images -> 3 negatives < 4
    f = next(f for f in rep.findings if f.code == "few-negatives")
    assert f.severity == "error" and f.count == 2 and "(min 3)" in f.message
    assert not check_dataset(ds, CheckConfig(progress=False, min_negatives=3)).errors
    assert main(["dataset", "check", str(p), "--no-progress", "--min-negatives", "4"]) == 1


def test_doctor_coordinates_nan_and_zones(tmp_path):
    base = dict(
        name="x", db_root=tmp_path, query_root=tmp_path, db_images=["a", "b", "c"], query_images=["q"]
    )
    nan = PlaceDataset(**base, db_utm=[[0, 0], [np.nan, 1], [1, 1]], query_utm=[[0, 0]])
    rep = check_dataset(nan, CheckConfig(check_images=False))
    f = next(f for f in rep.findings if f.code == "bad-coordinates")
    assert f.severity == "error" and f.items == ["db b"]
    mixed = PlaceDataset(
        **base,
        db_utm=[[0, 0], [1, 1], [2, 2]],
        query_utm=[[0, 0]],
        zone=None,
        db_zones=["17T", "18T", "17T"],
        query_zones=["17T"],
    )
    f = next(
        f for f in check_dataset(mixed, CheckConfig(check_images=False)).findings if f.code == "zone-mixed"
    )
    assert f.severity == "error"
    # A CSV in lat/lon across two zones is re-projected: the doctor warns and names the image.
    p = tmp_path / "ll.csv"
    p.write_text(
        "split,path,lat,lon\ndb,a.jpg,40.44,-79.99\ndb,b.jpg,40.44,-77.9\nquery,q.jpg,40.44,-79.99\n"
    )
    rep = check_dataset(load_dataset(p), CheckConfig(check_images=False))
    f = next(f for f in rep.findings if f.code == "zone-mixed")
    assert f.severity == "warning" and f.items == ["db b.jpg"]
    assert any(f.code == "loader-note" for f in rep.findings)


def test_doctor_tokyotm_queries_in_db_are_warnings(tmp_path):
    ds = PlaceDataset(
        name="tm",
        db_root=tmp_path,
        query_root=tmp_path,
        db_images=["a.jpg", "b.jpg"],
        query_images=["a.jpg"],
        db_utm=[[0, 0], [5, 0]],
        query_utm=[[0, 0]],
        db_timestamps=[2009, 2013],
        query_timestamps=[2009],
        rules={"tokyotm_timestamp"},
    )
    f = next(
        f
        for f in check_dataset(ds, CheckConfig(check_images=False)).findings
        if f.code == "query-in-database"
    )
    assert f.severity == "warning" and "timestamp rule" in f.message


def test_cli_info_and_convert(tmp_path, capsys):
    p = write(tmp_path, clean_set(tmp_path))
    assert main(["dataset", "info", str(p)]) == 0
    out = capsys.readouterr().out
    assert "database       6 images" in out and "zone           17T" in out and "positive 25 m" in out
    assert "extent         42.0 m (easting) x 5.0 m (northing)" in out
    assert main(["dataset", "convert", str(p), "--to", "mat", str(tmp_path / "o.mat")]) == 0
    assert main(["dataset", "convert", str(p), str(tmp_path / "o2.csv")]) == 0
    a, b = load_dataset(tmp_path / "o2.csv"), load_dataset(p)
    assert a.db_paths() == b.db_paths()
    np.testing.assert_array_equal(load_dataset(tmp_path / "o.mat").db_utm, b.db_utm)
    assert main(["dataset", "convert", str(p), str(tmp_path / "o.bin")]) == 2
    assert "pass --to csv|mat" in capsys.readouterr().err
    assert main(["dataset", "info", str(tmp_path / "nope.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.csv" in err


def test_cli_info_patchnetvlad_json(capsys):
    if package_dir() is None:
        pytest.skip("patchnetvlad not installed")
    assert main(["dataset", "info", "pitts30k_test", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["num_db"], s["num_queries"], s["zone"]) == (10000, 6816, "17T")
