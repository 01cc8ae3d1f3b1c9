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

The builder is :func:`netvlad.index.ondisk_build.build_ondisk_index`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from netvlad.index.exact import _check_finite
from netvlad.index.faiss_index import (
    IndexConfig,
    SearchIndex,
    _faiss,
)

log = logging.getLogger(__name__)

__all__ = ["ONDISK_KINDS", "OnDiskIndex", "RowSource", "load_ondisk_index", "nbytes_on_disk"]

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
