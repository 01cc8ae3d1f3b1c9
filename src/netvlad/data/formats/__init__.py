"""One loader per dataset format, and `load_dataset` that picks the right one.

| spec | format |
|---|---|
| ``*.csv`` | our CSV (`load_csv`) |
| ``*.mat`` | MATLAB ``dbStruct``, v5 or v7.3 (`load_mat`) |
| ``*.npz`` or a Patch-NetVLAD name (``pitts30k_test``, ``tokyo247``) | Patch-NetVLAD (`load_patchnetvlad`) |
| folder with ``database/`` + ``queries/`` of ``@``-named images | `load_at_folder` |
| folder with ``database/`` + ``queries/`` of other photos | EXIF GPS (`load_exif_folder`) |

A SPEC that is both an existing path and a built-in name (a folder ``tokyo247/`` in the working
directory) is the path, with a warning naming both: what is on disk where the user points wins, as
an existing file wins over a model preset of the same name.
"""

from __future__ import annotations

import logging
from pathlib import Path

from netvlad.data.formats.csvfmt import load_csv, save_csv
from netvlad.data.formats.folders import is_at_folder, load_at_folder, load_exif_folder, read_exif_gps
from netvlad.data.formats.mat import load_mat, save_mat
from netvlad.data.formats.patchnetvlad import builtin_names, load_patchnetvlad, resolve_builtin
from netvlad.data.places import PlaceDataset

__all__ = [
    "load_dataset",
    "load_csv",
    "save_csv",
    "load_mat",
    "save_mat",
    "load_at_folder",
    "load_exif_folder",
    "load_patchnetvlad",
    "read_exif_gps",
    "detect_format",
    "FORMATS",
]

FORMATS = ("csv", "mat", "patchnetvlad", "at", "exif")

logger = logging.getLogger(__name__)


def _warn_if_shadowing(spec: str | Path) -> None:
    # Only a bare name can mean either: "./tokyo247" or "data/tokyo247" is unambiguously a path.
    name = str(spec)
    if "/" in name or "\\" in name or not Path(name).exists():
        return
    builtin = resolve_builtin(name)
    if builtin is not None:
        kind = "folder" if Path(name).is_dir() else "file"
        logger.warning("%s: the %s of that name in the working directory was taken, not the built-in "
                       "Patch-NetVLAD dataset %s (%s); write ./%s for the %s, or that .npz path for the "
                       "built-in one", name, kind, name, builtin, name, kind)


def detect_format(spec: str | Path) -> str:
    """Which loader handles ``spec``: one of `FORMATS`.

    An existing file or folder wins over a Patch-NetVLAD name; when ``spec`` is both, a warning
    names both.

    Raises:
        FileNotFoundError: nothing at ``spec`` and not a Patch-NetVLAD name.
        ValueError: an existing file or folder in no known format.
    """
    p = Path(spec)
    _warn_if_shadowing(spec)
    if p.is_file():
        ext = p.suffix.lower()
        if ext in (".csv", ".mat", ".npz"):
            return {".csv": "csv", ".mat": "mat", ".npz": "patchnetvlad"}[ext]
        raise ValueError(f"{p}: unknown dataset file type {ext or '(none)'} (expected .csv, .mat or .npz)")
    if p.is_dir():
        from netvlad.data.formats.folders import split_dirs

        split_dirs(p)  # raises a ValueError naming the expected layout
        return "at" if is_at_folder(p) else "exif"
    if resolve_builtin(str(spec)) is not None:
        return "patchnetvlad"
    raise FileNotFoundError(
        f"{spec}: no such file or folder, and not a Patch-NetVLAD name "
        f"({', '.join(builtin_names()) or 'none'})"
    )


def load_dataset(spec: str | Path, images: str | Path | None = None, progress: bool = True) -> PlaceDataset:
    """Load a place-recognition dataset in any supported format (detected from ``spec``).

    Args:
        spec: a .csv / .mat / .npz file, a Patch-NetVLAD name, or a database/+queries/ folder.
        images: image root overriding the format's default (see each loader).
        progress: progress bar where loading reads many files (EXIF).

    Returns:
        `PlaceDataset`.

    Raises:
        FileNotFoundError, ValueError: one line naming the file and the problem.
    """
    fmt = detect_format(spec)
    if fmt == "csv":
        return load_csv(spec, images)
    if fmt == "mat":
        return load_mat(spec, images)
    if fmt == "patchnetvlad":
        return load_patchnetvlad(spec, images)
    if fmt == "at":
        return load_at_folder(spec, images)
    return load_exif_folder(spec, images, progress=progress)
