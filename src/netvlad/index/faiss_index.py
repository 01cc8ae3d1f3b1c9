"""Search indexes behind one interface (exact, FAISS flat / IVF-flat / IVF-PQ + re-rank / HNSW),
saved as a directory with image names, coordinates and metadata. FAISS is imported lazily."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from netvlad._atomic import exchange, make_temp_dir, stale_temp_dirs
from netvlad._outputs import check_output_dir, disk_full_error, folder_holds_only, is_disk_full
from netvlad.index.exact import _check_finite, check_unit_norm, topk

log = logging.getLogger(__name__)

__all__ = ["INDEX_KINDS", "IndexConfig", "SearchIndex", "build_index", "is_index_dir", "load_index"]

INDEX_KINDS = ("exact", "flat", "ivfflat", "ivfpq", "hnsw")
INDEX_FORMAT = "netvlad-index"
INDEX_VERSION = 1
_INDEX_FILES = ("meta.json", "data.npz", "index.faiss",
                # an on-disk index (netvlad.index.ondisk) adds these
                "lists.ivfdata", "names.npy", "utm.npy", "vectors.npy")


def is_index_dir(path: str | Path) -> bool:
    """True for a folder :meth:`SearchIndex.save` wrote: a netvlad-index ``meta.json`` and nothing
    but the index's own files (so replacing it can never delete anything else)."""
    path = Path(path)
    meta = path / "meta.json"
    if not meta.is_file() or not folder_holds_only(path, _INDEX_FILES):
        return False
    try:
        return json.loads(meta.read_text()).get("format") == INDEX_FORMAT
    except (ValueError, OSError, AttributeError):
        return False


@dataclass
class IndexConfig:
    """Parameters of :func:`build_index` (exact up to ~100k vectors, IVF beyond: benchmarks/search.py).

    Attributes:
        kind: one of ``INDEX_KINDS``.
        nlist: IVF cells (None: about 4·√N, at most 1024 and at most N/39 so that k-means has
            the 39 training points per centroid FAISS asks for).
        nprobe: IVF cells visited per query (32–128 keep ≥ 0.95 of exact R@1 at 1M).
        pq_m: PQ sub-quantisers (must divide the dimension); 32 at 256-D.
        pq_bits: bits per PQ code.
        refine_k_factor: IVF-PQ short-list size ÷ k re-ranked exactly (PQ alone loses R@1 on
            near-duplicate views). benchmarks/search.py at 100k×256-D: 32 keeps 98.9% of exact R@1,
            128 keeps 99.9%; the re-rank costs little next to the PQ scan.
        hnsw_m: HNSW graph degree.
        ef_construction / ef_search: HNSW beam widths.
        train_size: at most this many vectors train the IVF/PQ quantisers.
        seed: sampling of the training vectors.
    """

    kind: str = "flat"
    nlist: int | None = None
    nprobe: int = 32
    pq_m: int = 32
    pq_bits: int = 8
    refine_k_factor: int = 128
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    train_size: int = 100_000
    seed: int = 43


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a declared dependency
        raise ImportError("FAISS indexes need the faiss-cpu package (pip install faiss-cpu)") from exc
    return faiss


@dataclass
class SearchIndex:
    """A searchable database of descriptors with the image names and coordinates it came from.

    Attributes:
        kind: index kind (``INDEX_KINDS``).
        dim: descriptor dimension.
        names: database image names (N), or None.
        utm: N×2 float64 coordinates (easting, northing), or None.
        meta: free metadata (model fingerprint / reference, zone, ...), JSON-serialisable.
        params: the :class:`IndexConfig` fields used to build it.
    """

    kind: str
    dim: int
    names: list[str] | None = None
    utm: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    _faiss_index: Any = None
    _desc: np.ndarray | None = None

    @property
    def ntotal(self) -> int:
        """Number of database vectors."""
        return int(self._desc.shape[0]) if self._faiss_index is None else int(self._faiss_index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k best database vectors per query by inner product.

        Args:
            queries: Q×D (or D) array, L2-normalised like the database.
            k: neighbours (clamped to the database size).

        Returns:
            (scores Q×k float32, descending; ids Q×k int64).
        """
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"query dimension {q.shape[1]} does not match the index dimension {self.dim}")
        _check_finite(q, "query")  # FAISS would return arbitrary neighbours for a NaN query
        k = min(int(k), self.ntotal)
        if self._faiss_index is None:
            return topk(q, self._desc, k)
        scores, ids = self._faiss_index.search(q, k)
        return scores.astype(np.float32), ids.astype(np.int64)

    def estimated_bytes(self) -> int:
        """About how many bytes :meth:`save` writes (for the full-disk message)."""
        n, d = self.ntotal, self.dim
        per_vector = {"ivfpq": 4 * d + int(self.params.get("pq_m", 32)) + 8,
                      "hnsw": 4 * d + 8 * int(self.params.get("hnsw_m", 32))}.get(self.kind, 4 * d + 8)
        names = sum(len(x) for x in self.names) * 4 if self.names is not None else 0
        return n * per_vector + names + (16 * n if self.utm is not None else 0)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the index as a directory (``meta.json``, ``data.npz``, ``index.faiss``), atomically.

        The directory is assembled under a temporary name next to ``path`` and renamed into place,
        so a reader never sees a partial index; temporaries of killed saves are removed.

        Args:
            path: the index folder. An existing one is replaced only when it is an index folder
                this method wrote (see :func:`is_index_dir`) or empty; a folder holding anything
                else is never replaced.
            overwrite: also replace a *file* at ``path``.

        Raises:
            OutputError (a ValueError): ``path`` holds something else.
            DiskFullError (an OSError): no space left (``path`` is untouched).
        """
        path = Path(path)
        check_output_dir(path, is_ours=is_index_dir, kind="netvlad index folder", overwrite=overwrite,
                         replaces_file=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in stale_temp_dirs(path):
            shutil.rmtree(old, ignore_errors=True)
        tmp = make_temp_dir(path)
        try:
            self._write_files(tmp)
            _replace(path, tmp)
        except (OSError, RuntimeError) as exc:
            if is_disk_full(exc):
                raise disk_full_error(path, self.estimated_bytes(), how="the index's size") from exc
            raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    def _write_files(self, tmp: Path) -> None:
        meta = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "ntotal": self.ntotal,
            "params": self.params,
            "meta": self.meta,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        arrays: dict[str, np.ndarray] = {}
        if self.names is not None:
            arrays["names"] = np.asarray(self.names, dtype=np.str_)
        if self.utm is not None:
            arrays["utm"] = np.asarray(self.utm, dtype=np.float64)
        if self._desc is not None:
            arrays["descriptors"] = self._desc
        with open(tmp / "data.npz", "wb") as f:
            np.savez(f, **arrays)
        if self._faiss_index is not None:
            _faiss().write_index(self._faiss_index, str(tmp / "index.faiss"))


def _replace(path: Path, tmp: Path) -> None:
    """Rename the finished folder ``tmp`` to ``path``, replacing what is there (a folder or file)."""
    old = None
    if os.path.lexists(path):
        if exchange(tmp, path):  # atomic: readers see the old index or the new one, never none
            old = tmp
        else:
            # The old index goes aside under a name of the temp-folder pattern, so that if this
            # process dies before removing it, the next save does.
            old = make_temp_dir(path)
            os.rmdir(old)
            os.replace(path, old)
    if old is not tmp:
        os.replace(tmp, path)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _apply_search_params(index: Any, kind: str, cfg: IndexConfig) -> None:
    faiss = _faiss()
    if kind in ("ivfflat", "ivfpq"):
        faiss.extract_index_ivf(index).nprobe = int(cfg.nprobe)
    if kind == "ivfpq":
        index.k_factor = float(cfg.refine_k_factor)
    if kind == "hnsw":
        index.hnsw.efSearch = int(cfg.ef_search)


def build_index(
    desc: np.ndarray,
    kind: str = "flat",
    names: list[str] | None = None,
    utm: np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
    **params: Any,
) -> SearchIndex:
    """Build a search index over database descriptors.

    Kinds: "exact" (our blockwise :func:`topk`, no FAISS), "flat" (faiss
    IndexFlatIP, exact), "ivfflat" (IVF + nprobe), "ivfpq" (IVF-PQ with an exact
    IndexRefineFlat re-rank of ``refine_k_factor``·k candidates), "hnsw" (IndexHNSWFlat).
    All rank by inner product, i.e. by L2 on L2-normalised descriptors; rows that are not
    unit-norm (beyond float16 rounding) are refused, since there the two orders differ.

    Args:
        desc: N×D database descriptors (L2-normalised, finite: NaN rows of images that failed
            extraction are refused; ``netvlad index build`` drops them with a warning).
        kind: index kind.
        names: N database image names (stored with the index).
        utm: N×2 coordinates (stored with the index).
        meta: JSON-serialisable metadata (model fingerprint/reference, zone).
        **params: :class:`IndexConfig` fields (nlist, nprobe, pq_m, ...).

    Returns:
        A :class:`SearchIndex`.
    """
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose from {', '.join(INDEX_KINDS)}")
    unknown = set(params) - set(IndexConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown index parameters: {', '.join(sorted(unknown))}")
    cfg = IndexConfig(kind=kind, **params)
    x = np.ascontiguousarray(desc, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"descriptors must be a non-empty N×D array, got shape {x.shape}")
    n, d = x.shape
    _check_finite(x, "database")
    if names is not None and len(names) != n:
        raise ValueError(f"{len(names)} names for {n} descriptors")
    if utm is not None:
        utm = np.asarray(utm, dtype=np.float64)
        if utm.shape != (n, 2):
            raise ValueError(f"utm must be {n}×2, got shape {utm.shape}")
    check_unit_norm(x, "database")
    out = SearchIndex(
        kind=kind, dim=d, names=list(names) if names is not None else None, utm=utm, meta=dict(meta or {})
    )
    if kind == "exact":
        out._desc = x
        out.params = {"kind": kind}
        return out

    faiss = _faiss()
    nlist = cfg.nlist or int(max(1, min(1024, round(4 * np.sqrt(n)), n // 39)))
    nlist = min(nlist, n)
    cfg.nlist = nlist
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(cfg.hnsw_m), ip)
        index.hnsw.efConstruction = int(cfg.ef_construction)
    elif kind == "ivfflat":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, ip)
    else:
        if d % cfg.pq_m:
            raise ValueError(f"pq_m={cfg.pq_m} must divide the dimension {d}")
        base = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, int(cfg.pq_m), int(cfg.pq_bits), ip)
        index = faiss.IndexRefineFlat(base)
    if not index.is_trained:
        rng = np.random.default_rng(cfg.seed)
        sample = x if n <= cfg.train_size else x[np.sort(rng.choice(n, cfg.train_size, replace=False))]
        index.train(sample)
    index.add(x)
    _apply_search_params(index, kind, cfg)
    out._faiss_index = index
    out.params = {k: v for k, v in cfg.__dict__.items()}
    return out


def load_index(path: str | Path) -> SearchIndex:
    """Read an index written by :meth:`SearchIndex.save`.

    Raises:
        FileNotFoundError: the directory or one of its files is missing.
        ValueError: not a netvlad index, or an unsupported version.
    """
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path}: not a netvlad index directory (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_path}: invalid JSON ({exc})") from exc
    if meta.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path}: not a netvlad index (format {meta.get('format')!r})")
    if meta.get("version") != INDEX_VERSION:
        raise ValueError(
            f"{path}: index version {meta.get('version')} is not supported (expected {INDEX_VERSION})"
        )
    if meta.get("params", {}).get("ondisk"):
        from netvlad.index.ondisk import load_ondisk_index

        return load_ondisk_index(path, meta)
    with np.load(path / "data.npz", allow_pickle=False) as z:
        names = [str(s) for s in z["names"]] if "names" in z else None
        utm = z["utm"] if "utm" in z else None
        desc = z["descriptors"] if "descriptors" in z else None
    out = SearchIndex(
        kind=meta["kind"],
        dim=int(meta["dim"]),
        names=names,
        utm=utm,
        meta=meta.get("meta", {}),
        params=meta.get("params", {}),
    )
    if out.kind == "exact":
        if desc is None:
            raise ValueError(f"{path}: exact index without descriptors")
        out._desc = desc
    else:
        fpath = path / "index.faiss"
        if not fpath.is_file():
            raise FileNotFoundError(f"{fpath}: missing FAISS index file")
        out._faiss_index = _faiss().read_index(str(fpath))
        fields = IndexConfig.__dataclass_fields__
        _apply_search_params(
            out._faiss_index, out.kind, IndexConfig(**{k: v for k, v in out.params.items() if k in fields})
        )
    if out.ntotal != int(meta.get("ntotal", out.ntotal)):
        raise ValueError(f"{path}: index holds {out.ntotal} vectors, meta.json says {meta['ntotal']}")
    return out
