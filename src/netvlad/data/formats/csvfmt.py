"""Our CSV format: one row per image, a header row, optional ``# key: value`` metadata lines on top.

Columns (any order, case-insensitive):

- ``split``: ``db`` or ``query`` (``database``/``queries`` also accepted);
- ``path``: image path relative to the CSV's folder (or to ``images_root`` / the ``images`` argument);
- coordinates: ``lat``,``lon`` (WGS84 degrees, projected to UTM) or ``easting``,``northing``
  [,``zone``] (metres; zone like ``17T``; an empty or absent zone means a local metric frame);
- optional: ``timestamp`` (number), ``heading`` (degrees), ``group`` (panorama id, for
  ``tokyo247_dedup``), ``condition`` (e.g. day/sunset/night, queries).

Metadata lines (before the header): ``# name: pitts30k_test``, ``# pos_radius: 25``,
``# train_pos_radius: 10``, ``# trivial_radius: 1``, ``# rules: tokyo247_dedup``, ``# zone: 17T``
(forces the projection zone), ``# images_root: ../images`` (relative to the CSV's folder).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from netvlad._atomic import atomic_write_text
from netvlad.data.formats._common import (
    bad,
    check_latlon,
    latlon_to_one_zone,
    parse_float,
    utm_to_one_zone,
)
from netvlad.data.places import KNOWN_RULES, PlaceDataset
from netvlad.geo import parse_zone

_SPLITS = {"db": "db", "database": "db", "query": "query", "queries": "query", "q": "query"}
_META_KEYS = {"name", "pos_radius", "train_pos_radius", "trivial_radius", "rules", "zone", "images_root"}


def _read_rows(path: Path):
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise bad(path, "encoding", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = text.splitlines()
    meta, start = {}, 0
    while start < len(lines) and (lines[start].lstrip().startswith("#") or not lines[start].strip()):
        body = lines[start].lstrip().lstrip("#").strip()
        if ":" in body:
            k, v = body.split(":", 1)
            k = k.strip().lower()
            if k in _META_KEYS:
                meta[k] = v.strip()
        start += 1
    reader = csv.reader(io.StringIO("\n".join(lines[start:])))
    try:
        header = next(reader)
    except StopIteration:
        raise bad(path, "header", "file has no header row") from None
    header = [h.strip().lower() for h in header]
    rows = []
    for i, row in enumerate(reader):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise bad(path, f"line {start + 2 + i}", f"has {len(row)} fields, header has {len(header)}")
        rows.append((start + 2 + i, dict(zip(header, (c.strip() for c in row)))))
    return meta, header, rows


def _meta_float(meta, key, path, default):
    return parse_float(meta[key], path, f"metadata '{key}'") if key in meta else default


def load_csv(path: str | Path, images: str | Path | None = None) -> PlaceDataset:
    """Load our CSV format (see module docstring / README).

    Args:
        path: the CSV file.
        images: root for the ``path`` column; default ``images_root`` metadata, else the CSV's folder.

    Raises:
        ValueError: one line naming the file, the line and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    meta, header, rows = _read_rows(path)
    kind = _coordinate_kind(path, header)
    data = {"db": [], "query": []}
    valid_zones: set[str] = set()
    for line, r in rows:
        split, entry = _parse_row(path, line, r, kind, valid_zones)
        data[split].append(entry)
    utm, zone, zones, notes = _project(path, data, kind, meta)
    n_db = len(data["db"])
    timestamps, headings = "timestamp" in header, "heading" in header
    try:
        return PlaceDataset(
            name=meta.get("name") or path.stem,
            db_root=_images_root(path, images, meta),
            query_root=_images_root(path, images, meta),
            db_images=[e[0] for e in data["db"]],
            query_images=[e[0] for e in data["query"]],
            db_utm=utm[:n_db],
            query_utm=utm[n_db:],
            zone=zone,
            db_timestamps=_optional_column(data["db"], "timestamp") if timestamps else None,
            query_timestamps=_optional_column(data["query"], "timestamp") if timestamps else None,
            db_headings=_optional_column(data["db"], "heading") if headings else None,
            query_headings=_optional_column(data["query"], "heading") if headings else None,
            pos_radius=_meta_float(meta, "pos_radius", path, 25.0),
            train_pos_radius=_meta_float(meta, "train_pos_radius", path, 10.0),
            trivial_radius=_meta_float(meta, "trivial_radius", path, 1.0),
            rules=_rules(path, meta),
            db_groups=_db_groups(path, header, data["db"]),
            query_conditions=[e[5]["condition"] for e in data["query"]] if "condition" in header else None,
            db_zones=None if zones is None else zones[:n_db],
            query_zones=None if zones is None else zones[n_db:],
            notes=notes,
        )
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _coordinate_kind(path: Path, header: list[str]) -> str:
    """"latlon" or "utm", from the columns; the split and path columns must be there."""
    for col in ("split", "path"):
        if col not in header:
            raise bad(path, f"column '{col}'", f"missing (header: {','.join(header)})")
    if {"lat", "lon"} <= set(header):
        return "latlon"
    if {"easting", "northing"} <= set(header):
        return "utm"
    need = "need 'lat','lon' or 'easting','northing'[,'zone']"
    raise bad(path, "columns", f"{need} (header: {','.join(header)})")


def _parse_row(path: Path, line: int, r: dict, kind: str, valid_zones: set[str]) -> tuple[str, tuple]:
    """One data row → (split, (name, a, b, zone, line, optional columns)); `valid_zones` caches
    the zone strings already checked."""
    split = _SPLITS.get(r["split"].lower())
    if split is None:
        raise bad(path, f"line {line}: column 'split'",
                  f"unknown value {r['split']!r} (expected db or query)")
    if not r["path"]:
        raise bad(path, f"line {line}: column 'path'", "empty")
    if kind == "latlon":
        a = parse_float(r["lat"], path, f"line {line}: column 'lat'")
        b = parse_float(r["lon"], path, f"line {line}: column 'lon'")
        check_latlon(a, b, path, f"line {line}")
        zone = None
    else:
        a = parse_float(r["easting"], path, f"line {line}: column 'easting'")
        b = parse_float(r["northing"], path, f"line {line}: column 'northing'")
        zone = r.get("zone") or None
        if zone is not None and zone not in valid_zones:
            try:
                parse_zone(zone)
            except ValueError as exc:
                raise bad(path, f"line {line}: column 'zone'", str(exc)) from None
            valid_zones.add(zone)
    opt = {}
    for col in ("timestamp", "heading"):
        if col in r:
            opt[col] = parse_float(r[col], path, f"line {line}: column '{col}'") if r[col] else np.nan
    opt["group"] = r.get("group", "")
    opt["condition"] = r.get("condition", "")
    return split, (r["path"], a, b, zone, line, opt)


def _project(path: Path, data: dict, kind: str, meta: dict):
    """(utm N×2, zone, per-image zones or None, notes) of all rows, db first, in one UTM zone."""
    notes: list[str] = []
    forced = meta.get("zone") or None
    if forced:
        try:
            parse_zone(forced)
        except ValueError as exc:
            raise bad(path, "metadata 'zone'", str(exc)) from None
    every = data["db"] + data["query"]
    coords = np.array([[e[1], e[2]] for e in every], dtype=np.float64).reshape(-1, 2)
    if kind == "latlon":
        utm, zone, own, notes = latlon_to_one_zone(coords[:, 0], coords[:, 1], path, forced)
        return utm, zone, own, notes
    given = [e[3] for e in every]
    if all(z is None for z in given):
        return coords, forced, None, notes
    if any(z is None for z in given):
        line = next(e[4] for e in every if e[3] is None)
        raise bad(path, f"line {line}: column 'zone'", "empty while other rows have a zone")
    return utm_to_one_zone(coords, given, path, forced)


def _optional_column(entries: list[tuple], key: str):
    """The values of an optional numeric column (int64 when all are whole numbers), or None."""
    vals = [e[5].get(key) for e in entries]
    if not vals or vals[0] is None:
        return None
    a = np.asarray(vals, dtype=np.float64)
    return a.astype(np.int64) if np.all(np.isfinite(a)) and np.all(a == np.round(a)) else a


def _db_groups(path: Path, header: list[str], db_entries: list[tuple]):
    """The ``group`` column of the database rows (numbers as given, other labels numbered), or None."""
    if "group" not in header:
        return None
    g = [e[5]["group"] for e in db_entries]
    if any(not x for x in g):
        raise bad(path, "column 'group'", "must be set for every db row when present")
    if all(x.lstrip("-").isdigit() for x in g):
        return np.asarray([int(x) for x in g], dtype=np.int64)
    return np.unique(np.asarray(g), return_inverse=True)[1]


def _rules(path: Path, meta: dict) -> frozenset[str]:
    rules = frozenset(r.strip() for r in meta.get("rules", "").split(",") if r.strip())
    unknown = rules - KNOWN_RULES
    if unknown:
        raise bad(path, "metadata 'rules'",
                  f"unknown rule(s) {sorted(unknown)}; known: {sorted(KNOWN_RULES)}")
    return rules


def _images_root(path: Path, images, meta: dict) -> Path:
    """`images`, else the ``images_root`` metadata (relative to the CSV), else the CSV's folder."""
    if images is not None:
        return Path(images)
    if "images_root" in meta:
        return Path(os.path.normpath(path.parent / meta["images_root"]))
    return path.parent


def _fmt(x) -> str:
    if x is None:
        return ""
    x = float(x)
    if not np.isfinite(x):
        return ""
    return str(int(x)) if x == int(x) and abs(x) < 2**53 else repr(x)


def save_csv(ds: PlaceDataset, path: str | Path) -> Path:
    """Write ``ds`` in our CSV format (easting/northing/zone; every optional field that is set). Atomic.

    Paths are written relative to one root: the common folder of ``db_root`` and ``query_root``,
    recorded as ``# images_root`` (relative to the CSV's folder) unless it is that folder.
    Coordinates are written with ``repr`` (exact float64 round trip).

    Returns:
        ``path``.
    """
    path = Path(path)
    out_dir = path.resolve().parent
    db_root, q_root = ds.db_root.resolve(), ds.query_root.resolve()
    root = db_root if db_root == q_root else Path(os.path.commonpath([db_root, q_root]))

    def rel(r: Path, name: str) -> str:
        return (r / name).relative_to(root).as_posix() if r != root else name

    buf = io.StringIO()
    buf.write(f"# name: {ds.name}\n")
    buf.write(f"# pos_radius: {ds.pos_radius!r}\n# train_pos_radius: {ds.train_pos_radius!r}\n")
    buf.write(f"# trivial_radius: {ds.trivial_radius!r}\n")
    if ds.rules:
        buf.write(f"# rules: {','.join(sorted(ds.rules))}\n")
    if root != out_dir:
        buf.write(f"# images_root: {Path(os.path.relpath(root, out_dir)).as_posix()}\n")
    cols = ["split", "path", "easting", "northing", "zone"]
    has_ts = ds.db_timestamps is not None and ds.query_timestamps is not None
    has_hd = ds.db_headings is not None or ds.query_headings is not None
    cols += ["timestamp"] * has_ts + ["heading"] * has_hd
    cols += ["group"] * (ds.db_groups is not None) + ["condition"] * (ds.query_conditions is not None)
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for split, names, r, utm, ts, hd in (
        ("db", ds.db_images, db_root, ds.db_utm, ds.db_timestamps, ds.db_headings),
        ("query", ds.query_images, q_root, ds.query_utm, ds.query_timestamps, ds.query_headings),
    ):
        for i, name in enumerate(names):
            row = [split, rel(r, name), repr(float(utm[i, 0])), repr(float(utm[i, 1])), ds.zone or ""]
            if has_ts:
                row.append(_fmt(ts[i]))
            if has_hd:
                row.append("" if hd is None else _fmt(hd[i]))
            if ds.db_groups is not None:
                row.append(str(int(ds.db_groups[i])) if split == "db" else "")
            if ds.query_conditions is not None:
                row.append(ds.query_conditions[i] if split == "query" else "")
            w.writerow(row)
    return atomic_write_text(path, buf.getvalue())
