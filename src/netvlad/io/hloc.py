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


def read_image_lists(path: str | Path) -> list[str]:
    """Image names from hloc list file(s), as hloc's ``parse_image_lists``: the last component of
    ``path`` may be a glob pattern (every matching file is read, in sorted order, where hloc takes
    the file system's order); in each file blank lines and lines starting with ``#`` are skipped and
    a name is a line's first whitespace-separated field (intrinsics may follow it).

    Raises:
        FileNotFoundError: no file matches. ValueError: a file that is not UTF-8 text, or no names.
    """
    path = Path(path)
    files = sorted(p for p in path.parent.glob(path.name) if p.is_file())
    if not files:
        raise FileNotFoundError(f"{path}: image list not found")
    names: list[str] = []
    for file in files:
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ValueError(f"{file}: not a UTF-8 text list of image names") from None
        names += [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]
    if not names:
        raise ValueError(f"{path}: no image names (blank and '#' lines only)")
    return names


def select_names(names_all: Sequence[str], prefix: str | Sequence[str] | None = None,
                 names: Sequence[str] | None = None, what: str = "images") -> list[str]:
    """hloc's ``parse_names``: the names of ``names_all`` that start with ``prefix`` (one prefix or
    several), else ``names`` (e.g. :func:`read_image_lists`) as given, else all of ``names_all``.

    hloc silently ignores the list when a prefix is given; here giving both is an error.

    Raises:
        ValueError: both given, or no name has the prefix.
    """
    if prefix is not None and names is not None:
        raise ValueError(f"{what}: give a prefix or a list of names, not both")
    if prefix is not None:
        prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
        found = [n for n in names_all if n.startswith(prefixes)]
        if not found:
            raise ValueError(f"{what}: no image name starts with {' or '.join(map(repr, prefixes))}")
        return found
    if names is not None:
        return [str(n) for n in names]
    return list(names_all)
