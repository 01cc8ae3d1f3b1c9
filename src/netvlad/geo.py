"""GPS geometry: WGS84 lat/lon ↔ UTM, zone letters, and KD-tree radius search in UTM metres.

The projection is the Transverse Mercator series of Krüger (1912) in the form given by Karney,
"Transverse Mercator with an accuracy of a few nanometers", J. Geodesy 85 (2011), eqs. (7)-(11) and
(35)-(36), carried to order n⁶: sub-millimetre within a UTM zone and still well under a metre a
few degrees outside it (which is what projecting a multi-zone collection into one zone needs).
No pyproj dependency: the whole projection is about sixty lines of numpy.

NetVLAD's ground truth (MATLAB ``dbBase``) is Euclidean distance on (easting, northing), so every
dataset ends up as an (N, 2) float64 array of UTM metres in one zone.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

WGS84_A = 6378137.0
WGS84_F = 1.0 / 298.257223563
UTM_K0 = 0.9996
UTM_FALSE_EASTING = 500000.0
UTM_FALSE_NORTHING_SOUTH = 10000000.0

# Latitude bands C..X (I and O omitted), 8° each from 80°S; X spans 72°N..84°N.
_BANDS = "CDEFGHJKLMNPQRSTUVWX"

_n = WGS84_F / (2.0 - WGS84_F)
_E = np.sqrt(WGS84_F * (2.0 - WGS84_F))  # first eccentricity
# Rectifying radius A (Karney 2011 eq. 14) and the Krüger α (forward) / β (inverse) series.
_A = WGS84_A / (1.0 + _n) * (1.0 + _n**2 / 4.0 + _n**4 / 64.0 + _n**6 / 256.0)
_ALPHA = np.array(
    [
        _n / 2 - 2 * _n**2 / 3 + 5 * _n**3 / 16 + 41 * _n**4 / 180 - 127 * _n**5 / 288 + 7891 * _n**6 / 37800,
        13 * _n**2 / 48 - 3 * _n**3 / 5 + 557 * _n**4 / 1440 + 281 * _n**5 / 630 - 1983433 * _n**6 / 1935360,
        61 * _n**3 / 240 - 103 * _n**4 / 140 + 15061 * _n**5 / 26880 + 167603 * _n**6 / 181440,
        49561 * _n**4 / 161280 - 179 * _n**5 / 168 + 6601661 * _n**6 / 7257600,
        34729 * _n**5 / 80640 - 3418889 * _n**6 / 1995840,
        212378941 * _n**6 / 319334400,
    ]
)
_BETA = np.array(
    [
        _n / 2 - 2 * _n**2 / 3 + 37 * _n**3 / 96 - _n**4 / 360 - 81 * _n**5 / 512 + 96199 * _n**6 / 604800,
        _n**2 / 48 + _n**3 / 15 - 437 * _n**4 / 1440 + 46 * _n**5 / 105 - 1118711 * _n**6 / 3870720,
        17 * _n**3 / 480 - 37 * _n**4 / 840 - 209 * _n**5 / 4480 + 5569 * _n**6 / 90720,
        4397 * _n**4 / 161280 - 11 * _n**5 / 504 - 830251 * _n**6 / 7257600,
        4583 * _n**5 / 161280 - 108847 * _n**6 / 3991680,
        20648693 * _n**6 / 638668800,
    ]
)
_J2 = 2.0 * np.arange(1, 7)  # 2j for j = 1..6

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


def _central_meridian(number) -> np.ndarray:
    return np.radians(6.0 * np.asarray(number, dtype=np.float64) - 183.0)


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
    phi = np.radians(lat)
    lam = np.radians(lon) - _central_meridian(num)
    lam = (lam + np.pi) % (2 * np.pi) - np.pi
    # Conformal latitude via τ' (Karney 2011 eqs. 7-9), stable near the poles.
    tau = np.tan(phi)
    sigma = np.sinh(_E * np.arctanh(_E * tau / np.hypot(1.0, tau)))
    taup = tau * np.hypot(1.0, sigma) - sigma * np.hypot(1.0, tau)
    xip = np.arctan2(taup, np.cos(lam))
    etap = np.arcsinh(np.sin(lam) / np.hypot(taup, np.cos(lam)))
    j2 = _J2.reshape((-1,) + (1,) * xip.ndim)
    alpha = _ALPHA.reshape(j2.shape)
    xi = xip + np.sum(alpha * np.sin(j2 * xip) * np.cosh(j2 * etap), axis=0)
    eta = etap + np.sum(alpha * np.cos(j2 * xip) * np.sinh(j2 * etap), axis=0)
    easting = UTM_FALSE_EASTING + UTM_K0 * _A * eta
    northing = UTM_K0 * _A * xi + np.where(north, 0.0, UTM_FALSE_NORTHING_SOUTH)
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
    xi = (n - np.where(north, 0.0, UTM_FALSE_NORTHING_SOUTH)) / (UTM_K0 * _A)
    eta = (e - UTM_FALSE_EASTING) / (UTM_K0 * _A)
    j2 = _J2.reshape((-1,) + (1,) * xi.ndim)
    beta = _BETA.reshape(j2.shape)
    xip = xi - np.sum(beta * np.sin(j2 * xi) * np.cosh(j2 * eta), axis=0)
    etap = eta - np.sum(beta * np.cos(j2 * xi) * np.sinh(j2 * eta), axis=0)
    taup = np.sin(xip) / np.hypot(np.sinh(etap), np.cos(xip))
    lam = np.arctan2(np.sinh(etap), np.cos(xip))
    # τ from τ' by Newton's method (Karney 2011 eqs. 19-21); 5 steps reach machine precision.
    e2m = 1.0 - _E**2
    tau = taup / e2m
    for _ in range(5):
        sigma = np.sinh(_E * np.arctanh(_E * tau / np.hypot(1.0, tau)))
        taupi = tau * np.hypot(1.0, sigma) - sigma * np.hypot(1.0, tau)
        dtau = (taup - taupi) / np.hypot(1.0, taupi) * (1.0 + e2m * tau**2) / (e2m * np.hypot(1.0, tau))
        tau = tau + dtau
    lat = np.degrees(np.arctan(tau))
    lon = np.degrees(lam + _central_meridian(num))
    lon = (lon + 180.0) % 360.0 - 180.0
    return lat, lon


def project_to_one_zone(lat, lon, zone=None) -> tuple[np.ndarray, str, dict[str, int]]:
    """Project a collection of points into a single UTM zone.

    The zone is ``zone`` if given, else the majority zone of the points (ties: the smallest
    zone string). Points from other zones are projected into it, which the Transverse Mercator
    series handles to well under a metre for a few degrees beyond the zone edge.

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
