"""MATLAB's headerless little-endian float32 ``.bin`` feature files (``serialAllFeats``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from netvlad._atomic import atomic_write
from netvlad.io.features import FeatureFileError


def write_bin(path: str | Path, descriptors: np.ndarray) -> Path:
    """Write N×D descriptors as MATLAB's ``serialAllFeats`` does: headerless little-endian float32,
    image-major (the D values of image 1, then image 2, ...). Atomic."""
    path = Path(path)
    desc = np.ascontiguousarray(descriptors, dtype="<f4")
    if desc.ndim != 2:
        raise ValueError(f"{path}: descriptors must be N×D, got shape {desc.shape}")
    return atomic_write(path, desc.tofile)


def read_bin(path: str | Path, dim: int, num_images: int | None = None) -> np.ndarray:
    """Read a MATLAB ``.bin`` feature file as an N×dim float32 array.

    Unlike MATLAB's ``fread`` (which zero-pads a short last vector), a size that is not an exact
    multiple of 4·dim bytes — or not 4·dim·num_images when ``num_images`` is given — is an error.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: feature file not found")
    if dim <= 0:
        raise ValueError(f"{path}: dim must be positive, got {dim}")
    size = path.stat().st_size
    if size % (4 * dim):
        raise FeatureFileError(f"{path}: {size} bytes is not a multiple of 4·dim = {4 * dim} "
                               f"({size / (4 * dim):.3f} vectors of dim {dim}): truncated or wrong dim")
    n = size // (4 * dim)
    if num_images is not None and n != num_images:
        raise FeatureFileError(f"{path}: holds {n} vectors of dim {dim} ({size} bytes) but {num_images} "
                               f"were expected ({4 * dim * num_images} bytes)")
    return np.fromfile(path, dtype="<f4").reshape(n, dim).astype(np.float32, copy=False)


def read_bin_pair(db_path: str | Path, query_path: str | Path, num_db: int,
                  num_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Read db and query ``.bin`` files as MATLAB's ``testFromFn`` does: dim is inferred from the
    query file's size and query count, then the db file must hold exactly ``num_db`` vectors.

    Returns:
        ``(db num_db×dim, queries num_queries×dim)`` float32.
    """
    query_path = Path(query_path)
    if not query_path.exists():
        raise FileNotFoundError(f"{query_path}: feature file not found")
    if num_queries <= 0:
        raise ValueError(f"num_queries must be positive, got {num_queries}")
    size = query_path.stat().st_size
    if size == 0 or size % (4 * num_queries):
        raise FeatureFileError(f"{query_path}: {size} bytes is not 4·dim·{num_queries} queries for any dim")
    dim = size // (4 * num_queries)
    return read_bin(db_path, dim, num_db), read_bin(query_path, dim, num_queries)
