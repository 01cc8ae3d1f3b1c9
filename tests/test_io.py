"""Feature files: HDF5 round trip / resume / refusal, MATLAB .bin, hloc layout."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from netvlad import io

NAMES = ["a.jpg", "sub/b.jpg", "sub/deeper/c.png", "ü-é.jpg", "e.jpg"]


def _desc(n=5, d=7, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_write_read_roundtrip_float32_and_attrs(tmp_path):
    desc = _desc()
    pre = {"style": "matconvnet", "mean": [1.0, 2.0, 3.0], "max_side": None}
    io.write_features(tmp_path / "f.h5", NAMES, desc, {"fingerprint": "abc", "preprocessing": pre,
                                                       "model_config": {"backbone": "vgg16"}})
    names, got, attrs = io.read_features(tmp_path / "f.h5")
    assert names == NAMES
    assert got.dtype == np.float32 and np.array_equal(got, desc)
    assert attrs["fingerprint"] == "abc" and attrs["dim"] == 7 and attrs["dtype"] == "float32"
    assert attrs["preprocessing"] == pre and attrs["model_config"] == {"backbone": "vgg16"}
    assert attrs["complete"] is True and attrs["bad_images"] == []
    assert attrs["names_sha256"] == io.names_sha256(NAMES) != io.names_sha256(NAMES[::-1])
    assert not list(tmp_path.glob(".*tmp*"))  # temp file renamed away


def test_float16_storage(tmp_path):
    desc = _desc()
    io.write_features(tmp_path / "f.h5", NAMES, desc, dtype="float16")
    with h5py.File(tmp_path / "f.h5") as f:
        assert f["descriptors"].dtype == np.float16
    _, got, attrs = io.read_features(tmp_path / "f.h5")
    assert got.dtype == np.float32 and attrs["dtype"] == "float16"
    np.testing.assert_allclose(got, desc, rtol=1e-3, atol=1e-3)


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        io.read_features(tmp_path / "nope.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(io.FeatureFileError, match="not a netvlad feature file"):
        io.read_features(tmp_path / "other.h5")
    io.write_features(tmp_path / "f.h5", NAMES, _desc())
    data = (tmp_path / "f.h5").read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(io.FeatureFileError, match=r"trunc\.h5.*(truncated|corrupt)"):
        io.read_features(tmp_path / "trunc.h5")
    io.export_hloc(tmp_path / "f.h5", tmp_path / "hloc.h5")
    with pytest.raises(io.FeatureFileError, match="hloc's layout"):
        io.read_features(tmp_path / "hloc.h5")


def test_writer_resume_partial_and_finish(tmp_path):
    out, desc = tmp_path / "f.h5", _desc()
    attrs = {"fingerprint": "m1", "preprocessing": {"max_side": None}}
    w = io.FeatureWriter(out, NAMES, 7, attrs=attrs)
    assert w.open().all() and w.status.kind == "new"
    w.write([3, 0], desc[[3, 0]])  # any order
    w.close()
    part = io.partial_path(out)
    assert part.name == "f.partial.h5" and part.exists() and not out.exists()
    with pytest.raises(io.FeatureFileError, match="partial feature file .*2 of 5"):
        io.read_features(part)

    w = io.FeatureWriter(out, NAMES, 7, attrs=attrs)
    todo = w.open()
    assert w.status.kind == "resume" and w.status.done == 2
    assert todo.tolist() == [False, True, True, False, True]
    w.write([1, 2], desc[[1, 2]])
    w.mark_bad([4], ["broken"])
    assert w.finish() == out and not part.exists()
    names, got, a = io.read_features(out)
    assert names == NAMES and a["bad_images"] == ["e.jpg"] and a["done"] == 5
    assert np.array_equal(got[:4], desc[:4]) and np.isnan(got[4]).all()

    w = io.FeatureWriter(out, NAMES, 7, attrs=attrs)
    assert not w.open().any() and w.status.kind == "up-to-date"
    assert "up to date" in w.status.message and "1 bad image" in w.status.message


def test_writer_refuses_other_model_dim_list(tmp_path):
    out = tmp_path / "f.h5"
    io.write_features(out, NAMES, _desc(), {"fingerprint": "m1"})
    msg = r"f\.h5: exists .*model fingerprint m1 \(this run: m2\).*overwrite"
    with pytest.raises(io.FeatureFileError, match=msg):
        io.FeatureWriter(out, NAMES, 7, attrs={"fingerprint": "m2"}).open()
    with pytest.raises(io.FeatureFileError, match=r"dimension 7 \(this run: 8\)"):
        io.FeatureWriter(out, NAMES, 8, attrs={"fingerprint": "m1"}).open()
    with pytest.raises(io.FeatureFileError, match="different image list"):
        io.FeatureWriter(out, NAMES[::-1], 7, attrs={"fingerprint": "m1"}).open()
    with pytest.raises(io.FeatureFileError, match=r"dtype float32 \(this run: float16\)"):
        io.FeatureWriter(out, NAMES, 7, dtype="float16", attrs={"fingerprint": "m1"}).open()
    # a non-feature file in the way is refused too
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(io.FeatureFileError, match="junk.h5.*refusing"):
        io.FeatureWriter(tmp_path / "junk.h5", NAMES, 7).open()
    # overwrite replaces it atomically (the old file stays until the new one is complete)
    w = io.FeatureWriter(out, NAMES, 7, attrs={"fingerprint": "m2"}, overwrite=True)
    assert w.open().all()
    assert io.read_attrs(out)["fingerprint"] == "m1"
    w.write(range(5), np.ones((5, 7), np.float32))
    w.finish()
    assert io.read_attrs(out)["fingerprint"] == "m2"


def test_partial_from_other_model_refused_and_unreadable_partial_discarded(tmp_path):
    out = tmp_path / "f.h5"
    w = io.FeatureWriter(out, NAMES, 7, attrs={"fingerprint": "m1"})
    w.open()
    w.close()
    with pytest.raises(io.FeatureFileError, match="interrupted extraction with model fingerprint"):
        io.FeatureWriter(out, NAMES, 7, attrs={"fingerprint": "m2"}).open()
    io.partial_path(out).write_bytes(b"\x89HDF garbage")
    w = io.FeatureWriter(out, NAMES, 7, attrs={"fingerprint": "m2"})
    assert w.open().all() and w.status.kind == "new"
    w.close()


def test_bin_roundtrip_and_errors(tmp_path):
    desc = _desc(5, 6)
    io.write_bin(tmp_path / "f.bin", desc)
    raw = (tmp_path / "f.bin").read_bytes()
    assert len(raw) == 4 * 6 * 5
    # image-major little-endian float32, as MATLAB's fwrite of a dim×n matrix
    assert np.array_equal(np.frombuffer(raw, "<f4")[:6], desc[0])
    assert np.array_equal(io.read_bin(tmp_path / "f.bin", 6), desc)
    (tmp_path / "t.bin").write_bytes(raw[:-4])
    with pytest.raises(io.FeatureFileError, match=r"t\.bin: 116 bytes is not a multiple of 4·dim = 24"):
        io.read_bin(tmp_path / "t.bin", 6)
    with pytest.raises(io.FeatureFileError, match="holds 5 vectors of dim 6 .* but 4 were expected"):
        io.read_bin(tmp_path / "f.bin", 6, num_images=4)
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        io.read_bin(tmp_path / "missing.bin", 6)


def test_read_bin_pair_infers_dim_from_queries(tmp_path):
    db, q = _desc(5, 6, 1), _desc(3, 6, 2)
    io.write_bin(tmp_path / "db.bin", db)
    io.write_bin(tmp_path / "q.bin", q)
    got_db, got_q = io.read_bin_pair(tmp_path / "db.bin", tmp_path / "q.bin", 5, 3)
    assert np.array_equal(got_db, db) and np.array_equal(got_q, q)
    # MATLAB would zero-pad a db file short by less than one vector; we refuse it
    (tmp_path / "db.bin").write_bytes((tmp_path / "db.bin").read_bytes()[:-8])
    with pytest.raises(io.FeatureFileError, match="db.bin"):
        io.read_bin_pair(tmp_path / "db.bin", tmp_path / "q.bin", 5, 3)
    with pytest.raises(io.FeatureFileError, match=r"q\.bin: 72 bytes is not 4·dim·5 queries"):
        io.read_bin_pair(tmp_path / "db.bin", tmp_path / "q.bin", 5, 5)


def test_hloc_export_nested_names_and_bad_rows(tmp_path):
    desc = _desc()
    w = io.FeatureWriter(tmp_path / "f.h5", NAMES, 7, attrs={"fingerprint": "m"})
    w.open()
    w.write([0, 1, 2, 3], desc[:4])
    w.mark_bad([4])
    w.finish()
    io.export_hloc(tmp_path / "f.h5", tmp_path / "g.h5")
    with h5py.File(tmp_path / "g.h5") as f:
        # hloc layout: nested groups for '/', 1-D global_descriptor
        assert isinstance(f["sub"]["deeper"]["c.png"], h5py.Group)
        assert f["sub/b.jpg/global_descriptor"].shape == (7,)
        assert "e.jpg" not in f
    names, got = io.read_hloc(tmp_path / "g.h5")
    assert names == sorted(NAMES[:4])
    order = [NAMES.index(n) for n in names]
    assert np.array_equal(got, desc[order])
    names2, got2 = io.read_hloc(tmp_path / "g.h5", names=NAMES[:4])
    assert names2 == NAMES[:4] and np.array_equal(got2, desc[:4])
    with pytest.raises(io.FeatureFileError, match="no global_descriptor for 1 names"):
        io.read_hloc(tmp_path / "g.h5", names=["zzz.jpg"])
    with pytest.raises(io.FeatureFileError, match="not an hloc"):
        io.read_hloc(tmp_path / "f.h5")
