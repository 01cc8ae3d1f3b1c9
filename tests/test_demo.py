"""`netvlad demo`: campus ground truth, report helpers, the missing-extra message, the quick run."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import netvlad.demo as demo
from netvlad.cli import main


def test_campus_walk_ground_truth_from_frame_numbers():
    campus = demo.campus_walk()
    assert len(campus.db_paths) == 20 and len(campus.query_paths) == 5
    assert campus.query_frames.tolist() == [1070492, 1070502, 1070508, 1070511, 1070513]
    for qf, pos in zip(campus.query_frames, campus.positives):
        oracle = [i for i, f in enumerate(campus.db_frames) if abs(int(f) - int(qf)) <= 1]
        assert pos.tolist() == oracle and len(oracle) == 2
    wide = demo.campus_walk(frame_window=2)
    assert all(len(p) >= 3 for p in wide.positives)


def test_campus_walk_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="holdout"):
        demo.campus_walk(tmp_path)


def test_matches_html_table_and_curves(tmp_path):
    from PIL import Image

    paths = []
    for i in range(4):
        p = tmp_path / f"P{100 + i}.png"
        Image.fromarray(np.full((30, 40, 3), 60 * i, np.uint8)).save(p)
        paths.append(p)
    campus = demo.Campus(
        db_paths=paths[:3],
        query_paths=paths[3:],
        db_frames=np.array([100, 101, 102]),
        query_frames=np.array([103]),
        positives=[np.array([2])],
    )
    page = demo.write_matches_html(
        tmp_path / "m.html", campus, np.array([[2, 0]]), np.array([[0.9, 0.5]]), {1: 1.0}
    )
    text = page.read_text()
    assert text.count("<img") == 3 and "#1a8f1a" in text and "#c62828" in text
    assert (tmp_path / "thumbs" / "P102.jpg").is_file()
    rows = {"a": {1: 0.5, 5: 0.75, 10: 1.0}, "bb": {1: 0.25, 5: 0.5, 10: 0.5}}
    table = demo.format_table(rows)
    assert table.splitlines()[1].split() == ["a", "50.0", "75.0", "100.0"]
    png = demo.plot_recall_curves(rows, tmp_path / "c.png", "t")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_missing_extra_names_the_install_line(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mvtbdata" else real(name, *a)
    )
    with pytest.raises(demo.DemoDependencyError, match=r'pip install -e "\.\[demo\]"'):
        demo.check_demo_dependencies()
    assert main(["demo", "--quick", "--no-progress"]) == 2
    assert 'pip install -e ".[demo]"' in capsys.readouterr().err


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    import torch

    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert torch.get_num_threads() == threads  # the demo's 1-thread default is restored
    printed = capsys.readouterr().out
    assert "recall@1" in printed and str(out.resolve()) in printed
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["campus_recall"]) == {"1", "5"}
    assert all(0.0 <= v <= 1.0 for v in summary["campus_recall"].values())
    assert len(summary["town_recall"]) == 3
    for rec in summary["town_recall"].values():
        assert all(0.0 <= v <= 1.0 for v in rec.values())
    assert (out / "campus" / "campus.html").read_text().count("<tr>") == 5
    assert (out / "recall_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "run" / "epoch_001.pt").is_file()
