"""Interrupted and repeated work says what it does and never mixes runs: synth-town killed and rerun,
another seed into the same folder, reproducible .mat bytes, extract's resume message, CLI warnings
(one line, once) and --workers validation."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

import netvlad.synth.generate as generate
from netvlad.cli import main
from netvlad.data import load_dataset, save_mat

SRC = Path(__file__).resolve().parents[1] / "src"
# The smallest town: 288 images of 32×24, procedural textures (no photo decoding).
ARGS = ["--size", "tiny", "--width", "32", "--height", "24", "--photos", "procedural", "--no-progress"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def _hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (hidden ones included), by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _images(folder: Path) -> list[Path]:
    return [p for split in ("train", "val", "test") for p in (folder / split).glob("*/*.jpg")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """An undisturbed seed-0 town and the hashes of its files."""
    out = tmp_path_factory.mktemp("reference") / "town"
    assert main(["synth-town", "--out", str(out), "--seed", "0", *ARGS]) == 0
    return out, _hashes(out)


def _kill_after_some_images(out: Path, n_images: int) -> None:
    """Run synth-town's generation in a subprocess and SIGKILL it once it has written `n_images`
    images. (`generate_town` with the config `ARGS` make, without the CLI's torch import.)"""
    code = (
        "import sys; from netvlad.synth import SynthConfig, generate_town; "
        "generate_town(sys.argv[1], SynthConfig.preset('tiny', seed=0, width=32, height=24, "
        "photo_sources=('procedural',)), progress=False)"
    )
    cmd = [sys.executable, "-c", code, str(out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while len(_images(out)) < n_images:
            assert proc.poll() is None, f"finished before {n_images} images: {proc.stderr.read()!r}"
            assert time.monotonic() < deadline, "no progress within 120 s"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def test_killed_synth_town_resumes_byte_identical(reference, tmp_path, capsys):
    ref_dir, ref = reference
    total = sum(1 for k in ref if k.endswith(".jpg"))
    out = tmp_path / "town"
    n = random.randint(1, total * 2 // 3)
    _kill_after_some_images(out, n)
    head = json.loads((out / "town.json").read_text())
    assert head["state"] == "in progress" and head["seed"] == 0 and head["config"]["width"] == 32
    assert (out / "town.partial.jsonl").is_file() and len(_images(out)) >= n
    # What else a killed run or a meddling hand can leave: a temp file, a damaged image, an extra image.
    victim = sorted(_images(out))[0]
    victim.write_bytes(victim.read_bytes()[:50])
    (out / "train" / "images" / ".00000_yaw0.jpg.0123abcd.tmp").write_bytes(b"half an image")
    (out / "val" / "queries").mkdir(parents=True, exist_ok=True)
    (out / "val" / "queries" / "00999_night.jpg").write_bytes(b"not of this town")

    assert main(["synth-town", "--out", str(out), "--seed", "0", *ARGS]) == 0, f"killed after {n} images"
    assert "verified images of an earlier run" in capsys.readouterr().out
    got = _hashes(out)
    assert sorted(got) == sorted(ref), f"killed after {n} images"
    assert [k for k in ref if got[k] != ref[k]] == [], f"killed after {n} images"
    final = json.loads((out / "town.json").read_text())
    rel = victim.relative_to(out).as_posix()
    assert final["state"] == "complete" and final["files"][rel]["sha256"] == ref[rel]


def test_another_seed_is_refused_then_fully_replaced(reference, tmp_path, monkeypatch, capsys):
    ref_dir, ref = reference
    out = tmp_path / "town"
    calls = {"n": 0}
    real = generate.render_view

    def interrupted(*a, **k):  # a seed-1 run stopped after 60 images (Ctrl-C)
        calls["n"] += 1
        if calls["n"] > 60:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(generate, "render_view", interrupted)
    assert main(["synth-town", "--out", str(out), "--seed", "1", *ARGS]) == 130
    monkeypatch.setattr(generate, "render_view", real)
    before = _hashes(out)
    assert len(_images(out)) == 60

    capsys.readouterr()
    assert main(["synth-town", "--out", str(out), "--seed", "0", *ARGS]) == 2
    err = capsys.readouterr().err
    assert f"netvlad synth-town: error: {out}: holds a town made with seed 1 (this run: 0)" in err
    assert "--overwrite" in err
    assert _hashes(out) == before  # refused before touching anything

    # Replaced: byte-identical to the undisturbed seed-0 run, made at another time (another clock
    # too: the .mat header must not care).
    monkeypatch.setattr(time, "asctime", lambda *a: "Fri Jan  2 03:04:05 1970")
    assert main(["synth-town", "--out", str(out), "--seed", "0", "--overwrite", *ARGS]) == 0
    assert _hashes(out) == ref
    # so no image of the seed-1 run is left: the folder holds exactly the images its datasets list
    listed = set()
    for split in ("train", "val", "test"):
        ds = load_dataset(out / split / f"synth_{split}.csv")
        listed |= {p.resolve() for p in ds.db_paths() + ds.query_paths()}
    assert {p.resolve() for p in _images(out)} == listed


def test_a_changed_town_keeps_no_image(reference, tmp_path, monkeypatch, caplog):
    """Same config and version, but the town differs (e.g. installed photo packages changed): the
    interrupted run's images are not kept."""
    ref = reference[1]
    total = sum(1 for k in ref if k.endswith(".jpg"))
    out = tmp_path / "town"
    calls = {"n": 0, "stop": 30}
    real = generate.render_view

    def counting(*a, **k):
        calls["n"] += 1
        if calls["n"] > calls["stop"]:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(generate, "render_view", counting)
    assert main(["synth-town", "--out", str(out), *ARGS]) == 130
    head = json.loads((out / "town.json").read_text())
    head["town_sha256"] = "0" * 64  # as recorded by a run that saw other photos
    (out / "town.json").write_text(json.dumps(head))
    calls.update(n=0, stop=10**9)
    assert main(["synth-town", "--out", str(out), *ARGS]) == 0
    assert calls["n"] == total  # every image rendered again
    assert "rendering every image again" in caplog.text
    assert _hashes(out) == ref


def test_a_folder_with_town_files_but_no_manifest_is_refused(tmp_path, capsys):
    out = tmp_path / "town"
    (out / "train" / "images").mkdir(parents=True)
    (out / "train" / "images" / "00000_yaw0.jpg").write_bytes(b"from some older run")
    assert main(["synth-town", "--out", str(out), *ARGS]) == 2
    assert "holds town files but no town.json" in capsys.readouterr().err
    (out / "town.json").write_text("{not json")
    assert main(["synth-town", "--out", str(out), *ARGS]) == 2
    assert "town.json: unreadable town manifest" in capsys.readouterr().err


def test_mat_bytes_do_not_depend_on_the_clock(reference, tmp_path, monkeypatch):
    ds = load_dataset(reference[0] / "val" / "synth_val.csv")
    a = save_mat(ds, tmp_path / "a.mat", which_set="val")
    monkeypatch.setattr(time, "asctime", lambda *a: "Sat Jan  3 00:00:00 1970")
    b = save_mat(ds, tmp_path / "b.mat", which_set="val")
    assert a.read_bytes() == b.read_bytes()
    m = scipy.io.loadmat(str(b))
    assert m["__header__"].startswith(b"MATLAB 5.0 MAT-file")
    back = load_dataset(b, images=reference[0] / "val")
    assert back.db_images == ds.db_images and back.query_images == ds.query_images
    np.testing.assert_array_equal(back.db_utm, ds.db_utm)


# ------------------------------------------------------------------------------ extract and the CLI


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from netvlad.models import PRESETS, create_model, init_clusters, save_model

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("extract")
    model = create_model(PRESETS["alexnet-netvlad"].replace(num_clusters=4), seed=0)
    imgs = [rng.integers(0, 256, (72, 96, 3), dtype=np.uint8) for _ in range(3)]
    init_clusters(model, imgs, progress=False)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(root / f"im{i}.png")
    return model, save_model(model, root / "m.pt"), root


def test_extract_resume_says_how_far_it_got(small_model, tmp_path, capsys):
    from netvlad.extract import extract_features

    model, ckpt, root = small_model
    names = sorted(p.name for p in root.glob("*.png"))
    out = tmp_path / "f.h5"

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(model, [root / n for n in names], names, out, batch_size=1, num_workers=0,
                         progress=False, callback=stop)
    args = ["extract", str(ckpt), "--images", str(root), "--out", str(out), "--batch-size", "1"]
    # the library's default leaves EXIF alone; --images honours it unless told: same settings here
    assert main([*args, "--workers", "0", "--no-progress", "--no-exif-orientation"]) == 0
    assert f"resuming {out}: 1 of 3 rows done" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["extract", "m.pt", "--images", ".", "--out", "f.h5", "--workers", "-2"],
        ["train", "--out", "run", "--num-workers", "-2"],
        ["pca", "m.pt", "--dataset", "d.csv", "--out", "p.pt", "--workers", "-2"],
    ],
    ids=["extract", "train", "pca"],
)
def test_negative_workers_exit_2_naming_the_flag(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    flag = argv[-2]
    assert f"argument {flag}: must be >= 0 (0 = decode images in the main process), got -2" in (
        capsys.readouterr().err
    )


def test_a_warning_is_one_line_and_shown_once(small_model, tmp_path):
    """torch warns about too many DataLoader workers from two source lines; users see it once."""
    _, ckpt, root = small_model
    workers = len(os.sched_getaffinity(0)) + 1  # above torch's suggested maximum: it warns
    cmd = [sys.executable, "-m", "netvlad", "extract", str(ckpt), "--images", str(root),
           "--out", str(tmp_path / "f.h5"), "--workers", str(workers), "--no-progress"]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "DataLoader will create" in ln]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"netvlad extract: UserWarning: This DataLoader will create {workers} worker")
    assert "dataloader.py" not in res.stderr and "check_worker_number_rationality" not in res.stderr
