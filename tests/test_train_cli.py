"""`netvlad train` / `pick-best` / `pca` end to end on a tiny place set with a small real preset."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from netvlad.cli import main
from netvlad.data import save_csv
from train_helpers import make_places

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_train_pick_best_pca_cli(tmp_path, capsys):
    tr = save_csv(make_places(tmp_path / "tr", n_places=6, seed=0), tmp_path / "train.csv")
    va = save_csv(make_places(tmp_path / "va", n_places=4, seed=1), tmp_path / "val.csv")
    run = tmp_path / "run"
    common = [
        "--train",
        str(tr),
        "--val",
        str(va),
        "--out",
        str(run),
        "--model",
        "resnet18-netvlad",
        "--weights",
        "random",
        "--n-neg-choice",
        "10",
        "--num-workers",
        "0",
        "--n-test-rank-sample",
        "8",
        "--recall-ns",
        "1",
        "2",
        "5",
        "--cluster-images",
        "12",
        "--limit-batches",
        "2",
        "--no-progress",
    ]
    assert main(["train", *common, "--epochs", "1", "--cache-dtype", "float32"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["n_neg_choice"] == 10 and cfg["train"]["cache_dtype"] == "float32"
    assert cfg["train"]["lr"] == 1e-4 and cfg["cli"]["model"] == "resnet18-netvlad"
    # resume with a longer run: only the length may change
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0
    epochs = [
        json.loads(x)["epoch"]
        for x in (run / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["type"] == "epoch"
    ]
    assert epochs == [0, 1, 2]
    capsys.readouterr()
    assert main(["pick-best", str(run), "--n", "5", "--export", str(tmp_path / "best.pt")]) == 0
    out = capsys.readouterr().out
    assert "best epoch by val recall@5" in out and "off-the-shelf" in out
    assert (
        main(
            [
                "pca",
                str(tmp_path / "best.pt"),
                "--dataset",
                str(tr),
                "--dim",
                "16",
                "--out",
                str(tmp_path / "white.pt"),
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    from netvlad.models import load_model

    m = load_model(tmp_path / "white.pt")
    assert m.out_dim == 16
    fits = list(tmp_path.glob("pca_*.npz"))
    assert len(fits) == 1
    mtime = fits[0].stat().st_mtime_ns
    # a smaller --dim reuses the cached fit (no refit), plain PCA this time
    assert (
        main(
            [
                "pca",
                str(tmp_path / "best.pt"),
                "--dataset",
                str(tr),
                "--dim",
                "8",
                "--no-whiten",
                "--out",
                str(tmp_path / "pca8.pt"),
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    assert fits[0].stat().st_mtime_ns == mtime and load_model(tmp_path / "pca8.pt").out_dim == 8
    assert main(["pick-best", str(run), "--cleanup"]) == 0
    assert len(list(run.glob("epoch_*.pt"))) == 1
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert np.isfinite(json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["val_recall"]["1"])


# ------------------------------------------------------------------ what a run tells the user


@pytest.fixture
def tiny_args(tmp_path, monkeypatch):
    """Arguments of a fast `netvlad train`: a 48×64 place set and the tests' tiny backbone."""
    from netvlad.backbones import BACKBONES
    from netvlad.models import save_model
    from train_helpers import TinyBackbone, tiny_model

    monkeypatch.setitem(BACKBONES, "tiny", TinyBackbone)
    ckpt = save_model(tiny_model(), tmp_path / "tiny.pt")
    tr = save_csv(make_places(tmp_path / "tr", n_places=6, seed=0), tmp_path / "train.csv")
    va = save_csv(make_places(tmp_path / "va", n_places=4, seed=1), tmp_path / "val.csv")
    return [
        *("--train", str(tr), "--val", str(va), "--model", str(ckpt)),
        *("--n-neg-choice", "10", "--num-workers", "0", "--n-test-rank-sample", "8"),
        *("--recall-ns", "1", "5", "10", "--cluster-images", "12", "--limit-queries", "40"),
    ]


def _summary_oracle(run, epoch: int) -> str:
    """The summary line's numbers recomputed from metrics.jsonl (the per-batch records)."""
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    batches = [r for r in recs if r["type"] == "batch" and r["epoch"] == epoch]
    mined = sum(r["mined"] for r in batches)
    loss = sum(r["loss"] * r["mined"] for r in batches) / mined
    viol = sum(r["violators_per_query"] * r["mined"] for r in batches) / mined
    rec = next(r for r in recs if r["type"] == "epoch" and r["epoch"] == epoch)["val_recall"]
    return (
        f"epoch {epoch}/{epoch}: mean loss {loss:.4f}, {viol:.2f} violators per query, "
        f"val recall@1/5/10 {rec['1']:.3f}/{rec['5']:.3f}/{rec['10']:.3f}, "
    )


def test_one_epoch_prints_labelled_bars_and_an_epoch_summary(tiny_args, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", *tiny_args, "--out", str(run), "--limit-batches", "2", "--epochs", "1"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    lines = [ln for ln in cap.out.splitlines() if ln.startswith("epoch 1/1:")]
    assert len(lines) == 1, cap.out
    assert lines[0].startswith(_summary_oracle(run, 1)), (lines[0], _summary_oracle(run, 1))
    assert re.fullmatch(r".*, \d+\.\d s", lines[0])
    assert "epoch 0 (off-the-shelf): val recall@1/5/10 " in cap.out
    # progress bars (stderr) say what they do; none is a bare "descriptors"
    for label in (
        "off-the-shelf validation (database)",
        "cache refresh (queries)",
        "train epoch 1/1 (8 queries)",
        "epoch 1 validation (queries)",
        "epoch 1 cache refresh (database)",
    ):
        assert label + ":" in cap.err, label
    assert not re.search(r"(^|[\r\n])descriptors:", cap.err)


def test_resumed_train_says_where_it_resumed(tiny_args, tmp_path, monkeypatch, capsys):
    import netvlad.train.loop as loop

    real, calls = loop.mine, {"n": 0}

    def interrupted(*a, **k):  # Ctrl-C in the 3rd batch; a checkpoint is written after every batch
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    run = tmp_path / "run"
    monkeypatch.setattr(loop, "mine", interrupted)
    argv = ["train", *tiny_args, "--out", str(run), "--limit-batches", "3", "--epochs", "1"]
    assert main([*argv, "--save-frequency", "4", "--no-progress"]) == 130
    monkeypatch.setattr(loop, "mine", real)
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"resuming from epoch 1, query 8 (checkpoint {run / 'ckpt_latest.pt'})\n" in out
    # the summary covers the epoch's batches from before the interruption too
    summary = next(ln for ln in out.splitlines() if ln.startswith("epoch 1/1:"))
    assert summary.startswith(_summary_oracle(run, 1)) and summary.endswith(" s since the resume")
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert "resuming from epoch 2, query 0" in capsys.readouterr().out
