"""Patch feature files: Patch-NetVLAD's patch descriptors and positions, one group per image.

Layout (HDF5, written by ``netvlad extract --patches``):

- dataset ``names``: N image names;
- group ``images/<row>`` per image: for each patch scale k, ``desc<k>`` (P_k×D float16/float32)
  and ``pos<k>`` (P_k×2 int16: row, col of the patch's top-left feature-map cell), and the
  attribute ``map_hw`` (the feature map's height and width);
- attributes: ``format`` ("netvlad-patches"), ``version``, ``scales`` (JSON list of
  [patch size, patch stride] in cells), ``dim``, ``dtype``, ``fingerprint``, ``preprocessing``,
  ``compute``, ``names_sha256``, ``num_images``, ``complete``, ``bad_images`` and ``model_ref``.

Writing is resumable and atomic as for global feature files: ``OUT.partial.h5`` with a per-row
``written`` mask set only after the row's group is on disk, renamed to OUT when complete, under
``OUT.lock``. A partial or final file from another model, image list, preprocessing or patch
setting is refused, never reused.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from netvlad._outputs import OutputLock, disk_full_error, is_disk_full
from netvlad.io.features import (
    FeatureFileError,
    FeatureIdentity,
    _close_h5,
    _decode_attrs,
    _encode_attr,
    _h5_for_writing,
    _open_h5,
    names_sha256,
    partial_path,
)
from netvlad.io.writer import OutputStatus

logger = logging.getLogger(__name__)

PATCH_FORMAT = "netvlad-patches"
PATCH_VERSION = 1

__all__ = ["PATCH_FORMAT", "PatchFile", "PatchWriter", "read_patch_attrs"]


def _identity(attrs: dict) -> tuple[FeatureIdentity, str]:
    return FeatureIdentity.of_attrs(attrs), json.dumps(attrs.get("scales"))


def read_patch_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes of a patch feature file (JSON decoded); FeatureFileError if it is not one."""
    path = Path(path)
    with _open_h5(path) as f:
        if f.attrs.get("format") != PATCH_FORMAT or "names" not in f:
            raise FeatureFileError(f"{path}: not a netvlad patch feature file (no '{PATCH_FORMAT}' format "
                                   "attribute; write one with netvlad extract --patches)")
        attrs = _decode_attrs(f.attrs)
    attrs["scales"] = [tuple(s) for s in json.loads(attrs["scales"])]
    return attrs


def _status(out: Path, attrs: dict, num: int, overwrite: bool) -> OutputStatus:
    mine = _identity({**attrs, "scales": [list(s) for s in attrs["scales"]]})

    def diff(path: Path) -> tuple[list[str], dict]:
        theirs = read_patch_attrs(path)
        d = mine[0].differences(_identity(theirs)[0])
        if json.dumps([list(s) for s in theirs["scales"]]) != mine[1]:
            d.append(f"patch scales {theirs['scales']} (this run: {attrs['scales']})")
        return d, theirs

    if out.is_dir():
        raise FeatureFileError(f"{out}: is a folder; give the path of the patch file to write")
    if out.exists() and not overwrite:
        d, theirs = diff(out)
        if d:
            raise FeatureFileError(f"{out}: exists and was written with {'; '.join(d)}; refusing to reuse "
                                   "or replace it (pass overwrite=True / --overwrite)")
        if not theirs.get("complete", False):
            raise FeatureFileError(f"{out}: exists but is not complete; pass overwrite=True / --overwrite")
        return OutputStatus("up-to-date", num, f"{out}: up to date ({num} images)")
    part = partial_path(out)
    if part.exists() and not overwrite:
        try:
            d, _ = diff(part)
        except (FeatureFileError, OSError, KeyError) as exc:
            with open(part, "rb") as f:
                if f.read(4) not in (b"", b"\x89HDF"):
                    raise FeatureFileError(f"{part}: is in the way and is not a netvlad partial patch file; "
                                           "move it away or pass overwrite=True / --overwrite") from exc
            logger.warning("%s; discarding it and starting over", exc)
            return OutputStatus("new", 0, f"{part}: unreadable partial file discarded")
        if d:
            raise FeatureFileError(f"{part}: an interrupted patch extraction with {'; '.join(d)} is in the "
                                   "way; delete it or pass overwrite=True / --overwrite")
        with _open_h5(part) as f:
            done = int(np.count_nonzero(f["written"][()])) if "written" in f else num
        return OutputStatus("resume", done, f"resuming {out}: {done} of {num} images done")
    return OutputStatus("new", 0, f"{out}: new ({num} images)")


class PatchWriter:
    """Resumable, atomic writer of a patch feature file (used by ``netvlad.extract.extract_patches``).

    Usage::

        w = PatchWriter(out, names, scales=[(5, 1)], dim=512, attrs={"fingerprint": ...})
        todo = w.open()                          # bool (N,) rows still to write
        w.write(row, [(desc, pos)], map_hw)      # one image; on disk when it returns
        w.finish()                               # renamed atomically to OUT

    Raises (from open): OutputBusyError (another process writes OUT), FeatureFileError (an
    existing OUT or partial file from another run). From write/finish: DiskFullError.
    """

    def __init__(self, out: str | Path, names: Sequence[str], scales: Sequence[tuple[int, int]], dim: int,
                 dtype: str = "float16", attrs: dict[str, Any] | None = None, overwrite: bool = False):
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
        self.out = Path(out)
        self.partial = partial_path(self.out)
        self.names = [str(n) for n in names]
        self.scales = [(int(a), int(b)) for a, b in scales]
        self.dim = int(dim)
        self.dtype = dtype
        self.attrs = {**(attrs or {}), "dim": self.dim, "dtype": dtype, "scales": self.scales,
                      "names_sha256": names_sha256(self.names)}
        self.overwrite = overwrite
        self.status: OutputStatus | None = None
        self._f = None
        self._mask = np.zeros(len(self.names), bool)
        self._bad: list[str] = []
        self._lock = OutputLock(self.out, "extracting patches into")

    @property
    def done(self) -> int:
        return int(self._mask.sum())

    def open(self) -> np.ndarray:
        """Lock OUT and prepare the output; returns the (N,) bool mask of rows still to write."""
        self._lock.acquire()
        try:
            self.status = _status(self.out, self.attrs, len(self.names), self.overwrite)
            if self.status.kind == "up-to-date":
                self._lock.release()
                self._mask[:] = True
                return np.zeros(len(self.names), bool)
            if self.status.kind == "resume":
                self._f = _open_h5(self.partial, "r+", rdcc_nbytes=0)
                self._mask = self._f["written"][()].astype(bool)
                self._bad = list(json.loads(self._f.attrs.get("bad_images", "[]")))
                return ~self._mask
            self._create()
        except BaseException:
            self.close()
            raise
        return np.ones(len(self.names), bool)

    def _create(self) -> None:
        import h5py

        self.partial.unlink(missing_ok=True)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with self._disk_errors():
            self._f = _h5_for_writing(self.partial, "w")
            f = self._f
            f.create_dataset("names", data=np.array(self.names, dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
            f.create_dataset("written", data=np.zeros(len(self.names), np.uint8))
            f.create_group("images")
            base = {"format": PATCH_FORMAT, "version": PATCH_VERSION, "num_images": len(self.names),
                    "complete": False, "bad_images": []}
            for k, v in {**self.attrs, **base}.items():
                if v is not None:
                    f.attrs[k] = _encode_attr(k, v)
            f.flush()

    def write(self, row: int, patches: Sequence[tuple[np.ndarray, np.ndarray]],
              map_hw: tuple[int, int]) -> None:
        """Store one image's patches: per scale (descriptors P×dim, positions P×2)."""
        if self._f is None:
            raise RuntimeError("PatchWriter.write before open() (or after finish/close)")
        if len(patches) != len(self.scales):
            raise ValueError(f"{len(patches)} patch sets for {len(self.scales)} scales")
        images = self._f["images"]
        key = str(int(row))
        with self._disk_errors():
            if key in images:  # written before a kill, but never marked: redo it
                del images[key]
            g = images.create_group(key)
            g.attrs["map_hw"] = np.asarray(map_hw, np.int64)
            for k, (desc, pos) in enumerate(patches):
                desc = np.asarray(desc)
                if desc.ndim != 2 or desc.shape[1] != self.dim or len(pos) != len(desc):
                    raise ValueError(f"scale {k}: expected P×{self.dim} descriptors and P×2 positions, got "
                                     f"{desc.shape} and {np.shape(pos)}")
                g.create_dataset(f"desc{k}", data=desc.astype(self.dtype))
                g.create_dataset(f"pos{k}", data=np.asarray(pos, np.int16).reshape(-1, 2))
            self._f.flush()
            # Only now that the group is in the file may the mask say so.
            self._f["written"][int(row)] = 1
            self._f.flush()
        self._mask[int(row)] = True

    def mark_bad(self, row: int, reason: str = "") -> None:
        """Record an unreadable image: no patches, its name in ``bad_images``."""
        name = self.names[int(row)]
        logger.warning("skipping bad image %s%s", name, f": {reason}" if reason else "")
        if name not in self._bad:
            self._bad.append(name)
        with self._disk_errors():
            self._f.attrs["bad_images"] = json.dumps(self._bad)
            self._f.flush()
        self.write(row, [(np.zeros((0, self.dim)), np.zeros((0, 2)))] * len(self.scales), (0, 0))

    def finish(self) -> Path:
        """Mark complete and rename to OUT atomically; release the lock. Returns OUT."""
        if self.status is not None and self.status.kind == "up-to-date":
            return self.out
        missing = len(self.names) - self.done
        if missing:
            raise RuntimeError(f"{self.partial}: {missing} images were never written; cannot finish")
        try:
            with self._disk_errors():
                self._f.attrs["complete"] = True
                del self._f["written"]
                self._f.flush()
            _close_h5(self._f)
            self._f = None
            os.replace(self.partial, self.out)
        finally:
            self.close()
        return self.out

    def close(self) -> None:
        """Close without finishing (the partial file stays, to be resumed) and release the lock."""
        if self._f is not None:
            _close_h5(self._f)
            self._f = None
        self._lock.release()

    def discard(self) -> None:
        """Close and delete the partial file (a run that stopped before its first image)."""
        self.close()
        if self.status is not None and self.status.kind != "up-to-date":
            self.partial.unlink(missing_ok=True)

    def _disk_errors(self):
        writer = self

        class _Guard:
            def __enter__(self):
                return None

            def __exit__(self, typ, exc, tb):
                if exc is not None and isinstance(exc, (OSError, RuntimeError)) and is_disk_full(exc):
                    left = len(writer.names) - writer.done
                    raise disk_full_error(writer.partial, None, how=f"{left} images left",
                                          then="free some space and rerun the same command: it resumes")
                return False

        return _Guard()


class PatchFile:
    """Read access to a complete patch feature file (a patch *store* for ``netvlad.rerank``).

    Attributes:
        names: image names; scales: [(patch size, patch stride)]; dim; attrs.

    ``get(row)`` reads one image's patches: per scale (descriptors P×D float32, positions P×2
    int64). Use as a context manager or call ``close()``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.attrs = read_patch_attrs(self.path)
        if not self.attrs.get("complete", False):
            raise FeatureFileError(f"{self.path}: incomplete patch file (an interrupted extraction); "
                                   "rerun netvlad extract --patches to finish it")
        self._f = _open_h5(self.path)
        self.names = [n.decode() if isinstance(n, bytes) else str(n) for n in self._f["names"][()]]
        self.scales = list(self.attrs["scales"])
        self.dim = int(self.attrs["dim"])
        self._index = {n: i for i, n in enumerate(self.names)}

    def rows(self, names: Sequence[str]) -> np.ndarray:
        """Row of each name; FeatureFileError naming the first missing one."""
        out = np.empty(len(names), np.int64)
        for i, n in enumerate(names):
            if n not in self._index:
                raise FeatureFileError(f"{self.path}: no patches for image {n!r} "
                                       f"({len(self.names)} images in the file)")
            out[i] = self._index[n]
        return out

    def get(self, row: int) -> list[tuple[np.ndarray, np.ndarray]]:
        g = self._f["images"][str(int(row))]
        return [(g[f"desc{k}"][()].astype(np.float32), g[f"pos{k}"][()].astype(np.int64))
                for k in range(len(self.scales))]

    def nbytes(self) -> int:
        """Bytes of patch descriptors and positions stored (the file's payload)."""
        total = 0
        for g in self._f["images"].values():
            total += sum(d.size * d.dtype.itemsize for d in g.values())
        return int(total)

    def close(self) -> None:
        if self._f is not None:
            _close_h5(self._f)
            self._f = None

    def __enter__(self) -> PatchFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
