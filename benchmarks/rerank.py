"""Re-ranking on a synthetic town and on the campus walk: recall@1/5/10 without and with each re-ranking.

Town (``netvlad.synth``, the test area; day, overcast, sunset and night queries reported apart):
the demo's model, EfficientNet-Lite0 NetVLAD with clusters from the training area's database,
PCA-whitened to ``--whiten-dim`` on the training database (Patch-NetVLAD whitens its patches with
the model's PCA). Baseline: that model's global descriptors. Re-rankings of the top ``--top``:
αQE, DBA, k-reciprocal (OpenIBL's defaults), Patch-NetVLAD in its speed setting (one patch scale,
rapid spatial scoring) and in multi-scale settings (spatial and RANSAC). Patch features are read
from their HDF5 file per query, as ``netvlad evaluate --rerank patch`` does.

Campus (mvtbdata, 20 database + 5 query photos, the demo's ground truth): the same model kind
with clusters from the campus database and no whitening (20 images cannot fit a PCA).

    OMP_NUM_THREADS=2 python benchmarks/rerank.py --work /tmp/rerank-bench        # medium town
    python benchmarks/rerank.py --size tiny --quick                                # smoke run

Prints one table per data set (recall in %, ms per query of the re-ranking alone, bytes stored
per image) and the target line: Patch-NetVLAD's gain in recall@1 on sunset + night queries.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before numpy/torch start their thread pools

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


@dataclasses.dataclass
class Setting:
    """One re-ranking to measure: a name, a ``build_reranker`` method and its options."""

    label: str
    method: str | None
    scales: tuple[tuple[int, int], ...] = ()
    scorer: str = "spatial"
    weights: tuple[float, ...] | None = None


def _settings(args) -> list[Setting]:
    speed = ((args.speed_size, 1),)
    multi = tuple((s, 1) for s in args.multi_sizes)
    w = tuple(args.multi_weights) if args.multi_weights else None
    return [
        Setting("NetVLAD (global only)", None),
        Setting("+ aQE (k=3, a=3)", "aqe"),
        Setting("+ DBA (k=3, a=3)", "dba"),
        Setting("+ k-reciprocal (k1=25)", "kreciprocal"),
        Setting(f"+ Patch-NetVLAD speed ({args.speed_size}x{args.speed_size}, spatial)", "patch", speed),
        Setting(f"+ Patch-NetVLAD {args.speed_size}x{args.speed_size}, RANSAC", "patch", speed, "ransac"),
        Setting(f"+ Patch-NetVLAD multi {'/'.join(map(str, args.multi_sizes))}, spatial", "patch", multi,
                "spatial", w),
        Setting(f"+ Patch-NetVLAD multi {'/'.join(map(str, args.multi_sizes))}, RANSAC", "patch", multi,
                "ransac", w),
    ]


class _ScaleView:
    """A patch store restricted to some of its scales (the speed setting reads one scale of the
    multi-scale file instead of extracting it again)."""

    def __init__(self, store, keep: list[int]):
        self._store, self._keep = store, keep
        self.scales = [store.scales[k] for k in keep]

    def rows(self, names):
        return self._store.rows(names)

    def get(self, row):
        sets = self._store.get(row)
        return [sets[k] for k in self._keep]


def _one_pass(model, paths, names, out: Path, scales, batch_size: int) -> np.ndarray:
    """Global descriptors (returned, N×D) and patch features (into ``out``) from one backbone pass per
    image: the machine is shared, and extract_features + extract_patches would run it twice. The
    patch file is the one ``extract_patches`` writes (same writer, same maths; tested apart)."""
    import torch

    from netvlad.data import load_image
    from netvlad.extract import patch_descriptors
    from netvlad.io import PatchWriter
    from netvlad.layers import whole_l2n

    glob_path = out.with_suffix(".global.npy")
    if out.exists() and glob_path.exists():
        return np.load(glob_path)
    writer = PatchWriter(out, names, scales, int(model.out_dim), "float16",
                         {"fingerprint": model.fingerprint(), "preprocessing": {}}, overwrite=True)
    writer.open()
    glob = np.zeros((len(paths), int(model.out_dim)), np.float32)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            rows = list(range(start, min(start + batch_size, len(paths))))
            x = torch.stack([model.preprocess.apply(load_image(paths[i])) for i in rows])
            fmap = model.backbone(x.contiguous(memory_format=torch.channels_last))
            g = model.head(fmap)
            if model.whitening is not None:  # as PlaceModel.forward: WPCA, then L2
                g = whole_l2n(model.whitening(g))
            glob[rows] = g.numpy()
            per = [patch_descriptors(model, fmap, s, t) for s, t in scales]
            for j, i in enumerate(rows):
                writer.write(i, [(d[j].numpy(), pos) for d, pos in per], tuple(fmap.shape[2:]))
    writer.finish()
    np.save(glob_path, glob)
    return glob


def _extract(model, ds, work: Path, scales, args) -> tuple:
    from netvlad.io import PatchFile

    t0 = time.perf_counter()
    db = _one_pass(model, ds.db_paths(), ds.db_images, work / "db_patches.h5", scales, args.batch_size)
    q = _one_pass(model, ds.query_paths(), ds.query_images, work / "q_patches.h5", scales, args.batch_size)
    ms = 1000 * (time.perf_counter() - t0) / (ds.num_db + ds.num_queries)
    print(f"global + patch extraction (scales {scales}), one pass: {ms:.0f} ms/image", flush=True)
    return db, q, PatchFile(work / "q_patches.h5"), PatchFile(work / "db_patches.h5")


def _run_settings(ds, model, work: Path, settings, args) -> list[dict]:
    """recall + timing of every setting on one dataset."""
    from netvlad.metrics import evaluate_dataset
    from netvlad.rerank import build_reranker

    all_scales = sorted({sc for st in settings for sc in st.scales})
    db, q, qf, dbf = _extract(model, ds, work, all_scales, args)
    per_scale = {}  # bytes per image of each scale, from the file
    for k, sc in enumerate(all_scales):
        sizes = [dbf.get(i)[k][0].shape[0] for i in range(ds.num_db)]
        per_scale[sc] = (float(np.mean(sizes)) * (dbf.dim * 2 + 4), float(np.mean(sizes)))
    rows = []
    for st in settings:
        rr, nbytes, note = None, db.shape[1] * 4, ""
        if st.method == "patch":
            keep = [all_scales.index(sc) for sc in st.scales]
            rr = build_reranker("patch", top_n=args.top, query_patches=_ScaleView(qf, keep),
                                db_patches=_ScaleView(dbf, keep), query_names=ds.query_images,
                                db_names=ds.db_images, scorer=st.scorer, weights=st.weights)
            nbytes = sum(per_scale[sc][0] for sc in st.scales)
            note = "+".join(f"{per_scale[sc][1]:.0f}" for sc in st.scales) + " patches"
        elif st.method is not None:
            rr = build_reranker(st.method, top_n=args.top, queries=q, db=db)
        res = evaluate_dataset(ds, db, q, ns=(1, 5, 10), rerank=rr, protocol="netvlad")
        row = {"label": st.label, "recall": res["recall"], "by": _by_condition(res),
               "ms": 1000 * rr.seconds / res["num_queries"] if rr is not None else 0.0,
               "bytes": nbytes, "note": note}
        rows.append(row)
        print(_fmt_row(row), flush=True)
    qf.close()
    dbf.close()
    return rows


def _by_condition(res) -> dict[str, dict[int, float]]:
    if "conditions" not in res:
        return {}
    labels = np.array(res["conditions"])
    hits = res["hits"]
    out = {lab: dict(zip(res["ns"], hits[labels == lab].mean(axis=0))) for lab in dict.fromkeys(labels)}
    hard = np.isin(labels, ["sunset", "night"])
    if hard.any():
        out["sunset+night"] = dict(zip(res["ns"], hits[hard].mean(axis=0)))
    return out


def _fmt_row(row) -> str:
    rec = " ".join(f"{100 * row['recall'][n]:5.1f}" for n in (1, 5, 10))
    by = "  ".join(f"{k} {100 * v[1]:.1f}" for k, v in row["by"].items())
    return (f"{row['label']:<46} R@1/5/10 {rec}  |R@1 {by}| {row['ms']:8.1f} ms/q  "
            f"{row['bytes'] / 1e3:9.1f} kB/img")


def _table(rows, conditions) -> str:
    head = ["setting", "R@1", "R@5", "R@10", *[f"R@1 {c}" for c in conditions], "ms/query", "kB/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"] + (f" ({r['note']})" if r["note"] else "")]
        cells += [f"{100 * r['recall'][n]:.1f}" for n in (1, 5, 10)]
        cells += [f"{100 * r['by'][c][1]:.1f}" if c in r["by"] else "-" for c in conditions]
        cells += [f"{r['ms']:.1f}", f"{r['bytes'] / 1e3:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def town(args, work: Path) -> list[dict]:
    from netvlad.data import load_image
    from netvlad.models import create_model, init_clusters
    from netvlad.synth import SynthConfig, generate_town

    t0 = time.perf_counter()
    # Train/val queries are not used here: only the test area and the training database are rendered.
    synth = SynthConfig.preset(args.size, seed=args.seed, width=args.width, height=args.height,
                               n_queries={**SynthConfig.preset(args.size).n_queries, "train": 1, "val": 1})
    tw = generate_town(work / f"town-{args.size}-{args.width}x{args.height}", synth, progress=False)
    train, test = tw.datasets["train"], tw.datasets["test"]
    print(f"town: {test.num_queries} test queries, {test.num_db} test database images "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    model = create_model("lite0-netvlad")
    rng = np.random.default_rng(0)
    fit_paths = [train.db_paths()[i] for i in sorted(rng.permutation(train.num_db)[:args.cluster_images])]
    init_clusters(model, fit_paths, max_images=args.cluster_images, loader=load_image, progress=False)
    dim = _fit_patch_whitening(model, fit_paths, args.speed_size, args.whiten_dim, per_image=args.pca_patches)
    print(f"model ready ({time.perf_counter() - t0:.0f} s), {dim}-D whitening", flush=True)
    rows = _run_settings(test, model, work, _settings(args), args)
    print(_table(rows, ["day", "overcast", "sunset", "night", "sunset+night"]))
    return rows


def campus(args, work: Path) -> list[dict]:
    from netvlad.data import PlaceDataset, load_image
    from netvlad.demo import campus_walk
    from netvlad.models import create_model, init_clusters

    c = campus_walk()
    model = create_model("lite0-netvlad")
    init_clusters(model, c.db_paths, loader=load_image, progress=False)
    dim = _fit_patch_whitening(model, c.db_paths, args.speed_size, args.whiten_dim, per_image=100)
    print(f"campus: 20 database + 5 query photos; whitening {dim}-D fitted on database patches", flush=True)
    ds = _campus_dataset(PlaceDataset, c, c.db_paths[0].parent)
    rows = _run_settings(ds, model, work / "campus", _settings(args), args)
    print(_table(rows, []))
    return rows


def _fit_patch_whitening(model, paths, size: int, dim: int, per_image: int = 100) -> int:
    """PCA-whitening fitted on patch descriptors of ``paths``, up to ``per_image`` per image (seed 0).

    Why patches: the campus has 20 database photos, too few for a 512-D PCA of global descriptors,
    but thousands of patches; on the town it spares a pass over the training database."""
    import torch

    from netvlad.data import load_image
    from netvlad.extract import patch_descriptors
    from netvlad.whitening import apply_whitening, fit_pca

    rng = np.random.default_rng(0)
    samples = []
    with torch.inference_mode():
        for p in paths:
            x = model.preprocess.apply(load_image(p))[None]
            d = patch_descriptors(model, model.backbone(x), size, 1)[0][0].numpy()
            samples.append(d[rng.permutation(len(d))[:per_image]])
    x = np.concatenate(samples)
    dim = int(min(dim, len(x) - 1))
    apply_whitening(model, fit_pca(x, dim), dim)
    return dim


def _campus_dataset(PlaceDataset, c, root: Path):
    """The campus walk as a PlaceDataset whose positives are the demo's (frames within 1)."""
    # Frames on a line 10 m apart put exactly the frames within 1 inside a 15 m radius.
    db_utm = np.c_[10.0 * c.db_frames, np.zeros(len(c.db_frames))]
    q_utm = np.c_[10.0 * c.query_frames, np.zeros(len(c.query_frames))]
    return PlaceDataset(name="campus", db_root=root, query_root=root / "holdout",
                        db_images=[p.name for p in c.db_paths], query_images=[p.name for p in c.query_paths],
                        db_utm=db_utm, query_utm=q_utm, pos_radius=15.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="medium", choices=["tiny", "small", "medium", "large"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--whiten-dim", type=int, default=512,
                    help="PCA-whitening dim (Patch-NetVLAD speed: 512)")
    ap.add_argument("--cluster-images", type=int, default=200,
                    help="training-database images for the clusters and the PCA (default 200)")
    ap.add_argument("--pca-patches", type=int, default=10, help="patches per image for the PCA fit")
    ap.add_argument("--top", type=int, default=100, help="candidates re-ranked (default 100)")
    ap.add_argument("--speed-size", type=int, default=2, help="patch side in cells, speed setting")
    ap.add_argument("--multi-sizes", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--multi-weights", type=float, nargs="+", default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--no-campus", action="store_true")
    ap.add_argument("--no-town", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny town, smaller whitening (smoke run)")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.whiten_dim, args.cluster_images = "tiny", 64, 30
    import torch

    torch.set_num_threads(2)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="netvlad-rerank-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    try:
        if not args.no_town:
            town(args, work)
        if not args.no_campus:
            (work / "campus").mkdir(exist_ok=True)
            campus(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"total {time.perf_counter() - t0:.0f} s; load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
