"""`netvlad train` / `pick-best` / `pca` end to end on a tiny place set with a small real preset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from netvlad.cli import main
from netvlad.data import save_csv
from train_helpers import make_places


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
