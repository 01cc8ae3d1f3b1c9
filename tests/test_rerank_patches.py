"""Patch feature files (extract_patches): round trip against the maths, resume after an interruption,
refusal of a mismatched file; `netvlad extract --patches` and `netvlad evaluate/--rerank` end to end
and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from netvlad import extract, io
from netvlad.cli import main
from netvlad.data import PlaceDataset, load_image, save_csv
from netvlad.models import PRESETS, create_model, init_clusters, save_model

SIZES = [(160, 128), (160, 128), (128, 96), (160, 128), (128, 96)]  # (w, h), mixed


def _smooth_image(rng, w, h):
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def model():
    m = create_model(PRESETS["alexnet-netvlad"].replace(num_clusters=8), seed=0)
    rng = np.random.default_rng(0)
    init_clusters(m, [_smooth_image(rng, 128, 96) for _ in range(2)], progress=False)
    g = torch.Generator().manual_seed(0)
    m.set_whitening(torch.randn(24, m.out_dim, generator=g) / 50, torch.randn(24, generator=g) / 50)
    return m


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    root.mkdir()
    names = []
    for i, (w, h) in enumerate(SIZES):
        Image.fromarray(_smooth_image(rng, w, h)).save(root / f"im{i}.png")
        names.append(f"im{i}.png")
    return root, names


CFG = extract.PatchConfig(sizes=(1, 2), strides=(1, 1), dim=16, half=False)


def test_patch_file_round_trip_equals_patch_descriptors(model, images, tmp_path):
    root, names = images
    out = extract.extract_patches(model, [root / n for n in names], names, tmp_path / "p.h5", CFG,
                                  batch_size=2, num_workers=0, progress=False)
    with io.PatchFile(out) as f:
        assert f.names == names and f.scales == [(1, 1), (2, 1)] and f.dim == 16
        assert f.attrs["fingerprint"] == model.fingerprint()
        np.testing.assert_array_equal(f.rows(["im3.png", "im0.png"]), [3, 0])
        with pytest.raises(io.FeatureFileError, match="no patches for image 'x.png'"):
            f.rows(["x.png"])
        for i, n in enumerate(names):
            x = model.preprocess.apply(load_image(root / n))[None]
            with torch.inference_mode():
                fmap = model.backbone(x)
                got = f.get(i)
                for k, (size, stride) in enumerate(CFG.scales):
                    want, pos = extract.patch_descriptors(model, fmap, size, stride, dim=16)
                    np.testing.assert_allclose(got[k][0], want[0].numpy(), atol=2e-5)
                    np.testing.assert_array_equal(got[k][1], pos)
        assert f.nbytes() > 0


def test_patch_extraction_resumes_and_refuses_other_settings(model, images, tmp_path):
    root, names = images
    paths = [root / n for n in names]
    ref = extract.extract_patches(model, paths, names, tmp_path / "ref.h5", CFG, batch_size=2,
                                  num_workers=0, progress=False)
    out = tmp_path / "p.h5"
    calls = []

    def stop_after_two(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract.extract_patches(model, paths, names, out, CFG, batch_size=2, num_workers=0, progress=False,
                                callback=stop_after_two)
    assert not out.exists() and io.partial_path(out).exists()
    statuses, resumed = [], []
    extract.extract_patches(model, paths, names, out, CFG, batch_size=2, num_workers=0, progress=False,
                            callback=lambda d, t: resumed.append(d), on_status=statuses.append)
    assert statuses[0].kind == "resume" and statuses[0].done == 2
    assert resumed == [3, 4, 5]  # only the images left
    with io.PatchFile(ref) as a, io.PatchFile(out) as b:
        for i in range(len(names)):
            for (da, pa), (db, pb) in zip(a.get(i), b.get(i)):
                assert da.tobytes() == db.tobytes() and pa.tobytes() == pb.tobytes()
    assert not io.partial_path(out).exists()
    statuses.clear()
    extract.extract_patches(model, paths, names, out, CFG, num_workers=0, progress=False,
                            on_status=statuses.append)
    assert statuses[0].kind == "up-to-date"
    other = extract.PatchConfig(sizes=(2,), strides=(1,), dim=16, half=False)
    with pytest.raises(io.FeatureFileError, match="patch scales"):
        extract.extract_patches(model, paths, names, out, other, num_workers=0, progress=False)
    glob = io.write_features(tmp_path / "g.h5", ["a"], np.ones((1, 2), np.float32))
    with pytest.raises(io.FeatureFileError, match="not a netvlad patch feature file"):
        io.PatchFile(glob)


def test_patch_extraction_refusals(images, tmp_path):
    root, names = images
    plain = create_model(PRESETS["alexnet-netvlad"].replace(num_clusters=8), seed=0)
    plain.head.initialized.fill_(True)
    with pytest.raises(ValueError, match="needs the model's PCA-whitening; it has no PCA-whitening"):
        extract.extract_patches(plain, [root / names[0]], names[:1], tmp_path / "p.h5",
                                extract.PatchConfig(dim=8), num_workers=0, progress=False)
    maxpool = create_model(PRESETS["alexnet-max"], seed=0) if "alexnet-max" in PRESETS else None
    if maxpool is not None:
        with pytest.raises(ValueError, match="need a NetVLAD model"):
            extract.extract_patches(maxpool, [root / names[0]], names[:1], tmp_path / "p.h5", num_workers=0,
                                    progress=False)
    assert not (tmp_path / "p.h5").exists() and not io.partial_path(tmp_path / "p.h5").exists()


@pytest.fixture
def dataset(images, tmp_path):
    root, names = images
    # Five places 100 m apart; queries are database images seen again (im0, im2), so each has a positive.
    ds = PlaceDataset(name="t", db_root=root, query_root=root, db_images=names,
                      query_images=["im0.png", "im2.png"], db_utm=np.c_[100.0 * np.arange(5), np.zeros(5)],
                      query_utm=np.array([[0.0, 0], [200, 0]]), zone=None)
    save_csv(ds, tmp_path / "ds.csv")
    return tmp_path / "ds.csv", root


@pytest.mark.slow
def test_cli_extract_patches_then_evaluate_rerank(model, dataset, tmp_path, capsys):
    csv, root = dataset
    ckpt = save_model(model, tmp_path / "m.pt")
    base = ["extract", str(ckpt), "--dataset", str(csv), "--image-root", str(root), "--out",
            str(tmp_path / "f.h5"), "--workers", "0", "--no-progress"]
    patches = ["--patches", "--patch-sizes", "1", "2", "--patch-dim", "16"]
    assert main(base + patches) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "f_db.patches.h5: patch features of 5 images, scales [(1, 1), (2, 1)]: about" in out
    assert (tmp_path / "f_db.patches.h5").exists() and (tmp_path / "f_query.patches.h5").exists()
    assert main(base + patches) == 0
    assert "f_query.patches.h5: up to date" in capsys.readouterr().out
    ev = ["evaluate", "--dataset", str(csv), "--db", str(tmp_path / "f_db.h5"), "--queries",
          str(tmp_path / "f_query.h5"), "--ns", "1", "2"]
    for method in ("patch", "aqe", "dba", "kreciprocal"):
        assert main(ev + ["--rerank", method, "--rerank-top", "3"]) == 0, capsys.readouterr().err
        assert f"re-ranked the top 3 with {method}" in capsys.readouterr().out
    # Each query is a database image seen again: its own patches match all in place, so it stays first.
    for scorer in ("spatial", "ransac"):
        report = tmp_path / f"r_{scorer}.json"
        assert main(ev + ["--rerank", "patch", "--patch-scorer", scorer, "--report", str(report)]) == 0
        assert json.loads(report.read_text())["recall"]["1"] == 1.0


def test_cli_rerank_errors(model, dataset, tmp_path, capsys):
    csv, root = dataset
    ckpt = save_model(model, tmp_path / "m.pt")
    assert main(["extract", str(ckpt), "--dataset", str(csv), "--image-root", str(root), "--out",
                 str(tmp_path / "f.h5"), "--workers", "0", "--no-progress"]) == 0
    capsys.readouterr()
    ev = ["evaluate", "--dataset", str(csv), "--db", str(tmp_path / "f_db.h5"), "--queries",
          str(tmp_path / "f_query.h5")]
    assert main(ev + ["--rerank", "patch"]) == 2
    err = capsys.readouterr().err
    assert "f_db.patches.h5: no patch features there (--db-patches)" in err and "extract --patches" in err
    assert main(ev + ["--rerank", "aqe", "--rerank-top", "0"]) == 2
    assert "--rerank-top must be >= 1, got 0" in capsys.readouterr().err
    assert main(ev + ["--db-patches", str(tmp_path / "f_db.h5")]) == 2
    assert "go with --rerank patch" in capsys.readouterr().err
    assert main(ev + ["--rerank", "patch", "--db-patches", str(tmp_path / "f_db.h5")]) == 2
    assert "f_db.h5: not a netvlad patch feature file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(ev + ["--rerank", "sift"])
    assert "invalid choice: 'sift'" in capsys.readouterr().err
    assert main(["extract", str(ckpt), "--dataset", str(csv), "--out", str(tmp_path / "g.h5"),
                 "--patch-sizes", "2"]) == 2
    assert "go with --patches" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_query_rerank(model, dataset, tmp_path, capsys):
    csv, root = dataset
    ckpt = save_model(model, tmp_path / "m.pt")
    assert main(["extract", str(ckpt), "--dataset", str(csv), "--image-root", str(root), "--split", "db",
                 "--out", str(tmp_path / "db.h5"), "--workers", "0", "--no-progress", "--patches",
                 "--patch-sizes", "1", "2", "--patch-dim", "16"]) == 0, capsys.readouterr().err
    assert main(["index", "build", str(tmp_path / "db.h5"), "--out", str(tmp_path / "i.idx"), "--type",
                 "exact", "--dataset", str(csv)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    q = ["query", str(tmp_path / "i.idx"), str(root / "im3.png"), "--k", "2", "--json",
         "--no-exif-orientation"]
    patches = ["--rerank", "patch", "--db-patches", str(tmp_path / "db.patches.h5")]
    for extra in (patches, patches + ["--patch-scorer", "ransac"],
                  ["--rerank", "dba", "--db-features", str(tmp_path / "db.h5"), "--rerank-top", "4"]):
        assert main(q + extra) == 0, capsys.readouterr().err
        out = json.loads(capsys.readouterr().out)
        assert [r["rank"] for r in out[0]["results"]] == [1, 2]
        assert out[0]["results"][0]["name"] == "im3.png"  # the photo is database image im3 itself
    assert main(q + ["--rerank", "patch"]) == 2
    assert "--rerank patch needs --db-patches FILE" in capsys.readouterr().err
    assert main(q + ["--rerank", "aqe"]) == 2
    assert "--rerank aqe needs --db-features FILE" in capsys.readouterr().err
