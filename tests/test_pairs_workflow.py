"""The pairs-from-retrieval workflow from Python (netvlad.retrieval.pairs) equals ``netvlad pairs``."""

from __future__ import annotations

import numpy as np
import pytest

from netvlad.cli import main
from netvlad.io import load_global_features, write_features
from netvlad.retrieval.pairs import is_pairs_file, pairs_from_features, write_pairs

NAMES = [f"db/{i:03d}.jpg" for i in range(10)] + [f"query/{i}.jpg" for i in range(4)]


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_python_pairs_equal_cli_pairs(tmp_path, capsys):
    rng = np.random.default_rng(5)
    desc = _unit(rng, len(NAMES), 8)
    desc[3] = np.nan  # a failed database image: left out of the pairs by both routes
    f = write_features(tmp_path / "all.h5", NAMES, desc)
    cli_out = tmp_path / "cli.txt"
    assert main(["pairs", "--db", str(f), "--db-prefix", "db/", "--query-prefix", "query/", "--k", "3",
                 "--min-score", "none", "--out", str(cli_out)]) == 0
    said = capsys.readouterr().out

    result = pairs_from_features(load_global_features(f), k=3, min_score=None, db_prefix="db/",
                                 query_prefix="query/")
    py_out = tmp_path / "py.txt"
    write_pairs(py_out, result.pairs)
    assert py_out.read_bytes() == cli_out.read_bytes()
    assert (result.num_queries, result.num_db, len(result.pairs)) == (4, 9, 12)
    assert f"wrote {len(result.pairs)} pairs for {result.num_queries} queries" in said
    assert is_pairs_file(py_out)

    # oracle: per query the 3 database rows of largest inner product (L2 order), the NaN row never
    db_rows = [i for i in range(10) if i != 3]
    for qi in range(4):
        q = f"query/{qi}.jpg"
        scores = [float(desc[i].astype(np.float64) @ desc[10 + qi].astype(np.float64)) for i in db_rows]
        best = [NAMES[db_rows[j]] for j in np.argsort(-np.array(scores), kind="stable")[:3]]
        assert [d for qq, d in result.pairs if qq == q] == best


def test_python_pairs_errors_name_the_problem(tmp_path):
    f = write_features(tmp_path / "a.h5", ["a b.jpg", "c.jpg"], np.eye(2, dtype=np.float32))
    feats = load_global_features(f)
    with pytest.raises(ValueError, match="contains whitespace; hloc's pairs format cannot represent it"):
        pairs_from_features(feats, k=1)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        pairs_from_features(feats, k=0)
    text = tmp_path / "note.txt"
    text.write_text("buy milk\n")
    assert not is_pairs_file(text)
