"""Extraction: batching by size, resume byte-identity, bad images, refusal, inputs, CLI."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from netvlad import extract, io
from netvlad.cli import main
from netvlad.data.images import ImageLoadError
from netvlad.models import PRESETS, create_model, init_clusters, load_model, save_model

SIZES = [(80, 64), (64, 48), (80, 64), (80, 64), (64, 48), (80, 64), (80, 64)]  # (w, h), mixed


def _smooth_image(rng, w, h):
    # Smooth random colour field: JPEG-friendly, non-trivial features.
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


def _model(seed=0):
    model = create_model(PRESETS["alexnet-netvlad"].replace(num_clusters=8), seed=seed)
    rng = np.random.default_rng(seed)
    init_clusters(model, [_smooth_image(rng, 96, 72) for _ in range(2)], progress=False)
    return model


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    names = []
    for i, (w, h) in enumerate(SIZES):
        name = f"sub/im{i}.jpg" if i % 3 == 0 else f"im{i}.jpg"
        Image.fromarray(_smooth_image(rng, w, h)).save(root / name, quality=90)
        names.append(name)
    return root, names


def _paths(root, names):
    return [root / n for n in names]


def test_plan_batches_groups_sizes_deterministically():
    plan = extract.plan_batches(["a", "b", "a", "a", "b", "a", "a"], 2)
    assert plan == [[0, 2], [3, 5], [6], [1, 4]]
    with pytest.raises(ValueError, match="batch_size"):
        extract.plan_batches(["a"], 0)


def test_bucketed_batches_equal_batch_size_one(model, images, tmp_path):
    root, names = images
    paths = _paths(root, names)
    one = extract.compute_descriptors(model, paths, batch_size=1, num_workers=0, progress=False)
    out = extract.extract_features(model, paths, names, tmp_path / "f.h5", batch_size=4, num_workers=0,
                                   progress=False)
    got_names, got, attrs = io.read_features(out)
    assert got_names == names and got.shape == (len(names), model.out_dim)
    np.testing.assert_allclose(got, one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert attrs["fingerprint"] == model.fingerprint() and attrs["dim"] == model.out_dim
    assert attrs["preprocessing"] == {**model.preprocess.to_dict(), "max_pixels": extract.DEFAULT_MAX_PIXELS,
                                      "oversize": "downscale", "exif_orientation": False}
    assert attrs["model_config"]["backbone"] == "alexnet" and attrs["compute"] == "fp32"
    # each row is the single-image representation
    np.testing.assert_allclose(extract.compute_representation(model, paths[1]), one[1], atol=1e-5)


def test_decoding_workers_give_the_same_result(model, images):
    root, names = images
    paths = _paths(root, names)[:3]
    a = extract.compute_descriptors(model, paths, batch_size=2, num_workers=0, progress=False)
    b = extract.compute_descriptors(model, paths, batch_size=2, num_workers=1, progress=False)
    assert np.array_equal(a, b)


def test_resume_after_interruption_is_byte_identical(model, images, tmp_path):
    root, names = images
    paths = _paths(root, names)
    ref = extract.extract_features(model, paths, names, tmp_path / "ref.h5", batch_size=2, num_workers=0,
                                   progress=False)
    out = tmp_path / "f.h5"
    calls = []

    def stop_after_two(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract.extract_features(model, paths, names, out, batch_size=2, num_workers=0, progress=False,
                                 callback=stop_after_two)
    assert not out.exists() and io.partial_path(out).exists()
    with pytest.raises(io.FeatureFileError, match="partial feature file .*4 of 7"):
        io.read_features(io.partial_path(out))
    resumed = []
    extract.extract_features(model, paths, names, out, batch_size=2, num_workers=0, progress=False,
                             callback=lambda d, t: resumed.append(d))
    assert resumed == [5, 7]  # only the remaining batches ran
    _, d_ref, _ = io.read_features(ref)
    _, d_out, _ = io.read_features(out)
    assert d_ref.tobytes() == d_out.tobytes()
    assert not io.partial_path(out).exists()


def test_resume_after_killed_process_is_byte_identical(images, tmp_path):
    """A process killed hard (no cleanup at all) after two batches resumes to the same bytes."""
    root, names = images
    model = _model(seed=3)
    ckpt = save_model(model, tmp_path / "m.pt")
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from netvlad.extract import extract_features
        from netvlad.models import load_model
        names = {names!r}
        root = Path({str(root)!r})
        def die(done, total):
            if done >= 4:
                os._exit(9)
        extract_features(load_model({str(ckpt)!r}), [root / n for n in names], names,
                         Path({str(tmp_path / "f.h5")!r}), batch_size=2, num_workers=0, progress=False,
                         callback=die)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert io.partial_path(tmp_path / "f.h5").exists()

    model = load_model(ckpt)
    out = extract.extract_features(model, _paths(root, names), names, tmp_path / "f.h5", batch_size=2,
                                   num_workers=0, progress=False)
    ref = extract.extract_features(model, _paths(root, names), names, tmp_path / "ref.h5", batch_size=2,
                                   num_workers=0, progress=False)
    assert io.read_features(out)[1].tobytes() == io.read_features(ref)[1].tobytes()


def _corrupt(root, names, i):
    p = root / names[i]
    p.write_bytes(p.read_bytes()[:300])  # header intact, scan data cut
    return names[i]


def test_corrupt_missing_and_empty_errors(model, images, tmp_path):
    root, names = images
    bad = _corrupt(root, names, 2)
    with pytest.raises(ImageLoadError, match=rf"{bad}: corrupt or truncated image"):
        extract.extract_features(model, _paths(root, names), names, tmp_path / "f.h5", num_workers=0,
                                 progress=False)
    with pytest.raises(ImageLoadError, match=r"nothere\.jpg: image not found"):
        extract.extract_features(model, [root / "nothere.jpg"], ["nothere.jpg"], tmp_path / "g.h5",
                                 num_workers=0, progress=False)
    with pytest.raises(ValueError, match="empty image list"):
        extract.extract_features(model, [], [], tmp_path / "h.h5", progress=False)
    with pytest.raises(ValueError, match="duplicate image name 'a'"):
        extract.extract_features(model, _paths(root, names)[:2], ["a", "a"], tmp_path / "h.h5",
                                 progress=False)


def test_skip_bad_records_and_reports(model, images, tmp_path, caplog):
    root, names = images
    bad = _corrupt(root, names, 2)
    (root / names[5]).unlink()
    paths = _paths(root, names)
    with caplog.at_level(logging.WARNING, logger="netvlad"):
        out = extract.extract_features(model, paths, names, tmp_path / "f.h5", batch_size=3, num_workers=0,
                                       skip_bad=True, progress=False)
    got_names, desc, attrs = io.read_features(out)
    assert got_names == names  # rows stay aligned with the image list
    assert sorted(attrs["bad_images"]) == sorted([bad, names[5]])
    assert np.isnan(desc[[2, 5]]).all() and np.isfinite(desc[[0, 1, 3, 4, 6]]).all()
    assert "2 bad image(s) skipped" in caplog.text and bad in caplog.text
    good = [0, 1, 3, 4, 6]
    ref = extract.compute_descriptors(model, [paths[i] for i in good], batch_size=1, num_workers=0,
                                      progress=False)
    np.testing.assert_allclose(desc[good], ref, atol=1e-5)


def test_other_model_refused_same_model_up_to_date(model, images, tmp_path):
    root, names = images
    paths = _paths(root, names)[:2]
    out = extract.extract_features(model, paths, names[:2], tmp_path / "f.h5", num_workers=0, progress=False)
    mtime = out.stat().st_mtime_ns
    extract.extract_features(model, paths, names[:2], out, num_workers=0, progress=False)
    assert out.stat().st_mtime_ns == mtime  # reused, not recomputed
    other = _model(seed=1)
    with pytest.raises(io.FeatureFileError, match="exists and was written with model fingerprint.*overwrite"):
        extract.extract_features(other, paths, names[:2], out, num_workers=0, progress=False)
    with pytest.raises(io.FeatureFileError, match="different image list"):
        extract.extract_features(model, paths[::-1], names[1::-1], out, num_workers=0, progress=False)
    with pytest.raises(io.FeatureFileError, match="preprocessing"):
        extract.extract_features(model, paths, names[:2], out, num_workers=0, progress=False, max_side=40)
    extract.extract_features(other, paths, names[:2], out, num_workers=0, progress=False, overwrite=True)
    assert io.read_attrs(out)["fingerprint"] == other.fingerprint()


def test_half_storage_and_bf16(model, images, tmp_path):
    root, names = images
    paths = _paths(root, names)[:3]
    ref = extract.compute_descriptors(model, paths, num_workers=0, progress=False)
    out = extract.extract_features(model, paths, names[:3], tmp_path / "f.h5", half=True, num_workers=0,
                                   progress=False)
    _, d, attrs = io.read_features(out)
    assert attrs["dtype"] == "float16"
    np.testing.assert_allclose(d, ref, atol=2e-3)
    bf = extract.compute_descriptors(model, paths, num_workers=0, progress=False, bf16=True)
    np.testing.assert_allclose(np.linalg.norm(bf, axis=1), 1.0, atol=1e-5)
    assert (bf * ref).sum(1).min() > 0.95  # bf16 changes the descriptor only slightly


def test_compute_representation_inputs(model, tmp_path):
    rng = np.random.default_rng(5)
    rgb = _smooth_image(rng, 64, 48)
    ref = extract.compute_representation(model, rgb)
    assert ref.shape == (model.out_dim,) and ref.dtype == np.float32
    Image.fromarray(rgb).save(tmp_path / "x.png")
    np.testing.assert_allclose(extract.compute_representation(model, tmp_path / "x.png"), ref, atol=1e-6)
    np.testing.assert_allclose(extract.compute_representation(model, str(tmp_path / "x.png")), ref, atol=1e-6)
    np.testing.assert_allclose(extract.compute_representation(model, Image.fromarray(rgb)), ref, atol=1e-6)
    rgba = np.concatenate([rgb, np.full((48, 64, 1), 255, np.uint8)], axis=2)
    np.testing.assert_allclose(extract.compute_representation(model, rgba), ref, atol=1e-6)
    np.testing.assert_allclose(extract.compute_representation(model, Image.fromarray(rgba, "RGBA")), ref,
                               atol=1e-6)
    grey = rgb[..., 1]
    g3 = extract.compute_representation(model, np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_allclose(extract.compute_representation(model, grey), g3, atol=1e-6)
    g_pil = extract.compute_representation(model, Image.fromarray(grey, "L"))
    np.testing.assert_allclose(g_pil, g3, atol=1e-6)
    np.testing.assert_allclose(extract.compute_representation(model, Image.fromarray(rgb).convert("CMYK")),
                               extract.compute_representation(model, Image.fromarray(rgb).convert("CMYK")
                                                              .convert("RGB")), atol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        extract.compute_representation(model, rgb.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        extract.compute_representation(model, rgb[..., :1].repeat(5, axis=2))
    assert model.training is False  # left as found (create_model returns eval mode)


def test_cli_images_h5_bin_hloc(model, images, tmp_path, capsys):
    root, names = images
    ckpt = save_model(model, tmp_path / "m.pt")
    common = ["extract", str(ckpt), "--images", str(root), "--workers", "0", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "f.h5")]) == 0
    assert "7 images" in capsys.readouterr().out
    got_names, desc, _ = io.read_features(tmp_path / "f.h5")
    assert got_names == sorted(names)
    assert main(common + ["--out", str(tmp_path / "f.h5")]) == 0
    assert "up to date" in capsys.readouterr().out
    (tmp_path / "list.txt").write_text(f"# two images\n{names[1]}\n\n{names[0]}\n")
    assert main(common + ["--list", str(tmp_path / "list.txt"), "--out", str(tmp_path / "f.bin"),
                          "--format", "bin"]) == 0
    b = io.read_bin(tmp_path / "f.bin", model.out_dim)
    # other batches than the full run (batch composition changes the last bits), so allclose
    np.testing.assert_allclose(b, desc[[sorted(names).index(names[1]), sorted(names).index(names[0])]],
                               atol=1e-5)
    assert sorted(p.name for p in tmp_path.glob("f.bin*")) == ["f.bin"]
    assert main(common + ["--out", str(tmp_path / "f.bin"), "--format", "bin"]) == 2
    assert "carry no model information" in capsys.readouterr().err
    assert main(common + ["--out", str(tmp_path / "g.h5"), "--format", "hloc"]) == 0
    hn, hd = io.read_hloc(tmp_path / "g.h5", names=got_names)
    np.testing.assert_array_equal(hd, desc)


def test_cli_errors(model, tmp_path, capsys):
    ckpt = save_model(model, tmp_path / "m.pt")
    (tmp_path / "empty").mkdir()
    assert main(["extract", str(ckpt), "--images", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "f.h5")]) == 2
    assert "empty image list" in capsys.readouterr().err
    raw = create_model(PRESETS["alexnet-netvlad"].replace(num_clusters=8))
    raw_ckpt = save_model(raw, tmp_path / "raw.pt")
    (tmp_path / "one").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "one" / "a.png")
    assert main(["extract", str(raw_ckpt), "--images", str(tmp_path / "one"), "--out", str(tmp_path / "f.h5"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "raw.pt" in err and "netvlad extract: error" in err
    assert not os.path.exists(tmp_path / "f.h5")


def test_extraction_leaves_the_models_memory_format_as_it_found_it(images):
    # Training keeps its model channels_last on CPU between cache refreshes; extraction switches a
    # contiguous model to channels_last for its duration only.
    from netvlad.extract import is_channels_last

    root, names = images
    paths = [root / n for n in names]
    m = _model()
    assert not is_channels_last(m)
    ref = extract.compute_descriptors(m, paths, progress=False)
    assert not is_channels_last(m)
    m.to(memory_format=torch.channels_last)
    got = extract.compute_descriptors(m, paths, progress=False)
    assert is_channels_last(m)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_tune_malloc_is_idempotent():
    expected = sys.platform.startswith("linux")
    assert extract.tune_malloc() is expected and extract.tune_malloc() is expected


def test_cli_dataset_split_all(model, images, tmp_path, capsys):
    """--dataset with --split all writes OUT_db and OUT_query (needs the places loaders)."""
    data = pytest.importorskip("netvlad.data")
    if not all(hasattr(data, a) for a in ("load_dataset", "save_csv", "PlaceDataset")):
        pytest.skip("netvlad.data loaders not available")
    root, names = images
    ds = data.PlaceDataset(name="t", db_root=root, query_root=root, db_images=names[:4],
                           query_images=names[4:],
                           db_utm=np.zeros((4, 2)), query_utm=np.zeros((3, 2)), zone=None)
    data.save_csv(ds, tmp_path / "ds.csv")
    ckpt = save_model(model, tmp_path / "m.pt")
    assert main(["extract", str(ckpt), "--dataset", str(tmp_path / "ds.csv"), "--image-root", str(root),
                 "--out", str(tmp_path / "f.h5"), "--workers", "0", "--no-progress"]) == 0, \
        capsys.readouterr().err
    assert io.read_features(tmp_path / "f_db.h5")[0] == names[:4]
    assert io.read_features(tmp_path / "f_query.h5")[0] == names[4:]



def test_max_side_zero_keeps_native_resolution(model, images, tmp_path):
    """max_side: None keeps the model's resize, N caps the longest side, 0 means no resize at all."""
    import copy

    from netvlad.models import Preprocess

    root, names = images
    paths = _paths(root, names)[:3]  # 80×64, 64×48, 80×64
    capped = copy.deepcopy(model)
    capped.set_preprocess(Preprocess.from_dict({**model.preprocess.to_dict(), "max_side": 70}))
    assert model.preprocess.max_side is None and capped.fingerprint() != model.fingerprint()
    native = np.stack([extract.compute_representation(model, p) for p in paths])
    resized = np.stack([extract.compute_representation(capped, p) for p in paths])
    cos = (native * resized).sum(1)
    assert cos[0] < 0.999 and cos[1] > 0.99999  # 80×64 is downscaled, 64×48 already fits
    kw = {"num_workers": 0, "progress": False}
    np.testing.assert_allclose(extract.compute_descriptors(capped, paths, **kw), resized, atol=1e-5)
    np.testing.assert_allclose(extract.compute_descriptors(capped, paths, max_side=0, **kw), native,
                               atol=1e-5)
    np.testing.assert_allclose(extract.compute_descriptors(model, paths, max_side=70, **kw), resized,
                               atol=1e-5)
    out = extract.extract_features(capped, paths, names[:3], tmp_path / "n.h5", max_side=0, **kw)
    _, d, attrs = io.read_features(out)
    np.testing.assert_allclose(d, native, atol=1e-5)
    assert attrs["preprocessing"]["max_side"] is None  # what was really applied is recorded
    assert io.read_attrs(extract.extract_features(capped, paths, names[:3], tmp_path / "c.h5", **kw)
                         )["preprocessing"]["max_side"] == 70
    with pytest.raises(ValueError, match="max_side must be >= 0"):
        extract.compute_descriptors(model, paths, max_side=-1, **kw)


def test_model_ref_attribute(model, images, tmp_path, monkeypatch, capsys):
    root, names = images
    paths = _paths(root, names)[:2]
    out = extract.extract_features(model, paths, names[:2], tmp_path / "r.h5", num_workers=0, progress=False,
                                   model_ref="some-preset")
    assert io.read_attrs(out)["model_ref"] == "some-preset"
    out = extract.extract_features(model, paths, names[:2], tmp_path / "none.h5", num_workers=0,
                                   progress=False)
    assert "model_ref" not in io.read_attrs(out)
    # provenance only: the same model under another reference is the same file (up to date)
    mtime = out.stat().st_mtime_ns
    extract.extract_features(model, paths, names[:2], out, num_workers=0, progress=False, model_ref="x")
    assert out.stat().st_mtime_ns == mtime
    save_model(model, tmp_path / "m.pt")
    monkeypatch.chdir(tmp_path)
    common = ["extract", "m.pt", "--images", str(root), "--workers", "0", "--no-progress"]
    assert main(common + ["--out", "cli.h5"]) == 0
    assert io.read_attrs(tmp_path / "cli.h5")["model_ref"] == str((tmp_path / "m.pt").resolve())
    assert main(common + ["--out", "x.h5", "--max-side", "-1"]) == 2
    assert "--max-side must be >= 0 (0: native resolution)" in capsys.readouterr().err


# ------------------------------------------------------------------ what one extract run writes (jobs)


def test_folder_and_dataset_jobs(tmp_path):
    from netvlad.data import PlaceDataset, save_csv
    from netvlad.extract import dataset_jobs, folder_job

    (tmp_path / "photos" / "sub").mkdir(parents=True)
    for name in ("b.jpg", "sub/a.png", "notes.txt"):
        (tmp_path / "photos" / name).write_bytes(b"x")
    job = folder_job(tmp_path / "photos", tmp_path / "f.h5")
    assert job.names == ["b.jpg", "sub/a.png"] and job.paths == [tmp_path / "photos" / n for n in job.names]
    (tmp_path / "list.txt").write_text("# mine\nsub/a.png\n\n  b.jpg \n")
    listed = folder_job(tmp_path / "photos", tmp_path / "f.h5", tmp_path / "list.txt")
    assert listed.names == ["sub/a.png", "b.jpg"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="empty image list: .*empty.txt lists no images"):
        folder_job(tmp_path / "photos", tmp_path / "f.h5", tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt: list file not found"):
        folder_job(tmp_path / "photos", tmp_path / "f.h5", tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="f.h5: not a directory"):
        folder_job(tmp_path / "f.h5", tmp_path / "f.h5")
    ds = PlaceDataset(name="t", db_root=str(tmp_path / "db"), query_root=str(tmp_path / "q"),
                      db_images=["d0.jpg", "d1.jpg"], query_images=["q0.jpg"], db_utm=np.zeros((2, 2)),
                      query_utm=np.zeros((1, 2)))
    csv = save_csv(ds, tmp_path / "t.csv")
    both = dataset_jobs(csv, tmp_path / "feats.h5")
    assert [j.out.name for j in both] == ["feats_db.h5", "feats_query.h5"]
    assert [len(j.names) for j in both] == [2, 1] and both[0].paths[0].name == "d0.jpg"
    (q,) = dataset_jobs(ds, tmp_path / "q.h5", split="query")
    assert q.out == tmp_path / "q.h5" and q.names == ["q0.jpg"] and q.paths == [tmp_path / "q" / "q0.jpg"]
