"""HTML reports: `evaluate --html` (summary, curves, every query beside its top-k coloured by the
ground truth, failures first, condition filters) and `query --html`; report folders never destroy
anything."""

from __future__ import annotations

import re

import numpy as np
import pytest

from netvlad.cli import main
from netvlad.io import write_features
from serve_helpers import make_index, photos


@pytest.fixture()
def evalset(tmp_path):
    """8 database photos on a 100 m grid; 5 queries (copies of db photos) with conditions, and
    descriptors chosen so that queries 1 and 3 fail at top-5 and the others succeed."""
    db = photos(tmp_path / "db", 8)
    q = [n.replace("db/", "q/") for n in db[:5]]
    (tmp_path / "q").mkdir()
    for a, b in zip(db, q):
        (tmp_path / b).write_bytes((tmp_path / a).read_bytes())
    utm = np.array([[500000.0 + 100 * i, 4000000.0] for i in range(8)])
    conds = ["day", "night", "day", "sunset", "night"]
    rows = ["# name: reportset", "# zone: 17T", "split,path,easting,northing,zone,condition"]
    rows += [f"db,{n},{e!r},{m!r},17T," for n, (e, m) in zip(db, utm.tolist())]
    rows += [
        f"query,{n},{float(utm[i, 0])!r},{float(utm[i, 1]) + 5!r},17T,{c}"
        for i, (n, c) in enumerate(zip(q, conds))
    ]
    (tmp_path / "ds.csv").write_text("\n".join(rows) + "\n")
    dbd = np.eye(8, 16, dtype=np.float32)
    qd = np.zeros((5, 16), np.float32)
    for i in range(5):
        qd[i, i] = 1.0
    qd[1] = 0.0
    qd[1, [4, 5, 6, 7]], qd[1, 1] = 1.0, -1.0  # its positive (db 1) ranks last
    qd[3] = 0.0
    qd[3, [7, 6, 5, 4, 0, 3]] = [1.0, 0.9, 0.8, 0.7, 0.6, -0.5]  # db 3 ranks last
    qd /= np.linalg.norm(qd, axis=1, keepdims=True)
    write_features(tmp_path / "db.h5", db, dbd)
    write_features(tmp_path / "q.h5", q, qd)
    return tmp_path, db, q, conds, dbd, qd


def _eval(root, *extra):
    return main(
        [
            "evaluate",
            "--dataset",
            str(root / "ds.csv"),
            "--db",
            str(root / "db.h5"),
            "--queries",
            str(root / "q.h5"),
            "--ns",
            "1",
            "5",
            *extra,
        ]
    )


def test_evaluate_html_report(evalset, capsys):
    root, db, q, conds, dbd, qd = evalset
    assert _eval(root, "--html", str(root / "rep")) == 0
    out = capsys.readouterr().out
    assert f"html: {root / 'rep' / 'index.html'}" in out
    page = (root / "rep" / "index.html").read_text()
    # oracle: top-5 by inner product (ties by index), positives within 25 m (same grid point)
    order = [sorted(range(8), key=lambda j: (-float(qd[i] @ dbd[j]), j))[:5] for i in range(5)]
    found = [i in order[i] for i in range(5)]
    assert found == [True, False, True, False, True]
    r1 = np.mean([order[i][0] == i for i in range(5)])
    assert f"<td>{100 * r1:.2f}%</td>" in page and "<td>60.00%</td>" in page  # recall@1 and @5 (all)
    # every query shown, failures first, then by rank; each beside its top-5 coloured by truth
    blocks = re.findall(
        r"<div class='q[^']*' data-cond='(\w*)' data-fail='(\d)'>"
        r"(.*?)(?=<svg class='map'|<div class='q|<script)",
        page,
    )
    assert len(blocks) == 5
    assert [b[1] for b in blocks] == ["1", "1", "0", "0", "0"]
    shown = [re.search(r"<b>query</b> (\S+)<br>", b[2]).group(1) for b in blocks]
    assert set(shown[:2]) == {q[1], q[3]}
    for (cond, _, body), name in zip(blocks, shown):
        i = q.index(name)
        assert cond == conds[i]
        cells = re.findall(r"<div class='c (pos|neg)'>.*?#(\d) (db/\d+\.png)</div>", body)
        assert [c[2] for c in cells] == [db[j] for j in order[i]]
        assert [c[0] for c in cells] == ["pos" if j == i else "neg" for j in order[i]]
    # condition filters and per-condition columns
    for c in ("day", "night", "sunset"):
        assert f"f('{c}')" in page and f"<th>{c} (" in page
    assert "f('fail')" in page and "<svg class='curves'" in page and page.count("<svg class='map'") == 5
    thumbs = sorted((root / "rep" / "thumbs").iterdir())
    assert len(thumbs) == 13 and all(t.read_bytes()[:2] == b"\xff\xd8" for t in thumbs)  # 8 db + 5 queries
    assert all(f"thumbs/{t.name}" in page for t in thumbs)
    # a rerun rewrites its own report
    assert _eval(root, "--html", str(root / "rep")) == 0


def test_report_folders_never_destroy_anything(evalset, capsys):
    root, *_ = evalset
    other = root / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    assert _eval(root, "--html", str(other)) == 2
    err = capsys.readouterr().err
    assert "notes: folder is not empty and holds no netvlad report" in err and len(err.splitlines()) == 1
    assert (other / "todo.txt").read_text() == "mine" and sorted(p.name for p in other.iterdir()) == [
        "todo.txt"
    ]
    assert _eval(root, "--html", str(root)) == 2  # the folder holding the inputs
    assert "report folder holds the input" in capsys.readouterr().err
    assert _eval(root, "--html", str(root / "ds.csv")) == 2
    assert "holds the input" in capsys.readouterr().err


def test_query_html_report(tmp_path, capsys):
    idx, names, utm = make_index(tmp_path)
    capsys.readouterr()
    photos_ = [tmp_path / names[2], tmp_path / names[7]]
    assert main(["query", str(idx), *map(str, photos_), "--k", "3", "--html", str(tmp_path / "qrep")]) == 0
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'qrep' / 'index.html'}" in out
    page = (tmp_path / "qrep" / "index.html").read_text()
    assert page.count("<div class='q'>") == 2 and page.count("<svg class='map'") == 2
    assert page.count("class='estimate'") == 2 and page.count("class='match'") == 6
    for p, n in zip(photos_, (names[2], names[7])):
        assert f"<b>{p}</b>" in page and f"#1 {n}" in page
    # database thumbnails found through the dataset the index was built with
    assert len(list((tmp_path / "qrep" / "thumbs").iterdir())) >= 4
    assert "(no image)" not in page
    assert main(["query", str(idx), str(photos_[0]), "--html", str(idx)]) == 2
    assert "report folder holds the input" in capsys.readouterr().err
