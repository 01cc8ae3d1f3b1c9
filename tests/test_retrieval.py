"""Oxford/Paris, Holidays and revisited ground-truth readers on small files in the real formats."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from netvlad import retrieval
from netvlad.retrieval import (
    crop_box,
    crop_queries,
    downscale_images,
    evaluate_retrieval,
    load_pickle_safely,
    read_holidays,
    read_oxford_paris,
    read_revisited,
)


def _jpg(path, w=40, h=30, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((h, w, 3), value, np.uint8)
    arr[: h // 2, : w // 2] = 255 - value  # some structure so crops differ
    Image.fromarray(arr).save(path, quality=95)


def _oxford(root):
    for stem in [
        "all_souls_000001",
        "all_souls_000002",
        "all_souls_000003",
        "ashmolean_000001",
        "ashmolean_000002",
    ]:
        _jpg(root / "images" / f"{stem}.jpg")
    gt = root / "groundtruth"
    gt.mkdir()
    (gt / "all_souls_1_query.txt").write_text("oxc1_all_souls_000001 5.5 3.2 30.7 20.0\n")
    (gt / "all_souls_1_good.txt").write_text("all_souls_000001\nall_souls_000002\n")
    (gt / "all_souls_1_ok.txt").write_text("all_souls_000003\nall_souls_000099\n")  # 000099 missing
    (gt / "all_souls_1_junk.txt").write_text("ashmolean_000002\n")
    (gt / "ashmolean_1_query.txt").write_text("oxc1_ashmolean_000001 0 0 39 29\n")
    (gt / "ashmolean_1_good.txt").write_text("ashmolean_000002\n")
    (gt / "ashmolean_1_ok.txt").write_text("")
    (gt / "ashmolean_1_junk.txt").write_text("")
    return root


def test_oxford_reader(tmp_path):
    b = read_oxford_paris(_oxford(tmp_path), "oxford5k")
    assert b.db_images[0] == "all_souls_000001.jpg" and len(b.db_images) == 5
    assert b.query_images == ["all_souls_000001.jpg", "ashmolean_000001.jpg"]
    np.testing.assert_array_equal(b.query_db_ids, [0, 3])
    np.testing.assert_allclose(b.query_rois[0], [5.5, 3.2, 30.7, 20.0])
    pos, junk, npos = b.protocols["default"]
    np.testing.assert_array_equal(pos[0], [0, 1, 2, -1])  # missing gt image → −1, still counted
    assert npos == [4, 1]
    np.testing.assert_array_equal(junk[0], [4])
    # AP with the missing positive in the denominator: perfect ranking of the 3 present → 3/4.
    db = np.eye(5, dtype=np.float32)
    q = np.array([[1, 0.9, 0.8, 0, 0], [0, 0, 0, 0.5, 1]], np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    res = evaluate_retrieval(b, db, q, dims=(None,))
    assert res["results"][5]["protocols"]["default"]["map"] == pytest.approx(100 * (0.75 + 1.0) / 2)


def test_paris_reader_nested_and_corrupt(tmp_path):
    for p in [
        "defense/paris_defense_000001.jpg",
        "defense/paris_defense_000002.jpg",
        "louvre/paris_louvre_000001.jpg",
        "louvre/paris_louvre_000136.jpg",
    ]:
        _jpg(tmp_path / "images" / p)
    (tmp_path / "corrupt.txt").write_text("paris/louvre/paris_louvre_000136.jpg\n")
    gt = tmp_path / "groundtruth"
    gt.mkdir()
    (gt / "defense_1_query.txt").write_text("paris_defense_000001 1 2 10 12\n")
    (gt / "defense_1_good.txt").write_text("paris_defense_000002\n")
    (gt / "defense_1_ok.txt").write_text("paris_louvre_000136\n")  # corrupt → missing, counted
    (gt / "defense_1_junk.txt").write_text("paris_louvre_000001\n")
    b = read_oxford_paris(tmp_path, "paris6k")
    assert b.db_images == [
        "defense/paris_defense_000001.jpg",
        "defense/paris_defense_000002.jpg",
        "louvre/paris_louvre_000001.jpg",
    ]
    pos, junk, npos = b.protocols["default"]
    np.testing.assert_array_equal(pos[0], [1, -1])
    np.testing.assert_array_equal(junk[0], [2])


def test_oxford_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="ground-truth folder not found"):
        read_oxford_paris(tmp_path)
    _oxford(tmp_path)
    (tmp_path / "groundtruth" / "bad_1_query.txt").write_text("oxc1_all_souls_000001 1 2\n")
    with pytest.raises(ValueError, match="bad_1_query.txt: expected 'name x1 y1 x2 y2'"):
        read_oxford_paris(tmp_path)
    (tmp_path / "groundtruth" / "bad_1_query.txt").write_text("oxc1_nothere_000001 1 2 3 4\n")
    with pytest.raises(FileNotFoundError, match="query image 'nothere_000001' is not in"):
        read_oxford_paris(tmp_path)


def test_crop_box_matches_matlab_rounding_and_clipping():
    # round(ROI + 98·[−1 −1 1 1]) with 1-based inclusive indices, clipped to a 300×200 image.
    assert crop_box([136.5, 34.1, 148.5, 95.7], 98, 300, 200) == (38, 0, 247, 194)
    # x1 = round(38.5) = 39 (MATLAB rounds halves away from zero; numpy would give 38)
    assert crop_box([38.5, 10, 50, 20], 0, 300, 200) == (38, 9, 50, 20)
    with pytest.raises(ValueError, match="empty crop"):
        crop_box([400, 10, 500, 20], 0, 300, 200)


def test_crop_queries_cached_jpeg(tmp_path):
    b = read_oxford_paris(_oxford(tmp_path))
    paths = crop_queries(b, tmp_path / "images_crop_4", grow=2)
    with Image.open(paths[0]) as im:
        # round([5.5 3.2 30.7 20] + 2·[−1 −1 1 1]) = [4 1 33 22] → 30×22 pixels
        assert im.size == (30, 22) and im.format == "JPEG"
    mtime = os.stat(paths[0]).st_mtime_ns
    crop_queries(b, tmp_path / "images_crop_4", grow=2)
    assert os.stat(paths[0]).st_mtime_ns == mtime


def _holidays(root):
    for stem in [100000, 100001, 100002, 100100, 100101, 100200]:
        _jpg(root / "jpg" / f"{stem}.jpg")
    return root


def test_holidays_reader(tmp_path):
    b = read_holidays(_holidays(tmp_path))
    assert b.query_images == ["100000.jpg", "100100.jpg", "100200.jpg"]
    pos, junk, _ = b.protocols["default"]
    assert [p.tolist() for p in pos] == [[1, 2], [4], []]
    assert [j.tolist() for j in junk] == [[0], [3], [5]]


def test_holidays_downscale(tmp_path):
    src = tmp_path / "jpg"
    _jpg(src / "100000.jpg", 200, 100)
    _jpg(src / "100001.jpg", 20, 10)
    out = downscale_images(
        src, ["100000.jpg", "100001.jpg"], tmp_path / "small", max_pixels=5000, progress=False
    )
    with Image.open(out / "100000.jpg") as im:
        assert im.width * im.height <= 5000 * 1.03 and im.width == 100  # scale sqrt(5000/20000) = 0.5
    assert (out / "100001.jpg").read_bytes() == (src / "100001.jpg").read_bytes()  # copied as is


def _revisited(root):
    imlist = ["all_souls_000001", "all_souls_000002", "all_souls_000003", "radcliffe_000001", "x_000001"]
    gnd = [
        {
            "bbx": np.array([1.0, 2.0, 30.0, 20.0]),
            "easy": np.array([1]),
            "hard": np.array([2]),
            "junk": np.array([4]),
        },
        {
            "bbx": [0, 0, 10, 10],
            "easy": np.array([], dtype=np.int64),
            "hard": np.array([0, 1]),
            "junk": np.array([], dtype=np.int64),
        },
    ]
    with open(root / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump({"imlist": imlist, "qimlist": ["all_souls_000001", "radcliffe_000001"], "gnd": gnd}, f)
    return root


def test_revisited_reader_protocols(tmp_path):
    b = read_revisited(_revisited(tmp_path), "roxford5k")
    assert b.db_images[0] == "all_souls_000001.jpg" and b.db_root == tmp_path / "jpg"
    np.testing.assert_array_equal(b.query_db_ids, [0, 3])
    pos, junk, _ = b.protocols["easy"]
    assert pos[0].tolist() == [1] and junk[0].tolist() == [2, 4]
    pos, junk, _ = b.protocols["medium"]
    assert pos[0].tolist() == [1, 2] and junk[0].tolist() == [4]
    pos, junk, _ = b.protocols["hard"]
    assert pos[0].tolist() == [2] and junk[0].tolist() == [1, 4]
    assert b.protocols["easy"][0][1].size == 0  # query 2 has no easy image
    # ranking for query 0: 0, 2, 1, 3, 4. Easy: positives {1}, junk {2, 4} → list 0, 1, 3: rank 2 → AP 1/4.
    # Hard: {2}, junk {1, 4} → list 0, 2, 3: rank 2 → 1/4. Medium: {1, 2}, junk {4} → ranks 2, 3:
    # (0/1 + 1/2)/2/2 + (1/2 + 2/3)/2/2 = 1/8 + 7/24.
    db = np.eye(5, dtype=np.float32)
    q = np.array([[1, 0.3, 0.6, 0.1, 0], [1, 0.9, 0, 0, 0]], np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    res = evaluate_retrieval(b, db, q)["results"][5]["protocols"]
    # query 1: easy empty → left out of the easy mean; hard {0, 1} at ranks 1, 2 → AP 1.
    assert res["easy"]["map"] == pytest.approx(25.0)
    assert res["easy"]["ap"][1] is None
    assert res["hard"]["map"] == pytest.approx(100 * (0.25 + 1.0) / 2)
    assert res["medium"]["map"] == pytest.approx(100 * ((1 / 8 + 7 / 24) + 1.0) / 2)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_loader_refuses_code(tmp_path):
    p = tmp_path / "gnd_roxford5k.pkl"
    p.write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": [_Evil()]}))
    with pytest.raises(ValueError, match="refusing to load (posix|nt).system"):
        load_pickle_safely(p)
    with pytest.raises(ValueError, match="refusing to load"):
        read_revisited(tmp_path, "roxford5k")


def test_benchmark_retrieval_wiring(tmp_path, monkeypatch):
    """benchmark_retrieval with a stand-in for compute_descriptors (pixel statistics)."""
    root = _oxford(tmp_path / "ox")
    seen = []

    sides = []

    def fake_descriptors(model, paths, **kw):
        seen.append([p.name for p in paths])
        sides.append(kw["max_side"])
        out = []
        for p in paths:
            with Image.open(p) as im:
                a = np.asarray(im.convert("RGB"), np.float32)
            v = np.array([a.mean(), a.std(), a.shape[0], a.shape[1]], np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)

    import netvlad.extract

    monkeypatch.setattr(netvlad.extract, "compute_descriptors", fake_descriptors)

    class Model:
        class backbone:
            receptive_field = 4

    res = retrieval.benchmark_retrieval(Model(), "oxford5k", root, crop=True, dims=(None, 2), progress=False)
    assert res["queries"] == "crop" and res["grow"] == 2
    assert seen[1] == ["all_souls_000001.jpg", "ashmolean_000001.jpg"]
    assert (root / "images_crop_4" / "all_souls_000001.jpg").is_file()
    assert sorted(res["results"]) == [2, 4]
    assert 0 <= res["results"][4]["protocols"]["default"]["map"] <= 100
    res = retrieval.benchmark_retrieval(Model(), "oxford5k", root, crop=False, progress=False)
    assert res["queries"] == "full" and len(seen) == 3  # full queries reuse the database descriptors
    # native resolution by default (the protocol), whatever the model's preprocessing resizes to
    assert sides == [0, 0, 0] and res["max_side"] == 0
    retrieval.benchmark_retrieval(Model(), "oxford5k", root, crop=False, progress=False, max_side=None)
    assert sides[-1] is None


def test_benchmark_retrieval_cli_holidays(tmp_path, capsys):
    """End to end with a real model (EfficientNet-Lite0 max pooling, offline ImageNet weights)."""
    import json

    from netvlad.cli import main

    root = _holidays(tmp_path / "holidays")
    rc = main(
        [
            "benchmark",
            "retrieval",
            "--dataset",
            "holidays",
            "--root",
            str(root),
            "lite0-max",
            "--dims",
            "320",
            "16",
            "--report",
            str(tmp_path / "r.json"),
            "--no-progress",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "holidays (full queries): 3 queries, 6 images" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert sorted(rep["results"], key=int) == ["16", "320"]
    assert rep["max_side"] == 0  # native resolution, as the protocol
    aps = rep["results"]["320"]["protocols"]["default"]["ap"]
    assert aps[2] is None  # the last query has no other image in its group
    assert 0.0 <= rep["results"]["320"]["protocols"]["default"]["map"] <= 100.0
    assert (root / "jpg_1024x768" / "100000.jpg").is_file()
