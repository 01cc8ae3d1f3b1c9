"""The resumable, atomic writer of a feature file (used by ``netvlad extract``).

A run writes ``OUT.partial.h5`` and renames it to OUT when every row is there. The partial
file's progress is the per-row ``written`` mask, and a row is marked only after its descriptor
is on disk (write, flush, then mark, flush), so whatever stopped the run (Ctrl-C, SIGKILL, a full
disk) the mask never claims a row the file does not hold, and a rerun computes exactly the rest.
The ``done`` attribute is the mask's count, rewritten after it, for readers.

One process at a time: :meth:`FeatureWriter.open` takes ``OUT.lock`` (see
:class:`netvlad._outputs.OutputLock`); a second writer of the same OUT gets an error naming the
first one's PID instead of deleting its partial file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from netvlad._outputs import OutputLock, disk_full_error, is_disk_full
from netvlad.io.features import (
    _DTYPES,
    FeatureFileError,
    FeatureIdentity,
    _close_h5,
    _create_layout,
    _h5_for_writing,
    _open_h5,
    names_sha256,
    partial_path,
    read_attrs,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class OutputStatus:
    """What a resumable extraction to ``out`` will do: ``kind`` is "new", "resume" or "up-to-date"."""

    kind: str
    done: int = 0
    message: str = ""


def _rows_on_disk(part: Path) -> int:
    """Rows the partial file's ``written`` mask holds (all of them once it was marked complete)."""
    with _open_h5(part) as f:
        if "written" in f:
            return int(np.count_nonzero(f["written"][()]))
        if f.attrs.get("complete", False):
            return int(f.attrs.get("num_images", 0))
        raise FeatureFileError(f"{part}: partial feature file without its 'written' mask")


def output_status(out: str | Path, identity: FeatureIdentity, num_images: int,
                  overwrite: bool = False) -> OutputStatus:
    """Decide what to do with an existing final or partial file at ``out`` (no side effects).

    Raises:
        FeatureFileError: ``out`` is a folder, or a final file (or partial file) from another
            model, dimension, dtype, preprocessing or image list exists and ``overwrite`` is False.
    """
    out = Path(out)
    if out.is_dir():
        raise FeatureFileError(f"{out}: is a folder; give the path of the feature file to write")
    if out.exists() and not overwrite:
        try:
            attrs = read_attrs(out)
        except FeatureFileError as exc:
            raise FeatureFileError(
                f"{exc}; refusing to replace it (pass overwrite=True / --overwrite)") from exc
        diff = identity.differences(FeatureIdentity.of_attrs(attrs))
        if diff:
            raise FeatureFileError(
                f"{out}: exists and was written with {'; '.join(diff)}; "
                "refusing to reuse or replace it (pass overwrite=True / --overwrite)")
        if not attrs.get("complete", False):
            raise FeatureFileError(f"{out}: exists but is not complete; pass overwrite=True / --overwrite")
        bad = attrs.get("bad_images", [])
        note = f", {len(bad)} bad image(s)" if bad else ""
        return OutputStatus("up-to-date", num_images,
                            f"{out}: up to date ({num_images} images, {identity.dim}-D{note})")
    part = partial_path(out)
    if part.exists() and not overwrite:
        try:
            attrs = read_attrs(part)
            done = _rows_on_disk(part)
        except (FeatureFileError, OSError) as exc:
            # A partial file is our own temp file; one that cannot be opened (killed mid-write)
            # holds nothing trustworthy, so start over rather than fail. A file that is not even
            # HDF5 is somebody else's: never ours to delete.
            with open(part, "rb") as f:
                if f.read(4) not in (b"", b"\x89HDF"):
                    raise FeatureFileError(f"{part}: is in the way and is not a netvlad partial feature "
                                           "file; move it away or pass overwrite=True / --overwrite") from exc
            logger.warning("%s; discarding it and starting over", exc)
            return OutputStatus("new", 0, f"{part}: unreadable partial file discarded")
        diff = identity.differences(FeatureIdentity.of_attrs(attrs))
        if diff:
            raise FeatureFileError(
                f"{part}: an interrupted extraction with {'; '.join(diff)} is in the way; "
                "delete it or pass overwrite=True / --overwrite")
        if int(attrs.get("done", done)) != done:
            # Files of netvlad versions that counted rows before they were on disk.
            logger.warning("%s: recorded progress %s disagrees with the %d rows on disk; resuming from "
                           "the rows on disk", part, attrs.get("done"), done)
        return OutputStatus("resume", done, f"resuming {out}: {done} of {num_images} rows done")
    return OutputStatus("new", 0, f"{out}: new ({num_images} images)")


class FeatureWriter:
    """Resumable, atomic writer of one feature file (used by ``netvlad.extract``).

    Usage::

        w = FeatureWriter(out, names, dim, dtype="float32", attrs=attrs)  # attrs: fingerprint, ...
        todo = w.open()              # bool mask of rows still to compute (all False: up to date)
        w.write(rows, desc_block)    # any order; on disk in OUT.partial.h5 before it returns
        w.mark_bad(rows, reasons)
        w.finish()                   # complete=True, renamed atomically to OUT

    From :meth:`open` until :meth:`finish` or :meth:`close` the writer holds ``OUT.lock``.

    Raises (from open):
        OutputBusyError: another process is writing OUT (the message names its PID).
        FeatureFileError: see :func:`output_status`.
    Raises (from write, mark_bad, finish):
        DiskFullError: no space left; the partial file keeps every row written so far and a
            rerun resumes after them.
    """

    def __init__(self, out: str | Path, names: Sequence[str], dim: int, dtype: str = "float32",
                 attrs: dict[str, Any] | None = None, overwrite: bool = False,
                 datasets: dict[str, np.ndarray] | None = None):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        self.out = Path(out)
        self.partial = partial_path(self.out)
        self.names = [str(n) for n in names]
        self.dim = int(dim)
        self.dtype = dtype
        self.attrs = dict(attrs or {})
        self.overwrite = overwrite
        # Extra datasets written with the layout (a shard's row positions in its run's image list).
        self.datasets = dict(datasets or {})
        self.identity = FeatureIdentity(
            fingerprint=str(self.attrs.get("fingerprint", "")), dim=self.dim, dtype=dtype,
            names_sha256=names_sha256(self.names),
            preprocessing=json.dumps(self.attrs.get("preprocessing", {}), sort_keys=True),
            compute=str(self.attrs.get("compute", "fp32")))
        self.status: OutputStatus | None = None
        self._f = None
        self._mask = np.zeros(len(self.names), dtype=bool)
        self._done = 0
        self._bad: list[str] = []
        self._lock = OutputLock(self.out, "extracting into")

    def open(self) -> np.ndarray:
        """Lock OUT, validate/prepare the output; return a bool mask (N,) of rows still to write."""
        self._lock.acquire()
        try:
            todo = self._open()
        except BaseException:
            self.close()
            raise
        if self.status.kind == "up-to-date":
            self._lock.release()
        return todo

    def _open(self) -> np.ndarray:
        n = len(self.names)
        self.status = output_status(self.out, self.identity, n, self.overwrite)
        if self.status.kind == "up-to-date":
            self._mask[:] = True
            self._done = n
            return np.zeros(n, dtype=bool)
        if self.status.kind == "resume":
            self._f = _open_h5(self.partial, "r+", rdcc_nbytes=0)
            self._bad = list(json.loads(self._f.attrs.get("bad_images", "[]")))
            if "written" in self._f:
                self._mask = self._f["written"][()].astype(bool)
            else:  # marked complete, killed before the rename
                self._mask[:] = True
            self._done = int(self._mask.sum())
            return ~self._mask
        self.partial.unlink(missing_ok=True)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._f = _h5_for_writing(self.partial, "w")
            _create_layout(self._f, self.names, self.dim, self.dtype, {**self.attrs, "bad_images": []})
            for key, value in self.datasets.items():
                self._f.create_dataset(key, data=value)
            self._f.create_dataset("written", data=np.zeros(n, dtype=np.uint8))
            self._f.flush()
        except (OSError, RuntimeError) as exc:
            if is_disk_full(exc):
                raise self._disk_full() from exc
            raise
        return np.ones(n, dtype=bool)

    @property
    def done(self) -> int:
        """Rows on disk so far."""
        return self._done

    def write(self, rows: Sequence[int] | np.ndarray, desc: np.ndarray) -> None:
        """Store descriptors (len(rows)×D) for the given row indices; on disk when this returns."""
        if self._f is None:
            raise RuntimeError("FeatureWriter.write before open() (or after finish/close)")
        rows = np.asarray(rows, dtype=np.int64)
        desc = np.asarray(desc)
        if desc.shape != (len(rows), self.dim):
            raise ValueError(f"expected a {len(rows)}×{self.dim} block, got {desc.shape}")
        if len(rows) == 0:
            return
        order = np.argsort(rows, kind="stable")  # h5py point selections must be increasing
        rows, desc = rows[order], desc[order]
        with self._disk_errors():
            self._write_rows(rows, desc.astype(self.dtype))
            self._f.flush()
            # Only now that the rows are in the file may the mask say so.
            self._f["written"][rows] = 1
            self._f.flush()
            new = int(np.count_nonzero(~self._mask[rows]))
            self._mask[rows] = True
            self._done += new
            self._f.attrs["done"] = self._done
            self._f.flush()

    def _write_rows(self, rows: np.ndarray, block: np.ndarray) -> None:
        """Put ``block`` into the descriptors dataset at ``rows`` (sorted): the one raw-data write."""
        self._f["descriptors"][rows] = block

    def mark_bad(self, rows: Sequence[int], reasons: Sequence[str] | None = None) -> None:
        """Record unreadable images: their rows become NaN and their names go to ``bad_images``."""
        rows = list(rows)
        if not rows:
            return
        for r, why in zip(rows, reasons or [""] * len(rows)):
            logger.warning("skipping bad image %s%s", self.names[r], f": {why}" if why else "")
            if self.names[r] not in self._bad:
                self._bad.append(self.names[r])
        # The list first: a NaN row on disk is then always explained by it.
        with self._disk_errors():
            self._f.attrs["bad_images"] = json.dumps(self._bad)
            self._f.flush()
        self.write(rows, np.full((len(rows), self.dim), np.nan, dtype=np.float32))

    @property
    def bad_images(self) -> list[str]:
        return list(self._bad)

    def finish(self) -> Path:
        """Mark complete and rename the partial file to OUT atomically; release the lock. Returns OUT."""
        if self.status is not None and self.status.kind == "up-to-date":
            return self.out
        if self._f is None:
            raise RuntimeError("FeatureWriter.finish before open()")
        missing = len(self.names) - self._done
        if missing:
            raise RuntimeError(f"{self.partial}: {missing} rows were never written; cannot finish")
        try:
            with self._disk_errors():
                self._f.attrs["complete"] = True
                if "written" in self._f:
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
        """Close, delete the partial file and release the lock: for a run that stopped before its
        first row (a bad image or a full disk found first), so that the refusal leaves nothing."""
        if self._f is not None:
            _close_h5(self._f)
            self._f = None
        if self.status is not None and self.status.kind != "up-to-date":
            self.partial.unlink(missing_ok=True)
        self._lock.release()

    def _disk_full(self):
        left = len(self.names) - self._done
        size = np.dtype(self.dtype).itemsize
        return disk_full_error(
            self.partial, left * self.dim * size,
            how=f"{left} of {len(self.names)} images left × {self.dim} × {size} bytes",
            then="free some space and rerun the same command: it resumes after the "
            f"{self._done} images on disk")

    def _disk_errors(self):
        return _DiskErrors(self)

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _DiskErrors:
    """Turns a full disk inside a write into the writer's one-line DiskFullError."""

    def __init__(self, writer: FeatureWriter):
        self.writer = writer

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ, exc, tb) -> bool:
        if exc is not None and isinstance(exc, (OSError, RuntimeError)) and is_disk_full(exc):
            raise self.writer._disk_full() from exc
        return False
