"""IVF indexes larger than RAM: built from several sources a block at a time, inverted lists on disk.

Why: a city map is millions of descriptors (10 M × 256-D float32 is 10 GB). Building goes
through FAISS's own machinery for this (``faiss.contrib.ondisk.merge_ondisk``):

1. one pass over the sources draws the training sample (the same rows :func:`build_index` would
   draw from the concatenated finite rows) and checks every row;
2. the coarse quantizer (and the PQ) are trained on that sample only;
3. a second pass adds the rows source by source into an in-memory IVF that is written out as a
   temporary shard whenever it holds ``flush_bytes``;
4. the shards' inverted lists are merged into one ``lists.ivfdata`` file
   (``faiss.OnDiskInvertedLists``), which a search memory-maps: a query touches only the lists
   it probes.

IVF-PQ is re-ranked exactly as :func:`build_index`'s ``IndexRefineFlat`` does, but from the
vectors kept on disk (``vectors.npy``, memory-mapped, in the sources' dtype) instead of a copy in
RAM. Names and coordinates are memory-mapped too (``names.npy``, ``utm.npy``), so opening the
index costs neither time nor memory in proportion to its size. The folder is assembled under a
temporary name and renamed into place, like :meth:`SearchIndex.save`; a killed build leaves only a
temporary folder that the next build removes.

Peak memory: the training sample (``train_size`` × D × 4 bytes), one block of rows, and the
in-memory IVF up to ``flush_bytes``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from netvlad._atomic import make_temp_dir, stale_temp_dirs
from netvlad._outputs import check_output_dir, disk_full_error, is_disk_full
from netvlad.index.exact import _check_finite, check_unit_norm
from netvlad.index.faiss_index import (
    INDEX_FORMAT,
    INDEX_VERSION,
    IndexConfig,
    SearchIndex,
    _faiss,
    _replace,
    is_index_dir,
)

log = logging.getLogger(__name__)

__all__ = ["ONDISK_KINDS", "OnDiskIndex", "RowSource", "build_ondisk_index", "load_ondisk_index"]

#: Index kinds that can keep their inverted lists on disk.
ONDISK_KINDS = ("ivfflat", "ivfpq")
LISTS_FILE, NAMES_FILE, UTM_FILE, VECTORS_FILE = "lists.ivfdata", "names.npy", "utm.npy", "vectors.npy"


class RowSource(Protocol):
    """What the builder reads: N rows of D-dimensional descriptors, a block at a time
    (:class:`netvlad.io.FeatureRows` is one)."""

    dim: int

    def __len__(self) -> int: ...

    def blocks(self, rows_per_block: int, with_names: bool = True
               ) -> Iterator[tuple[int, list[str] | None, np.ndarray]]: ...


class _Names(Sequence):
    """Image names memory-mapped from ``names.npy`` (fixed-width UTF-8), decoded on access."""

    def __init__(self, raw: np.ndarray):
        self._raw = raw

    def __len__(self) -> int:
        return len(self._raw)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [bytes(x).decode("utf-8") for x in self._raw[i]]
        return bytes(self._raw[int(i)]).decode("utf-8")


@dataclass
class OnDiskIndex(SearchIndex):
    """A :class:`SearchIndex` whose inverted lists, names, coordinates and re-rank vectors stay on
    disk (memory-mapped). Searched, saved (copied) and loaded like any other index."""

    folder: Path | None = None
    _vectors: np.ndarray | None = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k best database vectors per query by inner product: (scores Q×k float32, ids Q×k int64).

        IVF-PQ: the ``refine_k_factor``·k best PQ candidates are re-scored exactly from the vectors
        on disk, as ``faiss.IndexRefineFlat`` does from RAM.
        """
        if self._vectors is None:
            return super().search(queries, k)
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"query dimension {q.shape[1]} does not match the index dimension {self.dim}")
        _check_finite(q, "query")
        k = min(int(k), self.ntotal)
        factor = max(1, int(self.params.get("refine_k_factor", 1)))
        _, cand = self._faiss_index.search(q, min(self.ntotal, k * factor))
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        for i, row in enumerate(cand):
            row = row[row >= 0]
            if not len(row):
                continue
            ordered = np.sort(row)  # sequential reads of the memory-mapped vectors
            exact = np.asarray(self._vectors[ordered], dtype=np.float32) @ q[i]
            best = np.lexsort((ordered, -exact))[:k]  # ties: smaller id first
            scores[i, :len(best)], ids[i, :len(best)] = exact[best], ordered[best]
        return scores, ids

    def estimated_bytes(self) -> int:
        if self.folder is None:
            return super().estimated_bytes()
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())

    def _write_files(self, tmp: Path) -> None:
        # Saving elsewhere copies the folder: its files are already the index's on-disk form.
        for p in sorted(self.folder.iterdir()):
            if p.is_file():
                shutil.copyfile(p, tmp / p.name)


@contextlib.contextmanager
def _faiss_quiet():
    """Silence FAISS's C++ messages on stdout ("resizing ...", "updating ondisk filename ...")
    while it opens or merges on-disk lists: they would break ``netvlad query --json``'s output."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _kept_sample(n_kept: int, cfg: IndexConfig) -> np.ndarray | None:
    """Positions among the finite rows that train the quantisers: exactly those
    :func:`netvlad.index.build_index` draws from the same rows (None: all of them)."""
    if n_kept <= cfg.train_size:
        return None
    rng = np.random.default_rng(cfg.seed)
    return np.sort(rng.choice(n_kept, cfg.train_size, replace=False))


@dataclass
class _Scan:
    """What the first pass learns: rows kept per source, the longest name, the training sample."""

    kept: list[int]
    name_bytes: int
    sample: np.ndarray


def _scan(sources: Sequence[RowSource], n_expected: int, cfg: IndexConfig, block: int,
          progress: bool) -> _Scan:
    """First pass: check every row (finite or NaN as a bad image, unit norm), collect the sample."""
    total = sum(len(s) for s in sources)
    want = _kept_sample(n_expected, cfg)
    picked: list[np.ndarray] = []
    kept: list[int] = []
    seen = 0  # finite rows so far, over all sources
    width = 1
    with tqdm(total=total, unit="row", desc="scan + sample", disable=not progress, dynamic_ncols=True) as bar:
        for s in sources:
            kept.append(0)
            for _, names, x in s.blocks(block):
                ok = np.isfinite(x).all(axis=1)
                good = x[ok]
                _check_finite(good, "database")
                check_unit_norm(good, "database")
                width = max(width, max((len(n.encode("utf-8")) for n in names), default=1))
                if want is None:
                    picked.append(good)
                else:
                    lo, hi = np.searchsorted(want, [seen, seen + len(good)])
                    picked.append(good[want[lo:hi] - seen])
                seen += len(good)
                kept[-1] += len(good)
                bar.update(len(x))
    if seen != n_expected:
        raise ValueError(f"the sources hold {seen} finite rows, {n_expected} were expected "
                         "(a NaN row that no bad_images attribute lists?)")
    return _Scan(kept, width, np.concatenate(picked) if picked else np.zeros((0, 0), np.float32))


def _empty_ivf(kind: str, d: int, cfg: IndexConfig):
    faiss = _faiss()
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "ivfflat":
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, int(cfg.nlist), ip)
    if d % cfg.pq_m:
        raise ValueError(f"pq_m={cfg.pq_m} must divide the dimension {d}")
    return faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, int(cfg.nlist), int(cfg.pq_m), int(cfg.pq_bits), ip)


class _ShardedAdder:
    """Adds rows to copies of the trained IVF and writes each to disk once it holds ``flush_bytes``."""

    def __init__(self, trained, folder: Path, flush_bytes: int):
        self.faiss = _faiss()
        self.trained_bytes = self.faiss.serialize_index(trained)
        self.folder = folder
        self.folder.mkdir()
        self.per_row = int(self.faiss.extract_index_ivf(trained).code_size) + 8
        self.flush_rows = max(1, int(flush_bytes) // self.per_row)
        self.files: list[str] = []
        self.index = None

    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        if self.index is None:
            self.index = self.faiss.deserialize_index(self.trained_bytes)
        self.index.add_with_ids(x, ids)
        if self.index.ntotal >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if self.index is None or self.index.ntotal == 0:
            return
        path = self.folder / f"shard{len(self.files):05d}.index"
        self.faiss.write_index(self.index, str(path))
        self.files.append(str(path))
        self.index = None


class _NpyRows:
    """A ``.npy`` file of a known shape, its rows written in place by plain file writes.

    Why not a writable memory map: every page written through it stays in the process's resident
    set until the map is closed, so writing 10 M × 256-D float32 vectors that way peaks at 10 GB of
    RSS. Written pages of a file stay in the kernel's page cache instead, which it can drop.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype):
        header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        self.offset, self.dtype, self.row_shape = header.offset, header.dtype, tuple(shape[1:])
        self.row_bytes = int(self.dtype.itemsize * np.prod(self.row_shape, dtype=np.int64))
        del header
        self._file = open(path, "r+b")  # noqa: SIM115 - closed by close()

    def write(self, pos: int, rows) -> None:
        """Write rows ``pos .. pos + len(rows)``."""
        a = np.ascontiguousarray(np.asarray(rows, dtype=self.dtype).reshape(-1, *self.row_shape))
        self._file.seek(self.offset + pos * self.row_bytes)
        self._file.write(a.tobytes())

    def close(self) -> None:
        self._file.close()


def _check_params(kind: str, params: dict[str, Any]) -> IndexConfig:
    if kind not in ONDISK_KINDS:
        raise ValueError(f"an on-disk index is one of {', '.join(ONDISK_KINDS)}, not {kind!r}")
    unknown = set(params) - set(IndexConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown index parameters: {', '.join(sorted(unknown))}")
    return IndexConfig(kind=kind, **params)


def build_ondisk_index(
    sources: Sequence[RowSource],
    out: str | Path,
    kind: str = "ivfpq",
    *,
    num_finite: int | None = None,
    coordinates: Callable[[list[str]], np.ndarray] | None = None,
    meta: dict[str, Any] | None = None,
    vectors_dtype: str = "float32",
    block_rows: int = 65536,
    flush_bytes: int = 256 << 20,
    overwrite: bool = False,
    progress: bool = True,
    **params: Any,
) -> OnDiskIndex:
    """Build an IVF index over the rows of several sources without holding them in memory.

    Rows with NaN descriptors (images that failed extraction) are left out; ids are the positions
    among the remaining rows, in source order, so the index equals :func:`build_index` over the
    concatenated finite rows with the same parameters (same training sample, same lists).

    Args:
        sources: row sources (:class:`RowSource`), each N_i×D, L2-normalised rows.
        out: the index folder to write (replaced only if it is a netvlad index folder).
        kind: "ivfpq" (IVF-PQ + exact re-rank from ``vectors.npy``) or "ivfflat".
        num_finite: how many rows are finite (default: all); checked during the first pass.
        coordinates: maps a block of names to their len×2 UTM coordinates (stored as ``utm.npy``).
        meta: JSON-serialisable metadata (fingerprint, model reference, zone, ...).
        vectors_dtype: storage of the re-rank vectors ("float16" halves them; exact re-rank then
            uses the float16 values, as the float16 feature files they came from hold).
        block_rows: rows read per block.
        flush_bytes: in-memory inverted lists written out as a temporary shard beyond this size.
        overwrite: replace a *file* at ``out``.
        progress: tqdm bars.
        **params: :class:`IndexConfig` fields (nlist, nprobe, pq_m, pq_bits, refine_k_factor,
            train_size, seed).

    Returns:
        The :class:`OnDiskIndex`, opened from ``out``.
    """
    cfg = _check_params(kind, params)
    out = Path(out)
    if not sources:
        raise ValueError("no sources to index")
    d = int(sources[0].dim)
    for s in sources:
        if int(s.dim) != d:
            raise ValueError(f"sources have different dimensions ({d} and {s.dim})")
    total = sum(len(s) for s in sources)
    n = total if num_finite is None else int(num_finite)
    if n < 1:
        raise ValueError("no finite descriptors to index")
    cfg.nlist = min(n, cfg.nlist or int(max(1, min(1024, round(4 * np.sqrt(n)), n // 39))))
    check_output_dir(out, is_ours=is_index_dir, kind="netvlad index folder", overwrite=overwrite,
                     replaces_file=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    for old in stale_temp_dirs(out):
        shutil.rmtree(old, ignore_errors=True)
    tmp = make_temp_dir(out)
    try:
        _build_into(tmp, sources, n, kind, cfg, coordinates, dict(meta or {}), vectors_dtype, block_rows,
                    flush_bytes, progress)
        _replace(out, tmp)
    except (OSError, RuntimeError) as exc:
        if is_disk_full(exc):
            raise disk_full_error(out, n * (4 * d + 64), how="about the vectors' size") from exc
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return load_ondisk_index(out)


def _build_into(tmp: Path, sources: Sequence[RowSource], n: int, kind: str, cfg: IndexConfig,
                coordinates, meta: dict, vectors_dtype: str, block: int, flush_bytes: int,
                progress: bool) -> None:
    faiss = _faiss()
    d = int(sources[0].dim)
    scan = _scan(sources, n, cfg, block, progress)
    log.info("training %s (nlist=%d) on %d of %d vectors", kind, cfg.nlist, len(scan.sample), n)
    trained = _empty_ivf(kind, d, cfg)
    trained.train(np.ascontiguousarray(scan.sample, dtype=np.float32))
    del scan.sample
    adder = _ShardedAdder(trained, tmp / "shards", flush_bytes)
    names = _NpyRows(tmp / NAMES_FILE, (n,), f"S{scan.name_bytes}")
    utm = _NpyRows(tmp / UTM_FILE, (n, 2), np.float64) if coordinates is not None else None
    vectors = _NpyRows(tmp / VECTORS_FILE, (n, d), vectors_dtype) if kind == "ivfpq" else None
    outputs = [f for f in (names, utm, vectors) if f is not None]
    pos = 0
    try:
        with tqdm(total=sum(len(s) for s in sources), unit="row", desc="add", disable=not progress,
                  dynamic_ncols=True) as bar:
            for s in sources:
                for _, block_names, x in s.blocks(block):
                    ok = np.isfinite(x).all(axis=1)
                    good = np.ascontiguousarray(x[ok])
                    kept = [nm for nm, keep in zip(block_names, ok) if keep]
                    adder.add(good, np.arange(pos, pos + len(good), dtype=np.int64))
                    names.write(pos, [nm.encode("utf-8") for nm in kept])
                    if utm is not None:
                        utm.write(pos, np.asarray(coordinates(kept), dtype=np.float64).reshape(-1, 2))
                    if vectors is not None:
                        vectors.write(pos, good)
                    pos += len(good)
                    bar.update(len(x))
    finally:
        for f in outputs:
            f.close()
    adder.flush()
    _merge_lists(trained, adder.files, tmp / LISTS_FILE)
    faiss.write_index(trained, str(tmp / "index.faiss"))
    shutil.rmtree(adder.folder)
    np.savez(tmp / "data.npz")  # what every index folder has; names and coordinates are .npy here
    params = {**cfg.__dict__, "ondisk": True, "vectors_dtype": vectors_dtype if kind == "ivfpq" else None}
    info = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "kind": kind, "dim": d, "ntotal": n,
            "params": params, "meta": meta}
    # Written last: a folder without it is no index (is_index_dir), whatever else it holds.
    (tmp / "meta.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def _merge_lists(trained, shard_files: list[str], ivfdata: Path) -> None:
    """Merge the shards' inverted lists into ``ivfdata`` (FAISS's merge_ondisk) and put them,
    memory-mapped, into ``trained`` (which must hold no vectors)."""
    from faiss.contrib.ondisk import merge_ondisk

    if shard_files:
        with _faiss_quiet():
            merge_ondisk(trained, shard_files, str(ivfdata))
        return
    faiss = _faiss()  # no vectors at all cannot happen (n >= 1); kept for an empty source list
    ivf = faiss.extract_index_ivf(trained)
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(ivfdata))
    ivf.replace_invlists(lists, True)
    lists.this.disown()


def load_ondisk_index(path: str | Path, info: dict[str, Any] | None = None) -> OnDiskIndex:
    """Open an index folder written by :func:`build_ondisk_index`: the FAISS index with its
    inverted lists, the names, coordinates and vectors memory-mapped.

    Raises:
        FileNotFoundError: a file of the folder is missing.
        ValueError: not an on-disk netvlad index, or sizes that disagree.
    """
    path = Path(path)
    if info is None:
        info = json.loads((path / "meta.json").read_text())
    if not info.get("params", {}).get("ondisk"):
        raise ValueError(f"{path}: not an on-disk index (use netvlad.index.load_index)")
    for name in ("index.faiss", LISTS_FILE, NAMES_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name}: missing file of an on-disk index")
    faiss = _faiss()
    with _faiss_quiet():
        # The lists file is looked up next to index.faiss, wherever the folder has moved since.
        index = faiss.read_index(str(path / "index.faiss"), faiss.IO_FLAG_ONDISK_SAME_DIR)
    fields = IndexConfig.__dataclass_fields__
    cfg = IndexConfig(**{k: v for k, v in info["params"].items() if k in fields})
    faiss.extract_index_ivf(index).nprobe = int(cfg.nprobe)
    out = OnDiskIndex(kind=info["kind"], dim=int(info["dim"]), meta=info.get("meta", {}),
                      params=info["params"], folder=path)
    out.names = _Names(np.load(path / NAMES_FILE, mmap_mode="r"))
    if (path / UTM_FILE).is_file():
        out.utm = np.load(path / UTM_FILE, mmap_mode="r")
    if out.kind == "ivfpq":
        if not (path / VECTORS_FILE).is_file():
            raise FileNotFoundError(f"{path / VECTORS_FILE}: missing file of an on-disk index")
        out._vectors = np.load(path / VECTORS_FILE, mmap_mode="r")
    out._faiss_index = index
    sizes = {"meta.json": int(info["ntotal"]), NAMES_FILE: len(out.names), "index.faiss": out.ntotal}
    if out._vectors is not None:
        sizes[VECTORS_FILE] = len(out._vectors)
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{path}: on-disk index files disagree on the number of vectors: "
                         + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    return out


def nbytes_on_disk(path: str | Path) -> int:
    """Bytes of the files of an index folder (what ``du`` reports, without the folder itself)."""
    return sum(os.path.getsize(p) for p in Path(path).iterdir() if p.is_file())
