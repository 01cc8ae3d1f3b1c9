"""hloc interoperability: the ``--format hloc`` feature layout (engineer D's io.export_hloc) read back by a
tiny reader written to hloc's documented contract, and ``netvlad pairs`` (pairs-from-retrieval)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from netvlad.cli import main
from netvlad.io import export_hloc, write_features

DB = [f"db/{i:04d}.jpg" for i in range(12)]
QUERIES = ["query/day/q0.jpg", "query/night/q1.jpg", "q2.jpg"]


def hloc_read_global(path):
    """hloc's contract (README, utils/io.list_h5_names): every key is an image path relative to the image
    root, '/' making nested groups, each holding a dataset ``global_descriptor``."""
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and name.endswith("/global_descriptor"):
            out[name[: -len("/global_descriptor")]] = obj[()]

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_hloc_format_read_back_by_hloc_contract(tmp_path):
    rng = np.random.default_rng(0)
    desc = _unit(rng, len(DB) + len(QUERIES), 16)
    feats = write_features(tmp_path / "f.h5", DB + QUERIES, desc)
    out = export_hloc(feats, tmp_path / "global-feats-netvlad.h5")
    got = hloc_read_global(out)
    assert sorted(got) == sorted(DB + QUERIES)
    with h5py.File(out, "r") as f:
        assert isinstance(f["query"]["night"], h5py.Group)  # '/' in names nests groups, as hloc writes
    for name, d in zip(DB + QUERIES, desc):
        assert got[name].shape == (16,)
        np.testing.assert_array_equal(got[name], d)


def _parse_pairs(path):
    # hloc's utils/parsers.parse_retrieval: one "query db" pair per line.
    pairs = []
    for line in path.read_text().splitlines():
        q, r = line.split()
        pairs.append((q, r))
    return pairs


@pytest.mark.parametrize("fmt", ["netvlad", "hloc"])
def test_pairs_file_is_hlocs_pairs_from_retrieval(tmp_path, capsys, fmt):
    rng = np.random.default_rng(1)
    db, q = _unit(rng, len(DB), 8), _unit(rng, len(QUERIES), 8)
    db_file = write_features(tmp_path / "db.h5", DB, db)
    q_file = write_features(tmp_path / "q.h5", QUERIES, q)
    if fmt == "hloc":
        db_file, q_file = (
            export_hloc(db_file, tmp_path / "db_hloc.h5"),
            export_hloc(q_file, tmp_path / "q_hloc.h5"),
        )
    out = tmp_path / "pairs" / "pairs-netvlad.txt"
    assert main(["pairs", "--db", str(db_file), "--queries", str(q_file), "--k", "5", "--out", str(out)]) == 0
    assert "15 pairs for 3 queries" in capsys.readouterr().out
    pairs = _parse_pairs(out)
    # Queries in file order; an hloc file has no order, so names come sorted (as hloc's list_h5_names).
    order = QUERIES if fmt == "netvlad" else sorted(QUERIES)
    assert [p[0] for p in pairs] == [name for name in order for _ in range(5)]
    for qi, name in enumerate(QUERIES):
        expected = [DB[j] for j in np.argsort(-(db @ q[qi]), kind="stable")[:5]]  # best score first
        assert [r for qq, r in pairs if qq == name] == expected


def test_pairs_skip_self_and_clamp_k(tmp_path):
    rng = np.random.default_rng(2)
    desc = _unit(rng, 4, 8)
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    f = write_features(tmp_path / "all.h5", names, desc)
    out = tmp_path / "pairs.txt"
    # --min-score none: random vectors have negative similarities, which hloc's default (0) drops
    assert main(["pairs", "--db", str(f), "--queries", str(f), "--k", "50", "--min-score", "none",
                 "--out", str(out)]) == 0
    pairs = _parse_pairs(out)
    assert len(pairs) == 4 * 3 and all(q != r for q, r in pairs)  # hloc masks an image matched to itself
    assert main(["pairs", "--db", str(f), "--queries", str(f), "--k", "0", "--out", str(out)]) == 2


def test_pairs_errors(tmp_path, capsys):
    f = write_features(tmp_path / "a.h5", ["x.jpg"], np.ones((1, 4), np.float32) / 2)
    g = write_features(tmp_path / "b.h5", ["y.jpg"], np.ones((1, 8), np.float32) / 8**0.5)
    assert main(["pairs", "--db", str(f), "--queries", str(g), "--out", str(tmp_path / "p.txt")]) == 2
    assert "8-D but database ones 4-D" in capsys.readouterr().err
    assert (
        main(
            [
                "pairs",
                "--db",
                str(tmp_path / "missing.h5"),
                "--queries",
                str(g),
                "--out",
                str(tmp_path / "p.txt"),
            ]
        )
        == 2
    )
    assert "missing.h5" in capsys.readouterr().err
    assert not (tmp_path / "p.txt").exists()


def test_export_features_writes_what_extract_format_writes(tmp_path):
    from netvlad.io import export_features, read_bin, write_bin

    rng = np.random.default_rng(2)
    desc = rng.standard_normal((4, 6)).astype(np.float32)
    names = ["a/x.jpg", "b.jpg", "c.jpg", "d.jpg"]
    h5 = write_features(tmp_path / "f.h5", names, desc)
    export_features(h5, tmp_path / "f.bin", "bin")
    np.testing.assert_array_equal(read_bin(tmp_path / "f.bin", 6, 4), desc)
    assert (tmp_path / "f.bin").read_bytes() == write_bin(tmp_path / "w.bin", desc).read_bytes()
    export_features(h5, tmp_path / "h.h5", "hloc", as_half=True)
    export_hloc(h5, tmp_path / "e.h5", as_half=True)
    assert hloc_read_global(tmp_path / "h.h5").keys() == hloc_read_global(tmp_path / "e.h5").keys()
    for k, v in hloc_read_global(tmp_path / "h.h5").items():
        np.testing.assert_array_equal(v, hloc_read_global(tmp_path / "e.h5")[k])
    with pytest.raises(ValueError, match="unknown export format 'csv'"):
        export_features(h5, tmp_path / "f.csv", "csv")
