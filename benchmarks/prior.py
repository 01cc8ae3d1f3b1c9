"""Position prior on a synthetic town: recall@1 of the test area with a GPS fix of 50 m and 200 m noise
against no prior.

The town is `netvlad synth-town`'s generator with a larger test district than the demo's (a prior
matters only where the area is wider than the fix's error). The model is the demo's off-the-shelf
Lite0-NetVLAD (ImageNet weights, clusters from the training district's database images). Each query
gets a fix = its true position + Gaussian noise of σ metres per axis (``--draws`` seeds), and the
prior is given that σ as its radius; ``--weights`` compares the prior's weight (0 = gate only).
Descriptors are computed once (and kept in the town folder); the prior re-ranks the index's answer
for every draw.

    .venv/bin/python benchmarks/prior.py                      # town in a temp folder
    .venv/bin/python benchmarks/prior.py --town /tmp/town-prior --draws 10
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from netvlad.data import load_image
from netvlad.extract import compute_descriptors
from netvlad.index import build_index
from netvlad.models import create_model, init_clusters
from netvlad.rerank.prior import DEFAULT_WEIGHT, PositionPrior, search_with_prior
from netvlad.synth import SynthConfig, generate_town


def recall_at_1(ids: list[np.ndarray], positives: list[np.ndarray]) -> float:
    return float(np.mean([len(i) > 0 and int(i[0]) in set(p.tolist()) for i, p in zip(ids, positives)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--town", type=Path, help="town folder (default: a temp folder); reused when it exists")
    ap.add_argument("--test-blocks", type=int, nargs=2, default=(6, 5), metavar=("NX", "NY"))
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--size", type=int, nargs=2, default=(160, 120), metavar=("W", "H"))
    ap.add_argument("--noise", type=float, nargs="+", default=[50.0, 200.0])
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.02, DEFAULT_WEIGHT, 0.1, 0.2])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--candidates", type=int, help="descriptor matches the prior re-ranks (default: 1000)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    load_before = os.getloadavg()
    tmp = None
    if args.town is None:
        tmp = tempfile.TemporaryDirectory()
        args.town = Path(tmp.name) / "town"
    cfg = SynthConfig.preset("small", seed=0, width=args.size[0], height=args.size[1],
                             blocks={"train": (2, 1), "val": (1, 1), "test": tuple(args.test_blocks)},
                             n_queries={"train": 8, "val": 8, "test": args.queries})
    t = time.perf_counter()
    town = generate_town(args.town, cfg, progress=False)
    print(f"town: {town.summary()} ({time.perf_counter() - t:.0f} s)", flush=True)
    train, test = town.datasets["train"], town.datasets["test"]
    cache = args.town / "prior_descriptors.npz"  # reruns reuse the descriptors of this town
    if cache.is_file():
        with np.load(cache) as f:
            db, q = f["db"], f["q"]
    else:
        model = create_model("lite0-netvlad")
        init_clusters(model, train.db_paths(), max_images=200, loader=load_image, progress=False)
        t = time.perf_counter()
        db = compute_descriptors(model, test.db_paths(), batch_size=8, num_workers=0, progress=False)
        q = compute_descriptors(model, test.query_paths(), batch_size=8, num_workers=0, progress=False)
        print(f"descriptors: {len(db)} db, {len(q)} queries ({time.perf_counter() - t:.0f} s)", flush=True)
        np.savez(cache, db=db, q=q)
    index = build_index(db, "exact", names=list(test.db_images), utm=test.db_utm, meta={"zone": test.zone})
    pos = test.all_positives()
    lo, hi = test.db_utm.min(axis=0), test.db_utm.max(axis=0)
    k = 1
    cand = {} if args.candidates is None else {"candidates": args.candidates}
    _, plain = search_with_prior(index, q, k, [None] * len(q))
    base = recall_at_1(plain, pos)
    rows = {"none": {"recall@1": base}}
    print(f"test area {hi[0] - lo[0]:.0f} x {hi[1] - lo[1]:.0f} m, {index.ntotal} database images, "
          f"{len(q)} queries; no prior: recall@1 = {100 * base:.1f}%")
    for sigma in args.noise:
        for w in args.weights:
            rec = []
            for d in range(args.draws):
                rng = np.random.default_rng(1000 + d)
                fixes = test.query_utm + rng.normal(0.0, sigma, test.query_utm.shape)
                priors = [PositionPrior(float(e), float(n), sigma, weight=w, **cand) for e, n in fixes]
                _, ids = search_with_prior(index, q, k, priors)
                rec.append(recall_at_1(ids, pos))
            key = f"{sigma:g} m, weight {w:g}"
            rows[key] = {"noise_m": sigma, "weight": w, "recall@1": float(np.mean(rec)),
                         "min": float(np.min(rec)), "max": float(np.max(rec))}
            print(f"prior {key}: recall@1 = {100 * np.mean(rec):.1f}% "
                  f"(draws {100 * np.min(rec):.1f}-{100 * np.max(rec):.1f}%)", flush=True)
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f} after {load_after[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "loadavg": [load_before, load_after],
                                         "area_m": (hi - lo).tolist(), "db": index.ntotal, "queries": len(q)},
                                        indent=1))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
