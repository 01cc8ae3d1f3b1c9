"""Feature files → a saved index (``netvlad index build``): in memory, or on disk beyond RAM.

The index carries what a later query needs: the database names, their coordinates (from a
dataset), and ``meta`` (model fingerprint and reference, UTM zone, the files and dataset it came
from, the extraction's preprocessing). Rows of images that failed extraction (NaN) are left out.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["IndexBuild", "build_index_from_files", "build_ondisk_index_from_files", "dataset_coordinates",
           "index_meta"]


@dataclasses.dataclass
class IndexBuild:
    """What an index build wrote.

    Attributes:
        index: the saved index (``SearchIndex`` or ``OnDiskIndex``); path: its folder.
        kind: its kind; coordinates: whether it holds the database coordinates.
        model: the model reference recorded for ``netvlad query`` (None: none known).
        left_out: rows with NaN descriptors (images that failed extraction) not indexed.
    """

    index: Any
    path: Path
    kind: str
    coordinates: bool
    model: str | None
    left_out: int


def dataset_coordinates(ds, names: Sequence[str], where: str = "the dataset") -> np.ndarray:
    """UTM coordinates of database images by name.

    Args:
        ds: a ``PlaceDataset`` (duck-typed: ``db_images``, ``db_utm``); names: the images wanted.
        where: how messages name the dataset (its SPEC).

    Returns:
        len(names)×2 float64 eastings and northings.

    Raises:
        ValueError: names that are not database images of ``ds`` (counted, the first five named).
    """
    pos = {n: i for i, n in enumerate(ds.db_images)}
    missing = [n for n in names if n not in pos]
    if missing:
        raise ValueError(f"{where}: {len(missing)} of the {len(names)} feature-file images are not database "
                         f"images of the dataset, e.g. {', '.join(missing[:5])}")
    return np.asarray(ds.db_utm, dtype=np.float64)[[pos[n] for n in names]]


def index_meta(features: Sequence[str | Path], fingerprint: str | None, attrs: dict, *,
               zone: str | None = None, dataset: str | None = None, model=None, model_ref: str | None = None,
               model_label: str = "the model") -> dict:
    """The ``meta`` an index built from ``features`` records.

    Args:
        features: the feature files; fingerprint, attrs: the first one's (attributes of our files).
        zone: the coordinates' UTM zone; dataset: the dataset SPEC they came from.
        model: the model that computed the features (its fingerprint must match, and is recorded);
        model_ref: how ``netvlad query`` finds it (default: the ``model_ref`` the file records).
        model_label: how messages name ``model``.

    Raises:
        ValueError: ``model`` did not produce the features (fingerprints named).
    """
    meta = {
        "fingerprint": fingerprint,
        "model": model_ref or attrs.get("model_ref"),
        "zone": zone,
        "features": str(features[0]) if len(features) == 1 else [str(f) for f in features],
        "dataset": dataset,
        "preprocessing": attrs.get("preprocessing"),
    }
    if model is not None:
        fp = model.fingerprint()
        if meta["fingerprint"] and fp != meta["fingerprint"]:
            raise ValueError(f"{model_label} (fingerprint {fp[:12]}) did not produce {features[0]} "
                             f"(fingerprint {str(meta['fingerprint'])[:12]})")
        meta["fingerprint"] = fp
    return meta


def build_index_from_files(features: Sequence[str | Path], out: str | Path, kind: str = "flat", *,
                           names_file: str | Path | None = None, dim: int | None = None, dataset=None,
                           dataset_spec: str | None = None, model=None, model_ref: str | None = None,
                           overwrite: bool = False, options: dict[str, str] | None = None,
                           **params) -> IndexBuild:
    """Build an index in memory from feature files (one database, rows in the order given) and save it.

    Args:
        features: the files (any supported format; several: shards of one extraction).
        out: the index folder (an existing one is replaced only if it is a netvlad index).
        kind: one of :data:`netvlad.index.INDEX_KINDS`.
        names_file, dim: what a ``.bin``/``.npy`` file needs (:func:`netvlad.io.load_named_features`;
            ``dim`` defaults to ``model``'s out_dim); a ``.bin`` without names_file follows
            ``dataset``'s database images.
        dataset: a ``PlaceDataset`` whose database coordinates are attached; dataset_spec: its SPEC.
        model, model_ref: as :func:`index_meta`.
        overwrite: replace a file at ``out``.
        options: how the caller spells "names_file" and "model" in messages.
        params: :class:`IndexConfig` fields (ignored by kind "exact").

    Returns:
        :class:`IndexBuild`.

    Raises:
        ValueError: unreadable or inconsistent files, every row NaN, images missing from the
            dataset, a model that did not produce the features, parameters the kind refuses.
    """
    from netvlad.index.faiss_index import build_index
    from netvlad.io import load_database_features

    opt = {"names_file": "names_file", "model": "the model", **(options or {})}
    if dim is None and model is not None:
        dim = int(model.out_dim)
    feats = load_database_features(
        features, names_file, dim=dim, default_names=None if dataset is None else list(dataset.db_images),
        default_from="the --dataset's database list", names_option=opt["names_file"])
    kept, dropped = feats.finite()
    if not len(kept):
        raise ValueError(f"{features[0]}: all {len(feats)} descriptors are NaN (images that failed "
                         "extraction)")
    if dropped:
        log.warning("%s: %d NaN descriptor(s) (images that failed extraction) left out of the index: %s",
                    " ".join(map(str, features)), len(dropped),
                    ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""))
    utm = None if dataset is None else dataset_coordinates(dataset, kept.names, dataset_spec or "the dataset")
    meta = index_meta(features, feats.fingerprint, feats.attrs, zone=getattr(dataset, "zone", None),
                      dataset=dataset_spec, model=model, model_ref=model_ref, model_label=opt["model"])
    try:
        index = build_index(kept.descriptors, kind, names=kept.names, utm=utm, meta=meta,
                            **({} if kind == "exact" else params))
    except ValueError as exc:
        raise ValueError(f"{features[0]}: {exc}") from exc
    index.save(out, overwrite=overwrite)
    return IndexBuild(index, Path(out), kind, utm is not None, meta["model"], len(dropped))


def build_ondisk_index_from_files(features: Sequence[str | Path], out: str | Path, kind: str = "ivfpq", *,
                                  dataset=None, dataset_spec: str | None = None, model=None,
                                  model_ref: str | None = None, overwrite: bool = False,
                                  model_label: str = "the model", **params) -> IndexBuild:
    """Build an on-disk IVF index (:func:`netvlad.index.build_ondisk_index`) from netvlad feature
    files read a block at a time: for databases beyond RAM.

    Args:
        features: netvlad feature files (``netvlad extract``'s HDF5), one database in the order given.
        out: the index folder; kind: "ivfflat" or "ivfpq".
        dataset, dataset_spec, model, model_ref, overwrite: as :func:`build_index_from_files`.
        model_label: how messages name ``model``.
        params: :class:`IndexConfig` fields (nlist, nprobe, pq_m, refine_k_factor, train_size, ...).

    Returns:
        :class:`IndexBuild` (re-rank vectors stored float16 when every file is float16).

    Raises:
        ValueError: a file of another format, files of two models, images missing from the
            dataset, parameters the kind refuses.
    """
    from netvlad import io
    from netvlad.index.ondisk_build import build_ondisk_index

    for f in features:
        if io.feature_file_kind(f) != "netvlad":
            raise ValueError(f"{f}: an on-disk index is built from netvlad feature files (netvlad extract's "
                             ".h5) only")
    sources = io.open_feature_rows(features)
    try:
        attrs = sources[0].attrs
        bad = sum(len(s.attrs.get("bad_images", [])) for s in sources)
        meta = index_meta(features, attrs.get("fingerprint"), attrs, zone=getattr(dataset, "zone", None),
                          dataset=dataset_spec, model=model, model_ref=model_ref, model_label=model_label)
        coords = None if dataset is None else \
            (lambda names: dataset_coordinates(dataset, names, dataset_spec or "the dataset"))
        dtype = "float16" if all(s.dtype == "float16" for s in sources) else "float32"
        try:
            index = build_ondisk_index(sources, out, kind, num_finite=sum(map(len, sources)) - bad,
                                       coordinates=coords, meta=meta, vectors_dtype=dtype,
                                       overwrite=overwrite, **params)
        except ValueError as exc:
            raise ValueError(f"{features[0]}{' ...' if len(features) > 1 else ''}: {exc}") from exc
    finally:
        for s in sources:
            s.close()
    return IndexBuild(index, Path(out), kind, coords is not None, meta["model"], bad)
