"""Step 2 of the demo: a synthetic town, off-the-shelf vs trained vs trained + whitened recall."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from netvlad.demo.config import DemoConfig
from netvlad.metrics.plot import plot_recall_curves


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
