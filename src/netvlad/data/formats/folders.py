"""Image folders: ``@``-named files (VPR-datasets-downloader convention) and EXIF-GPS photos.

Both expect ``database/`` and ``queries/`` (or ``query/``) sub-folders, searched recursively.

``@`` names (gmberton/VPR-datasets-downloader, used by deep-visual-geo-localization-benchmark and
VPR-methods-evaluation) split on '@' as:
``@UTM_east@UTM_north@UTM_zone_number@UTM_zone_letter@lat@lon@pano_id@tile_num@heading@pitch@roll@height@timestamp@note@.jpg``;
only easting and northing are required (``@123.4@567.8@.jpg`` is valid), the others may be empty.
"""

from __future__ import annotations

import datetime as _dt
import functools
import re
from collections import Counter
from pathlib import Path

import numpy as np

from netvlad.data.formats._common import (
    bad,
    check_latlon,
    latlon_to_one_zone,
    log,
    looks_tokyo247,
    parse_float,
    utm_to_one_zone,
    zone_key,
)
from netvlad.data.images import list_images
from netvlad.data.places import PlaceDataset

AT_FIELDS = (
    "",
    "easting",
    "northing",
    "zone_number",
    "zone_letter",
    "lat",
    "lon",
    "pano_id",
    "tile_num",
    "heading",
    "pitch",
    "roll",
    "height",
    "timestamp",
    "note",
)
QUERY_DIRS = ("queries", "query")


def split_dirs(root: Path, queries: str | None = None) -> tuple[Path, Path]:
    """``root/database`` and ``root/queries`` (or ``root/query``, or the ``queries`` folder named);
    ValueError naming what is missing."""
    db = root / "database"
    q = next((root / d for d in ((queries,) if queries else QUERY_DIRS) if (root / d).is_dir()), None)
    if not db.is_dir() or q is None:
        subs = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        want = f"{queries}/" if queries else "queries/"
        raise ValueError(f"{root}: expected sub-folders database/ and {want} (found {subs or 'none'})")
    return db, q


def is_at_folder(root: Path) -> bool:
    try:
        db, _ = split_dirs(root)
    except ValueError:
        return False
    names = list_images(db)
    return bool(names) and Path(names[0]).name.startswith("@")


def parse_at_name(name: str, source) -> dict:
    """Fields of one ``@``-name (see module docstring). Numbers are floats, empty fields absent."""
    base = Path(name).name
    parts = base.split("@")
    if len(parts) < 4 or parts[0] != "":
        raise bad(source, "file name", f"{name!r} is not '@easting@northing@...@.ext'")
    out = {
        "easting": parse_float(parts[1], source, f"{name}: easting"),
        "northing": parse_float(parts[2], source, f"{name}: northing"),
    }
    fields = parts[1:-1]  # the last part is the extension
    for i, key in enumerate(AT_FIELDS[1:], start=0):
        if i < len(fields) and fields[i] != "" and key not in out:
            if key in ("lat", "lon", "heading", "pitch", "roll", "height", "timestamp"):
                out[key] = parse_float(fields[i], source, f"{name}: {key}")
            elif key == "zone_number":
                if not fields[i].isdigit() or not 1 <= int(fields[i]) <= 60:
                    raise bad(source, f"{name}: zone_number", f"{fields[i]!r} is not 1..60")
                out[key] = int(fields[i])
            else:
                out[key] = fields[i]
    return out


def _far_zones(zones: list[str]) -> bool:
    """Zone numbers further apart than neighbours (e.g. MSLS's cities): no one projection serves them.
    Neighbouring zones, or one zone number on both sides of the equator, are re-projected."""
    nums = sorted({zone_key(z)[0] for z in zones})
    return max((min(abs(a - b), 60 - abs(a - b)) for a in nums for b in nums), default=0) > 1


def _msls_conditions(notes: list) -> list[str] | None:
    """``day_forward`` etc. from the note field ``<day|night>_<view>_<city>`` that
    VPR-datasets-downloader's format_mapillary.py writes, when every query has one."""
    out = []
    for n in notes:
        m = _MSLS_NOTE.match(n or "")
        if not m:
            return None
        out.append(f"{m.group(1)}_{m.group(2)}")
    return out or None


_MSLS_NOTE = re.compile(r"^(day|night)_([a-z]+)_[^@]+$")


def load_at_folder(
    root: str | Path,
    images: str | Path | None = None,
    *,
    name: str | None = None,
    queries: str | None = None,
    extensions: tuple[str, ...] | None = None,
    raw_utm: bool = False,
) -> PlaceDataset:
    """Load a ``database/`` + ``queries/`` folder of ``@``-named images.

    ``images`` is accepted for symmetry and ignored: the folder is the image root.
    Files from neighbouring UTM zones are re-projected into the majority zone (via lat/lon), with a
    warning; zones far apart (MSLS's cities on several continents) keep their own easting/northing,
    as the VG benchmark reads them, since no projection serves them all.

    Args:
        name: the dataset's name (default: the folder's name).
        queries: the query sub-folder (default ``queries``, else ``query``).
        extensions: only files with these suffixes (case-sensitive, e.g. ``(".jpg",)`` as the VG
            benchmark's ``glob("**/*.jpg")``); default every image type, any case.
        raw_utm: keep every file's easting/northing as written, whatever its zone (the VG benchmark).
    """
    root = Path(root)
    db_dir, q_dir = split_dirs(root, queries)
    recs = {}
    notes: list[str] = []
    for split, d in (("db", db_dir), ("query", q_dir)):
        names = _listed(d, extensions, notes)
        recs[split] = (names, [parse_at_name(n, d) for n in names])
    utm, zone, zones = _at_coordinates(root, recs["db"][1] + recs["query"][1], raw_utm, notes)
    n_db = len(recs["db"][0])
    opt = functools.partial(_optional_field, recs)
    groups = None
    panos = [r.get("pano_id") for r in recs["db"][1]]
    if panos and all(panos):
        _, groups = np.unique(np.asarray(panos), return_inverse=True)
    name = name or root.name
    rules = frozenset({"tokyo247_dedup"}) if groups is not None and looks_tokyo247(name) else frozenset()
    db_ts, q_ts = opt("db", "timestamp"), opt("query", "timestamp")
    if (db_ts is None) != (q_ts is None):
        db_ts = q_ts = None
    conditions = _msls_conditions([r.get("note") for r in recs["query"][1]])
    return PlaceDataset(
        name=name,
        db_root=db_dir,
        query_root=q_dir,
        db_images=recs["db"][0],
        query_images=recs["query"][0],
        db_utm=utm[:n_db],
        query_utm=utm[n_db:],
        zone=zone,
        db_timestamps=db_ts,
        query_timestamps=q_ts,
        db_headings=opt("db", "heading"),
        query_headings=opt("query", "heading"),
        rules=rules,
        protocol="msls" if conditions is not None else "netvlad",
        db_groups=groups,
        query_conditions=conditions,
        db_zones=None if zones is None else zones[:n_db],
        query_zones=None if zones is None else zones[n_db:],
        notes=notes,
    )


def _listed(folder: Path, extensions: tuple[str, ...] | None, notes: list[str]) -> list[str]:
    """The image names of `folder`, only those ending in `extensions` when given (noted)."""
    names = list_images(folder)
    if extensions is None:
        return names
    kept = [n for n in names if n.endswith(extensions)]
    if len(kept) < len(names):
        notes.append(f"{folder}: {len(names) - len(kept)} image file(s) not ending in "
                     f"{'/'.join(extensions)} ignored, as the VG benchmark ignores them")
    return kept


def _at_coordinates(root: Path, every: list[dict], raw_utm: bool, notes: list[str]):
    """(utm N×2, zone, per-image zones or None) of the parsed names: one zone where the zones are
    neighbours, the coordinates as written where they are far apart (or `raw_utm`)."""
    coords = np.array([[r["easting"], r["northing"]] for r in every], dtype=np.float64).reshape(-1, 2)
    zones = [f"{r['zone_number']}{r.get('zone_letter', '')}" if "zone_number" in r else None for r in every]
    if not every or any(z is None for z in zones):
        return coords, None, None
    if not (raw_utm or _far_zones(zones)):
        utm, zone, zones, zone_notes = utm_to_one_zone(coords, zones, root)
        notes += zone_notes
        return utm, zone, zones
    counts = Counter(zones)
    if len({zone_key(z) for z in zones}) > 1:
        notes.append(f"{root}: UTM zones {', '.join(f'{z} ({c})' for z, c in sorted(counts.items()))} "
                     "kept as written (easting/northing compared as they are, as the VG benchmark does)")
        return coords, None, None
    return coords, counts.most_common(1)[0][0], zones


def _optional_field(recs: dict, split: str, key: str) -> np.ndarray | None:
    """A field of the parsed names of `split` (NaN where a name lacks it), or None if none has it."""
    vals = [r.get(key) for r in recs[split][1]]
    if all(v is None for v in vals):
        return None
    return np.array([np.nan if v is None else v for v in vals], dtype=np.float64)


# ----------------------------------------------------------------------------- EXIF GPS

GPS_IFD = 0x8825
EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 36867


def _rational(x) -> float:
    if isinstance(x, tuple) and len(x) == 2:
        return float(x[0]) / float(x[1])
    return float(x)


def _dms(v) -> float:
    parts = [_rational(p) for p in (v if isinstance(v, (tuple, list)) else (v,))]
    parts += [0.0] * (3 - len(parts))
    return parts[0] + parts[1] / 60.0 + parts[2] / 3600.0


def read_exif_gps(path: Path) -> dict | None:
    """GPS position (and heading / time when present) from a photo's EXIF, or None without GPS.

    Returns:
        {"lat", "lon"} degrees (+ "heading" degrees, "timestamp" POSIX seconds, UTC assumed for
        DateTimeOriginal) or None.

    Raises:
        ValueError: unreadable file or malformed GPS tags (names the file and the tag).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            exif = img.getexif()
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise ValueError(f"{path}: not an image Pillow can read ({exc})") from None
    gps = exif.get_ifd(GPS_IFD)
    if not gps or 2 not in gps or 4 not in gps:
        return None
    try:
        lat = _dms(gps[2]) * (-1.0 if str(gps.get(1, "N")).upper().startswith("S") else 1.0)
        lon = _dms(gps[4]) * (-1.0 if str(gps.get(3, "E")).upper().startswith("W") else 1.0)
    except (TypeError, ValueError, ZeroDivisionError):
        raise bad(path, "EXIF GPSLatitude/GPSLongitude", "malformed") from None
    check_latlon(lat, lon, path, "EXIF GPS")
    out = {"lat": lat, "lon": lon}
    if 17 in gps:
        try:
            out["heading"] = _rational(gps[17])
        except (TypeError, ValueError, ZeroDivisionError):
            raise bad(path, "EXIF GPSImgDirection", "malformed") from None
    stamp = None
    if 29 in gps and 7 in gps:
        try:
            y, mo, d = (int(x) for x in str(gps[29]).split(":"))
            h, mi, s = (_rational(x) for x in gps[7])
            stamp = _dt.datetime(y, mo, d, tzinfo=_dt.timezone.utc).timestamp() + h * 3600 + mi * 60 + s
        except (TypeError, ValueError, ZeroDivisionError):
            stamp = None
    if stamp is None:
        dto = exif.get_ifd(EXIF_IFD).get(_DATETIME_ORIGINAL)
        if dto:
            try:
                stamp = (
                    _dt.datetime.strptime(str(dto).strip("\x00 "), "%Y:%m:%d %H:%M:%S")
                    .replace(tzinfo=_dt.timezone.utc)
                    .timestamp()
                )
            except ValueError:
                stamp = None
    if stamp is not None:
        out["timestamp"] = stamp
    return out


def load_exif_folder(
    root: str | Path, images: str | Path | None = None, progress: bool = True
) -> PlaceDataset:
    """Load a ``database/`` + ``queries/`` folder of geotagged photos (EXIF GPS).

    Photos without GPS are left out and reported (log warning + ``notes``). A collection
    spanning several UTM zones is projected into the majority zone, with a warning.
    """
    from tqdm import tqdm

    root = Path(root)
    db_dir, q_dir = split_dirs(root)
    kept = {"db": [], "query": []}
    missing = []
    for split, d in (("db", db_dir), ("query", q_dir)):
        names = list_images(d)
        for n in tqdm(names, desc=f"EXIF {split}", disable=not progress, leave=False):
            g = read_exif_gps(d / n)
            if g is None:
                missing.append(f"{d.name}/{n}")
            else:
                kept[split].append((n, g))
    notes = []
    if missing:
        msg = (
            f"{root}: {len(missing)} photo(s) without EXIF GPS left out: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
        log.warning(msg)
        notes.append(msg)
    every = kept["db"] + kept["query"]
    lat = np.array([g["lat"] for _, g in every], dtype=np.float64)
    lon = np.array([g["lon"] for _, g in every], dtype=np.float64)
    utm, zone, own, zone_notes = latlon_to_one_zone(lat, lon, root)
    notes += zone_notes
    n_db = len(kept["db"])

    def opt(split, key):
        vals = [g.get(key) for _, g in kept[split]]
        if not vals or all(v is None for v in vals):
            return None
        return np.array([np.nan if v is None else v for v in vals], dtype=np.float64)

    db_ts, q_ts = opt("db", "timestamp"), opt("query", "timestamp")
    if db_ts is None or q_ts is None:
        db_ts = q_ts = None
    return PlaceDataset(
        name=root.name,
        db_root=db_dir,
        query_root=q_dir,
        db_images=[n for n, _ in kept["db"]],
        query_images=[n for n, _ in kept["query"]],
        db_utm=utm[:n_db],
        query_utm=utm[n_db:],
        zone=zone,
        db_timestamps=db_ts,
        query_timestamps=q_ts,
        db_headings=opt("db", "heading"),
        query_headings=opt("query", "heading"),
        db_zones=own[:n_db],
        query_zones=own[n_db:],
        notes=notes,
    )
