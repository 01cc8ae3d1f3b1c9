"""Feature files read to be compared: database and query files of one evaluation, the parts of one
index's database. The checks that make a comparison meaningful live here: every row named (a
``.bin``/``.npy`` file by an image list), one dimension, one model.

Error messages name the caller's option for each input (``names_option``, ``allow_option``, ...):
``netvlad evaluate`` passes its flags, a Python caller gets the keyword arguments' names.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from netvlad.io.peers import (
    NAMELESS_SOURCES,
    GlobalFeatures,
    align_features,
    feature_file_kind,
    load_global_features,
    read_image_list,
)

log = logging.getLogger(__name__)

__all__ = [
    "FeaturePair",
    "MixedModelsError",
    "check_same_model",
    "load_database_features",
    "load_db_and_queries",
    "load_named_features",
]


class MixedModelsError(ValueError):
    """Database and query features written by two different models (not comparable)."""


def load_named_features(path: str | Path, names_file: str | Path | None = None, *, dim: int | None = None,
                        default_names: Sequence[str] | None = None, default_from: str = "",
                        names_option: str = "names_file") -> GlobalFeatures:
    """:func:`load_global_features` with the row names of a nameless file (``.bin``/``.npy``) taken
    from ``names_file``, else — for a MATLAB ``.bin`` only, which MATLAB writes in dataset order —
    from ``default_names``.

    Args:
        path: the feature file (any supported format).
        names_file: an image list naming the rows of a ``.bin``/``.npy`` file, one name per line.
        dim: descriptor dimension (required for a ``.bin`` file, checked for the others).
        default_names: the rows of a ``.bin`` file without ``names_file`` (a dataset's images).
        default_from: whose names ``default_names`` are, for messages ("the dataset's query list").
        names_option: how the caller spells ``names_file``, for messages (``--db-names``).

    Returns:
        :class:`GlobalFeatures` (``names_from``: "the file", the list's path or ``default_from``).

    Raises:
        ValueError: ``names_file`` given for a file that stores its names, or no names for a
            nameless file; FeatureFileError (a ValueError) as :func:`load_global_features`.
    """
    path = Path(path)
    kind = feature_file_kind(path)
    if kind not in NAMELESS_SOURCES:
        if names_file is not None:
            raise ValueError(f"{names_option} names the rows of a .bin or .npy file; {path} stores its own "
                             "names")
        return load_global_features(path, dim=dim)
    if names_file is not None:
        names, names_from = read_image_list(names_file), str(names_file)
    elif kind == "matlab-bin" and default_names is not None:
        names, names_from = list(default_names), default_from
        log.info("%s: rows taken as %s, in order", path, default_from)
    else:
        where = " (the --dataset_file_path given to Patch-NetVLAD's feature_extract.py)" \
            if kind == "patchnetvlad-npy" else ""
        raise ValueError(f"{path}: a {'.npy' if where else '.bin'} file stores no image names: give "
                         f"{names_option} FILE, the image list its rows follow{where}, one name per line")
    return load_global_features(path, dim=dim, names=names, names_from=names_from)


def check_same_model(db_path: str | Path, db_fp: str | None, q_path: str | Path, q_fp: str | None,
                     allow_mixed: bool = False, allow_option: str = "allow_mixed=True") -> None:
    """Refuse database and query features from two models: their descriptors live in different spaces.

    A file without a fingerprint (hloc, MATLAB ``.bin``, or written without one) cannot be checked:
    one warning says so. With ``allow_mixed`` a mismatch is a warning instead of an error.

    Args:
        db_path, q_path: the two files; db_fp, q_fp: the model fingerprints they record (or None).
        allow_mixed: compare files of two models anyway.
        allow_option: how the caller spells ``allow_mixed``, for messages (``--allow-mixed-models``).

    Raises:
        MixedModelsError (a ValueError): two fingerprints, without ``allow_mixed``; the message
            names both.
    """
    unknown = [str(p) for p, fp in ((db_path, db_fp), (q_path, q_fp)) if not fp]
    if unknown:
        log.warning(
            "%s: no model fingerprint (an hloc or MATLAB file, or one written without it): cannot "
            "check that database and query descriptors come from the same model",
            " and ".join(dict.fromkeys(unknown)),
        )
        return
    if db_fp == q_fp:
        return
    msg = (
        f"{db_path} (model fingerprint {db_fp[:16]}) and {q_path} (model fingerprint {q_fp[:16]}) "
        "were written by different models: their descriptors are not comparable"
    )
    if not allow_mixed:
        raise MixedModelsError(f"{msg}; pass {allow_option} to compare them anyway")
    log.warning("%s; comparing them anyway (%s)", msg, allow_option)


@dataclasses.dataclass(frozen=True, eq=False)
class FeaturePair:
    """Database and query features of one evaluation, rows in the dataset's order.

    Attributes:
        db: ds.num_db × D float32; queries: ds.num_queries × D float32 (NaN rows: failed images).
        db_features, query_features: the files as read (paths, fingerprints, attributes); the
            same object twice when the queries were read from the database file.
    """

    db: np.ndarray
    queries: np.ndarray
    db_features: GlobalFeatures
    query_features: GlobalFeatures


def load_db_and_queries(ds, db_path: str | Path, query_path: str | Path | None = None, *,
                        db_names: str | Path | None = None, query_names: str | Path | None = None,
                        dim: int | None = None, crop_dim: int | None = None, allow_mixed: bool = False,
                        options: dict[str, str] | None = None) -> FeaturePair:
    """Read the database and query feature files of an evaluation on ``ds`` and check they compare.

    Args:
        ds: a ``PlaceDataset`` (duck-typed: ``db_images`` and ``query_images``).
        db_path: the database feature file; query_path: the queries' (None: looked up in db_path).
        db_names, query_names: image lists naming the rows of ``.bin``/``.npy`` files (default for a
            ``.bin``: the dataset's database / query images, in order).
        dim: descriptor dimension of ``.bin`` files.
        crop_dim: the dimensions the evaluation will keep: more than the database file's is refused
            before the query file is read.
        allow_mixed: compare files written by two models (a warning instead of an error).
        options: how the caller spells "db_names", "query_names", "query_path", "crop_dim",
            "allow_mixed" in messages (``netvlad evaluate``: its flags).

    Returns:
        :class:`FeaturePair`.

    Raises:
        ValueError: rows that cannot be named, names missing from a file, two dimensions,
            MixedModelsError (two models).
    """
    opt = {"db_names": "db_names", "query_names": "query_names", "query_path": "query_path",
           "crop_dim": "crop_dim", "allow_mixed": "allow_mixed=True", **(options or {})}
    db_f = load_named_features(db_path, db_names, dim=dim, default_names=list(ds.db_images),
                               default_from="the dataset's database list", names_option=opt["db_names"])
    db = align_features(db_f, ds.db_images, "database")
    if crop_dim is not None and crop_dim > db.shape[1]:
        raise ValueError(f"{opt['crop_dim']} {crop_dim} exceeds the {db.shape[1]}-D descriptors of {db_path}")
    if query_path is None and db_f.names_from != "the file" and db_names is None:
        raise ValueError(f"{db_path}: its rows are the dataset's database images only; give the query "
                         f"features with {opt['query_path']}")
    if query_path is not None:
        q_f = load_named_features(query_path, query_names, dim=dim, default_names=list(ds.query_images),
                                  default_from="the dataset's query list", names_option=opt["query_names"])
    elif query_names is not None:
        raise ValueError(f"{opt['query_names']} names the rows of a {opt['query_path']} file; give "
                         f"{opt['query_path']} too")
    else:
        q_f = db_f
    q = align_features(q_f, ds.query_images, "query")
    if db.shape[1] != q.shape[1]:
        raise ValueError(f"{db_path} has {db.shape[1]}-D descriptors but {query_path} has {q.shape[1]}-D")
    if query_path is not None and Path(query_path).resolve() != Path(db_path).resolve():
        check_same_model(db_path, db_f.fingerprint, query_path, q_f.fingerprint, allow_mixed,
                         opt["allow_mixed"])
    return FeaturePair(db, q, db_f, q_f)


def load_database_features(paths: Sequence[str | Path], names_file: str | Path | None = None, *,
                           dim: int | None = None, default_names: Sequence[str] | None = None,
                           default_from: str = "the dataset's database list",
                           names_option: str = "names_file") -> GlobalFeatures:
    """Several feature files (e.g. the shards of one extraction) as one database, rows in the order given.

    Args:
        paths: the files, in order; all from one model (same dimension and fingerprint).
        names_file, dim, default_names, default_from, names_option: as :func:`load_named_features`
            (``names_file`` with one file only).

    Returns:
        one :class:`GlobalFeatures` (the first file's path, fingerprint and attributes).

    Raises:
        ValueError: ``names_file`` with several files, or files from two models (dimension or
            fingerprint named).
    """
    if len(paths) > 1 and names_file is not None:
        raise ValueError(f"{names_option} names the rows of one .bin/.npy file; give one file with it")
    parts = [load_named_features(f, names_file, dim=dim, default_names=default_names,
                                 default_from=default_from, names_option=names_option) for f in paths]
    for p in parts[1:]:
        if p.dim != parts[0].dim or (p.fingerprint and parts[0].fingerprint
                                     and p.fingerprint != parts[0].fingerprint):
            raise ValueError(f"{p.path}: not from the model of {parts[0].path} (dimension {p.dim} vs "
                             f"{parts[0].dim}, fingerprint {str(p.fingerprint)[:12]} vs "
                             f"{str(parts[0].fingerprint)[:12]})")
    if len(parts) == 1:
        return parts[0]
    return dataclasses.replace(parts[0], names=[n for p in parts for n in p.names],
                               descriptors=np.concatenate([p.descriptors for p in parts]))
