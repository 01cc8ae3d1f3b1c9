"""GPS geometry: WGS84 lat/lon ↔ UTM, zone letters, and KD-tree radius search in UTM metres.

The projection is PROJ's (through pyproj): WGS84 → the UTM CRS of the zone (EPSG:326NN north,
327NN south), PROJ's extended Transverse Mercator, accurate to nanometres within a zone and still
far below a millimetre several degrees outside it (which is what projecting a multi-zone
collection into one zone needs). What UTM does not define is ours: the zone of a point (with the
Norway and Svalbard exceptions), the latitude band letters, and how a zone is written.

NetVLAD's ground truth (MATLAB ``dbBase``) is Euclidean distance on (easting, northing), so every
dataset ends up as an (N, 2) float64 array of UTM metres in one zone.
"""

from __future__ import annotations

import functools
import re
from collections import Counter

import numpy as np
from pyproj import CRS, Transformer

UTM_FALSE_EASTING = 500000.0
UTM_FALSE_NORTHING_SOUTH = 10000000.0

# Latitude bands C..X (I and O omitted), 8° each from 80°S; X spans 72°N..84°N.
_BANDS = "CDEFGHJKLMNPQRSTUVWX"

_ZONE_RE = re.compile(r"^\s*(\d{1,2})\s*([C-HJ-NP-Xc-hj-np-x]|north|south|[NSns])?\s*$")


def zone_number(lat, lon) -> np.ndarray:
    """UTM zone number (1..60) for each point, with the Norway (32V) and Svalbard (31X-37X) exceptions.

    Args:
        lat, lon: degrees, scalars or arrays of the same shape.

    Returns:
        int array of the broadcast shape.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = (np.asarray(lon, dtype=np.float64) + 180.0) % 360.0 - 180.0
    z = (np.floor((lon + 180.0) / 6.0).astype(np.int64) % 60) + 1
    z = np.where((lat >= 56) & (lat < 64) & (lon >= 3) & (lon < 12), 32, z)
    sval = (lat >= 72) & (lat < 84)
    for lo, hi, zz in ((0, 9, 31), (9, 21, 33), (21, 33, 35), (33, 42, 37)):
        z = np.where(sval & (lon >= lo) & (lon < hi), zz, z)
    return z


def zone_letter(lat) -> np.ndarray:
    """Latitude band letter (C..X) for each latitude in [-80, 84]; 'Z' outside UTM's range."""
    lat = np.asarray(lat, dtype=np.float64)
    idx = np.floor((lat + 80.0) / 8.0).astype(np.int64)
    idx = np.where((lat >= 72) & (lat <= 84), 19, idx)  # band X is 12° tall
    ok = (lat >= -80) & (lat <= 84) & np.isfinite(lat)
    letters = np.array(list(_BANDS))[np.clip(idx, 0, 19)]
    return np.where(ok, letters, "Z")


def parse_zone(zone) -> tuple[int, bool]:
    """Parse a zone given as ``17``, ``"17"``, ``"17T"``, ``"55H"``, ``"17N"``/``"17S"`` or ``(17, True)``.

    A band letter N..X means north, C..M south; a bare number means north. Note the ambiguity
    of 'S': as a band letter (8 characters) it is northern (32°N-40°N), which is how a full zone
    string like ``33S`` is read; ``"33 south"`` spells the hemisphere.

    Returns:
        (zone number 1..60, northern hemisphere).

    Raises:
        ValueError: not a zone.
    """
    if isinstance(zone, tuple) and len(zone) == 2:
        num, north = int(zone[0]), bool(zone[1])
    elif isinstance(zone, (int, np.integer)):
        num, north = int(zone), True
    else:
        m = _ZONE_RE.match(str(zone))
        if not m:
            raise ValueError(f"not a UTM zone: {zone!r} (expected e.g. '17T' or '55H')")
        num = int(m.group(1))
        band = (m.group(2) or "N").upper()
        north = band == "NORTH" or (band != "SOUTH" and band >= "N")
    if not 1 <= num <= 60:
        raise ValueError(f"not a UTM zone: {zone!r} (number must be 1..60)")
    return num, north


def format_zone(number: int, letter: str) -> str:
    """``(17, 'T') -> '17T'``."""
    return f"{int(number)}{letter}"


@functools.cache
def _utm_transformer(number: int, north: bool) -> Transformer:
    """WGS84 (lon, lat) → UTM (easting, northing) of one zone and hemisphere."""
    utm = CRS.from_epsg((32600 if north else 32700) + number)
    return Transformer.from_crs(CRS.from_epsg(4326), utm, always_xy=True)


def _by_zone(a: np.ndarray, b: np.ndarray, num: np.ndarray, north: np.ndarray, inverse: bool):
    """Transform (a, b) point by point with the transformer of each point's (zone, hemisphere);
    non-finite inputs give NaN."""
    out_a = np.full(a.shape, np.nan)
    out_b = np.full(a.shape, np.nan)
    ok = np.isfinite(a) & np.isfinite(b)
    keys = np.stack([num.astype(np.int64), north.astype(np.int64)], axis=-1)[ok]
    for z, h in {tuple(k) for k in keys.reshape(-1, 2).tolist()}:
        m = ok & (num == z) & (north == bool(h))
        tr = _utm_transformer(int(z), bool(h))
        direction = "INVERSE" if inverse else "FORWARD"
        out_a[m], out_b[m] = tr.transform(a[m], b[m], direction=direction)
    return out_a, out_b


def latlon_to_utm(lat, lon, zone=None):
    """Project WGS84 latitude/longitude to UTM.

    Args:
        lat, lon: degrees, scalars or arrays (broadcast together).
        zone: None to use each point's own zone, or a zone (``17``, ``"17T"``, ``(17, True)``) to
            force every point into that zone (hemisphere included): how a collection that
            straddles a zone boundary is put into one metric frame.

    Returns:
        (easting, northing, zone_numbers, zone_letters): float64 metres, int zone numbers, and
        the latitude band letters (of the point itself, also when the zone is forced).
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    lat, lon = np.broadcast_arrays(lat, lon)
    if zone is None:
        num = zone_number(lat, lon)
        north = lat >= 0
    else:
        n0, north0 = parse_zone(zone)
        num = np.full(lat.shape, n0, dtype=np.int64)
        north = np.full(lat.shape, north0)
    easting, northing = _by_zone(lon, lat, num, north, inverse=False)
    return easting, northing, num, zone_letter(lat)


def utm_to_latlon(easting, northing, zone):
    """Inverse UTM projection to WGS84 latitude/longitude in degrees.

    Args:
        easting, northing: metres, scalars or arrays (broadcast together).
        zone: one zone for all points (``"17T"``, ``17``, ``(55, False)``), or an array of zone
            strings of the broadcast shape.

    Returns:
        (lat, lon) float64 degrees; lon wrapped to [-180, 180).
    """
    e = np.asarray(easting, dtype=np.float64)
    n = np.asarray(northing, dtype=np.float64)
    e, n = np.broadcast_arrays(e, n)
    if isinstance(zone, np.ndarray) and zone.shape == e.shape and zone.ndim > 0:
        parsed = [parse_zone(z) for z in zone.ravel()]
        num = np.array([p[0] for p in parsed]).reshape(e.shape)
        north = np.array([p[1] for p in parsed]).reshape(e.shape)
    else:
        n0, north0 = parse_zone(zone)
        num = np.full(e.shape, n0)
        north = np.full(e.shape, north0)
    lon, lat = _by_zone(e, n, num, north, inverse=True)
    lon = (lon + 180.0) % 360.0 - 180.0
    return lat, lon


def project_to_one_zone(lat, lon, zone=None) -> tuple[np.ndarray, str, dict[str, int]]:
    """Project a collection of points into a single UTM zone.

    The zone is ``zone`` if given, else the majority zone of the points (ties: the smallest
    zone string). Points from other zones are projected into it, which PROJ's Transverse Mercator
    handles to far below a millimetre for a few degrees beyond the zone edge.

    Args:
        lat, lon: (N,) degrees.
        zone: optional forced zone string like ``"17T"``.

    Returns:
        (utm (N, 2) float64 metres, zone string, {own zone string: count} of the points).
    """
    lat = np.asarray(lat, dtype=np.float64).ravel()
    lon = np.asarray(lon, dtype=np.float64).ravel()
    if lat.size == 0:
        return np.zeros((0, 2)), zone or "", {}
    own = [format_zone(z, b) for z, b in zip(zone_number(lat, lon), zone_letter(lat))]
    counts = dict(Counter(own))
    if zone is None:
        zone = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    e, n, _, _ = latlon_to_utm(lat, lon, zone=zone)
    return np.stack([e, n], axis=1), str(zone), counts


# ----------------------------------------------------------------------------- radius search


def radius_search(
    db_utm: np.ndarray, query_utm: np.ndarray, radius: float, tree=None, sort: bool = True
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """All database points within ``radius`` metres of each query (MATLAB: d² ≤ r²).

    Args:
        db_utm: (N, 2) float64.
        query_utm: (Q, 2) float64.
        radius: metres.
        tree: optional prebuilt ``scipy.spatial.cKDTree`` over ``db_utm``.
        sort: order each result by distance (ties by index), as opposed to tree order.

    Returns:
        (ids, sq_dists): two lists of Q int64 / float64 arrays.
    """
    from scipy.spatial import cKDTree

    db_utm = np.asarray(db_utm, dtype=np.float64)
    query_utm = np.asarray(query_utm, dtype=np.float64).reshape(-1, 2)
    if tree is None:
        tree = cKDTree(db_utm)
    r2 = float(radius) ** 2
    # Slightly enlarged ball, then the exact float64 test d² ≤ r² of MATLAB's closePosition.
    raw = tree.query_ball_point(query_utm, r=float(radius) * (1 + 1e-9) + 1e-9, return_sorted=False)
    ids_out, d2_out = [], []
    for q, cand in enumerate(raw):
        cand = np.asarray(cand, dtype=np.int64)
        if cand.size:
            d2 = np.sum((db_utm[cand] - query_utm[q]) ** 2, axis=1)
            keep = d2 <= r2
            cand, d2 = cand[keep], d2[keep]
            if sort:
                order = np.lexsort((cand, d2))
                cand, d2 = cand[order], d2[order]
        else:
            d2 = np.zeros(0)
        ids_out.append(cand)
        d2_out.append(d2)
    return ids_out, d2_out


def count_within(db_utm: np.ndarray, query_utm: np.ndarray, radius: float, tree=None) -> np.ndarray:
    """(Q,) number of database points within ``radius`` of each query, without building the lists."""
    from scipy.spatial import cKDTree

    if tree is None:
        tree = cKDTree(np.asarray(db_utm, dtype=np.float64))
    q = np.asarray(query_utm, dtype=np.float64).reshape(-1, 2)
    return np.asarray(tree.query_ball_point(q, r=float(radius), return_length=True), dtype=np.int64)
