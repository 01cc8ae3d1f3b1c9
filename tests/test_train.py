"""End-to-end training on a tiny synthetic place set: learning, checkpoints, bit-exact resume, DDP."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch

import netvlad.train.loop as loop
from netvlad.extract import is_channels_last
from netvlad.train import TrainConfig, fit, pick_best
from train_helpers import make_places, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("places")
    return make_places(root / "train", n_places=6, seed=0), make_places(root / "val", n_places=5, seed=1)


def _cfg(**kw):
    base = dict(
        epochs=2,
        lr=0.003,
        n_neg_choice=12,
        num_workers=0,
        comp_feats_frequency=8,
        save_frequency=4,
        recall_ns=(1, 2, 5),
        n_test_rank_sample=20,
        test0=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def _records(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_schedule_matches_matlab():
    cfg = TrainConfig()
    assert cfg.schedule(1) == (1e-4, 250) and cfg.schedule(5) == (1e-4, 250)
    assert cfg.schedule(6) == (5e-5, 500) and cfg.schedule(11) == (2.5e-5, 1000)
    assert cfg.save_every_batches == 500
    with pytest.raises(ValueError, match="cache_dtype"):
        TrainConfig(cache_dtype="int8")


def test_amp_runs_tuples_and_cache_in_bf16_and_tests_in_fp32(places, monkeypatch):
    """--amp on CPU: the tuple forward under bf16 autocast (the convolutions see bfloat16), the
    mining cache extracted in bf16; validation stays fp32 so that recall is comparable."""
    import netvlad.train.cache as cache
    from netvlad.train.tuples import embed

    model = tiny_model()
    model.head.initialized.fill_(True)  # random centres are fine for comparing precisions
    seen = []
    model.backbone.conv2.register_forward_hook(lambda m, inp, out: seen.append(inp[0].dtype))
    xs = [model.preprocess.apply(np.full((48, 64, 3), v, np.uint8)) for v in (40, 120, 200)]
    with torch.no_grad():
        ref = embed(model, xs, "cpu", amp=False)
        got = embed(model, xs, "cpu", amp=True)
    assert seen == [torch.float32, torch.bfloat16]
    assert got.dtype == torch.float32 and not torch.equal(got, ref)
    assert torch.allclose(got, ref, atol=0.05)  # bf16 keeps ~3 significant digits

    precisions = []
    real = cache.compute_descriptors

    def spy(*a, **kw):
        precisions.append(kw["precision"])
        return real(*a, **kw)

    monkeypatch.setattr(cache, "compute_descriptors", spy)
    train, val = places
    for amp in (False, True):
        cfg = _cfg(amp=amp)
        cache.refresh_cache(model, train, np.arange(3), cfg, "cpu", progress=False)
        cache.evaluate_places(model, val, cfg, "cpu", progress=False)
    assert precisions == ["fp32"] * 4 + ["bf16", "bf16", "fp32", "fp32"]


@pytest.mark.slow
def test_training_lowers_loss_and_raises_val_recall(tmp_path):
    tr = make_places(tmp_path / "tr", n_places=20, seed=0)
    va = make_places(tmp_path / "va", n_places=20, seed=0, view_seed=1)  # same town, new conditions
    cfg = _cfg(epochs=3, lr=3e-4, test0=True, n_neg_choice=20, n_test_rank_sample=0)
    run = fit(tiny_model(), tr, va, cfg, tmp_path / "run", progress=False)
    recs = _records(run)
    batches = [r for r in recs if r["type"] == "batch"]
    epochs = {r["epoch"]: r for r in recs if r["type"] == "epoch"}
    assert len(batches) == 30  # 40 queries / 4 per batch × 3 epochs: a few dozen SGD steps
    first = np.mean([b["loss"] for b in batches if b["epoch"] == 1][:3])
    last = np.mean([b["loss"] for b in batches if b["epoch"] == 3])
    assert last < first
    mean_recall = {e: np.mean(list(r["val_recall"].values())) for e, r in epochs.items()}
    assert mean_recall[3] > mean_recall[0], mean_recall
    assert (run / "curves.png").is_file() and (run / "epoch_003.pt").is_file()
    cfgj = json.loads((run / "config.json").read_text())
    assert cfgj["train"]["lr"] == 3e-4 and cfgj["model"]["backbone"] == "tiny"
    b = batches[5]
    assert {"violators_per_query", "skipped", "cache_age_queries", "triplets", "mining_seconds"} <= set(b)


def test_checkpoint_contents_and_fresh_run_guard(places, tmp_path):
    tr, va = places
    model = tiny_model()
    run = fit(model, tr, va, _cfg(epochs=1, cache_dtype="float32"), tmp_path / "run", progress=False)
    assert is_channels_last(model)  # trained in channels_last on CPU, cache refreshes included
    ck = torch.load(run / "epoch_001.pt", weights_only=True)
    assert ck["format"] == "netvlad-checkpoint" and ck["config"]["backbone"] == "tiny"
    st = ck["extra"]["train"]
    assert st["position"]["epoch"] == 2 and st["memory"].shape == (tr.num_queries, 10)
    assert (st["memory"] >= 0).any() and "state" in st["optimizer"] and "torch" in st["rng"]
    caches = list(run.glob("cache_r*.pt"))
    assert len(caches) == 1 and torch.load(caches[0], weights_only=True)["db"].dtype == torch.float32
    assert pick_best(run, 5) == (1, run / "epoch_001.pt")
    with pytest.raises(ValueError, match="already holds"):
        fit(tiny_model(), tr, va, _cfg(epochs=1), run, progress=False)


class _Stop(RuntimeError):
    pass


def _interrupting(after: int):
    calls = {"n": 0}
    real = loop.triplet_ranking_loss

    def wrapped(*a, **k):
        calls["n"] += 1
        if calls["n"] > after:
            raise _Stop("simulated crash")
        return real(*a, **k)

    return wrapped


@pytest.mark.parametrize("crash_after", [3, 9])  # mid-epoch 1 (after a refresh) / in epoch 2
def test_resume_is_bit_exact(places, tmp_path, monkeypatch, crash_after):
    tr, va = places
    cfg = _cfg(jitter_flip=True)
    ref = fit(tiny_model(), tr, va, cfg, tmp_path / "ref", progress=False)
    want = torch.load(ref / "ckpt_latest.pt", weights_only=True)["state_dict"]
    monkeypatch.setattr(loop, "triplet_ranking_loss", _interrupting(crash_after))
    with pytest.raises(_Stop):
        fit(tiny_model(), tr, va, cfg, tmp_path / "run", progress=False)
    monkeypatch.undo()
    model = tiny_model()
    fit(model, tr, va, cfg, tmp_path / "run", progress=False, resume=True)
    got = model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    # the metrics of the resumed run equal the uninterrupted one's (redone batches not duplicated)
    strip = [{k: v for k, v in r.items() if "seconds" not in k} for r in _records(ref)]
    assert [{k: v for k, v in r.items() if "seconds" not in k} for r in _records(tmp_path / "run")] == strip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, tr, va, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fit(tiny_model(), tr, va, _cfg(epochs=1), out, progress=False)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(places, tmp_path):
    import torch.multiprocessing as mp

    tr, va = places
    single = fit(tiny_model(), tr, va, _cfg(epochs=1), tmp_path / "single", progress=False)
    mp.spawn(_ddp_worker, args=(2, _free_port(), tr, va, str(tmp_path / "ddp")), nprocs=2, join=True)
    a = torch.load(single / "epoch_001.pt", weights_only=True)
    b = torch.load(tmp_path / "ddp" / "epoch_001.pt", weights_only=True)
    assert b["extra"]["train"]["world_size"] == 2
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=1e-4, atol=1e-5)
    assert torch.equal(a["extra"]["train"]["memory"], b["extra"]["train"]["memory"])
    ra = [r["triplets"] for r in _records(single) if r["type"] == "batch"]
    assert ra == [r["triplets"] for r in _records(tmp_path / "ddp") if r["type"] == "batch"]
