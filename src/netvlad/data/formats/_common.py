"""Helpers shared by the format loaders: error messages, zone handling, root resolution, Tokyo rules."""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np

from netvlad.data.places import TOKYO247_CONDITIONS
from netvlad.geo import format_zone, latlon_to_utm, parse_zone, utm_to_latlon, zone_letter

log = logging.getLogger("netvlad.data")

def bad(path, field: str, problem: str) -> ValueError:
    """One-line error naming the file and the field."""
    return ValueError(f"{path}: {field}: {problem}")


def parse_float(text: str, path, field: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise bad(path, field, f"cannot parse {text!r} as a number") from None


@functools.lru_cache(maxsize=1024)
def zone_key(zone: str) -> tuple[int, bool]:
    # The band letter does not change the projection, only the zone number and hemisphere do.
    return parse_zone(zone)


def latlon_to_one_zone(lat: np.ndarray, lon: np.ndarray, source, zone: str | None = None):
    """Project lat/lon into one UTM zone (the majority one unless given), warning when they span zones.

    Returns:
        (utm (N, 2), zone string, per-point own zone strings, notes list).
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    _, _, own_num, own_band = latlon_to_utm(lat, lon)
    own = [format_zone(n, b) for n, b in zip(np.atleast_1d(own_num), np.atleast_1d(own_band))]
    return _into_zone(lat, lon, own, source, zone)


def utm_to_one_zone(utm: np.ndarray, zones: list[str], source, zone: str | None = None):
    """Re-project per-point UTM (easting, northing, zone) into one zone via lat/lon when zones differ.

    Returns:
        (utm (N, 2), zone string, zones, notes).
    """
    keys = [zone_key(z) for z in zones]
    if zone is None and len(set(keys)) <= 1:
        common = Counter(zones).most_common(1)[0][0] if zones else None
        return np.asarray(utm, dtype=np.float64).reshape(-1, 2), common, list(zones), []
    lat, lon = utm_to_latlon(utm[:, 0], utm[:, 1], np.asarray(zones))
    return _into_zone(lat, lon, list(zones), source, zone)


def _into_zone(lat, lon, own: list[str], source, zone: str | None):
    notes = []
    if zone is None:
        key_counts = Counter(zone_key(z) for z in own)
        best = sorted(key_counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] if own else None
        # Report the zone with the majority's most common band letter.
        zone = Counter(z for z in own if zone_key(z) == best).most_common(1)[0][0] if own else None
    if zone is None:
        return np.zeros((0, 2)), None, own, notes
    target = zone_key(zone)
    others = Counter(z for z in own if zone_key(z) != target)
    if others:
        msg = (
            f"{source}: coordinates span UTM zones; {sum(others.values())} image(s) from "
            f"{', '.join(f'{z} ({c})' for z, c in sorted(others.items()))} re-projected into zone {zone}"
        )
        log.warning(msg)
        notes.append(msg)
    e, n, _, _ = latlon_to_utm(lat, lon, zone=zone)
    return np.stack([np.atleast_1d(e), np.atleast_1d(n)], axis=1), zone, own, notes


def check_latlon(lat: float, lon: float, path, where: str) -> None:
    if not (-90.0 <= lat <= 90.0):
        raise bad(path, where, f"latitude {lat} outside [-90, 90]")
    if not (-180.0 <= lon <= 360.0):
        raise bad(path, where, f"longitude {lon} outside [-180, 360]")


def band_for(lat) -> str:
    return str(zone_letter(lat))


def resolve_roots(base: Path, db_names: list[str], q_names: list[str], db_dirs, q_dirs) -> tuple[Path, Path]:
    """Pick the database / query roots among candidate sub-folders of ``base``.

    The first candidate holding the first listed image wins; else the first existing candidate
    folder; else ``base`` itself.
    """

    def pick(names, dirs):
        cands = [base / d for d in dirs] + [base]
        if names:
            for c in cands:
                if (c / names[0]).exists():
                    return c
        for c in cands[:-1]:
            if c.is_dir():
                return c
        return base

    return pick(db_names, db_dirs), pick(q_names, q_dirs)


_PANO_RE = re.compile(r"^(?P<pano>.+)_(?P<pitch>\d{3})_(?P<yaw>\d{3})$")


def tokyo247_groups(db_names: list[str]) -> np.ndarray:
    """Panorama id per Tokyo 24/7 database image.

    From the file name ``<panoid>_<pitch>_<yaw>.png`` when every name has that form; otherwise
    MATLAB's rule floor((id − 1)/12) on 1-based ids, i.e. 12 consecutive cutouts per panorama.
    The two agree on the released list (75,984 images, 6,332 panoramas).
    """
    panos = []
    for n in db_names:
        m = _PANO_RE.match(Path(n).stem)
        if not m:
            return np.arange(len(db_names), dtype=np.int64) // 12
        panos.append(m.group("pano"))
    _, inv = np.unique(np.asarray(panos), return_inverse=True)
    # Renumber by first appearance so ids follow database order.
    _, first = np.unique(inv, return_index=True)
    order = np.argsort(first)
    remap = np.empty_like(order)
    remap[order] = np.arange(order.size)
    return remap[inv].astype(np.int64)


def tokyo247_conditions(q_names: list[str]) -> list[str]:
    """Day / sunset / night per Tokyo 24/7 query.

    The query files are numbered so that number mod 3 is 1 = day, 2 = sunset, 0 = night (the
    released list runs 00010..00738, 315 files); MATLAB uses the 1-based position mod 3, which
    agrees on that list. The position rule is the fallback when a name is not a number.
    """
    nums = []
    for n in q_names:
        stem = Path(n).stem
        if not stem.isdigit():
            nums = [i + 1 for i in range(len(q_names))]
            break
        nums.append(int(stem))
    return [TOKYO247_CONDITIONS[k % 3] for k in nums]


def looks_tokyo247(*names: str) -> bool:
    return any(re.search(r"tokyo[_-]?247|(^|[^0-9])247([^0-9]|$)", str(n).lower()) for n in names if n)


def rel_name(name: str) -> str:
    """Names as stored by Patch-NetVLAD / MATLAB, normalised: forward slashes, no leading './'."""
    name = str(name).replace("\\", "/").strip()
    while name.startswith("./"):
        name = name[2:]
    return name
