"""hloc's global-feature layout: a group per image name holding ``global_descriptor``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from netvlad._atomic import atomic_write
from netvlad.io.features import FeatureFileError, _open_h5, read_features


def export_hloc(features: str | Path, out: str | Path, as_half: bool = False) -> Path:
    """Write hloc's global-feature layout: one group per image name (names containing '/' become
    nested groups, as in hloc) holding a 1-D ``global_descriptor`` dataset. Atomic.

    Bad-image rows (NaN) are left out, as hloc has no notion of a missing descriptor.
    """
    names, desc, attrs = read_features(features)
    out = Path(out)
    bad = set(attrs.get("bad_images", []))
    dtype = np.float16 if as_half or attrs.get("dtype") == "float16" else np.float32

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            for name, d in zip(names, desc):
                if name in bad:
                    continue
                key = name.strip("/")
                if key in f:
                    raise FeatureFileError(f"{features}: duplicate image name {name!r}")
                f.create_group(key).create_dataset("global_descriptor", data=d.astype(dtype))

    return atomic_write(out, write)


def read_hloc(path: str | Path, names: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Read hloc global descriptors: ``(names, N×D float32)``; names sorted unless ``names`` is given."""
    path = Path(path)
    with _open_h5(path) as f:
        found: list[str] = []
        f.visititems(lambda n, obj: found.append(obj.parent.name.strip("/"))
                     if isinstance(obj, h5py.Dataset) and n.split("/")[-1] == "global_descriptor" else None)
        if not found:
            raise FeatureFileError(
                f"{path}: no 'global_descriptor' datasets (not an hloc global-feature file)")
        order = sorted(found) if names is None else [str(n).strip("/") for n in names]
        missing = [n for n in order if n not in f or "global_descriptor" not in f[n]]
        if missing:
            raise FeatureFileError(
                f"{path}: no global_descriptor for {len(missing)} names, e.g. {missing[0]!r}")
        desc = np.stack([np.asarray(f[n]["global_descriptor"][()], dtype=np.float32).reshape(-1)
                         for n in order])
    return order, desc
