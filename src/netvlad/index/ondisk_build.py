"""Building an on-disk IVF index source by source (see :mod:`netvlad.index.ondisk` for the layout).

Peak memory: the training sample (``train_size`` × D × 4 bytes), one block of rows, and the
in-memory IVF up to ``flush_bytes``; names, coordinates and re-rank vectors go to their files by
plain writes, and FAISS's merge writes the final lists through a memory map of their size
(``(code_size + 8)`` bytes per row: 40 bytes for IVF-PQ with 32 sub-quantizers).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from netvlad._atomic import make_temp_dir, stale_temp_dirs
from netvlad._outputs import check_output_dir, disk_full_error, is_disk_full
from netvlad.index.exact import _check_finite, check_unit_norm
from netvlad.index.faiss_index import INDEX_FORMAT, INDEX_VERSION, IndexConfig, _faiss, _replace, is_index_dir
from netvlad.index.ondisk import (
    LISTS_FILE,
    NAMES_FILE,
    ONDISK_KINDS,
    UTM_FILE,
    VECTORS_FILE,
    OnDiskIndex,
    RowSource,
    _faiss_quiet,
    load_ondisk_index,
)

log = logging.getLogger(__name__)

__all__ = ["build_ondisk_index"]


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
