"""The NetVLAD paper's main claims, checked on a synthetic town (EfficientNet-Lite0 backbone, CPU).

Claims (Arandjelović et al., CVPR 2016, §5): (1) training on the target domain helps, (2) NetVLAD
beats max pooling of the same backbone (f_max), (3) PCA-whitening helps, (4) 256-D whitened
descriptors keep most of the recall of the full-size ones.

Methods, all on the test area of one town: off-the-shelf / trained max pooling, off-the-shelf /
trained NetVLAD, trained NetVLAD + PCA (plain) and PCA-whitening at 4096-D and 256-D. PCA is fitted
on the training database; when it has fewer than 4096 images the largest dimension available
(n − 1) is used and the table says so.

    python benchmarks/paper_claims.py --size medium           # the issue's configuration (heavy)
    python benchmarks/paper_claims.py --quick                 # tiny town, a few training steps

Prints a table (recall@1/5/10/20 in %) and one line per claim; timings are wall-clock seconds on
whatever machine runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from netvlad.demo import DemoConfig, evaluate_on, format_table, train_on_town
    from netvlad.extract import compute_descriptors
    from netvlad.synth import SynthConfig, generate_town
    from netvlad.whitening import apply_whitening, fit_pca

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="medium", choices=["tiny", "small", "medium", "large"])
    ap.add_argument("--quick", action="store_true", help="tiny town, 1 short epoch (minutes on 2 cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument(
        "--dims", default=None, help="PCA output dimensions (default 4096,256; 64,16 with --quick)"
    )
    ap.add_argument("--no-trained-max", action="store_true", help="skip training the max-pooling model")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one, removed)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.dims is None:
        args.dims = "64,16" if args.quick else "4096,256"

    if args.quick:
        cfg = DemoConfig.quick(device=args.device, progress=not args.no_progress, town_seed=args.seed)
        cfg = dataclasses.replace(cfg, town_overrides={"max_photos": 12}, limit_batches=6)
    else:
        cfg = DemoConfig(
            town_size=args.size, town_seed=args.seed, device=args.device, progress=not args.no_progress
        )
    if args.epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="netvlad-claims-"))
    t_start = time.perf_counter()
    try:
        synth = SynthConfig.preset(
            cfg.town_size,
            seed=cfg.town_seed,
            width=cfg.town_width,
            height=cfg.town_height,
            **cfg.town_overrides,
        )
        town = generate_town(work / f"town-{cfg.town_size}-seed{cfg.town_seed}", synth, progress=cfg.progress)
        print(town.summary(), flush=True)
        train, val, test = (town.datasets[s] for s in ("train", "val", "test"))
        rows, dims_used, seconds = {}, {}, {}
        ns = (1, 5, 10, 20)
        kw = dict(batch_size=cfg.extract_batch_size, device=cfg.device, progress=cfg.progress)
        for pool, preset in (("max", "lite0-max"), ("NetVLAD", "lite0-netvlad")):
            t0 = time.perf_counter()
            model = _fresh_model(preset, train, cfg)
            off, _ = evaluate_on(model, test, ns, **kw)
            rows[f"off-the-shelf {pool} ({model.out_dim}-D)"] = off
            print(f"off-the-shelf {pool}: {_fmt(off)}", flush=True)
            if pool == "max" and args.no_trained_max:
                continue
            run = work / f"run-{pool}"
            shutil.rmtree(run, ignore_errors=True)
            trained = train_on_town(model, train, val, run, cfg)
            rec, _ = evaluate_on(trained, test, ns, **kw)
            rows[f"trained {pool} ({trained.out_dim}-D)"] = rec
            seconds[pool] = time.perf_counter() - t0
            print(f"trained {pool}: {_fmt(rec)} ({seconds[pool]:.0f} s)", flush=True)
        # PCA / PCA-whitening of the trained NetVLAD, fitted on the training database.
        train_desc = compute_descriptors(trained, train.db_paths(), num_workers=0, **kw)
        pca = fit_pca(
            train_desc, int(min(max(_dims(args.dims)), train_desc.shape[0] - 1, train_desc.shape[1]))
        )
        for want in _dims(args.dims):
            dim = min(want, pca.max_dim)
            dims_used[want] = dim
            for whiten in (False, True):
                m = _copy(trained, cfg.device)
                apply_whitening(m, pca, dim, whiten=whiten)
                rec, _ = evaluate_on(m, test, ns, **kw)
                label = f"trained NetVLAD + {'whitening' if whiten else 'PCA'} {dim}-D"
                if dim != want:
                    label += f" (asked {want})"
                rows[label] = rec
                print(f"{label}: {_fmt(rec)}", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        f"test area: {test.num_queries} queries, {test.num_db} database images; "
        f"train: {train.num_queries} queries, {train.num_db} db; epochs {cfg.epochs}"
    )
    print(format_table(rows, ns))
    full = next(k for k in rows if k.startswith("trained NetVLAD ("))
    off_nv = next(k for k in rows if k.startswith("off-the-shelf NetVLAD"))
    best_max = [k for k in rows if "max" in k][-1]
    big, small = (dims_used[d] for d in _dims(args.dims)[:2]) if len(dims_used) > 1 else (None, None)
    print("\nclaims (verdict on recall@1 + recall@5):")
    _claim("training helps", rows[full], rows[off_nv])
    _claim(f"NetVLAD beats max pooling ({best_max.split(' (')[0]})", rows[full], rows[best_max])
    if big is not None:
        white_big = next(k for k in rows if f"whitening {big}-D" in k)
        pca_big = next(k for k in rows if f"PCA {big}-D" in k)
        white_small = next(k for k in rows if f"whitening {small}-D" in k)
        _claim(f"whitening helps ({big}-D whitened vs unwhitened full)", rows[white_big], rows[full])
        _claim(f"whitening helps ({big}-D whitened vs plain PCA {big}-D)", rows[white_big], rows[pca_big])
        for n in (1, 5):
            keep = rows[white_small][n] / max(rows[white_big][n], 1e-9)
            print(f"  {small}-D whitened keeps {100 * keep:.0f}% of the {big}-D whitened recall@{n}")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


def _fresh_model(preset: str, train, cfg):
    from netvlad.data import load_image
    from netvlad.models import create_model, init_clusters

    model = create_model(preset)
    if not getattr(model, "initialized", True):
        init_clusters(
            model, train.db_paths(), max_images=cfg.cluster_images, loader=load_image, progress=cfg.progress
        )
    return model


def _copy(model, device):
    import copy

    return copy.deepcopy(model).to(device).eval()


def _dims(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _fmt(rec: dict[int, float]) -> str:
    return " ".join(f"R@{n}={100 * v:.1f}" for n, v in rec.items())


def _claim(name: str, a: dict[int, float], b: dict[int, float]) -> None:
    sa, sb = a[1] + a[5], b[1] + b[5]
    verdict = "tie" if np.isclose(sa, sb) else ("holds" if sa > sb else "does NOT hold")
    r1, r5 = f"R@1 {100 * a[1]:.1f} vs {100 * b[1]:.1f}", f"R@5 {100 * a[5]:.1f} vs {100 * b[5]:.1f}"
    print(f"  {name}: {r1}, {r5} -> {verdict}")


if __name__ == "__main__":
    raise SystemExit(main())
