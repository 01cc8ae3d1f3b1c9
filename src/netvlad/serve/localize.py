"""Photo → place: describe images with the index's model, search, apply a position prior, and
build the result object that ``netvlad query --json`` prints and ``POST /localize`` returns."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from netvlad.rerank.prior import PositionPrior, search_with_prior, utm_latlon

log = logging.getLogger(__name__)


def check_model_for_index(index, model, ref: str, index_path: str | Path) -> None:
    """Refuse a model whose descriptors are not comparable with ``index``'s.

    Raises:
        ValueError: another fingerprint than the one that built the index, or another dimension.
    """
    want = index.meta.get("fingerprint")
    if want and model.fingerprint() != want:
        raise ValueError(
            f"model {ref} (fingerprint {model.fingerprint()[:12]}) is not the one that built "
            f"{index_path} (fingerprint {str(want)[:12]}): its descriptors are not comparable"
        )
    if getattr(model, "out_dim", index.dim) != index.dim:
        raise ValueError(f"model {ref} gives {model.out_dim}-D descriptors, {index_path} holds {index.dim}-D")


def index_max_side(index) -> int | None:
    """The ``max_side`` the database was extracted at (``extract --max-side``, recorded in the
    feature file's preprocessing), for describing queries alike; None: the model's own resize."""
    pre = index.meta.get("preprocessing") or {}
    return (pre["max_side"] or 0) if "max_side" in pre else None


def describe_images(
    model,
    images: Sequence[Path],
    device: str = "cpu",
    batch_size: int = 1,
    max_side: int | None = None,
    skip_bad: bool = False,
    num_workers: int | None = None,
    **image_settings,
) -> np.ndarray:
    """Descriptors of a user's photos: (N, out_dim) float32 (NaN rows for bad images with ``skip_bad``).

    ``image_settings`` are ExtractConfig's ``max_pixels``, ``oversize`` and ``exif_orientation``
    (on unless given: a user's photos are described upright). ``num_workers``: decoding
    processes (None: none for a few images, two from 16 on).

    Raises:
        FileNotFoundError: a missing image. ImageLoadError (a ValueError): an unreadable one.
    """
    from netvlad.extract import compute_descriptors

    for img in images:
        if not Path(img).is_file():
            raise FileNotFoundError(f"{img}: image not found")
    # A handful of images: decoding workers would cost more than they save.
    return compute_descriptors(
        model,
        list(images),
        batch_size=batch_size,
        device=device,
        progress=len(images) > 20,
        num_workers=(0 if len(images) < 16 else 2) if num_workers is None else num_workers,
        max_side=max_side,
        skip_bad=skip_bad,
        **{"exif_orientation": True, **image_settings},
    )


def localize_descriptors(
    index,
    desc: np.ndarray,
    k: int,
    labels: Sequence[str],
    priors: Sequence[PositionPrior | None] | None = None,
) -> list[dict]:
    """Search ``index`` with (Q, D) descriptors; one result object per query.

    Each object: ``image`` (its label), ``results`` (rank, name, id, score, utm, latlon), the
    estimated ``location`` (the best match's UTM; ``location_latlon``), ``zone`` and ``prior``.
    With a prior, ``score`` is the prior-weighted score (see :mod:`netvlad.rerank.prior`).
    """
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    priors = list(priors) if priors is not None else [None] * len(desc)
    scores, ids = search_with_prior(index, desc, k, priors)
    zone = index.meta.get("zone")
    out = []
    for label, s_row, i_row, prior in zip(labels, scores, ids, priors):
        results = [
            _result(index, rank, int(i), float(s), zone) for rank, (s, i) in enumerate(zip(s_row, i_row), 1)
        ]
        best = results[0] if results else None
        out.append(
            {
                "image": str(label),
                "results": results,
                "location": best["utm"] if best else None,
                "location_latlon": best["latlon"] if best else None,
                "zone": zone,
                "prior": None if prior is None else prior.to_dict(zone),
            }
        )
    return out


def _result(index, rank: int, i: int, score: float, zone: str | None) -> dict:
    utm = None if index.utm is None else [float(v) for v in index.utm[i]]
    return {
        "rank": rank,
        "name": index.names[i] if index.names is not None else str(i),
        "id": i,
        "score": score,
        "utm": utm,
        "latlon": utm_latlon(np.array([utm]), zone)[0] if (utm is not None and zone) else None,
    }


def search_images(
    index,
    model,
    images: Sequence[Path],
    k: int,
    device: str = "cpu",
    batch_size: int = 1,
    max_side: int | None = None,
    prior: PositionPrior | None = None,
    labels: Sequence[str] | None = None,
    **image_settings,
) -> list[dict]:
    """Describe ``images`` with ``model`` and localise each in ``index``: the list of result
    objects of :func:`localize_descriptors` (``prior`` applies to every image).

    ``max_side`` is ``ExtractConfig.max_side`` (None: the model's preprocessing, 0: native);
    ``labels`` name the images in the output (default: their paths).
    """
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    desc = describe_images(model, images, device, batch_size, max_side, **image_settings)
    return localize_descriptors(
        index, desc, k, labels if labels is not None else [str(p) for p in images], [prior] * len(images)
    )


def index_summary(index, model_ref: str | None = None) -> dict:
    """What is loaded: model, dimension, size, kind, zone and the database's area (UTM bounds and,
    with a zone, a lat/lon bounding box)."""
    out = {
        "model": model_ref or index.meta.get("model"),
        "fingerprint": index.meta.get("fingerprint"),
        "kind": index.kind,
        "dim": int(index.dim),
        "size": int(index.ntotal),
        "zone": index.meta.get("zone"),
        "has_coordinates": index.utm is not None,
        "area": None,
    }
    if index.utm is not None and len(index.utm):
        lo, hi = np.nanmin(index.utm, axis=0), np.nanmax(index.utm, axis=0)
        area = {
            "utm_min": [float(v) for v in lo],
            "utm_max": [float(v) for v in hi],
            "width_m": float(hi[0] - lo[0]),
            "height_m": float(hi[1] - lo[1]),
        }
        if out["zone"]:
            area["latlon_bounds"] = utm_latlon(np.stack([lo, hi]), out["zone"])
        out["area"] = area
    return out


def db_image_paths(index, db_root: str | Path | None = None,
                   index_path: str | Path = "the index") -> dict[str, Path] | None:
    """Database image name → file, for thumbnails and reports.

    Args:
        index: a loaded index (its ``names`` and ``meta["dataset"]``).
        db_root: the folder the names are relative to; None: where the dataset the index was built
            with (``index build --dataset``) puts them.
        index_path: how warnings name the index.

    Returns:
        A dict over the index's names, or None when neither source is known (or the dataset cannot
        be read: a warning says so).

    Raises:
        NotADirectoryError: ``db_root`` is not a folder.
    """
    if index.names is None:
        return None
    if db_root is not None:
        db_root = Path(db_root)
        if not db_root.is_dir():
            raise NotADirectoryError(f"--db-root {db_root}: not a folder")
        return {n: db_root / n for n in index.names}
    spec = index.meta.get("dataset")
    if not spec:
        return None
    from netvlad.data import load_dataset

    try:
        ds = load_dataset(spec)
    except (OSError, ValueError) as exc:
        log.warning("%s: its dataset %s cannot be read (%s): no database thumbnails; pass --db-root",
                    index_path, spec, exc)
        return None
    return dict(zip(ds.db_images, ds.db_paths()))
