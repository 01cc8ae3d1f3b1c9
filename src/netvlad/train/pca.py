"""``addPCA`` as a workflow: PCA-whitening learnt on a training set's database images, with the
descriptors and the fit cached so that another dimension reuses them, and an optional choice of
the dimension by validation recall@1."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netvlad._atomic import atomic_write
from netvlad.extract import compute_descriptors
from netvlad.metrics import evaluate_dataset
from netvlad.whitening import (
    DEFAULT_MAX_SAMPLES,
    PCAParams,
    apply_whitening,
    fit_pca,
    sample_indices,
    select_dim,
    variance_kept,
)

#: The paper's pcaDim: every fit keeps at least this many components, so a smaller dim reuses it.
KEEP_COMPONENTS = 4096


@dataclass
class PCAResult:
    """What `add_pca` did.

    Attributes:
        dim: output dimension applied.
        whiten: whitened (True) or plain PCA.
        n_samples: descriptors the fit was learnt on.
        variance_kept: fraction of the variance the kept components hold.
        fit_file: the cached fit (reused by later calls with the same model and dataset).
        scores: ``dim="auto"`` only: {candidate dim: validation recall@1}.
        info: the checkpoint metadata (``save_model(..., extra={"pca": info})``).
    """

    dim: int
    whiten: bool
    n_samples: int
    variance_kept: float
    fit_file: Path
    scores: dict[int, float] | None = None
    info: dict = field(default_factory=dict)


@dataclass
class _Extraction:
    batch_size: int
    device: str
    num_workers: int
    progress: bool


def add_pca(
    model,
    train_ds,
    dim: int | str = KEEP_COMPONENTS,
    *,
    whiten: bool = True,
    max_images: int = DEFAULT_MAX_SAMPLES,
    cache_dir: str | Path = ".",
    val_ds=None,
    batch_size: int = 10,
    device: str = "cpu",
    num_workers: int = 2,
    progress: bool = True,
) -> PCAResult:
    """Append PCA(-whitening) to `model` in place, learnt on ≤ `max_images` database images of
    `train_ds` (seed 43, as ``addPCA``).

    Descriptors and the fit are cached in `cache_dir` under names holding the model's fingerprint
    and the dataset; a fit keeps ≥ 4096 components where it can, so later smaller dims reuse it.

    Args:
        model: a `PlaceModel` without a whitening layer.
        train_ds: the training `PlaceDataset` (its database images).
        dim: output dimension (< the model's), or "auto": the best validation recall@1 among
            4096, 2048, ..., 128 (those the fit can serve) on `val_ds`.

    Returns:
        a `PCAResult`.

    Raises:
        ValueError: a model that already has whitening, a dim out of range, "auto" without
            `val_ds`, a batch size < 1.
    """
    auto = dim == "auto"
    if auto and val_ds is None:
        raise ValueError("--dim auto chooses the dimension by validation recall@1: give --val SPEC")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if model.whitening is not None:
        raise ValueError("the model already has a PCA/whitening layer")
    if not auto and not 1 <= int(dim) < model.out_dim:
        raise ValueError(f"--dim must be in [1, {model.out_dim - 1}] (below the descriptor dimension)")
    ex = _Extraction(batch_size, device, num_workers, progress)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    params, fit_file = _cached_fit(model, train_ds, 1 if auto else int(dim), max_images, cache, ex)
    scores = None
    if auto:
        dim, scores = _auto_dim(model, params, val_ds, whiten, cache, ex)
    apply_whitening(model, params, dim, whiten=whiten)  # logs a warning for a too-large dim
    info = {"dim": dim, "whiten": whiten, "dataset": train_ds.name, "n_samples": params.n_samples,
            "fit": fit_file.name}
    if scores is not None:
        info["val"] = {"dataset": val_ds.name, "recall@1": {str(d): r for d, r in scores.items()}}
    return PCAResult(int(dim), whiten, params.n_samples, variance_kept(params, dim), fit_file, scores, info)


def _cached_fit(
    model, ds, want: int, max_images: int, cache: Path, ex: _Extraction
) -> tuple[PCAParams, Path]:
    """The fit of `cache` when it serves `want` components, else a new one (cached)."""
    idx = sample_indices(ds.num_db, max_images, 43)
    key = f"pca_{model.fingerprint()[:12]}_{ds.name}_{len(idx)}"
    fit_file = cache / f"{key}.npz"
    params = PCAParams.load(fit_file) if fit_file.is_file() else None
    if params is None or params.max_dim < want:
        paths = ds.db_paths()
        desc = cached_descriptors(model, [paths[i] for i in idx], cache / f"{key}_descs.npy", ex)
        keep = min(max(want, KEEP_COMPONENTS), desc.shape[1], desc.shape[0])
        params = fit_pca(desc, dim=max(keep, want), max_samples=None)
        params.save(fit_file)
    return params, fit_file


def cached_descriptors(model, paths: list, cache_file: Path, ex: _Extraction) -> np.ndarray:
    """Descriptors of ``paths`` (N×out_dim), reused from ``cache_file`` (.npy) when its shape matches."""
    if cache_file.is_file():
        desc = np.load(cache_file)
        if desc.shape == (len(paths), model.out_dim):
            return desc
    desc = compute_descriptors(model, paths, batch_size=ex.batch_size, device=ex.device,
                               num_workers=ex.num_workers, progress=ex.progress)
    atomic_write(cache_file, lambda tmp: np.save(tmp, desc), suffix=".tmp.npy")
    return desc


def _auto_dim(
    model, params, val_ds, whiten: bool, cache: Path, ex: _Extraction
) -> tuple[int, dict[int, float]]:
    """``dim="auto"``: the candidate dimension with the best validation recall@1, and every score."""
    key = f"pca_{model.fingerprint()[:12]}_val_{val_ds.name}_{val_ds.num_db}_{val_ds.num_queries}"
    vdb = cached_descriptors(model, val_ds.db_paths(), cache / f"{key}_db.npy", ex)
    vq = cached_descriptors(model, val_ds.query_paths(), cache / f"{key}_q.npy", ex)

    def recall_at_1(db, q) -> float:
        return evaluate_dataset(val_ds, db, q, ns=[1])["recall"][1]

    choice = select_dim(params, vdb, vq, recall_at_1, whiten=whiten)
    return choice.dim, choice.scores
