"""Re-rankers built from files: what ``netvlad evaluate --rerank`` and ``netvlad query --rerank`` do.

Patch-NetVLAD needs the patch features ``netvlad extract --patches`` wrote next to each global
feature file (:func:`netvlad.extract.patch_file_for`); αQE, DBA and k-reciprocal need the global
descriptors only. Error messages name the caller's option for each input (``options``): the
commands pass their flags, a Python caller gets the keyword arguments' names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["open_patch_file", "rerank_photo_results", "reranker_from_files"]


def open_patch_file(path: str | Path, option: str = "db_patches"):
    """A patch feature file (:class:`netvlad.io.PatchFile`), refused with the fix when missing.

    Args:
        path: the file; option: how the caller names it, for messages (``--db-patches``).

    Raises:
        FileNotFoundError: no file there (the message says how to write one). FeatureFileError:
            not a patch file.
    """
    from netvlad.io import PatchFile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no patch features there ({option}); write them with `netvlad "
                                f"extract --patches` or name the file with {option}")
    return PatchFile(path)


def reranker_from_files(method: str, *, queries: np.ndarray, db: np.ndarray, query_names: Sequence[str],
                        db_names: Sequence[str], db_features: str | Path,
                        query_features: str | Path | None = None, db_patches: str | Path | None = None,
                        query_patches: str | Path | None = None, top_n: int = 100, scorer: str = "spatial",
                        allow_mixed: bool = False, options: dict[str, str] | None = None):
    """The re-ranker of an evaluation (``netvlad evaluate --rerank``).

    Args:
        method: one of :data:`netvlad.rerank.METHODS`.
        queries, db: Q×D and N×D global descriptors, as they are ranked (cropped).
        query_names, db_names: the names of the query and database rows (patch files are read by name).
        db_features, query_features: the global feature files (query_features default: db_features):
            their patch files are the default ``db_patches`` / ``query_patches``.
        db_patches, query_patches: patch feature files (method "patch").
        top_n: candidates re-ranked per query; scorer: "spatial" or "ransac".
        allow_mixed: accept patch files written by two models.
        options: how the caller spells "db_patches", "query_patches", "allow_mixed" in messages.

    Returns:
        a re-ranker for :func:`netvlad.metrics.evaluate`'s ``rerank``.

    Raises:
        FileNotFoundError: a missing patch file. ValueError: patch files of two models, or names
            missing from a patch file.
    """
    from netvlad.extract import patch_file_for
    from netvlad.rerank import build_reranker

    if method != "patch":
        return build_reranker(method, top_n=top_n, queries=queries, db=db)
    opt = {"db_patches": "db_patches", "query_patches": "query_patches", "allow_mixed": "allow_mixed=True",
           **(options or {})}
    dbf = open_patch_file(db_patches or patch_file_for(db_features), opt["db_patches"])
    qpath = Path(query_patches or patch_file_for(query_features or db_features))
    qf = dbf if qpath == dbf.path else open_patch_file(qpath, opt["query_patches"])
    if dbf.attrs.get("fingerprint") != qf.attrs.get("fingerprint") and not allow_mixed:
        raise ValueError(f"{qf.path} and {dbf.path} were written by different models; pass "
                         f"{opt['allow_mixed']} to compare them anyway")
    return build_reranker("patch", top_n=top_n, query_patches=qf, db_patches=dbf, query_names=query_names,
                          db_names=db_names, scorer=scorer)


def rerank_photo_results(results: list[dict], descriptors: np.ndarray, images: Sequence[str | Path], index,
                         model, method: str, k: int, *, top_n: int = 100,
                         db_features: str | Path | None = None, db_patches: str | Path | None = None,
                         scorer: str = "spatial", device: str = "cpu",
                         max_side: int | None = None, model_label: str = "the index",
                         options: dict[str, str] | None = None, **image_settings) -> list[dict]:
    """Re-rank the search results of a user's photos (``netvlad query --rerank``), keep the first ``k``.

    Args:
        results: one result object per photo (:func:`netvlad.serve.localize_descriptors`), each
            with at least ``top_n`` candidates.
        descriptors: (Q, D) global descriptors of the photos; images: the photo files.
        index: the searched index (its ``names`` are the database rows of the files below).
        model: the model that described the photos (patch features of the photos are computed
            with it, at the database's patch scales).
        method: one of :data:`netvlad.rerank.METHODS`; top_n, scorer: as :func:`build_reranker`.
        db_features: the database's global feature file (methods other than "patch").
        db_patches: the database's patch file (method "patch"), written by ``model``.
        max_side, image_settings: how the photos are read (as for their global descriptors).
        model_label: how messages name the model; options: how the caller spells "db_features" and
            "db_patches" in messages.

    Returns:
        new result objects (:func:`netvlad.rerank.rerank_results`).

    Raises:
        ValueError: the file the method needs not given, or a patch file of another model.
    """
    from netvlad.io import align_features, load_global_features
    from netvlad.rerank import build_reranker, rerank_results

    opt = {"db_features": "db_features", "db_patches": "db_patches", **(options or {})}
    need = "db_patches" if method == "patch" else "db_features"
    if (db_patches if method == "patch" else db_features) is None:
        raise ValueError(f"re-ranking {method!r} needs {opt[need]} FILE")
    if method != "patch":
        db = align_features(load_global_features(db_features), index.names, "database")
        return rerank_results(results, build_reranker(method, top_n=top_n, queries=descriptors, db=db), k)
    dbf = open_patch_file(db_patches, opt["db_patches"])
    try:
        if dbf.attrs.get("fingerprint") != model.fingerprint():
            raise ValueError(f"{db_patches} was written by another model than {model_label}'s")
        store = _photo_patches(model, images, [str(p) for p in images], dbf, device, max_side,
                               image_settings)
        rr = build_reranker("patch", top_n=top_n, query_patches=store, db_patches=dbf,
                            query_names=store.names, db_names=index.names, scorer=scorer)
        return rerank_results(results, rr, k)
    finally:
        dbf.close()


def _photo_patches(model, images, labels: list[str], dbf, device: str, max_side, image_settings: dict):
    """The photos' patch features at the database patch file's scales (whitened alike), in memory."""
    from netvlad.extract import PatchConfig, compute_patches
    from netvlad.rerank.patch import MemoryPatchStore

    whitened = getattr(model, "whitening", None) is not None and dbf.dim < model.out_dim
    cfg = PatchConfig(sizes=tuple(s for s, _ in dbf.scales), strides=tuple(t for _, t in dbf.scales),
                      dim=dbf.dim if whitened else None)
    photos = compute_patches(model, list(images), cfg, device=device, max_side=max_side, num_workers=0,
                             progress=False, **{"exif_orientation": True, **image_settings})
    return MemoryPatchStore(labels, photos, dbf.scales)
