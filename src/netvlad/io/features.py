"""HDF5 feature files: format, atomic writing, resumable writer, identity checks."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from netvlad._atomic import atomic_write

logger = logging.getLogger(__name__)

FORMAT = "netvlad-features"
VERSION = 1
_DTYPES = ("float32", "float16")


class FeatureFileError(ValueError):
    """A feature file that is unreadable, partial, of another format or from another model/image list."""


def names_sha256(names: Sequence[str]) -> str:
    """sha256 hex digest of the ordered image names (each UTF-8 encoded, NUL-terminated)."""
    h = hashlib.sha256()
    for n in names:
        h.update(str(n).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def partial_path(out: str | Path) -> Path:
    """Where a resumable run writes before the final rename: ``feats.h5`` -> ``feats.partial.h5``."""
    out = Path(out)
    stem = out.name[: -len(".h5")] if out.name.endswith(".h5") else out.name
    return out.with_name(stem + ".partial.h5")


def _rows_per_chunk(dim: int, itemsize: int, n: int) -> int:
    # About 1 MiB per chunk: big enough for fast sequential reads, small enough for partial writes.
    return max(1, min(n, (1 << 20) // max(1, dim * itemsize)))


@dataclasses.dataclass(frozen=True)
class FeatureIdentity:
    """What makes two feature files interchangeable: same model, output, preprocessing and image list."""

    fingerprint: str
    dim: int
    dtype: str
    names_sha256: str
    preprocessing: str = "{}"  # JSON, keys sorted
    compute: str = "fp32"  # arithmetic used: fp32, bf16 or fp16 (autocast)

    @classmethod
    def of_attrs(cls, attrs: dict) -> FeatureIdentity:
        pre = attrs.get("preprocessing", {})
        return cls(
            fingerprint=str(attrs.get("fingerprint", "")),
            dim=int(attrs.get("dim", -1)),
            dtype=str(attrs.get("dtype", "")),
            names_sha256=str(attrs.get("names_sha256", "")),
            preprocessing=json.dumps(pre, sort_keys=True),
            compute=str(attrs.get("compute", "fp32")),
        )

    def differences(self, other: FeatureIdentity) -> list[str]:
        """What ``other`` (a file's identity) has that differs from this run's, as readable phrases."""
        out = []
        fields = [("model fingerprint", self.fingerprint[:12], other.fingerprint[:12]),
                  ("dimension", self.dim, other.dim), ("dtype", self.dtype, other.dtype),
                  ("compute type", self.compute, other.compute),
                  ("preprocessing", self.preprocessing, other.preprocessing)]
        for label, mine, theirs in fields:
            if mine != theirs:
                out.append(f"{label} {theirs} (this run: {mine})")
        if self.names_sha256 != other.names_sha256:
            out.append("a different image list")
        return out


def _decode_attrs(a: h5py.AttributeManager) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for k, v in a.items():
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        elif isinstance(v, np.generic):
            v = v.item()
        if k in ("preprocessing", "model_config", "bad_images") and isinstance(v, str):
            v = json.loads(v)
        attrs[k] = v
    return attrs


def _encode_attr(key: str, value: Any) -> Any:
    if key in ("preprocessing", "model_config", "bad_images") or isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _open_h5(path: Path, mode: str = "r") -> h5py.File:
    if not path.exists():
        raise FileNotFoundError(f"{path}: feature file not found")
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        hint = " (a MATLAB .bin file? use read_bin)" if path.suffix == ".bin" else ""
        raise FeatureFileError(
            f"{path}: not a readable HDF5 file, truncated or corrupt{hint}: {exc}") from exc


def _check_layout(path: Path, f: h5py.File) -> None:
    if f.attrs.get("format") != FORMAT or "descriptors" not in f or "names" not in f:
        found: list[str] = []
        f.visit(lambda n: found.append(n) if n.endswith("global_descriptor") else None)
        hint = " (it has hloc's layout: use read_hloc)" if found else ""
        raise FeatureFileError(f"{path}: not a netvlad feature file (no '{FORMAT}' format attribute "
                               f"with 'names' and 'descriptors' datasets){hint}")


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes of a feature file (JSON attributes decoded), without reading descriptors."""
    path = Path(path)
    with _open_h5(path) as f:
        _check_layout(path, f)
        return _decode_attrs(f.attrs)


def read_features(path: str | Path,
                  allow_partial: bool = False) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Read a feature file.

    Returns:
        ``(names, descriptors, attrs)``: N names, an N×D float32 array (float16 files are
        upcast; rows of images listed in ``attrs["bad_images"]`` are NaN) and the attributes.

    Raises:
        FileNotFoundError: no such file.
        FeatureFileError: unreadable/truncated HDF5, not a feature file, a partial file from an
            interrupted extraction (unless ``allow_partial``), or inconsistent sizes.
    """
    path = Path(path)
    with _open_h5(path) as f:
        _check_layout(path, f)
        attrs = _decode_attrs(f.attrs)
        if not attrs.get("complete", False) and not allow_partial:
            raise FeatureFileError(
                f"{path}: partial feature file ({attrs.get('done', '?')} of {attrs.get('num_images', '?')} "
                "images) from an interrupted extraction; rerun the same extraction to finish it")
        try:
            names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in f["names"][()]]
            desc = np.asarray(f["descriptors"][()], dtype=np.float32)
        except (OSError, KeyError) as exc:
            raise FeatureFileError(f"{path}: truncated or corrupt feature file: {exc}") from exc
    if desc.ndim != 2 or desc.shape[0] != len(names):
        raise FeatureFileError(
            f"{path}: descriptors have shape {desc.shape} but there are {len(names)} names")
    if "dim" in attrs and desc.shape[1] != attrs["dim"]:
        raise FeatureFileError(
            f"{path}: descriptors are {desc.shape[1]}-D but the file says dim={attrs['dim']}")
    return names, desc, attrs


def write_features(path: str | Path, names: Sequence[str], descriptors: np.ndarray,
                   attrs: dict[str, Any] | None = None, dtype: str = "float32") -> Path:
    """Write a complete feature file atomically (temp file + rename).

    Args:
        path: output file.
        names: N image names.
        descriptors: N×D array.
        attrs: extra attributes (e.g. ``fingerprint``, ``preprocessing`` dict, ``model_config`` dict).
        dtype: storage type, "float32" or "float16".
    """
    path = Path(path)
    desc = np.asarray(descriptors)
    if desc.ndim != 2 or desc.shape[0] != len(names):
        raise ValueError(f"{path}: descriptors must be N×D with N={len(names)} names, got shape {desc.shape}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    meta = {"bad_images": [], **(attrs or {})}

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            _create_layout(f, list(names), desc.shape[1], dtype, meta)
            if len(names):
                f["descriptors"][...] = desc.astype(dtype)
            f.attrs["done"] = len(names)
            f.attrs["complete"] = True

    return atomic_write(path, write)


def _create_layout(f: h5py.File, names: list[str], dim: int, dtype: str, meta: dict[str, Any]) -> None:
    n = len(names)
    f.create_dataset("names", data=np.array(names, dtype=object), dtype=h5py.string_dtype("utf-8"))
    chunks = (_rows_per_chunk(dim, np.dtype(dtype).itemsize, n), dim) if n and dim else None
    f.create_dataset("descriptors", shape=(n, dim), dtype=dtype, chunks=chunks)
    base = {"format": FORMAT, "version": VERSION, "dim": dim, "dtype": dtype, "num_images": n,
            "names_sha256": names_sha256(names), "complete": False, "done": 0}
    for k, v in {**meta, **base}.items():
        if v is not None:
            f.attrs[k] = _encode_attr(k, v)


@dataclasses.dataclass
class OutputStatus:
    """What a resumable extraction to ``out`` will do: ``kind`` is "new", "resume" or "up-to-date"."""

    kind: str
    done: int = 0
    message: str = ""


def output_status(out: str | Path, identity: FeatureIdentity, num_images: int,
                  overwrite: bool = False) -> OutputStatus:
    """Decide what to do with an existing final or partial file at ``out`` (no side effects).

    Raises:
        FeatureFileError: a final file (or partial file) from another model, dimension, dtype,
            preprocessing or image list exists and ``overwrite`` is False.
    """
    out = Path(out)
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
        except FeatureFileError as exc:
            # A partial file is our own temp file; one that cannot be opened (killed mid-write)
            # holds nothing trustworthy, so start over rather than fail.
            logger.warning("%s; discarding it and starting over", exc)
            return OutputStatus("new", 0, f"{part}: unreadable partial file discarded")
        diff = identity.differences(FeatureIdentity.of_attrs(attrs))
        if diff:
            raise FeatureFileError(
                f"{part}: an interrupted extraction with {'; '.join(diff)} is in the way; "
                "delete it or pass overwrite=True / --overwrite")
        done = int(attrs.get("done", 0))
        return OutputStatus("resume", done, f"resuming {out}: {done} of {num_images} rows done")
    return OutputStatus("new", 0, f"{out}: new ({num_images} images)")


class FeatureWriter:
    """Resumable, atomic writer of one feature file (used by ``netvlad.extract``).

    Usage::

        w = FeatureWriter(out, names, identity_attrs, dim, dtype="float32")
        todo = w.open()              # bool mask of rows still to compute (all False: up to date)
        w.write(rows, desc_block)    # any order; flushed to OUT.partial.h5 with the ``written`` mask
        w.mark_bad(rows, reasons)
        w.finish()                   # complete=True, renamed atomically to OUT
    """

    def __init__(self, out: str | Path, names: Sequence[str], dim: int, dtype: str = "float32",
                 attrs: dict[str, Any] | None = None, overwrite: bool = False):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        self.out = Path(out)
        self.partial = partial_path(self.out)
        self.names = [str(n) for n in names]
        self.dim = int(dim)
        self.dtype = dtype
        self.attrs = dict(attrs or {})
        self.overwrite = overwrite
        self.identity = FeatureIdentity(
            fingerprint=str(self.attrs.get("fingerprint", "")), dim=self.dim, dtype=dtype,
            names_sha256=names_sha256(self.names),
            preprocessing=json.dumps(self.attrs.get("preprocessing", {}), sort_keys=True),
            compute=str(self.attrs.get("compute", "fp32")))
        self.status: OutputStatus | None = None
        self._f: h5py.File | None = None
        self._bad: list[str] = []

    def open(self) -> np.ndarray:
        """Validate/prepare the output; return a bool mask (N,) of rows still to write."""
        n = len(self.names)
        self.status = output_status(self.out, self.identity, n, self.overwrite)
        if self.status.kind == "up-to-date":
            return np.zeros(n, dtype=bool)
        if self.status.kind == "resume":
            self._f = _open_h5(self.partial, "r+")
            self._bad = list(json.loads(self._f.attrs.get("bad_images", "[]")))
            return ~self._f["written"][()].astype(bool)
        self.partial.unlink(missing_ok=True)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._f = h5py.File(self.partial, "w")
        _create_layout(self._f, self.names, self.dim, self.dtype, {**self.attrs, "bad_images": []})
        self._f.create_dataset("written", shape=(n,), dtype=np.uint8)
        self._f.flush()
        return np.ones(n, dtype=bool)

    @property
    def done(self) -> int:
        return int(self._f.attrs["done"]) if self._f is not None else 0

    def write(self, rows: Sequence[int] | np.ndarray, desc: np.ndarray) -> None:
        """Store descriptors (len(rows)×D) for the given row indices and flush."""
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
        self._f["descriptors"][rows] = desc.astype(self.dtype)
        written = self._f["written"]
        new = int(len(rows) - written[rows].sum())
        written[rows] = 1
        self._f.attrs["done"] = self.done + new
        self._f.flush()

    def mark_bad(self, rows: Sequence[int], reasons: Sequence[str] | None = None) -> None:
        """Record unreadable images: their rows become NaN and their names go to ``bad_images``."""
        rows = list(rows)
        if not rows:
            return
        for r, why in zip(rows, reasons or [""] * len(rows)):
            logger.warning("skipping bad image %s%s", self.names[r], f": {why}" if why else "")
            if self.names[r] not in self._bad:
                self._bad.append(self.names[r])
        self._f.attrs["bad_images"] = json.dumps(self._bad)
        self.write(rows, np.full((len(rows), self.dim), np.nan, dtype=np.float32))

    @property
    def bad_images(self) -> list[str]:
        return list(self._bad)

    def finish(self) -> Path:
        """Mark complete and rename the partial file to OUT atomically. Returns OUT."""
        if self.status is not None and self.status.kind == "up-to-date":
            return self.out
        if self._f is None:
            raise RuntimeError("FeatureWriter.finish before open()")
        missing = len(self.names) - self.done
        if missing:
            raise RuntimeError(f"{self.partial}: {missing} rows were never written; cannot finish")
        del self._f["written"]
        self._f.attrs["complete"] = True
        self._f.close()
        self._f = None
        os.replace(self.partial, self.out)
        return self.out

    def close(self) -> None:
        """Close without finishing (the partial file stays, to be resumed)."""
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
