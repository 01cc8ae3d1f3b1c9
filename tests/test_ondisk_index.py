"""On-disk IVF indexes: built from several feature files a block at a time, equal to the in-RAM index."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from netvlad import io
from netvlad.cli import main
from netvlad.index import OnDiskIndex, build_index, build_ondisk_index, load_index

N, D = 3000, 32
PARAMS = {"nlist": 24, "nprobe": 6, "pq_m": 8, "train_size": 1500, "refine_k_factor": 8}


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    """Clustered unit vectors (places with several views), names, and queries near them."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((300, D))
    x = _unit(centres[rng.integers(0, 300, N)] + 0.4 * rng.standard_normal((N, D)))
    q = _unit(x[rng.integers(0, N, 60)] + 0.1 * rng.standard_normal((60, D)))
    return [f"c{i % 3}/im{i:05d}.jpg" for i in range(N)], x, q


@pytest.fixture
def shards(data, tmp_path):
    """The database as three feature files of unequal sizes; row 700 failed extraction (NaN)."""
    names, x, _ = data
    x = x.copy()
    x[700] = np.nan
    cuts = [0, 1000, 1900, N]
    files = []
    for j in range(3):
        rows = slice(cuts[j], cuts[j + 1])
        bad = [names[700]] if j == 0 else []
        files.append(io.write_features(tmp_path / f"s{j}.h5", names[rows], x[rows],
                                       {"fingerprint": "f" * 64, "bad_images": bad}))
    return files


@pytest.mark.parametrize("kind", ["ivfpq", "ivfflat"])
def test_ondisk_from_three_shards_returns_what_the_index_in_ram_returns(data, shards, tmp_path, kind,
                                                                         capsys):
    names, x, q = data
    keep = np.ones(N, bool)
    keep[700] = False
    ram = build_index(x[keep], kind, names=[n for n, k in zip(names, keep) if k], **PARAMS)
    argv = ["index", "build", *map(str, shards), "--out", str(tmp_path / "idx"), "--on-disk", "--type", kind,
            "--nlist", "24", "--nprobe", "6", "--pq-m", "8", "--train-size", "1500", "--k-factor", "8"]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert f"on-disk {kind} index of {N - 1} {D}-D descriptors from 3 file(s)" in said
    assert "1 NaN descriptor(s) left out" in said
    # Moved after building: the lists file is found next to index.faiss.
    shutil.move(tmp_path / "idx", tmp_path / "moved")
    disk = load_index(tmp_path / "moved")
    assert isinstance(disk, OnDiskIndex) and disk.ntotal == ram.ntotal == N - 1
    s_ram, i_ram = ram.search(q, 5)
    s_disk, i_disk = disk.search(q, 5)
    np.testing.assert_array_equal(i_disk, i_ram)
    np.testing.assert_allclose(s_disk, s_ram, atol=1e-5)
    assert [disk.names[i] for i in i_disk[:, 0]] == [ram.names[i] for i in i_ram[:, 0]]
    assert len(disk.names) == N - 1 and disk.names[700] == names[701]  # NaN row left out
    files = sorted(p.name for p in (tmp_path / "moved").iterdir())
    want = {"data.npz", "index.faiss", "lists.ivfdata", "meta.json", "names.npy"}
    assert set(files) == want | ({"vectors.npy"} if kind == "ivfpq" else set())
    # The inverted lists are on disk, not in index.faiss.
    moved = tmp_path / "moved"
    assert (moved / "index.faiss").stat().st_size < (moved / "lists.ivfdata").stat().st_size


def test_ondisk_index_is_bounded_by_flushes_and_saves_as_a_copy(data, shards, tmp_path):
    names, x, q = data
    sources = io.open_feature_rows(shards)
    try:
        # Tiny blocks and flushes: many temporary shards are merged, and the result is the same.
        idx = build_ondisk_index(sources, tmp_path / "a", "ivfpq", num_finite=N - 1, block_rows=97,
                                 flush_bytes=4096, progress=False, **PARAMS)
        ref = build_ondisk_index(sources, tmp_path / "b", "ivfpq", num_finite=N - 1, progress=False, **PARAMS)
    finally:
        for s in sources:
            s.close()
    np.testing.assert_array_equal(idx.search(q, 3)[1], ref.search(q, 3)[1])
    copy = idx.save(tmp_path / "copy")
    np.testing.assert_array_equal(load_index(copy).search(q, 3)[1], ref.search(q, 3)[1])
    with pytest.raises(ValueError, match="finite rows"):
        build_ondisk_index([io.FeatureRows(shards[0])], tmp_path / "c", "ivfflat", num_finite=1000,
                           progress=False, **PARAMS)


def test_ondisk_build_refuses_files_of_another_model_and_other_kinds(data, shards, tmp_path, capsys):
    names, x, _ = data
    other = io.write_features(tmp_path / "other.h5", names[:10], x[:10], {"fingerprint": "0" * 64})
    out = str(tmp_path / "i")
    assert main(["index", "build", str(shards[0]), str(other), "--out", out, "--on-disk"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{other}: not from the run of {shards[0]}" in err
    assert "model fingerprint" in err
    assert main(["index", "build", str(shards[0]), "--out", str(tmp_path / "i"), "--on-disk",
                 "--type", "hnsw"]) == 2
    assert "--on-disk builds an ivfflat or ivfpq index, not hnsw" in capsys.readouterr().err
    assert not (tmp_path / "i").exists()


def test_several_files_in_ram_are_one_database(data, shards, tmp_path, capsys):
    names, x, q = data
    assert main(["index", "build", *map(str, shards), "--out", str(tmp_path / "flat")]) == 0
    idx = load_index(tmp_path / "flat")
    assert idx.ntotal == N - 1 and idx.names[:3] == names[:3]
    meta = json.loads((tmp_path / "flat" / "meta.json").read_text())
    assert meta["meta"]["features"] == [str(s) for s in shards]


def test_build_ondisk_index_from_files_is_what_the_cli_builds(data, shards, tmp_path, capsys):
    from netvlad.data import PlaceDataset
    from netvlad.index import build_ondisk_index_from_files

    names, x, q = data
    ds = PlaceDataset(name="t", db_root="/d", query_root="/q", db_images=names, query_images=["q.jpg"],
                      db_utm=np.c_[np.arange(N) * 1.0, np.zeros(N)], query_utm=np.zeros((1, 2)), zone="33U")
    params = {k: v for k, v in PARAMS.items() if k != "pq_m"}
    built = build_ondisk_index_from_files(shards, tmp_path / "lib", "ivfflat", dataset=ds,
                                          dataset_spec="t.csv", progress=False, **params)
    assert built.left_out == 1 and built.coordinates and built.model is None
    assert built.index.meta["zone"] == "33U" and built.index.meta["dataset"] == "t.csv"
    argv = ["index", "build", *map(str, shards), "--out", str(tmp_path / "cli"), "--on-disk",
            "--type", "ivfflat", "--nlist", "24", "--nprobe", "6", "--train-size", "1500", "--k-factor", "8"]
    assert main(argv) == 0
    lib, cli = load_index(tmp_path / "lib"), load_index(tmp_path / "cli")
    np.testing.assert_array_equal(lib.search(q, 5)[1], cli.search(q, 5)[1])
    keep = [i for i in range(N) if i != 700]
    np.testing.assert_array_equal(lib.utm[:, 0], np.array(keep, dtype=np.float64))
    io.write_bin(tmp_path / "x.bin", x[:4])
    with pytest.raises(ValueError, match="x.bin: an on-disk index is built from netvlad feature files"):
        build_ondisk_index_from_files([tmp_path / "x.bin"], tmp_path / "no")
