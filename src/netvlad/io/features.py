"""HDF5 feature files: format, reading, atomic writing, identity checks (the resumable writer is
in :mod:`netvlad.io.writer`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
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


def _open_h5(path: Path, mode: str = "r", **kwargs: Any) -> h5py.File:
    if not path.exists():
        raise FileNotFoundError(f"{path}: feature file not found")
    try:
        return h5py.File(path, mode, **kwargs)
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
        f = _h5_for_writing(tmp, "w")
        try:
            _create_layout(f, list(names), desc.shape[1], dtype, meta)
            if len(names):
                f["descriptors"][...] = desc.astype(dtype)
            f.attrs["done"] = len(names)
            f.attrs["complete"] = True
            f.flush()
        finally:
            _close_h5(f)

    size = desc.shape[0] * desc.shape[1] * np.dtype(dtype).itemsize
    return atomic_write(path, write, size_hint=size)


def _h5_for_writing(path: str | Path, mode: str) -> h5py.File:
    # No raw-data chunk cache: each write reaches the file inside the call, so a full disk raises
    # there (OSError ENOSPC). With a cache HDF5 writes chunks later, h5py swallows the failure in
    # a destructor (the rows silently read back as zeros) and HDF5 crashes at exit on the dirty
    # cache. Rows are written a batch at a time, so the cache saved nothing (measured).
    return h5py.File(path, mode, rdcc_nbytes=0)


def _close_h5(f: h5py.File) -> None:
    """Close ``f`` even after a failed write: HDF5 keeps a file whose flush failed open (and
    crashes at interpreter exit trying again) unless it is closed a second time."""
    for attempt in range(3):
        try:
            f.close()
            return
        except (OSError, RuntimeError):
            if attempt == 2:
                logger.debug("%s: could not close after a failed write", f)


def _create_layout(f: h5py.File, names: list[str], dim: int, dtype: str, meta: dict[str, Any]) -> None:
    n = len(names)
    f.create_dataset("names", data=np.array(names, dtype=object), dtype=h5py.string_dtype("utf-8"))
    chunks = (_rows_per_chunk(dim, np.dtype(dtype).itemsize, n), dim) if n and dim else None
    dcpl = None
    if chunks:
        # Every chunk and the whole chunk index exist from the start (sparse: nothing is written
        # until the rows are), so later writes never need new file metadata: on a full disk only
        # the row write itself fails, and it fails cleanly.
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    f.create_dataset("descriptors", shape=(n, dim), dtype=dtype, chunks=chunks, dcpl=dcpl)
    base = {"format": FORMAT, "version": VERSION, "dim": dim, "dtype": dtype, "num_images": n,
            "names_sha256": names_sha256(names), "complete": False, "done": 0}
    for k, v in {**meta, **base}.items():
        if v is not None:
            f.attrs[k] = _encode_attr(k, v)
