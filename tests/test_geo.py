"""UTM projection against published reference conversions, round trips, zones, radius search."""

from __future__ import annotations

import numpy as np
import pytest

from netvlad.geo import (
    count_within,
    latlon_to_utm,
    parse_zone,
    project_to_one_zone,
    radius_search,
    utm_to_latlon,
    zone_letter,
    zone_number,
)

# (lat, lon, zone, easting, northing, tolerance in metres, source)
REFERENCE = [
    # GeographicLib GeoConvert(1) man page (C. F. F. Karney), "UTM/UPS" input example:
    # 33.3 44.4 <-> "38n 444140.54 3684706.36" (printed to the centimetre).
    (33.3, 44.4, "38S", 444140.54, 3684706.36, 0.006, "GeoConvert(1)"),
    # AGI STK Connect help, "Convert MapGridPoint" example: LatLon 33.5 74.75 -> "43S 476779 3706747"
    # (printed to the metre).
    (33.5, 74.75, "43S", 476779.0, 3706747.0, 0.51, "AGI STK Connect"),
    # By definition of UTM: a point on a central meridian at the equator is (500000, 0) north and
    # (500000, 10000000) in the southern false-northing frame.
    (0.0, 3.0, "31N", 500000.0, 0.0, 1e-6, "definition"),
    (0.0, -177.0, "1N", 500000.0, 0.0, 1e-6, "definition"),
]


@pytest.mark.parametrize("lat,lon,zone,e,n,tol,_src", REFERENCE)
def test_reference_points(lat, lon, zone, e, n, tol, _src):
    ee, nn, zn, zl = latlon_to_utm(lat, lon)
    assert f"{int(zn)}{zl}" == zone
    assert abs(ee - e) <= tol and abs(nn - n) <= tol
    la, lo = utm_to_latlon(e, n, zone)
    # tolerance in metres -> degrees (1e-5 deg ~ 1.1 m)
    assert abs(la - lat) < tol / 1e5 + 1e-9 and abs(lo - lon) < tol / 0.8e5 + 1e-9


def test_southern_hemisphere_is_mirror_with_false_northing():
    e1, n1, _, _ = latlon_to_utm(33.3, 44.4)
    e2, n2, z2, l2 = latlon_to_utm(-33.3, 44.4)
    assert e2 == pytest.approx(e1, abs=1e-6) and n2 == pytest.approx(10_000_000 - n1, abs=1e-6)
    assert (int(z2), str(l2)) == (38, "H")
    la, lo = utm_to_latlon(e2, n2, "38H")
    assert la == pytest.approx(-33.3, abs=1e-10) and lo == pytest.approx(44.4, abs=1e-10)


def test_round_trip_random_points_all_zones():
    rng = np.random.default_rng(0)
    lat = rng.uniform(-80, 84, 20000)
    lon = rng.uniform(-180, 180, 20000)
    e, n, zn, zl = latlon_to_utm(lat, lon)
    zones = np.array([f"{a}{b}" for a, b in zip(zn, zl)])
    la, lo = utm_to_latlon(e, n, zones)
    assert np.abs(la - lat).max() < 1e-9
    assert np.abs((lo - lon + 180) % 360 - 180).max() < 1e-9
    assert np.all((e > 160_000) & (e < 840_000))  # inside the zone's strip


def test_forced_zone_across_boundary_round_trips():
    # 1.5 degrees beyond zone 17's edge, still sub-micro-degree round trip.
    lat, lon = 40.44, -76.5  # zone 18 by longitude
    e, n, _, _ = latlon_to_utm(lat, lon, zone="17T")
    la, lo = utm_to_latlon(e, n, "17T")
    assert abs(la - lat) < 1e-9 and abs(lo - lon) < 1e-9
    assert e > 700_000


def test_zone_numbers_and_letters_with_exceptions():
    assert int(zone_number(40.44, -79.99)) == 17  # Pittsburgh
    assert int(zone_number(35.68, 139.76)) == 54  # Tokyo
    assert int(zone_number(60.0, 5.0)) == 32  # Norway exception (would be 31)
    assert int(zone_number(60.0, 2.0)) == 31
    assert int(zone_number(78.0, 8.0)) == 31 and int(zone_number(78.0, 10.0)) == 33  # Svalbard
    assert int(zone_number(78.0, 40.0)) == 37
    assert int(zone_number(0.0, 180.0)) == 1
    assert list(zone_letter([-80, -72.1, -0.1, 0, 40.44, 72, 84])) == ["C", "C", "M", "N", "T", "X", "X"]
    assert str(zone_letter(85.0)) == "Z"


def test_parse_zone():
    assert parse_zone("17T") == (17, True)
    assert parse_zone("55H") == (55, False)
    assert parse_zone("33S") == (33, True)  # band S is northern
    assert parse_zone("33 south") == (33, False)
    assert parse_zone(5) == (5, True)
    for bad in ("61T", "0N", "17I", "abc", ""):
        with pytest.raises(ValueError, match="not a UTM zone"):
            parse_zone(bad)


def test_project_to_one_zone_majority():
    lat = np.array([40.4, 40.5, 40.45, 40.4])
    lon = np.array([-79.9, -80.1, -79.5, -77.9])  # last one is zone 18
    utm, zone, counts = project_to_one_zone(lat, lon)
    assert zone == "17T" and counts == {"17T": 3, "18T": 1}
    la, lo = utm_to_latlon(utm[:, 0], utm[:, 1], zone)
    np.testing.assert_allclose(la, lat, atol=1e-9)
    np.testing.assert_allclose(lo, lon, atol=1e-9)


def test_radius_search_matches_brute_force():
    rng = np.random.default_rng(1)
    db = rng.uniform(0, 200, (500, 2))
    q = rng.uniform(0, 200, (60, 2))
    db[7] = q[3] + [25.0, 0.0]  # exactly on the radius: included (d^2 <= r^2)
    ids, d2 = radius_search(db, q, 25.0)
    for i in range(len(q)):
        dd = np.sum((db - q[i]) ** 2, axis=1)
        expect = np.flatnonzero(dd <= 625.0)
        expect = expect[np.lexsort((expect, dd[expect]))]
        np.testing.assert_array_equal(ids[i], expect)
        np.testing.assert_allclose(d2[i], dd[expect])
    assert 7 in ids[3]
    np.testing.assert_array_equal(
        count_within(db, q, 24.0), [np.sum(np.sum((db - x) ** 2, 1) <= 576) for x in q]
    )
