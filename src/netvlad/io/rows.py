"""Reading a feature file a block of rows at a time, for work on more descriptors than RAM holds
(``netvlad index build --on-disk``, ``netvlad features merge``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from netvlad.io.features import FeatureFileError, _check_layout, _decode_attrs, _open_h5


class FeatureRows:
    """An open feature file read lazily: names and descriptors come in blocks of rows.

    Usage::

        with FeatureRows("feats.h5") as f:
            for start, names, desc in f.blocks(65536):   # desc: len(names)×D float32
                ...

    Attributes:
        path: the file.
        attrs: its attributes (JSON ones decoded).
        dim: descriptor dimension D; ``len(f)`` is the row count N.

    Raises (on opening):
        FileNotFoundError / FeatureFileError: as :func:`netvlad.io.read_features`, including for a
            partial file unless ``allow_partial``.
    """

    def __init__(self, path: str | Path, allow_partial: bool = False):
        self.path = Path(path)
        self._f = _open_h5(self.path)
        try:
            _check_layout(self.path, self._f)
            self.attrs: dict[str, Any] = _decode_attrs(self._f.attrs)
            if not self.attrs.get("complete", False) and not allow_partial:
                raise FeatureFileError(
                    f"{self.path}: partial feature file ({self.attrs.get('done', '?')} of "
                    f"{self.attrs.get('num_images', '?')} images) from an interrupted extraction; "
                    "rerun the same extraction to finish it")
            self._desc = self._f["descriptors"]
            self._names = self._f["names"]
            if self._desc.ndim != 2 or self._desc.shape[0] != self._names.shape[0]:
                raise FeatureFileError(f"{self.path}: descriptors have shape {self._desc.shape} but there "
                                       f"are {self._names.shape[0]} names")
        except BaseException:
            self._f.close()
            raise
        self.dim = int(self._desc.shape[1])
        self.dtype = str(self._desc.dtype)

    def __len__(self) -> int:
        return int(self._desc.shape[0])

    def names(self, start: int = 0, stop: int | None = None) -> list[str]:
        """Names of rows ``start:stop``."""
        raw = self._names[start:stop]
        return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Descriptors of rows ``start:stop`` as float32, (stop−start)×D."""
        try:
            return np.asarray(self._desc[start:stop], dtype=np.float32)
        except OSError as exc:
            raise FeatureFileError(f"{self.path}: truncated or corrupt feature file: {exc}") from exc

    def take(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Descriptors of the given rows (any order), len(rows)×D float32."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        if len(rows):
            out[order] = np.asarray(self._desc[rows[order]], dtype=np.float32)
        return out

    def dataset(self, key: str) -> np.ndarray | None:
        """Another dataset of the file (e.g. a shard's ``shard_rows``), read whole; None if absent."""
        if key not in self._f or key in ("names", "descriptors"):
            return None
        return self._f[key][()]

    def blocks(self, rows_per_block: int, with_names: bool = True
               ) -> Iterator[tuple[int, list[str] | None, np.ndarray]]:
        """Yield ``(start, names or None, descriptors)`` for consecutive blocks of rows."""
        n = len(self)
        for start in range(0, n, max(1, int(rows_per_block))):
            stop = min(n, start + rows_per_block)
            yield start, self.names(start, stop) if with_names else None, self.read(start, stop)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> FeatureRows:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_feature_rows(paths: Sequence[str | Path]) -> list[FeatureRows]:
    """Open several feature files lazily and check they can form one database: same model
    fingerprint, dimension, preprocessing and compute type (shards of one extraction, or files of
    one model over several image sets).

    Raises:
        FeatureFileError: a file is not a complete netvlad feature file, or differs from the first
            (the message names both and what differs).
    """
    from netvlad.io.features import FeatureIdentity

    out: list[FeatureRows] = []
    try:
        for p in paths:
            out.append(FeatureRows(p))
            if len(out) == 1:
                continue
            first, this = (FeatureIdentity.of_attrs(f.attrs) for f in (out[0], out[-1]))
            # The image lists differ by design; everything else must not.
            diff = first.differences(this.__class__(**{**this.__dict__, "names_sha256": first.names_sha256,
                                                        "dtype": first.dtype}))
            if diff:
                raise FeatureFileError(f"{out[-1].path}: not from the run of {out[0].path}: it has "
                                       f"{'; '.join(diff)}")
    except BaseException:
        for f in out:
            f.close()
        raise
    return out
