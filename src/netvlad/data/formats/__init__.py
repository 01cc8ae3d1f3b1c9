"""One loader per dataset format, and `load_dataset` that picks the right one.

| spec | format |
|---|---|
| ``*.csv`` | our CSV (`load_csv`) |
| ``*.mat`` | MATLAB ``dbStruct``, v5 or v7.3 (`load_mat`) |
| ``*.npz`` or a Patch-NetVLAD name (``pitts30k_test``, ``tokyo247``) | Patch-NetVLAD (`load_patchnetvlad`) |
| folder with ``database/`` + ``queries/`` of ``@``-named images | `load_at_folder` |
| folder with ``database/`` + ``queries/`` of other photos | EXIF GPS (`load_exif_folder`) |
| MSLS root (``train_val/``, ``test/``) or one MSLS city folder | `load_msls` |
| gmberton's layout: ``images/{train,val,test}/{database,queries}`` | `load_vg` |

A SPEC may carry options and a format prefix: ``[msls:|vg:]PATH[?key=value&...]`` (`parse_spec`):
MSLS takes ``cities`` (a list, or ``train``/``val``/``test``/``present``) and ``subtask``; gmberton's
layout takes ``split`` and ``queries``. ``load_dataset(..., purpose="train")`` gives a format's
training defaults (MSLS: its 22 training cities, no subtask filter).

A SPEC that is both an existing path and a built-in name (a folder ``tokyo247/`` in the working
directory) is the path, with a warning naming both: what is on disk where the user points wins, as
an existing file wins over a model preset of the same name.
"""

from __future__ import annotations

import logging
from pathlib import Path

from netvlad.data.formats.checks import check_msls, check_msls_cities, check_vg
from netvlad.data.formats.csvfmt import load_csv, save_csv
from netvlad.data.formats.folders import is_at_folder, load_at_folder, load_exif_folder, read_exif_gps
from netvlad.data.formats.mat import load_mat, save_mat
from netvlad.data.formats.msls import MSLS_CITIES, SUBTASKS, is_msls_root, load_msls, msls_options
from netvlad.data.formats.patchnetvlad import builtin_names, load_patchnetvlad, resolve_builtin
from netvlad.data.formats.spec import DatasetSpec, parse_spec
from netvlad.data.formats.vg import SUITE, find_suite_dataset, is_vg_root, load_vg, vg_options
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
    "load_msls",
    "load_vg",
    "read_exif_gps",
    "detect_format",
    "check_layout",
    "check_spec",
    "parse_spec",
    "find_suite_dataset",
    "DatasetSpec",
    "FORMATS",
    "MSLS_CITIES",
    "SUBTASKS",
    "SUITE",
]

FORMATS = ("csv", "mat", "patchnetvlad", "at", "exif", "msls", "vg")
PURPOSES = ("eval", "train")

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
    parsed = parse_spec(spec)
    if parsed.fmt is not None:
        return _check_prefixed(parsed)
    spec = parsed.path
    p = Path(spec)
    _warn_if_shadowing(spec)
    if p.is_dir() and is_msls_root(p):
        return "msls"
    if p.is_dir() and is_vg_root(p):
        return "vg"
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


def _check_prefixed(parsed: DatasetSpec) -> str:
    p = Path(parsed.path)
    ok = is_msls_root(p) if parsed.fmt == "msls" else is_vg_root(p)
    if not ok:
        want = ("train_val/<city>/{query,database}/ or test/<city>/... (or one city folder)"
                if parsed.fmt == "msls" else "images/{train,val,test}/{database,queries}/")
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such folder")
        raise ValueError(f"{p}: not a {parsed.fmt} folder (expected {want})")
    return parsed.fmt


def load_dataset(
    spec: str | Path,
    images: str | Path | None = None,
    progress: bool = True,
    purpose: str = "eval",
    options: dict | None = None,
) -> PlaceDataset:
    """Load a place-recognition dataset in any supported format (detected from ``spec``).

    Args:
        spec: a .csv / .mat / .npz file, a Patch-NetVLAD name, a database/+queries/ folder, an MSLS
            folder or a folder in gmberton's layout, optionally ``[fmt:]PATH?key=value&...``.
        images: image root overriding the format's default (see each loader).
        progress: progress bar where loading reads many files (EXIF).
        purpose: ``eval`` or ``train``: which defaults a format with both uses (MSLS: validation
            cities and subtask ``all``, or the training cities without subtask filter).
        options: more SPEC options (``{"cities": "cph,sf", "subtask": "n2d"}``); a key given both
            here and in ``spec`` is an error.

    Returns:
        `PlaceDataset`.

    Raises:
        FileNotFoundError, ValueError: one line naming the file and the problem.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")
    parsed = parse_spec(spec)
    opts = dict(parsed.options)
    for k, v in (options or {}).items():
        if v is None:
            continue
        if k in opts:
            raise ValueError(f"{spec}: option {k!r} given both in the SPEC and as an option")
        opts[k] = v
    fmt = detect_format(spec)
    if fmt == "msls":
        return load_msls(parsed.path, purpose=purpose, images=images, **msls_options(opts))
    if fmt == "vg":
        return load_vg(parsed.path, **vg_options(opts))
    if opts:
        raise ValueError(f"{spec}: option(s) {', '.join(sorted(opts))} apply to MSLS folders (cities, "
                         "subtask) and gmberton's layout (split, queries) only")
    spec = parsed.path
    if fmt == "csv":
        return load_csv(spec, images)
    if fmt == "mat":
        return load_mat(spec, images)
    if fmt == "patchnetvlad":
        return load_patchnetvlad(spec, images)
    if fmt == "at":
        return load_at_folder(spec, images)
    return load_exif_folder(spec, images, progress=progress)


def check_spec(spec: str | Path, images: str | Path | None = None, config=None, purpose: str = "eval"):
    """``dataset check``: the doctor (`netvlad.data.doctor.check_dataset`) on ``spec`` plus the
    format's own findings (`check_layout`); MSLS city by city (`check_msls_cities`).

    Returns:
        ``netvlad.data.doctor.DoctorReport``.
    """
    from netvlad.data.doctor import check_dataset

    parsed = parse_spec(spec)
    if detect_format(spec) == "msls":
        kw = msls_options(parsed.options)
        return check_msls_cities(parsed.path, kw.get("cities"), kw.get("subtask"), purpose, config)
    progress = getattr(config, "progress", True)
    rep = check_dataset(load_dataset(spec, images=images, progress=progress, purpose=purpose), config)
    for finding in check_layout(spec, purpose):
        rep.add(*finding)
    return rep


def check_layout(spec: str | Path, purpose: str = "eval", options: dict | None = None
                 ) -> list[tuple[str, str, str, list[str]]]:
    """Format-specific findings for ``dataset check`` (MSLS metadata, gmberton's layout):
    (severity, code, message, items); empty for other formats."""
    parsed = parse_spec(spec)
    fmt = detect_format(spec)
    opts = {**parsed.options, **{k: v for k, v in (options or {}).items() if v is not None}}
    if fmt == "msls":
        kw = msls_options(opts)
        return check_msls(parsed.path, kw.get("cities"), purpose)
    if fmt == "vg":
        kw = vg_options(opts)
        return check_vg(parsed.path, kw.get("split"), kw.get("queries"))
    return []
