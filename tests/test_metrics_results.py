"""`RecallResult` and `plot_recall_curves`: the library forms of evaluate's report and plot."""

from __future__ import annotations

import json

import numpy as np

from netvlad.cli.eval_cmd import build_report, is_plot, plot_curves
from netvlad.data import PlaceDataset
from netvlad.metrics import (
    RecallResult,
    evaluate_dataset,
    is_recall_plot,
    plot_recall_curves,
    protocol_report,
)


def _ds(conditions=None):
    db = np.c_[np.arange(8) * 30.0, np.zeros(8)]
    q = db[[1, 4, 6]] + 3.0
    return PlaceDataset(name="line", db_root="/d", query_root="/q", db_images=[f"d{i}.jpg" for i in range(8)],
                        query_images=["a.jpg", "b.jpg", "c.jpg"], db_utm=db, query_utm=q,
                        query_conditions=conditions)


def test_recall_result_report_equals_the_cli_report():
    rng = np.random.default_rng(0)
    for conditions in (None, ["day", "night", "day"]):
        ds = _ds(conditions)
        db, q = rng.normal(size=(8, 6)), rng.normal(size=(3, 6))
        q[1] = np.nan  # a failed image is reported by name
        res = evaluate_dataset(ds, db, q, ns=[1, 2, 5])
        want = build_report(res, ds, "lbl", "db.h5", None)
        want.update(protocol_report(res, ds.query_images))
        r = RecallResult.from_dict(res)
        assert r.to_json(ds, "lbl", "db.h5") == want
        assert json.loads(r.dumps(ds, "lbl", "db.h5")) == json.loads(json.dumps(want))
        back = r.as_dict()
        assert back.keys() == res.keys()
        assert all(np.array_equal(back[k], res[k]) for k in res if not isinstance(res[k], dict))


def test_one_plotter_for_evaluate_and_the_demo(tmp_path):
    rows = {"a": {1: 0.5, 5: 0.75, 10: 1.0}, "b": {1: 0.25, 5: 0.5, 10: 0.5}}
    p = plot_recall_curves(rows, tmp_path / "a.png", "t")
    assert p.read_bytes()[:4] == b"\x89PNG" and is_recall_plot(p) and is_plot(p)
    triples = [("a", [1, 5, 10], [0.5, 0.75, 1.0]), ("b", [1, 5, 10], [0.25, 0.5, 0.5])]
    plot_recall_curves(triples, tmp_path / "b.png", "t")
    plot_curves(triples, tmp_path / "c.png", "t")  # evaluate's current one draws the same picture
    a, b, c = ((tmp_path / f"{x}.png").read_bytes() for x in "abc")
    assert a == b == c


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
