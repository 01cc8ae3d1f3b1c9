"""Each dataset loader on small files written by the test, format detection, and malformed-file errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from PIL import Image

from netvlad.data import (
    detect_format,
    load_at_folder,
    load_csv,
    load_dataset,
    load_exif_folder,
    load_mat,
    load_patchnetvlad,
    save_csv,
    save_mat,
)
from netvlad.geo import latlon_to_utm

DB_NAMES = ["000/000000_pitch1_yaw1.jpg", "000/000000_pitch1_yaw2.jpg", "000/000001_pitch1_yaw1.jpg"]
Q_NAMES = ["000/q0.jpg", "000/q1.jpg"]
UTM_DB = np.array([[584825.9, 4476945.6], [584825.9, 4476945.6], [584900.0, 4477000.0]])
UTM_Q = np.array([[584830.0, 4476950.0], [585500.0, 4477500.0]])


def mat_fields(**over):
    c = lambda names: np.array(names, dtype=object).reshape(-1, 1)  # noqa: E731
    f = {
        "whichSet": "test",
        "dbImageFns": c(DB_NAMES),
        "utmDb": UTM_DB.T.copy(),
        "qImageFns": c(Q_NAMES),
        "utmQ": UTM_Q.T.copy(),
        "numImages": 3.0,
        "numQueries": 2.0,
        "posDistThr": 25.0,
        "posDistSqThr": 625.0,
        "nonTrivPosDistSqThr": 100.0,
    }
    f.update(over)
    return f


def write_mat73(path, fields):
    """A MATLAB v7.3 file laid out as MATLAB writes it: HDF5 with a 512-byte header, a struct group,
    char arrays as uint16 (L×1 in HDF5 for a 1×L MATLAB row), numeric arrays transposed
    (column-major), and cell arrays as object references into the /#refs# group."""
    import h5py

    def char(parent, name, text):
        if text == "":
            d = parent.create_dataset(name, data=np.array([0, 0], dtype=np.uint64))
            d.attrs["MATLAB_empty"] = np.uint8(1)
        else:
            d = parent.create_dataset(name, data=np.array([ord(ch) for ch in text], np.uint16).reshape(-1, 1))
            d.attrs["MATLAB_int_decode"] = np.int32(2)
        d.attrs["MATLAB_class"] = np.bytes_("char")
        return d

    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        g = f.create_group("dbStruct")
        g.attrs["MATLAB_class"] = np.bytes_("struct")
        counter = 0
        for key, v in fields.items():
            if isinstance(v, str):
                char(g, key, v)
            elif isinstance(v, np.ndarray) and v.dtype == object:  # MATLAB N×1 cell -> HDF5 (1, N) refs
                rs = []
                for s in v.ravel(order="F"):
                    rs.append(char(refs, f"r{counter}", s).ref)
                    counter += 1
                d = g.create_dataset(key, data=np.array(rs, dtype=h5py.ref_dtype).reshape(v.shape[::-1]))
                d.attrs["MATLAB_class"] = np.bytes_("cell")
            else:
                a = np.atleast_2d(np.asarray(v, dtype=np.float64))
                d = g.create_dataset(key, data=a.T)
                d.attrs["MATLAB_class"] = np.bytes_("double")
    header = (
        b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    )
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116) + b"\x00" * 8 + b"\x00\x02" + b"IM")


def check_small(ds):
    assert ds.db_images == DB_NAMES and ds.query_images == Q_NAMES
    np.testing.assert_allclose(ds.db_utm, UTM_DB)
    np.testing.assert_allclose(ds.query_utm, UTM_Q)
    assert ds.pos_radius == 25.0 and ds.train_pos_radius == 10.0
    np.testing.assert_array_equal(ds.positives(0), [0, 1])
    assert ds.positives(1).size == 0


# ----------------------------------------------------------------------------- .mat


def test_mat_v5_written_like_matlab(tmp_path):
    p = tmp_path / "pitts30k_test.mat"
    scipy.io.savemat(p, {"dbStruct": mat_fields()})
    (tmp_path / "images").mkdir()
    (tmp_path / "queries").mkdir()
    ds = load_mat(p)
    check_small(ds)
    assert ds.db_root == tmp_path / "images" and ds.query_root == tmp_path / "queries"
    assert detect_format(p) == "mat" and not ds.rules


def test_mat_v73_written_like_matlab(tmp_path):
    p = tmp_path / "tokyoTM_val.mat"
    ts_db, ts_q = np.array([[2009.0, 2013.0, 2013.0]]), np.array([[2009.0, 2011.0]])
    write_mat73(p, mat_fields(dbTimeStamp=ts_db, qTimeStamp=ts_q))
    ds = load_mat(p, images=tmp_path)
    check_small(ds)
    assert ds.rules == {"tokyotm_timestamp"}
    np.testing.assert_array_equal(ds.db_timestamps, [2009, 2013, 2013])
    # db 0 and 1 are 6 m from query 0; db 0 shares the query's timestamp (2009) so only db 1 remains.
    np.testing.assert_array_equal(ds.nontrivial_positives(0), [1])
    # v7.3 and v5 readers agree, and our writer round-trips the v7.3 content.
    again = load_mat(save_mat(ds, tmp_path / "out.mat"), images=tmp_path)
    assert again.db_images == ds.db_images and again.rules == ds.rules
    np.testing.assert_array_equal(again.query_timestamps, ds.query_timestamps)
    np.testing.assert_array_equal(again.db_utm, ds.db_utm)


def test_mat_v73_empty_string_and_whichset(tmp_path):
    p = tmp_path / "x.mat"
    write_mat73(p, mat_fields(whichSet=""))
    check_small(load_mat(p))


def test_save_mat_layout_readable_positionally(tmp_path):
    # pytorch-NetVlad reads dbStruct fields by position: keep MATLAB's order and shapes.
    ds = load_mat(_v5(tmp_path))
    out = save_mat(ds, tmp_path / "o.mat")
    m = scipy.io.loadmat(out)["dbStruct"].item()
    assert m[0].item() == "pitts30k_test"
    assert [f[0].item() for f in m[1]] == DB_NAMES
    np.testing.assert_array_equal(m[2].T, UTM_DB)
    assert m[5].item() == 3 and m[6].item() == 2 and m[7].item() == 25 and m[9].item() == 100
    names = scipy.io.loadmat(out)["dbStruct"].dtype.names
    assert names[:10] == (
        "whichSet",
        "dbImageFns",
        "utmDb",
        "qImageFns",
        "utmQ",
        "numImages",
        "numQueries",
        "posDistThr",
        "posDistSqThr",
        "nonTrivPosDistSqThr",
    )


def _v5(tmp_path, **over):
    p = tmp_path / "pitts30k_test.mat"
    scipy.io.savemat(p, {"dbStruct": mat_fields(**over)})
    return p


@pytest.mark.parametrize(
    "over,match",
    [
        ({"utmDb": np.zeros((3, 3))}, r"utmDb: has shape 3×3, expected 2×3"),
        ({"utmQ": "abc"}, r"utmQ: must be a numeric 2×N matrix"),
        ({"posDistThr": np.array([1.0, 2.0])}, r"posDistThr: must be a numeric scalar"),
        ({"qTimeStamp": np.ones(5), "dbTimeStamp": np.ones(3)}, r"qTimeStamp: must be a numeric vector of 2"),
    ],
)
def test_mat_malformed_fields(tmp_path, over, match):
    with pytest.raises(ValueError, match=match) as ei:
        load_mat(_v5(tmp_path, **over))
    assert "pitts30k_test.mat" in str(ei.value) and "\n" not in str(ei.value)


def test_mat_missing_field_and_variable_and_garbage(tmp_path):
    f = mat_fields()
    del f["utmDb"]
    scipy.io.savemat(tmp_path / "a.mat", {"dbStruct": f})
    with pytest.raises(ValueError, match=r"a\.mat: utmDb: field missing"):
        load_mat(tmp_path / "a.mat")
    scipy.io.savemat(tmp_path / "b.mat", {"other": 1.0})
    with pytest.raises(ValueError, match=r"b\.mat: dbStruct: variable missing \(file holds \['other'\]\)"):
        load_mat(tmp_path / "b.mat")
    (tmp_path / "c.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ValueError, match=r"c\.mat: not a readable MATLAB v5"):
        load_mat(tmp_path / "c.mat")
    bad = mat_fields()
    write_mat73(tmp_path / "d.mat", {k: v for k, v in bad.items() if k != "qImageFns"})
    with pytest.raises(ValueError, match=r"d\.mat: qImageFns: field missing"):
        load_mat(tmp_path / "d.mat")


# ----------------------------------------------------------------------------- CSV


def test_csv_utm_with_options(tmp_path):
    p = tmp_path / "set.csv"
    p.write_text(
        "# pos_radius: 30\n# rules: tokyo247_dedup\n"
        "split,path,easting,northing,zone,timestamp,heading,group\n"
        + "".join(
            f"db,{n},{e!r},{nn!r},17T,{2010 + i},{90 * i},{i // 2}\n"
            for i, (n, (e, nn)) in enumerate(zip(DB_NAMES, UTM_DB.tolist()))
        )
        + "".join(f"query,{n},{e!r},{nn!r},17T,2020,,\n" for n, (e, nn) in zip(Q_NAMES, UTM_Q.tolist()))
    )
    ds = load_csv(p)
    assert ds.db_images == DB_NAMES and ds.zone == "17T" and ds.pos_radius == 30.0
    assert ds.db_root == tmp_path and ds.rules == {"tokyo247_dedup"}
    np.testing.assert_array_equal(ds.db_groups, [0, 0, 1])
    np.testing.assert_array_equal(ds.db_timestamps, [2010, 2011, 2012])
    assert np.isnan(ds.query_headings).all() and ds.db_headings[1] == 90.0
    np.testing.assert_array_equal(ds.db_utm, UTM_DB)
    assert load_csv(p, images=tmp_path / "imgs").db_root == tmp_path / "imgs"
    # round trip
    again = load_csv(save_csv(ds, tmp_path / "sub" / "again.csv"))
    assert again.db_paths() == ds.db_paths() and again.rules == ds.rules
    np.testing.assert_array_equal(again.db_groups, ds.db_groups)
    np.testing.assert_array_equal(again.db_timestamps, ds.db_timestamps)
    np.testing.assert_array_equal(again.query_utm, ds.query_utm)


def test_csv_latlon_and_zone_span(tmp_path, caplog):
    # Pittsburgh (17T) plus one point across the 78°W boundary (18T): projected into 17T with a warning.
    rows = [
        ("db", "a.jpg", 40.4406, -79.9959),
        ("db", "b.jpg", 40.4410, -79.9960),
        ("query", "q.jpg", 40.4407, -79.9958),
        ("db", "far.jpg", 40.44, -77.9),
    ]
    p = tmp_path / "ll.csv"
    p.write_text("split,path,lat,lon\n" + "".join(f"{s},{n},{a},{b}\n" for s, n, a, b in rows))
    with caplog.at_level("WARNING"):
        ds = load_csv(p)
    assert ds.zone == "17T" and "re-projected into zone 17T" in caplog.text
    assert ds.db_zones == ["17T", "17T", "18T"] and ds.notes
    e, n = (float(x) for x in latlon_to_utm(40.4406, -79.9959)[:2])
    np.testing.assert_allclose(ds.db_utm[0], [e, n], atol=1e-6)
    e2, n2 = (float(x) for x in latlon_to_utm(40.44, -77.9, zone="17T")[:2])
    np.testing.assert_allclose(ds.db_utm[2], [e2, n2], atol=1e-6)
    # UTM rows from two zones are re-projected as well (via lat/lon).
    e3, n3 = (float(x) for x in latlon_to_utm(40.44, -77.9)[:2])
    p2 = tmp_path / "mixed.csv"
    p2.write_text(
        f"split,path,easting,northing,zone\ndb,a.jpg,{e!r},{n!r},17T\ndb,b.jpg,{e!r},{n!r},17T\n"
        f"query,q.jpg,{e3!r},{n3!r},18T\n"
    )
    ds2 = load_csv(p2)
    assert ds2.zone == "17T"
    np.testing.assert_allclose(ds2.query_utm[0], [e2, n2], atol=1e-4)


@pytest.mark.parametrize(
    "text,match",
    [
        ("path,lat,lon\na.jpg,1,2\n", r"column 'split': missing"),
        ("split,path,x,y\ndb,a.jpg,1,2\n", r"columns: need 'lat','lon' or 'easting','northing'"),
        (
            "split,path,lat,lon\ndb,a.jpg,40.1,-79\nquery,b.jpg,abc,-79\n",
            r"line 3: column 'lat': cannot parse 'abc'",
        ),
        ("split,path,lat,lon\ntrain,a.jpg,40,-79\n", r"line 2: column 'split': unknown value 'train'"),
        ("split,path,lat,lon\ndb,a.jpg,95,-79\n", r"line 2: latitude 95.0 outside"),
        ("split,path,easting,northing,zone\ndb,a.jpg,1,2,99Q\n", r"line 2: column 'zone': not a UTM zone"),
        ("split,path,lat,lon\ndb,a.jpg,40\n", r"line 2: has 3 fields, header has 4"),
        ("# rules: magic\nsplit,path,lat,lon\ndb,a.jpg,40,-79\n", r"metadata 'rules': unknown rule"),
        ("", r"header: file has no header row"),
    ],
)
def test_csv_malformed(tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=match) as ei:
        load_csv(p)
    assert str(ei.value).startswith(str(p)) and "\n" not in str(ei.value)


# ----------------------------------------------------------------------------- @ folders


def _img(path, size=(16, 12), exif=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (100, 120, 140)).save(path, exif=exif) if exif is not None else Image.new(
        "RGB", size, (100, 120, 140)
    ).save(path)


def test_at_folder(tmp_path):
    root = tmp_path / "tokyo247"
    names = {
        "database": [
            "@0381418.23@3946450.43@54@S@35.66@139.70@panoA@0@0@@@@2013@@.jpg",
            "@0381418.23@3946450.43@54@S@35.66@139.70@panoA@1@30@@@@2013@@.jpg",
            "@0381500.00@3946500.00@54@S@35.66@139.70@panoB@0@0@@@@2014@@.jpg",
        ],
        "queries": ["@0381420.00@3946452.00@54@S@35.66@139.70@@@@@@@2020@@.jpg"],
    }
    for d, ns in names.items():
        for n in ns:
            _img(root / d / "sub" / n)
    ds = load_at_folder(root)
    assert detect_format(root) == "at" and load_dataset(root).num_db == 3
    assert ds.num_db == 3 and ds.num_queries == 1 and ds.zone == "54S"
    assert ds.db_images[0].startswith("sub/@0381418.23")
    np.testing.assert_allclose(ds.db_utm[2], [381500.0, 3946500.0])
    np.testing.assert_array_equal(ds.db_groups, [0, 0, 1])
    assert ds.rules == {"tokyo247_dedup"}  # folder named like Tokyo 24/7 + panorama ids
    np.testing.assert_array_equal(ds.db_headings, [0, 30, 0])
    np.testing.assert_array_equal(ds.query_timestamps, [2020])
    np.testing.assert_array_equal(ds.positives(0), [0, 1])
    # minimal names: only easting / northing
    mini = tmp_path / "mini"
    _img(mini / "database" / "@10.0@20.0@.jpg")
    _img(mini / "queries" / "@12.0@20.0@.png")
    m = load_dataset(mini)
    assert m.zone is None and m.positives(0).tolist() == [0]


def test_at_folder_malformed(tmp_path):
    root = tmp_path / "bad"
    _img(root / "database" / "@1.0@2.0@.jpg")
    _img(root / "queries" / "@abc@2.0@.jpg")
    with pytest.raises(ValueError, match=r"queries: @abc@2\.0@\.jpg: easting: cannot parse 'abc'"):
        load_at_folder(root)
    with pytest.raises(ValueError, match=r"expected sub-folders database/ and queries/ \(found \['x'\]\)"):
        (tmp_path / "nolayout" / "x").mkdir(parents=True)
        load_dataset(tmp_path / "nolayout")


# ----------------------------------------------------------------------------- EXIF


def _gps_exif(lat, lon, heading=None):
    ex = Image.Exif()
    g = ex.get_ifd(0x8825)

    def dms(x):
        x = abs(x)
        d = int(x)
        m = int((x - d) * 60)
        return (float(d), float(m), (x - d - m / 60) * 3600)

    g.update({1: "N" if lat >= 0 else "S", 2: dms(lat), 3: "E" if lon >= 0 else "W", 4: dms(lon)})
    if heading is not None:
        g[17] = float(heading)
    return ex


def test_exif_folder(tmp_path, caplog):
    root = tmp_path / "photos"
    _img(root / "database" / "a.jpg", exif=_gps_exif(40.4406, -79.9959, heading=45))
    _img(root / "database" / "b.jpg", exif=_gps_exif(40.4407, -79.9960))
    _img(root / "database" / "far.jpg", exif=_gps_exif(40.44, -77.9))  # zone 18T
    _img(root / "database" / "nogps.jpg")
    _img(root / "queries" / "q.jpg", exif=_gps_exif(-33.8599, 151.2111))  # Sydney (56H): zone outlier
    with caplog.at_level("WARNING"):
        ds = load_dataset(root, progress=False)
    assert detect_format(root) == "exif"
    assert ds.db_images == ["a.jpg", "b.jpg", "far.jpg"] and ds.query_images == ["q.jpg"]
    assert "without EXIF GPS left out: database/nogps.jpg" in caplog.text
    assert ds.zone == "17T" and "re-projected into zone 17T" in caplog.text
    e, n, _, _ = latlon_to_utm(40.4406, -79.9959)
    np.testing.assert_allclose(ds.db_utm[0], [e, n], atol=0.01)  # EXIF stores rationals
    assert ds.db_headings[0] == 45 and np.isnan(ds.db_headings[1])
    assert ds.db_zones == ["17T", "17T", "18T"] and ds.query_zones == ["56H"]
    assert len(ds.notes) == 2


def test_exif_folder_unreadable_photo(tmp_path):
    root = tmp_path / "p"
    _img(root / "database" / "a.jpg", exif=_gps_exif(1, 2))
    (root / "queries").mkdir()
    (root / "queries" / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(ValueError, match=r"broken\.jpg: not an image Pillow can read"):
        load_exif_folder(root, progress=False)


# ----------------------------------------------------------------------------- Patch-NetVLAD


def test_patchnetvlad_custom_files(tmp_path):
    (tmp_path / "my_imageNames_index.txt").write_text("\n".join("./" + n for n in DB_NAMES) + "\n")
    (tmp_path / "my_imageNames_query.txt").write_text("\n".join(Q_NAMES) + "\n")
    np.savez(tmp_path / "my.npz", utmDb=UTM_DB, utmQ=UTM_Q, posDistThr=25)
    ds = load_dataset(tmp_path / "my.npz")
    check_small(ds)
    assert detect_format(tmp_path / "my.npz") == "patchnetvlad"
    np.savez(tmp_path / "my.npz", utmDb=UTM_DB[:2], utmQ=UTM_Q, posDistThr=25)
    with pytest.raises(ValueError, match=r"my\.npz: utmDb: has shape \(2, 2\), expected \(3, 2\)"):
        load_patchnetvlad(tmp_path / "my.npz")
    np.savez(tmp_path / "my.npz", utmQ=UTM_Q)
    with pytest.raises(ValueError, match=r"my\.npz: utmDb: key missing"):
        load_patchnetvlad(tmp_path / "my.npz")
    (tmp_path / "my.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"my\.npz: not a readable \.npz"):
        load_patchnetvlad(tmp_path / "my.npz")


def test_detect_format_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Patch-NetVLAD name"):
        detect_format(tmp_path / "nothing_here")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"unknown dataset file type \.txt"):
        load_dataset(tmp_path / "x.txt")
