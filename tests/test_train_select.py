"""pick_best / getBestEpoch tie-breaking and cleanup."""

from __future__ import annotations

import json

import numpy as np
import pytest

from netvlad.train import best_epoch, cleanup, pick_best

NS = [1, 2, 3, 4, 5, 10]


def test_clear_winner_and_first_on_full_tie():
    r = np.array([[0.1, 0.2, 0.3]] * 6)
    r[4] = [0.5, 0.7, 0.6]  # recall@5
    assert best_epoch(r, NS, 5) == 1
    assert best_epoch(np.ones((6, 3)), NS, 5) == 0  # everything tied: the first epoch


def test_ties_go_to_lower_ns_descending_first():
    r = np.zeros((6, 3))
    r[4] = [0.8, 0.8, 0.8]  # @5 tied for all
    r[3] = [0.6, 0.7, 0.7]  # @4 removes epoch 0
    r[2] = [0.9, 0.5, 0.6]  # @3 decides between 1 and 2 (epoch 0 already gone)
    r[5] = [0.0, 0.9, 0.1]  # @10 would prefer epoch 1, but lower Ns come first
    assert best_epoch(r, NS, 5) == 2


def test_then_higher_ns_ascending_and_tolerance():
    r = np.zeros((6, 3))
    r[:5] = 0.5
    r[4, 1] = 0.5 + 5e-7  # within 1e-6: still a tie
    r[5] = [0.1, 0.3, 0.2]  # @10 decides
    assert best_epoch(r, NS, 5) == 1
    r[4, 2] = 0.5 + 2e-6  # beyond the tolerance: epoch 2 wins at once
    assert best_epoch(r, NS, 5) == 2


def test_errors():
    with pytest.raises(ValueError, match="N=7"):
        best_epoch(np.zeros((6, 2)), NS, 7)
    with pytest.raises(ValueError, match="shape"):
        best_epoch(np.zeros((5, 2)), NS, 5)


def test_pick_best_and_cleanup_on_run_dir(tmp_path):
    recs = [{"type": "epoch", "epoch": 0, "val_recall": {str(n): 0.1 for n in NS}}]
    vals = {1: 0.5, 2: 0.7, 3: 0.7}
    for e, v in vals.items():
        recs.append({"type": "batch", "epoch": e, "loss": 1.0})
        recs.append({"type": "epoch", "epoch": e, "val_recall": {str(n): v for n in NS}})
        (tmp_path / f"epoch_{e:03d}.pt").write_bytes(b"x")
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    ep, path = pick_best(tmp_path, 5)
    assert ep == 2 and path.name == "epoch_002.pt"
    listed = cleanup(tmp_path, 5)
    assert [p.name for p in listed] == ["epoch_001.pt", "epoch_003.pt"]
    assert all(p.exists() for p in listed)  # only listed
    cleanup(tmp_path, 5, delete=True)
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pt")) == ["epoch_002.pt"]
    with pytest.raises(FileNotFoundError, match="metrics"):
        pick_best(tmp_path / "nope")
