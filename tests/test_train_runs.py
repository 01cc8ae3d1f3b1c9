"""Runs from Python and from the CLI: resume equality, restart from any epoch, the trainWeakly options
(fixLayers, backPropToLayer by index, training-set tests, MATLAB rounding)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from netvlad.cli import main
from netvlad.data import save_csv
from netvlad.train import (
    RunSpec,
    TrainConfig,
    fit,
    freeze_for_training,
    matlab_round,
    read_run,
    resume_run,
    start_run,
)
from train_helpers import TinyBackbone, make_places, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**kw):
    base = dict(epochs=1, lr=0.003, n_neg_choice=10, num_workers=0, comp_feats_frequency=8, save_frequency=4,
                recall_ns=(1, 2, 5), n_test_rank_sample=8, test0=False, limit_batches=2)
    base.update(kw)
    return TrainConfig(**base)


def _records(run):
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in recs]


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def spec(tmp_path, monkeypatch):
    from netvlad.backbones import BACKBONES
    from netvlad.models import save_model

    monkeypatch.setitem(BACKBONES, "tiny", TinyBackbone)
    ckpt = save_model(tiny_model(), tmp_path / "tiny.pt")
    tr = save_csv(make_places(tmp_path / "tr", n_places=6, seed=0), tmp_path / "train.csv")
    va = save_csv(make_places(tmp_path / "va", n_places=4, seed=1), tmp_path / "val.csv")
    return RunSpec(str(tr), str(va), str(ckpt))


def test_resume_from_python_equals_resume_from_the_cli(spec, tmp_path):
    run = start_run(spec, _cfg(), tmp_path / "run", progress=False, log=lambda _: None)
    assert read_run(run) == (spec, _cfg())
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    resume_run(run, epochs=2, progress=False, log=lambda _: None)
    assert main(["train", "--out", str(copy), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert _same(_weights(run / "ckpt_latest.pt"), _weights(copy / "ckpt_latest.pt"))
    assert _records(run) == _records(copy)
    assert [r["epoch"] for r in _records(run) if r["type"] == "epoch"] == [1, 2]


def test_restart_from_a_saved_epoch_redoes_the_later_ones_bit_exactly(spec, tmp_path, capsys):
    ref = start_run(spec, _cfg(epochs=3), tmp_path / "ref", progress=False, log=lambda _: None)
    want, want_recs = _weights(ref / "ckpt_latest.pt"), _records(ref)
    shutil.copytree(ref, tmp_path / "run")
    run = tmp_path / "run"
    (run / "ckpt_latest.pt").unlink()  # the restart needs only the epoch's own checkpoint
    rc = main(["train", "--resume-from", str(run / "epoch_001.pt"), "--no-progress"])
    assert rc == 0
    assert f"resuming from epoch 2, query 0 (checkpoint {run / 'epoch_001.pt'})" in capsys.readouterr().out
    # the epoch-1 cache was pruned: it is recomputed with the epoch-1 weights, i.e. the same cache
    assert _same(_weights(run / "ckpt_latest.pt"), want)
    assert _records(run) == want_recs
    with pytest.raises(ValueError, match="not a checkpoint of the run"):
        resume_run(tmp_path / "ref", checkpoint=run / "epoch_001.pt")


def test_epoch_records_hold_training_set_tests_that_match_an_oracle(tmp_path):
    tr = make_places(tmp_path / "tr", n_places=6, seed=0)
    va = make_places(tmp_path / "va", n_places=4, seed=1)
    lines = []
    cfg = _cfg(test0=True, cache_dtype="float32", n_test_rank_sample=0)
    run = fit(tiny_model(), tr, va, cfg, tmp_path / "run", progress=False, log=lines.append)
    recs = {r["epoch"]: r for r in _records(run) if r["type"] == "epoch"}
    assert set(recs) == {0, 1} and recs[1]["train_rankloss"] is None
    cache = torch.load(next(run.glob("cache_r*.pt")), weights_only=True)  # the epoch-1 cache
    db, q = cache["db"].double().numpy(), cache["q"].double().numpy()
    d = ((q[:, None, :] - db[None, :, :]) ** 2).sum(-1)
    for n in (1, 2, 5):
        hits = [len(set(np.argsort(d[i], kind="stable")[:n]) & set(tr.positives(i).tolist())) > 0
                for i in range(tr.num_queries)]
        assert recs[1]["train_recall"][str(n)] == pytest.approx(np.mean(hits))
    assert lines[0].startswith("epoch 0 (off-the-shelf): val recall@1/5 ") and "train recall@1/5 " in lines[0]
    assert ", train recall@1/5 " in lines[-1] and "val recall@1/5 " in lines[-1]


def test_rank_losses_in_records_and_summary(tmp_path):
    tr = make_places(tmp_path / "tr", n_places=6, seed=0)
    lines = []
    run = fit(tiny_model(), tr, tr, _cfg(), tmp_path / "run", progress=False, log=lines.append)
    rec = [r for r in _records(run) if r["type"] == "epoch"][0]
    assert rec["val_rankloss"] >= 0 and rec["train_rankloss"] >= 0
    assert f"rank loss val {rec['val_rankloss']:.4f}, train {rec['train_rankloss']:.4f}, " in lines[-1]


def test_backprop_from_by_index_equals_by_name_and_fix_layers_freeze():
    m = tiny_model()
    assert m.layer_names() == ["conv1", "relu1", "conv2", "preL2", "vlad:core", "vlad:intranorm", "postL2"]
    by_index = freeze_for_training(m, 3)
    assert [id(p) for p in by_index] == [id(p) for n, p in m.named_parameters() if "conv1" not in n]
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    freeze_for_training(m, "conv2")
    assert names == [n for n, p in m.named_parameters() if p.requires_grad]
    assert not any("conv1" in n for n in names) and any("head" in n for n in names)
    freeze_for_training(m, None, fix_layers=("conv2", "vlad:core"))
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable == ["backbone.conv1.weight", "backbone.conv1.bias"]
    freeze_for_training(m, 4)  # preL2: only the head is trained
    assert all(n.startswith("head") for n, p in m.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="outside the model's layers 1..7"):
        freeze_for_training(m, 8)
    with pytest.raises(ValueError, match="unknown layer 'conv9'"):
        freeze_for_training(m, None, fix_layers=("conv9",))
    with pytest.raises(ValueError, match="nothing to train"):
        freeze_for_training(m, 5, fix_layers=("vlad:core",))


def test_fixed_layers_do_not_move_in_training(tmp_path):
    tr = make_places(tmp_path / "tr", n_places=6, seed=0)
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = _cfg(backprop_from=None, fix_layers=("conv2",), n_test_rank_sample=0)
    fit(model, tr, tr, cfg, tmp_path / "run", progress=False)
    after = model.state_dict()
    assert torch.equal(after["backbone.conv2.weight"], before["backbone.conv2.weight"])
    assert not torch.equal(after["backbone.conv1.weight"], before["backbone.conv1.weight"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["fix_layers"] == ["conv2"]


def test_backprop_from_index_and_fix_layers_from_the_cli(spec, tmp_path):
    args = ["train", "--train", spec.train, "--val", spec.val, "--model", spec.model,
            "--out", str(tmp_path / "r"), "--epochs", "1", "--limit-batches", "1", "--num-workers", "0",
            "--n-neg-choice", "10", "--recall-ns", "1", "--no-test0", "--no-progress",
            "--backprop-from", "3", "--fix-layers", "vlad:core"]
    assert main(args) == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["train"]["backprop_from"] == 3 and cfg["train"]["fix_layers"] == ["vlad:core"]


def test_matlab_rounding_in_the_schedule():
    assert [matlab_round(x) for x in (0.5, 1.5, 2.5, -2.5, 2.4999)] == [1, 2, 3, -3, 2]
    cfg = TrainConfig(comp_feats_frequency=4, batch_size=4, lr_down_factor=2.5)
    assert cfg.schedule(5)[1] == 1 and cfg.schedule(6)[1] == 3  # Python's round(2.5) would give 2
    assert cfg.schedule(11)[1] == 8  # round(3 · 2.5 = 7.5) = 8
