"""Patch-NetVLAD ground truth: ``<name>.npz`` (``utmDb`` N×2, ``utmQ`` Q×2, ``posDistThr``) + two
image-name lists ``<prefix>_imageNames_index.txt`` / ``<prefix>_imageNames_query.txt``.

The installed ``patchnetvlad`` package (0.1.8) ships Pitts30k-test, Tokyo 24/7 and Nordland;
``load_patchnetvlad("pitts30k_test")`` finds them there without importing the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from netvlad.data.formats._common import bad, looks_tokyo247, rel_name, tokyo247_conditions, tokyo247_groups
from netvlad.data.places import PlaceDataset

# The npz files carry no zone; these are where the shipped benchmarks are (Pittsburgh, Tokyo).
KNOWN_ZONES = {"pitts": "17T", "tokyo": "54S"}


def package_dir() -> Path | None:
    """Folder of the installed ``patchnetvlad`` package, or None (found without importing it)."""
    spec = importlib.util.find_spec("patchnetvlad")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def builtin_names() -> list[str]:
    """Ground-truth names shipped by the installed Patch-NetVLAD package (e.g. ``pitts30k_test``)."""
    d = package_dir()
    return sorted(p.stem for p in (d / "dataset_gt_files").glob("*.npz")) if d else []


def resolve_builtin(name: str) -> Path | None:
    d = package_dir()
    if d is None:
        return None
    p = d / "dataset_gt_files" / f"{name}.npz"
    return p if p.is_file() else None


def _find_lists(npz: Path) -> tuple[Path, Path]:
    stem = npz.stem
    prefixes = [stem, stem.split("_")[0]]
    folders = [npz.parent, npz.parent.parent / "dataset_imagenames"]
    for folder in folders:
        for p in prefixes:
            idx, q = folder / f"{p}_imageNames_index.txt", folder / f"{p}_imageNames_query.txt"
            if idx.is_file() and q.is_file():
                return idx, q
    raise FileNotFoundError(
        f"{npz}: image-name lists not found (looked for {prefixes[-1]}_imageNames_index.txt / _query.txt "
        f"in {', '.join(str(f) for f in folders)})"
    )


def _read_list(path: Path) -> list[str]:
    try:
        return [rel_name(s) for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    except UnicodeDecodeError:
        raise bad(path, "contents", "not a UTF-8 text list of image names") from None


def load_patchnetvlad(
    npz: str | Path,
    images: str | Path | None = None,
    index_list: str | Path | None = None,
    query_list: str | Path | None = None,
) -> PlaceDataset:
    """Load Patch-NetVLAD ground truth.

    Args:
        npz: the ``.npz`` file, or a name shipped by the installed package (``pitts30k_test``,
            ``tokyo247``, ``nordland``).
        images: root the listed names are relative to (Patch-NetVLAD's ``dataset_root_dir``);
            default the npz's folder.
        index_list, query_list: name lists; default found next to the npz or in the package's
            ``dataset_imagenames/``.

    Raises:
        ValueError: malformed npz or lists (names the file and the key).
    """
    p = Path(npz)
    if not p.is_file():
        builtin = resolve_builtin(str(npz))
        if builtin is None:
            raise FileNotFoundError(f"{npz}: no such file (Patch-NetVLAD names: {builtin_names() or 'none'})")
        p = builtin
    if index_list is None or query_list is None:
        index_list, query_list = _find_lists(p)
    db, qs = _read_list(Path(index_list)), _read_list(Path(query_list))
    try:
        with np.load(p, allow_pickle=False) as z:
            gt = {k: np.asarray(z[k]) for k in z.files}
    except Exception as exc:
        raise ValueError(f"{p}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    for key in ("utmDb", "utmQ"):
        if key not in gt:
            raise bad(p, key, f"key missing (file holds {sorted(gt)})")
    for key, n, lst in (("utmDb", len(db), index_list), ("utmQ", len(qs), query_list)):
        a = gt[key]
        if a.ndim != 2 or a.shape != (n, 2):
            raise bad(p, key, f"has shape {a.shape}, expected ({n}, 2) for the {n} names in {lst}")
    pos = (
        float(np.asarray(gt.get("posDistThr", 25.0)).ravel()[0]) if gt.get("posDistThr") is not None else 25.0
    )
    name = p.stem
    rules, groups, conditions = frozenset(), None, None
    if looks_tokyo247(name):
        rules = frozenset({"tokyo247_dedup"})
        groups = tokyo247_groups(db)
        conditions = tokyo247_conditions(qs)
    root = Path(images) if images is not None else p.parent
    zone = next((z for k, z in KNOWN_ZONES.items() if name.lower().startswith(k)), None)
    return PlaceDataset(
        name=name,
        db_root=root,
        query_root=root,
        db_images=db,
        query_images=qs,
        db_utm=gt["utmDb"].astype(np.float64),
        query_utm=gt["utmQ"].astype(np.float64),
        zone=zone,
        pos_radius=pos,
        rules=rules,
        db_groups=groups,
        query_conditions=conditions,
    )
