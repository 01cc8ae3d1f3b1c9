"""Training cost on CPU: seconds per cache refresh and per 1000 training queries, float32 vs float16
cache, with the mining statistics; plus mining alone on a Pittsburgh-sized random cache.

    .venv/bin/python benchmarks/train.py [--places 40] [--repeats 3] [--threads 2]

Uses a small real preset (resnet18-netvlad, random weights) on synthetic 48×64 place images
(tests/train_helpers.py) so that it runs offline in a few minutes.

``--town DIR`` (a ``netvlad synth-town`` folder, 320×240 images) instead compares whole training
runs at the town's image size, repeats interleaved: the original configuration (float32 cache,
float32 compute, mining on the full descriptors) against the fast one (float16 cache, mining on a
PCA-reduced cache; ``amp``: bf16 autocast and bf16 cache refreshes, only where the CPU has native
bf16). Cost is the wall time of ``fit`` (cache refreshes and the end-of-epoch validation included)
per 1000 training queries; quality is validation recall@1 after the epoch. The ceiling, measured before and
after the runs: one tuple's forward+backward alone in fp32 and under bf16 autocast, whose ratio is
the most the compute type can save.

    .venv/bin/python benchmarks/train.py --town /tmp/town --queries 200 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def bench_training(args, tmp: Path) -> list[dict]:
    from netvlad.models import create_model
    from netvlad.train import TrainConfig, fit
    from train_helpers import make_places

    tr = make_places(tmp / "tr", n_places=args.places, seed=0)
    va = make_places(tmp / "va", n_places=4, seed=1)
    rows = []
    for dtype in ("float32", "float16"):
        per_q, per_refresh, stats = [], [], []
        for rep in range(args.repeats):
            model = create_model("resnet18-netvlad", weights="random")
            cfg = TrainConfig(
                epochs=1,
                lr=1e-4,
                n_neg_choice=min(1000, 3 * (args.places - 2)),
                num_workers=0,
                cache_dtype=dtype,
                test0=False,
                n_test_rank_sample=0,
                recall_ns=(1, 5),
                comp_feats_frequency=10**9,
                cluster_images=50,
            )
            run = tmp / f"run_{dtype}_{rep}"
            fit(model, tr, va, cfg, run, progress=False)
            recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            b = [r for r in recs if r["type"] == "batch"]
            n_q = sum(r["queries"] for r in b)
            per_q.append(sum(r["seconds"] for r in b) / n_q * 1000)
            t0 = time.perf_counter()
            from netvlad.train import refresh_cache

            refresh_cache(model, tr, np.arange(tr.num_queries), cfg, "cpu", progress=False)
            per_refresh.append(time.perf_counter() - t0)
            stats.append(
                (
                    np.mean([r["violators_per_query"] for r in b]),
                    sum(r["skipped"] for r in b) / n_q,
                    sum(r["mining_seconds"] for r in b) / sum(r["seconds"] for r in b),
                )
            )
        s = np.mean(stats, axis=0)
        rows.append(
            {
                "cache": dtype,
                "s_per_1000_queries": statistics.median(per_q),
                "s_per_refresh": statistics.median(per_refresh),
                "images_per_refresh": tr.num_db + tr.num_queries,
                "violators_per_query": s[0],
                "skipped_frac": s[1],
                "mining_share": s[2],
            }
        )
    return rows


def bench_town(args) -> dict[str, list[dict]]:
    """Per configuration, one dict per repeat: seconds per 1000 training queries, val recall@1."""
    from netvlad.data import load_dataset
    from netvlad.extract.precision import native_bf16
    from netvlad.models import create_model
    from netvlad.train import TrainConfig, fit

    def split(name):
        return load_dataset(str(next((args.town / name).glob("*.csv"))), images=args.town / name)

    tr, va = split("train"), split("val")
    common = dict(epochs=1, lr=1e-4, num_workers=0, test0=False, n_test_rank_sample=0, recall_ns=(1, 5),
                  comp_feats_frequency=args.refresh_every, cluster_images=100, limit_queries=args.queries,
                  save_cache=False)
    configs = {
        "original (fp32 cache, fp32)": TrainConfig(**common, cache_dtype="float32"),
        "fast (fp16 cache, PCA mining"
        + (", bf16 autocast)" if native_bf16() else "; no native bf16 here)"): TrainConfig(
            **common, cache_dtype="float16", mining_pca_dim=args.pca_dim, amp=native_bf16()),
    }
    out = {k: [] for k in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name, cfg in configs.items():
                model = create_model(args.model, weights="random", seed=rep)
                run = Path(tmp) / f"run{rep}_{len(out[name])}_{name[:4]}"
                t0 = time.perf_counter()
                fit(model, tr, va, cfg, run, progress=False)
                secs = time.perf_counter() - t0
                recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
                n_q = sum(r["queries"] for r in recs if r["type"] == "batch")
                ep = [r for r in recs if r["type"] == "epoch"][-1]
                out[name].append({"s_per_1000": 1000 * secs / n_q, "queries": n_q,
                                  "val_r1": float(ep["val_recall"]["1"])})
                print(f"  rep {rep} {name}: {out[name][-1]}  load {os.getloadavg()[0]:.1f}", flush=True)
    return out


def tuple_ceiling(args, size=(240, 320), n_images: int = 12, repeats: int = 5,
                  memory_format=torch.channels_last) -> dict[str, float]:
    """Seconds for one training tuple's forward+backward alone (``n_images`` at ``size``, the model of
    ``--model``, in ``memory_format`` as training on CPU), fp32 and under bf16 autocast: their ratio
    is the most a faster compute type can save on the tuples (median of ``repeats`` after a warm-up)."""
    from netvlad.models import create_model

    model = create_model(args.model, weights="random", seed=0)
    model.head.initialized.fill_(True)  # random centres cost the same as trained ones
    model.train().to(memory_format=memory_format)
    x = torch.randn(n_images, 3, *size).contiguous(memory_format=memory_format)
    out = {}
    for name, amp in (("fp32", False), ("bf16", True)):
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                y = model(x).float()
            (y[:1] - y[1:]).pow(2).sum().backward()
            model.zero_grad()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times[1:])
    return out


def bench_mining(args) -> list[dict]:
    from netvlad.mining import MiningConfig, mine

    rng = np.random.default_rng(0)
    n_db, n_q, dim = args.mine_db, 64, args.mine_dim
    db32 = torch.from_numpy(rng.standard_normal((n_db, dim), dtype=np.float32))
    db32 /= db32.norm(dim=1, keepdim=True)
    q32 = db32[:n_q] + 0.05 * torch.randn(n_q, dim)
    rows = []
    for name, dt in (("float32", torch.float32), ("float16", torch.float16)):
        db, q = db32.to(dt), q32.to(dt)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for b in range(0, n_q, 4):
                ids = list(range(b, b + 4))
                pos = [np.array([i]) for i in ids]
                negs = [rng.choice(np.arange(n_q, n_db), 1000, replace=False) for _ in ids]
                mine(ids, q, db, pos, negs, [np.zeros(0, np.int64)] * 4, MiningConfig())
            times.append((time.perf_counter() - t0) / (n_q // 4))
        rows.append(
            {
                "cache": name,
                "cache_MB": db.numel() * db.element_size() / 2**20,
                "ms_per_batch": 1000 * statistics.median(times),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--places", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mine-db", type=int, default=10000)
    ap.add_argument("--mine-dim", type=int, default=4096)
    ap.add_argument("--town", type=Path, help="compare whole training runs on this synth-town folder")
    ap.add_argument("--model", default="resnet18-netvlad", help="with --town: preset (random weights)")
    ap.add_argument("--queries", type=int, default=200, help="with --town: training queries per run")
    ap.add_argument("--refresh-every", type=int, default=100, help="with --town: cache refresh period")
    ap.add_argument("--pca-dim", type=int, default=256, help="with --town: mining PCA dimension")
    ap.add_argument("--tuple-only", action="store_true",
                    help="only time one tuple's forward+backward: fp32/bf16, contiguous/channels_last")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.tuple_only:
        print(f"{args.model}, one 12-image tuple's forward+backward at 240×320, median of 5, s")
        for rep in range(args.repeats):
            for fmt in (torch.contiguous_format, torch.channels_last):
                t = tuple_ceiling(args, memory_format=fmt)
                name = str(fmt).split(".")[-1]
                print(f"  repeat {rep} {name:>17}: fp32 {t['fp32']:.3f}  bf16 {t['bf16']:.3f}")
        return
    if args.town:
        print(f"Training on {args.town}, {args.model} (random weights), {args.queries} training queries, "
              f"cache refresh every {args.refresh_every}, CPU {args.threads} threads, load {os.getloadavg()}")
        ceil = tuple_ceiling(args)
        res = bench_town(args)
        ceil_after = tuple_ceiling(args)
        ratios = [c["fp32"] / c["bf16"] for c in (ceil, ceil_after)]
        print(f"Ceiling of the compute-type gain, same run: one 12-image tuple's forward+backward alone "
              f"(240×320, channels_last) fp32 {ceil['fp32']:.2f} / {ceil_after['fp32']:.2f} s, bf16 autocast "
              f"{ceil['bf16']:.2f} / {ceil_after['bf16']:.2f} s (before / after the runs): "
              f"{ratios[0]:.2f}× / {ratios[1]:.2f}×")
        print("| config | s / 1000 queries median (runs) | val R@1 median (runs) |")
        print("|---|---|---|")
        for name, rs in res.items():
            s = [r["s_per_1000"] for r in rs]
            v = [r["val_r1"] for r in rs]
            print(f"| {name} | {statistics.median(s):.0f} ({', '.join(f'{x:.0f}' for x in s)}) "
                  f"| {statistics.median(v):.3f} ({', '.join(f'{x:.3f}' for x in v)}) |")
        return
    with tempfile.TemporaryDirectory() as d:
        rows = bench_training(args, Path(d))
    print(
        f"Training, resnet18-netvlad (random weights, 32768-d), 48x64 synthetic images, "
        f"{args.places} places, CPU {args.threads} threads, median of {args.repeats}"
    )
    print(
        f"{'cache':<8} {'s/1000 queries':>15} {'s/refresh':>10} {'imgs/refresh':>13} {'viol/query':>11} "
        f"{'skipped':>8} {'mining share':>13}"
    )
    for r in rows:
        print(
            f"{r['cache']:<8} {r['s_per_1000_queries']:>15.1f} {r['s_per_refresh']:>10.2f} "
            f"{r['images_per_refresh']:>13d} {r['violators_per_query']:>11.2f} {r['skipped_frac']:>8.2%} "
            f"{r['mining_share']:>13.2%}"
        )
    print(
        f"\nMining alone: {args.mine_db} db x {args.mine_dim}-d cache, batch of 4 queries, "
        f"1000 random negatives + 10 remembered each, median of {args.repeats}"
    )
    print(f"{'cache':<8} {'cache MB':>9} {'ms/batch':>9}")
    for r in bench_mining(args):
        print(f"{r['cache']:<8} {r['cache_MB']:>9.0f} {r['ms_per_batch']:>9.2f}")


if __name__ == "__main__":
    main()
