"""Format-specific findings for ``netvlad dataset check``: MSLS's metadata files and its cities one by
one, and gmberton's layout with the downloader's per-dataset rules (SPED, Nordland).

Findings are (severity, code, message, items) tuples, as ``DoctorReport.add`` takes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from netvlad.data.formats.folders import parse_at_name
from netvlad.data.formats.msls import SPLITS as MSLS_SPLITS
from netvlad.data.formats.msls import (
    SUBTASKS,
    dataset_name,
    load_msls,
    read_table,
    resolve_cities,
    split_keys,
)
from netvlad.data.formats.vg import SPLITS, query_dir, split_dir

# ----------------------------------------------------------------------------- MSLS


def check_msls(root: str | Path, cities=None, purpose: str = "eval") -> list[tuple[str, str, str, list[str]]]:
    """Layout findings for ``dataset check``: (severity, code, message, items).

    Per city and split: files present, the same keys in every metadata file, and images present
    for the keys (counted; the doctor names them); how many panoramas and subtask rows there are.
    """
    root, chosen = resolve_cities(Path(root), cities, purpose)
    found = []
    for city, folder in chosen:
        for _, sub in MSLS_SPLITS:
            d = folder / sub
            files = ("seq_info.csv", "subtask_index.csv") if not (d / "postprocessed.csv").is_file() else (
                "raw.csv", "postprocessed.csv", "seq_info.csv", "subtask_index.csv")
            missing = [f for f in files if not (d / f).is_file()]
            if missing:
                found.append(("error", "msls-metadata", f"{city}/{sub}: metadata missing", missing))
                continue
            tables = {f: read_table(d / f) for f in files}
            base = files[1]  # postprocessed.csv, or subtask_index.csv for a test city
            keys = split_keys(tables[base], d)
            for f, t in tables.items():
                if f == base:
                    continue
                if t.has("key") and set(t.column("key")) != set(keys):
                    diff = sorted(set(keys) ^ set(k.strip() for k in t.column("key")))
                    found.append(("error", "msls-keys", f"{city}/{sub}/{f}: keys differ from {base} "
                                  f"({len(diff)} key(s))", diff))
                elif not t.has("key") and len(t.rows) != len(keys):
                    found.append(("error", "msls-keys", f"{city}/{sub}/{f}: {len(t.rows)} rows for "
                                  f"{len(keys)} images in {base}", []))
            sub_t = tables["subtask_index.csv"]
            absent = [s for s in SUBTASKS if not sub_t.has(s)]
            if absent:
                found.append(("warning", "msls-subtasks", f"{city}/{sub}/subtask_index.csv lacks "
                              "subtask column(s)", absent))
    return found


def check_msls_cities(root: str | Path, cities=None, subtask: str | None = None, purpose: str = "eval",
                      config=None):
    """``dataset check`` of MSLS: the doctor on each city alone (its own coordinates: no outliers from
    the shift between cities), then :func:`check_msls`'s layout findings.

    Test cities carry no coordinates: that is reported as information, not as an error. Queries
    without a positive are left out by MSLS's protocol (they are failures only under ``netvlad``).

    Returns:
        ``netvlad.data.doctor.DoctorReport`` for all the cities, each finding prefixed with its city.
    """
    from netvlad.data.doctor import DoctorReport, check_dataset

    base, chosen = resolve_cities(Path(root), cities, purpose)
    rep = DoctorReport(dataset_name([c for c, _ in chosen], subtask, purpose))
    for city, folder in chosen:
        try:
            ds = load_msls(folder, subtask=subtask, purpose=purpose)
        except ValueError as exc:  # e.g. the subtask leaves this city empty
            rep.add("warning", "msls-city", f"{city}: {exc}")
            continue
        no_coords = bool(np.isnan(ds.db_utm).all())
        for f in check_dataset(ds, config).findings:
            if no_coords and f.code == "bad-coordinates":
                f.severity, f.code = "info", "msls-test-city"
                f.message = "a test city: no coordinates (the challenge server has them)"
                f.items, f.count = [], 0
            elif f.code == "no-positive":
                f.message += "; MSLS's protocol leaves them out of the denominator"
            if not f.message.startswith(f"{city}:"):
                f.message = f"{city}: {f.message}"
            rep.findings.append(f)
    for finding in check_msls(base, [c for c, _ in chosen], purpose):
        rep.add(*finding)
    return rep


# ----------------------------------------------------------------------------- gmberton's layout


def check_vg(root: str | Path, split: str | None = None, queries: str | None = None
             ) -> list[tuple[str, str, str, list[str]]]:
    """Layout findings for ``dataset check``: (severity, code, message, items).

    Every split present has ``database/`` and ``queries/``; every ``.jpg`` has an ``@`` name with
    numeric easting/northing; other files are named (the benchmark ignores them); per-dataset rules
    of the downloader: SPED and Nordland pair each query with the database image of the same
    number, Nordland's consecutive frames lie 25/10.5 m apart.
    """
    root = Path(root)
    found = []
    present = [s for s in SPLITS if split_dir(root, s) is not None]
    for s in present:
        d = split_dir(root, s)
        try:
            qname = query_dir(d, queries)
        except FileNotFoundError as exc:
            found.append(("error", "vg-layout", str(exc), []))
            continue
        for sub in ("database", qname):
            files = sorted(p for p in (d / sub).rglob("*") if p.is_file())
            other = [p.relative_to(d).as_posix() for p in files if not p.name.endswith(".jpg")]
            if other:
                found.append(("warning", "vg-not-jpg", f"{s}/{sub}: {len(other)} file(s) the VG benchmark "
                              "ignores (it reads **/*.jpg only)", other))
            badnames = []
            for p in files:
                if p.name.endswith(".jpg"):
                    try:
                        parse_at_name(p.name, d / sub)
                    except ValueError as exc:
                        badnames.append(f"{p.relative_to(d).as_posix()} ({exc})")
            if badnames:
                found.append(("error", "vg-bad-name", f"{s}/{sub}: file names without @easting@northing@",
                              badnames))
    folder = root.parent.name if root.name == "processed" else root.name
    if folder in ("sped", "nordland") and present:
        found += _check_paired(root, present[0], folder)
    return found


def _check_paired(root: Path, split: str, folder: str) -> list[tuple[str, str, str, list[str]]]:
    """SPED / Nordland: query i and database image i share a number (the pano_id field)."""
    d = split_dir(root, split)
    out = []
    ids = {}
    for sub in ("database", "queries"):
        recs = [parse_at_name(p.name, d / sub) for p in sorted((d / sub).rglob("*.jpg"))]
        ids[sub] = {r.get("pano_id"): (r["easting"], r["northing"]) for r in recs}
    unpaired = sorted(set(ids["database"]) ^ set(ids["queries"]), key=str)
    if unpaired:
        out.append(("warning", "vg-unpaired", f"{folder}: {len(unpaired)} image number(s) only on one side "
                    "(the downloader pairs each query with the database image of the same number)",
                    [str(u) for u in unpaired]))
    if folder == "nordland" and len(ids["database"]) > 1:
        north = np.sort(np.array([v[1] for v in ids["database"].values()]))
        step = np.diff(north)
        want = 25.0 / 10.5
        # Names hold the northing with one decimal, so steps vary by up to 0.1 m.
        if np.any(np.abs(step - want) > 0.11):
            out.append(("warning", "vg-nordland-spacing", f"nordland: consecutive frames are not "
                        f"{want:.2f} m apart (25 m = 10 frames in the downloader's layout)",
                        [f"{x:.2f} m" for x in np.unique(np.round(step, 2))[:5]]))
    return out
