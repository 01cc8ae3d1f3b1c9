"""Sharded extraction: --shard + features merge, torchrun with 2 CPU processes (gloo), a killed rank
resumed; every way gives the single-process file (names, order, descriptors, identity attributes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netvlad import extract, io
from netvlad.cli import main
from netvlad.models import PRESETS, create_model, init_clusters, save_model

SRC = Path(__file__).resolve().parents[1] / "src"
# Loopback only; one compute thread per process, as torchrun gives each of 2 ranks on 2 cores.
ENV = {**os.environ, "PYTHONPATH": str(SRC), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
       "MASTER_ADDR": "127.0.0.1"}
# Mixed sizes: AlexNet's descriptors change (~1e-4) with the batch an image shares, so a shard that
# batched differently from the single run would not give the same bytes.
SIZES = [(80, 64), (64, 48), (80, 64), (72, 56), (64, 48), (80, 64), (80, 64), (64, 48), (80, 64),
         (72, 56), (80, 64), (80, 64), (64, 48), (80, 64)]
QUIET = ["--no-progress", "--workers", "0", "--batch-size", "3"]


def _smooth(rng, w, h):
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """model.pt (AlexNet NetVLAD, 8 clusters), imgs/ (14 JPEGs of 4 sizes) and ref.h5: one process."""
    root = tmp_path_factory.mktemp("shardkit")
    rng = np.random.default_rng(3)
    (root / "imgs").mkdir()
    for i, (w, h) in enumerate(SIZES):
        Image.fromarray(_smooth(rng, w, h)).save(root / "imgs" / f"im{i:02d}.jpg", quality=90)
    model = create_model(PRESETS["alexnet-netvlad"].replace(num_clusters=8), seed=0)
    init_clusters(model, [_smooth(rng, 96, 72) for _ in range(2)], progress=False)
    save_model(model, root / "model.pt")
    assert main(_argv(root, root / "ref.h5")) == 0
    return root


def _argv(kit, out, *more):
    return ["extract", str(kit / "model.pt"), "--images", str(kit / "imgs"), "--out", str(out), *QUIET, *more]


def _same_file(a, b):
    """Names, order, descriptor bytes and identity attributes equal."""
    na, da, aa = io.read_features(a)
    nb, db, ab = io.read_features(b)
    assert na == nb and da.tobytes() == db.tobytes()
    assert io.FeatureIdentity.of_attrs(aa) == io.FeatureIdentity.of_attrs(ab)
    skip = {"model_ref"}
    assert {k: v for k, v in aa.items() if k not in skip} == {k: v for k, v in ab.items() if k not in skip}


def test_shards_are_whole_batches_balanced_by_pixels(kit):
    from netvlad.weights import load_model

    model = load_model(kit / "model.pt")
    paths = sorted((kit / "imgs").iterdir())
    cfg = extract.ExtractConfig(batch_size=3, progress=False)
    plan = extract.plan_shards(model, paths, [p.name for p in paths], 3, cfg)
    rows = np.concatenate(plan.rows)
    assert sorted(rows.tolist()) == list(range(len(paths)))  # disjoint, covering
    sizes = [Image.open(p).size[::-1] for p in paths]
    batches = extract.plan_batches(sizes, 3)
    for r in plan.rows:  # each shard is a union of the single run's batches...
        assert all(set(b) <= set(r.tolist()) or not set(b) & set(r.tolist()) for b in batches)
        # ... and planning its own rows gives those batches back
        own = extract.plan_batches([sizes[i] for i in r], 3)
        assert sorted(tuple(r[j] for j in b) for b in own) == sorted(tuple(b) for b in batches if b[0] in r)
    # Balanced by work: no shard exceeds the mean by more than the largest batch (LPT bound).
    px = [h * w for h, w in sizes]
    biggest = max(sum(px[i] for i in b) for b in batches)
    assert max(plan.cost) <= sum(px) / 3 + biggest
    assert plan.cost == [sum(px[i] for i in r) for r in plan.rows]
    assert extract.plan_shards(model, paths, [p.name for p in paths], 3, cfg).run == plan.run


def test_shard_and_merge_equal_a_single_run(kit, tmp_path, capsys):
    out = tmp_path / "f.h5"
    for i in range(3):
        assert main(_argv(kit, out, "--shard", f"{i}/3")) == 0
    said = capsys.readouterr().out
    shards = [extract.shard_path(out, i, 3) for i in range(3)]
    assert f"{shards[0]}: shard 0 of 3" in said and "netvlad features merge" in said
    assert all(s.exists() for s in shards) and not out.exists()
    assert main(["features", "merge", *map(str, shards), "--out", str(out), "--no-progress"]) == 0
    assert f"{out}: 14 images from 3 shards" in capsys.readouterr().out
    _same_file(out, kit / "ref.h5")
    # Merged: an extraction of the same run is up to date, and the same shard says so.
    assert main(_argv(kit, out)) == 0 and "up to date" in capsys.readouterr().out
    assert main(_argv(kit, out, "--shard", "1/3")) == 0
    assert "up to date (already merged)" in capsys.readouterr().out
    # The index is built from the shards themselves, on disk, and answers as the one of the merged file.
    assert main(["index", "build", *map(str, shards), "--out", str(tmp_path / "od"), "--on-disk",
                 "--type", "ivfflat", "--nlist", "2", "--nprobe", "2"]) == 0
    assert main(["index", "build", str(out), "--out", str(tmp_path / "ram"), "--type", "ivfflat",
                 "--nlist", "2", "--nprobe", "2"]) == 0
    capsys.readouterr()
    photo = str(kit / "imgs" / "im03.jpg")
    answers = []
    for idx in ("od", "ram"):
        assert main(["query", str(tmp_path / idx), photo, "--k", "4", "--json"]) == 0
        answers.append(json.loads(capsys.readouterr().out)[0]["results"])
    for a in answers:  # ids are positions in each index: the shards' order differs from the list's
        for x in a:
            x.pop("id")
    assert answers[0] == answers[1] and answers[0][0]["name"] == "im03.jpg"


def test_bad_images_of_shards_are_the_bad_images_of_the_single_run(kit, tmp_path, capsys):
    imgs = tmp_path / "imgs"
    shutil.copytree(kit / "imgs", imgs)
    (imgs / "im05.jpg").write_bytes(b"not a jpeg")
    argv = ["extract", str(kit / "model.pt"), "--images", str(imgs), *QUIET, "--skip-bad"]
    assert main([*argv, "--out", str(tmp_path / "one.h5")]) == 0
    out = tmp_path / "f.h5"
    for i in range(2):
        assert main([*argv, "--out", str(out), "--shard", f"{i}/2"]) == 0
    shards = [str(extract.shard_path(out, i, 2)) for i in range(2)]
    assert main(["features", "merge", *shards, "--out", str(out), "--remove-shards"]) == 0
    assert "1 bad image(s); shards removed" in capsys.readouterr().out
    _same_file(out, tmp_path / "one.h5")
    assert io.read_attrs(out)["bad_images"] == ["im05.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5", "imgs", "one.h5"]


def test_merge_refuses_shards_of_other_runs_and_missing_ones(kit, tmp_path, capsys):
    out = tmp_path / "f.h5"
    assert main(_argv(kit, out, "--shard", "0/2")) == 0
    other = tmp_path / "other.h5"
    assert main(_argv(kit, other, "--shard", "1/2", "--batch-size", "2")) == 0  # another plan
    capsys.readouterr()
    s0, s1 = extract.shard_path(out, 0, 2), extract.shard_path(other, 1, 2)
    for shards, words in [([s0, s1], f"{s1}: not a shard of the run of {s0}"),
                          ([s0], f"missing shard(s) 1 of 2 (e.g. {extract.shard_path(out, 1, 2)}): "
                                 "extract it with --shard 1/2"),
                          ([s0, s0], f"{s0}: shard 0 of 2 given twice"),
                          ([kit / "ref.h5"], f"{kit / 'ref.h5'}: not a shard")]:
        assert main(["features", "merge", *map(str, shards), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("netvlad features: error: ") and words in err, err
    assert not out.exists()
    # A leftover shard of another run is in the way of this run's shard: named, not reused.
    extract.shard_path(other, 1, 2).rename(extract.shard_path(out, 1, 2))
    assert main(_argv(kit, out, "--shard", "1/2")) == 2
    assert "a shard of another run" in capsys.readouterr().err
    assert main(_argv(kit, out, "--shard", "2/2")) == 2
    assert "--shard: expected I/N with 0 <= I < N" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*argv: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
            "127.0.0.1", "--master_port", str(_free_port()), *argv]


@pytest.mark.slow
def test_torchrun_two_cpu_processes_equal_a_single_process(kit, tmp_path):
    out = tmp_path / "f.h5"
    r = subprocess.run(_torchrun("-m", "netvlad", *_argv(kit, out)), env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count(f"{out}: wrote, 14 images") == 1  # rank 0 reports
    _same_file(out, kit / "ref.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5"]  # shards merged and removed


# Rank 1 writes slowly and says where it is, so that the kill lands mid-run on any machine.
_RUNNER = """
import os, sys, time
from netvlad import io
write = io.FeatureWriter.write
def reporting_write(self, rows, desc):
    write(self, rows, desc)
    if os.environ.get("RANK") == "1":
        print("rank 1 pid", os.getpid(), "wrote", len(rows), flush=True)
        time.sleep(2)
io.FeatureWriter.write = reporting_write
from netvlad.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_rank_killed_mid_run_resumes_to_the_undisturbed_file(kit, tmp_path):
    out = tmp_path / "f.h5"
    runner = tmp_path / "runner.py"
    runner.write_text(_RUNNER)
    proc = subprocess.Popen(_torchrun(str(runner), *_argv(kit, out)), env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("rank 1 pid"), proc.stderr.read()[-3000:]
        os.kill(int(line.split()[3]), signal.SIGKILL)  # its first rows are on disk, more are to come
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and not out.exists()
    part = io.partial_path(extract.shard_path(out, 1, 2))
    assert part.exists()
    done = int(io.read_attrs(part)["done"])
    assert 0 < done < int(io.read_attrs(part)["num_images"])  # killed mid-run
    r = subprocess.run(_torchrun("-m", "netvlad", *_argv(kit, out)), env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"rank 1: resuming {extract.shard_path(out, 1, 2)}: {done} of " in r.stdout  # only the rest
    _same_file(out, kit / "ref.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5", "runner.py"]
