"""Images that would crash the program or take the machine, and photo orientation.

- decompression bombs (a PNG header saying 30000×30000) are bad images: a one-line error naming
  them, a NaN row with --skip-bad, a doctor finding — never a traceback;
- ``max_pixels`` bounds the network input of one forward pass: an image above it is downscaled
  (warning with the size used; the descriptor is that of the image pre-downscaled to that size) or
  refused without being decoded; equal-size images share a batch only up to it;
- EXIF orientation is honoured for photos users give (query, --images, init --images) and ignored
  for --dataset, switchable both ways.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, JpegImagePlugin

from netvlad import extract, io
from netvlad.cli import main
from netvlad.data import load_dataset
from netvlad.data.doctor import CheckConfig, check_dataset
from netvlad.data.images import ImageLoadError, image_size, load_image
from netvlad.models import PRESETS, create_model, init_clusters, load_model, save_model

KW = {"num_workers": 0, "progress": False}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path, width=30000, height=30000):
    """A 69-byte PNG whose IHDR (valid CRC) says width×height RGB: 2.7 GB if decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _chunk(b"IEND", b""))
    return path


def smooth(rng, w, h):
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.fixture(scope="module")
def model():
    m = create_model(PRESETS["alexnet-netvlad"].replace(num_clusters=8), seed=0)
    rng = np.random.default_rng(0)
    init_clusters(m, [smooth(rng, 96, 72) for _ in range(2)], progress=False)
    return m


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    return save_model(model, tmp_path_factory.mktemp("m") / "m.pt")


@pytest.fixture
def folder(tmp_path):
    """Two good photos and a bomb."""
    rng = np.random.default_rng(3)
    root = tmp_path / "photos"
    root.mkdir()
    for name in ("a.png", "c.png"):
        Image.fromarray(smooth(rng, 96, 72)).save(root / name)
    bomb_png(root / "b.png")
    return root


def _one_line_error(err, *needles):
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert all(n in lines[0] for n in needles), err


# ---------------------------------------------------------------------------------------------
# decompression bombs


def test_bomb_is_an_image_load_error(tmp_path):
    p = bomb_png(tmp_path / "bomb.png")
    assert p.stat().st_size < 100
    for read in (image_size, load_image):
        with pytest.raises(ImageLoadError, match=r"bomb\.png: refused as a possible decompression bomb"):
            read(p)


def test_extract_cli_bomb_stops_or_is_skipped(model, ckpt, folder, tmp_path, capsys):
    common = ["extract", str(ckpt), "--images", str(folder), "--workers", "0", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "f.h5")]) == 2
    _one_line_error(capsys.readouterr().err, "netvlad extract: error:", "b.png", "decompression bomb")
    assert not (tmp_path / "f.h5").exists()

    assert main([*common, "--skip-bad", "--out", str(tmp_path / "f.h5")]) == 0
    assert "1 bad image(s) skipped: b.png" in capsys.readouterr().out
    names, desc, attrs = io.read_features(tmp_path / "f.h5")
    assert names == ["a.png", "b.png", "c.png"] and attrs["bad_images"] == ["b.png"]
    assert np.isnan(desc[1]).all() and np.isfinite(desc[[0, 2]]).all()
    ref = extract.compute_descriptors(model, [folder / "a.png", folder / "c.png"], batch_size=1, **KW)
    np.testing.assert_allclose(desc[[0, 2]], ref, atol=1e-5)


def test_doctor_reports_bomb_and_goes_on(tmp_path, capsys):
    rows = []
    for i in range(3):
        Image.new("RGB", (16, 12), (40 * i, 0, 0)).save(tmp_path / f"d{i}.png")
        rows.append(f"db,d{i}.png,{1000 + i},2000,17T")
    bomb_png(tmp_path / "bomb.png")
    rows.append("db,bomb.png,1003,2000,17T")
    Image.new("RGB", (16, 12)).save(tmp_path / "q.png")
    rows.append("query,q.png,1001,2000,17T")
    spec = tmp_path / "set.csv"
    spec.write_text("split,path,easting,northing,zone\n" + "\n".join(rows) + "\n")
    rep = check_dataset(load_dataset(spec), CheckConfig(progress=False))
    by = {f.code: f for f in rep.findings}
    assert by["unreadable-image"].severity == "error"
    assert len(by["unreadable-image"].items) == 1 and "bomb.png" in by["unreadable-image"].items[0]
    assert "decompression bomb" in by["unreadable-image"].items[0]
    assert "few-negatives" in by  # the later checks still ran
    assert main(["dataset", "check", str(spec), "--no-progress"]) == 1
    out = capsys.readouterr()
    assert "ERROR [unreadable-image]" in out.out and "bomb.png" in out.out and "Traceback" not in out.err


@pytest.fixture
def index(ckpt, folder, tmp_path):
    """An index over the folder's good photos (the bomb skipped)."""
    feats, idx = tmp_path / "db.h5", tmp_path / "db.idx"
    assert main(["extract", str(ckpt), "--images", str(folder), "--workers", "0", "--no-progress",
                 "--skip-bad", "--out", str(feats)]) == 0
    assert main(["index", "build", str(feats), "--out", str(idx)]) == 0
    return idx


def test_query_bomb_is_a_one_line_error(index, folder, capsys):
    capsys.readouterr()
    assert main(["query", str(index), str(folder / "a.png"), str(folder / "b.png")]) == 2
    _one_line_error(capsys.readouterr().err, "netvlad query: error:", "b.png", "decompression bomb")


# ---------------------------------------------------------------------------------------------
# the pixel bound


def test_fit_size_is_the_largest_same_aspect_size_within_the_bound():
    for h, w, n in [(400, 600, 40000), (10000, 10000, 1 << 23), (3024, 4032, 12345), (7, 5000, 1000)]:
        th, tw = extract.fit_size(h, w, n)
        assert th * tw <= n
        assert (th + 1) * (tw + 1) > n  # one more row and column would not fit
        assert abs(th / tw - h / w) <= (h / w) / min(th, tw) + 1e-12  # aspect kept to a pixel
    assert extract.fit_size(400, 600, 240000) is None and extract.fit_size(400, 600, None) is None


def test_plan_batches_caps_the_pixels_of_a_batch():
    sizes = ["a"] * 5 + ["b"] * 3
    pixels = [100] * 5 + [300] * 3
    assert extract.plan_batches(sizes, 4, pixels, 250) == [[0, 1], [2, 3], [4], [5], [6], [7]]
    assert extract.plan_batches(sizes, 4, pixels, None) == [[0, 1, 2, 3], [4], [5, 6, 7]]


@pytest.fixture
def big_png(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(smooth(np.random.default_rng(5), 600, 400)).save(path)
    return path


def test_oversize_is_downscaled_like_a_predownscaled_photo(model, big_png, tmp_path, caplog):
    th, tw = extract.fit_size(400, 600, 40000)
    small = tmp_path / "small.png"
    Image.open(big_png).resize((tw, th), Image.Resampling.BILINEAR).save(small)
    ref = extract.compute_descriptors(model, [small], max_pixels=None, **KW)
    with caplog.at_level(logging.WARNING, logger="netvlad"):
        got = extract.compute_descriptors(model, [big_png], max_pixels=40000, **KW)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert "big.png: network input 600×400 px" in caplog.text
    assert f"over max_pixels 40000: downscaled to {tw}×{th} px" in caplog.text
    assert "forward pass about" in caplog.text
    full = extract.compute_descriptors(model, [big_png], max_pixels=None, **KW)
    assert not np.allclose(full, ref, atol=1e-3)  # the bound did change something
    # the single-image path and the feature file agree
    np.testing.assert_allclose(extract.compute_representation(model, big_png, max_pixels=40000), ref[0],
                               atol=1e-6)
    out = extract.extract_features(model, [big_png], ["big.png"], tmp_path / "f.h5", max_pixels=40000, **KW)
    _, desc, attrs = io.read_features(out)
    np.testing.assert_allclose(desc, ref, atol=1e-6)
    assert attrs["preprocessing"]["max_pixels"] == 40000
    # another bound is another file identity: never silently reused
    with pytest.raises(io.FeatureFileError, match="preprocessing"):
        extract.extract_features(model, [big_png], ["big.png"], out, max_pixels=50000, **KW)


def test_cli_max_pixels_downscales_with_a_warning(ckpt, big_png, tmp_path, capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="netvlad"):
        assert main(["extract", str(ckpt), "--images", str(big_png.parent), "--list", str(_list(tmp_path)),
                     "--workers", "0", "--no-progress", "--max-pixels", "40000",
                     "--out", str(tmp_path / "f.h5")]) == 0
    th, tw = extract.fit_size(400, 600, 40000)
    assert "big.png: network input 600×400 px" in caplog.text
    assert f"downscaled to {tw}×{th} px" in caplog.text
    assert io.read_attrs(tmp_path / "f.h5")["preprocessing"]["max_pixels"] == 40000
    assert main(["extract", str(ckpt), "--images", str(big_png.parent), "--max-pixels", "-1",
                 "--out", str(tmp_path / "g.h5")]) == 2
    assert "--max-pixels must be >= 0" in capsys.readouterr().err


def _list(tmp_path):
    p = tmp_path / "list.txt"
    p.write_text("big.png\n")
    return p


def test_refuse_names_the_image_without_decoding_it(model, big_png, ckpt, tmp_path, capsys, monkeypatch):
    def no_decoding(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageLoadError, match=r"big\.png: network input 600×400 px .* over max_pixels 40000; "
                                             r"refused"):
        extract.compute_descriptors(model, [big_png], max_pixels=40000, oversize="refuse", **KW)
    with pytest.raises(ImageLoadError, match=r"big\.png: .*refused"):
        extract.compute_representation(model, big_png, max_pixels=40000, oversize="refuse")
    monkeypatch.undo()
    common = ["extract", str(ckpt), "--images", str(big_png.parent), "--list", str(_list(tmp_path)),
              "--workers", "0", "--no-progress", "--max-pixels", "40000", "--oversize", "refuse"]
    assert main([*common, "--out", str(tmp_path / "f.h5")]) == 2
    _one_line_error(capsys.readouterr().err, "netvlad extract: error:", "big.png", "refused")
    assert main([*common, "--skip-bad", "--out", str(tmp_path / "f.h5")]) == 0
    _, desc, attrs = io.read_features(tmp_path / "f.h5")
    assert attrs["bad_images"] == ["big.png"] and np.isnan(desc).all()


def test_batches_are_capped_and_agree_with_batch_size_one(model, tmp_path):
    rng = np.random.default_rng(9)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(smooth(rng, 96, 72)).save(paths[-1])
    one = extract.compute_descriptors(model, paths, batch_size=1, **KW)
    capped = extract.compute_descriptors(model, paths, batch_size=8, max_pixels=2 * 96 * 72, **KW)
    np.testing.assert_allclose(capped, one, atol=1e-5)


def test_jpeg_is_decoded_at_reduced_scale_when_downscaled(model, tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    Image.fromarray(smooth(np.random.default_rng(6), 1600, 1200)).save(path, quality=95)
    drafts = []
    real = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = real(self, mode, size)
        drafts.append(self.size)  # the size the decoder will produce
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    th, tw = extract.fit_size(1200, 1600, 120000)
    arr = load_image(path, fit=lambda h, w: extract.fit_size(h, w, 120000))
    assert arr.shape == (th, tw, 3) and drafts == [(400, 300)]  # decoded at 1/4 scale, not 1600×1200
    got = extract.compute_descriptors(model, [path], max_pixels=120000, **KW)
    full = np.array(Image.open(path).convert("RGB").resize((tw, th), Image.Resampling.BILINEAR))
    ref = extract.compute_representation(model, full, max_pixels=None)
    assert float(got[0] @ ref) > 0.99  # DCT-domain reduction differs from a full decode only slightly


def test_estimate_lies_between_the_largest_activation_and_all_of_them(model):
    sizes = []

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            model(model.preprocess.apply(np.zeros((128, 128, 3), np.uint8))[None])
    finally:
        for h in handles:
            h.remove()
    est = extract.estimate_forward_bytes(model, 128, 128)
    assert max(sizes) <= est <= sum(sizes) + 3 * 4 * 128 * 128
    assert extract.estimate_forward_bytes(model, 256, 256, batch=2) == pytest.approx(8 * est, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# EXIF orientation


@pytest.fixture
def oriented(tmp_path):
    """stored.png (no tag), tagged.png (same pixels, EXIF orientation 6) and upright.png (those pixels
    turned 90° clockwise, which orientation 6 asks a viewer to do), in three folders."""
    stored = smooth(np.random.default_rng(8), 120, 80)
    out = {}
    for name, arr, exif in [("stored", stored, None), ("tagged", stored, _exif(6)),
                            ("upright", np.ascontiguousarray(np.rot90(stored, k=-1)), None)]:
        (tmp_path / name).mkdir()
        p = tmp_path / name / "photo.png"
        Image.fromarray(arr).save(p, **({"exif": exif} if exif else {}))
        out[name] = p
    return out


def test_exif_orientation_in_the_library(model, oriented):
    assert image_size(oriented["tagged"]) == (80, 120)
    assert image_size(oriented["tagged"], honour_exif=True) == (120, 80)
    np.testing.assert_array_equal(load_image(oriented["tagged"], honour_exif=True),
                                  load_image(oriented["upright"]))
    d = {k: extract.compute_descriptors(model, [p], exif_orientation=True, **KW) for k, p in oriented.items()}
    np.testing.assert_allclose(d["tagged"], d["upright"], atol=1e-6)
    np.testing.assert_allclose(extract.compute_descriptors(model, [oriented["tagged"]], **KW), d["stored"],
                               atol=1e-6)
    assert not np.allclose(d["stored"], d["upright"], atol=1e-3)
    np.testing.assert_allclose(
        extract.compute_representation(model, oriented["tagged"], exif_orientation=True), d["upright"][0],
        atol=1e-6)


def test_exif_orientation_with_downscale_of_a_jpeg(tmp_path):
    stored = smooth(np.random.default_rng(2), 800, 400)
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=_exif(6), quality=95)
    arr = load_image(path, honour_exif=True, fit=lambda h, w: extract.fit_size(h, w, 20000))
    th, tw = extract.fit_size(800, 400, 20000)
    assert arr.shape == (th, tw, 3) and th > tw  # portrait, as the phone held it


def _feats(ckpt, tmp_path, name, *args):
    out = tmp_path / f"{name}.h5"
    assert main(["extract", str(ckpt), *args, "--workers", "0", "--no-progress", "--out", str(out)]) == 0
    return io.read_features(out)[1][0]


def test_cli_images_and_dataset_orientation_defaults_and_switches(model, ckpt, oriented, tmp_path):
    up = extract.compute_descriptors(model, [oriented["upright"]], **KW)[0]
    flat = extract.compute_descriptors(model, [oriented["stored"]], **KW)[0]
    images = ["--images", str(oriented["tagged"].parent)]
    np.testing.assert_allclose(_feats(ckpt, tmp_path, "i", *images), up, atol=1e-6)
    np.testing.assert_allclose(_feats(ckpt, tmp_path, "i2", *images, "--no-exif-orientation"), flat,
                               atol=1e-6)
    spec = tmp_path / "set.csv"
    spec.write_text("split,path,easting,northing,zone\ndb,tagged/photo.png,1,2,17T\n"
                    "query,tagged/photo.png,1,2,17T\n")
    ds = ["--dataset", str(spec), "--split", "db"]
    np.testing.assert_allclose(_feats(ckpt, tmp_path, "d", *ds), flat, atol=1e-6)
    np.testing.assert_allclose(_feats(ckpt, tmp_path, "d2", *ds, "--exif-orientation"), up, atol=1e-6)
    assert io.read_attrs(tmp_path / "d2.h5")["preprocessing"]["exif_orientation"] is True


def test_cli_help_says_how_to_switch(capsys):
    for cmd in (["extract"], ["query"], ["init"]):
        with pytest.raises(SystemExit):
            main([*cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--exif-orientation, --no-exif-orientation" in text and "--max-pixels" in text


def test_query_describes_a_tagged_photo_upright(ckpt, oriented, tmp_path, capsys):
    feats, idx = tmp_path / "db.h5", tmp_path / "db.idx"
    db = tmp_path / "db"
    db.mkdir()
    Image.open(oriented["upright"]).save(db / "upright.png")
    Image.open(oriented["stored"]).save(db / "sideways.png")
    assert main(["extract", str(ckpt), "--images", str(db), "--workers", "0", "--no-progress",
                 "--out", str(feats)]) == 0
    assert main(["index", "build", str(feats), "--out", str(idx)]) == 0
    capsys.readouterr()
    for flags, best in [([], "upright.png"), (["--no-exif-orientation"], "sideways.png")]:
        assert main(["query", str(idx), str(oriented["tagged"]), "--k", "2", "--json", *flags]) == 0
        top = json.loads(capsys.readouterr().out)[0]["results"][0]
        assert top["name"] == best and top["score"] == pytest.approx(1.0, abs=1e-5)


def test_init_images_honours_exif(tmp_path, capsys):
    raw = save_model(create_model(PRESETS["alexnet-netvlad"].replace(num_clusters=8), seed=0),
                     tmp_path / "r.pt")
    stored = smooth(np.random.default_rng(4), 240, 160)
    for name, arr, exif in [("tagged", stored, _exif(6)), ("upright", np.rot90(stored, k=-1), None),
                            ("stored", stored, None)]:
        (tmp_path / name).mkdir()
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp_path / name / "p.png",
                                                         **({"exif": exif} if exif else {}))

    def init(name, *flags):
        out = tmp_path / f"{name}{len(flags)}.pt"
        assert main(["init", str(raw), "--images", str(tmp_path / name), "--out", str(out), "--quiet",
                     *flags]) == 0
        return load_model(out).fingerprint()

    assert init("tagged") == init("upright")
    assert init("tagged", "--no-exif-orientation") == init("stored")
    assert init("tagged") != init("stored")

