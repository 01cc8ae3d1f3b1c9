"""`RecallResult`, the recall table and `plot_recall_curves`: the library forms of what ``netvlad evaluate``
prints and writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from netvlad.data import PlaceDataset
from netvlad.metrics import (
    RANK_SAMPLE,
    RecallResult,
    bad_descriptor_lines,
    dataset_rank_loss,
    evaluate_dataset,
    format_recall_table,
    is_recall_plot,
    plot_recall_curves,
    protocol_report,
    read_report_curve,
)


def _ds(conditions=None):
    db = np.c_[np.arange(8) * 30.0, np.zeros(8)]
    q = db[[1, 4, 6]] + 3.0
    return PlaceDataset(name="line", db_root="/d", query_root="/q", db_images=[f"d{i}.jpg" for i in range(8)],
                        query_images=["a.jpg", "b.jpg", "c.jpg"], db_utm=db, query_utm=q,
                        query_conditions=conditions)


def test_recall_result_round_trips_the_evaluate_dict():
    rng = np.random.default_rng(0)
    for conditions in (None, ["day", "night", "day"]):
        ds = _ds(conditions)
        db, q = rng.normal(size=(8, 6)), rng.normal(size=(3, 6))
        q[1] = np.nan  # a failed image is reported by name
        res = evaluate_dataset(ds, db, q, ns=[1, 2, 5])
        r = RecallResult.from_dict(res)
        rep = r.to_json(ds, "lbl", "db.h5")
        assert rep["bad_queries"] == {"count": 1, "names": [ds.query_images[1]]}
        assert [row["query"] for row in rep["queries"]] == ds.query_images
        assert rep.items() >= protocol_report(res, ds.query_images).items()
        assert json.loads(r.dumps(ds, "lbl", "db.h5")) == json.loads(json.dumps(rep))
        back = r.as_dict()
        assert back.keys() == res.keys()
        assert all(np.array_equal(back[k], res[k]) for k in res if not isinstance(res[k], dict))


def _evaluate_cli(tmp_path, capsys, *extra):
    from netvlad.cli import main
    from netvlad.data import load_dataset, save_csv
    from netvlad.io import write_features

    ds = load_dataset(save_csv(_ds(["day", "night", "day"]), tmp_path / "ds.csv"))
    rng = np.random.default_rng(3)
    db, q = rng.normal(size=(8, 6)).astype(np.float32), rng.normal(size=(3, 6)).astype(np.float32)
    q[1] = np.nan
    write_features(tmp_path / "db.h5", ds.db_images, db, {"fingerprint": "x"})
    write_features(tmp_path / "q.h5", ds.query_images, q, {"fingerprint": "x"})
    argv = ["evaluate", "--dataset", str(tmp_path / "ds.csv"), "--db", str(tmp_path / "db.h5"), "--queries",
            str(tmp_path / "q.h5"), "--ns", "1", "2", "5", "--label", "lbl",
            "--report", str(tmp_path / "r.json"), *extra]
    assert main(argv) == 0
    return ds, db, q, capsys.readouterr().out


def test_evaluate_prints_and_writes_what_the_library_returns(tmp_path, capsys):
    ds, db, q, out = _evaluate_cli(tmp_path, capsys)
    res = evaluate_dataset(ds, db, q, ns=[1, 2, 5])
    r = RecallResult.from_dict(res)
    written = json.loads((tmp_path / "r.json").read_text())
    rep = r.to_json(ds, "lbl", tmp_path / "db.h5", tmp_path / "q.h5")
    assert written == json.loads(json.dumps(rep)) and "rank_loss" not in written
    table = format_recall_table(r.recall, r.by_condition)
    assert table in out and table.splitlines()[0].split() == ["N", "all", "day", "night"]
    lines = bad_descriptor_lines(r, ds)
    assert lines == bad_descriptor_lines(res, ds) and len(lines) == 1
    assert lines[0].startswith("1 of 3 queries have NaN descriptors")
    assert lines[0].endswith(ds.query_images[1])
    assert lines[0] in out


def test_evaluate_rank_loss_is_dataset_rank_loss(tmp_path, capsys):
    ds, db, q, out = _evaluate_cli(tmp_path, capsys, "--rank-loss")
    want = dataset_rank_loss(ds, db, q)
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["rank_loss"] == pytest.approx(want, rel=1e-12)
    assert f"rank loss {want:.6f}" in out
    res = evaluate_dataset(ds, db, q, ns=[1, 2, 5], rank_sample=RANK_SAMPLE)
    assert RecallResult.from_dict(res).rank_loss == written["rank_loss"]


def test_format_recall_table_rows_and_columns():
    table = format_recall_table({1: 0.5, 10: 1.0}, {"day": {"recall": {1: 0.25, 10: 1.0}}})
    assert table.splitlines() == ["     N       all      day", "     1    50.00%   25.00%",
                                  "    10   100.00%  100.00%"]
    assert format_recall_table({5: 0.125}).splitlines()[1] == "     5    12.50%"


def test_one_plotter_for_evaluate_and_the_demo(tmp_path):
    rows = {"a": {1: 0.5, 5: 0.75, 10: 1.0}, "b": {1: 0.25, 5: 0.5, 10: 0.5}}
    p = plot_recall_curves(rows, tmp_path / "a.png", "t")
    assert p.read_bytes()[:4] == b"\x89PNG" and is_recall_plot(p)
    triples = [("a", [1, 5, 10], [0.5, 0.75, 1.0]), ("b", [1, 5, 10], [0.25, 0.5, 0.5])]
    plot_recall_curves(triples, tmp_path / "b.png", "t")
    a, b = ((tmp_path / f"{x}.png").read_bytes() for x in "ab")
    assert a == b


def test_read_report_curve(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"label": "x", "recall": {"10": 0.5, "2": 0.25}}))
    assert read_report_curve(tmp_path / "r.json") == ("x", [2, 10], [0.25, 0.5])
    (tmp_path / "nolabel.json").write_text(json.dumps({"recall": {"1": 1}}))
    assert read_report_curve(tmp_path / "nolabel.json") == ("nolabel", [1], [1.0])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json: not an evaluate report"):
        read_report_curve(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="none.json: report not found"):
        read_report_curve(tmp_path / "none.json")


def test_retrieval_result_report_and_table_equal_the_cli(tmp_path, monkeypatch, capsys):
    import netvlad.retrieval as retrieval
    from netvlad.cli import main
    from netvlad.retrieval import RetrievalResult

    def protocols(m):
        return {"default": {"map": m, "mp@k": {}, "ap": [m / 100, None, 0.25]}}

    res = {"benchmark": "holidays", "num_db": 6, "num_queries": 3, "queries": "full", "grow": None,
           "max_side": 0, "results": {320: {"dim": 320, "num_queries": 3, "protocols": protocols(55.5)},
                                      16: {"dim": 16, "num_queries": 3, "protocols": protocols(41.25)}}}
    monkeypatch.setattr(retrieval, "benchmark_retrieval", lambda *a, **k: res)
    argv = ["benchmark", "retrieval", "--dataset", "holidays", "--root", str(tmp_path), "lite0-max",
            "--report", str(tmp_path / "r.json"), "--no-progress"]
    assert main(argv) == 0
    r = RetrievalResult.from_dict(res)
    assert capsys.readouterr().out.splitlines() == r.table()
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(r.to_json("lite0-max")))
