"""Position prior (netvlad.rerank.prior): gate and weight against a loop oracle in float64, the
lat/lon fix, the search over an index, and `query --near --radius`."""

from __future__ import annotations

import math

import numpy as np
import pytest

from netvlad.index import build_index
from netvlad.rerank.prior import DEFAULT_WEIGHT, PositionPrior, apply_prior, search_with_prior, utm_latlon


def _oracle(scores, ids, db_utm, e, n, radius, gate, weight, k):
    out = []
    for pos, (s, i) in enumerate(zip(scores, ids)):
        if i < 0:
            continue
        d2 = (float(db_utm[i][0]) - e) ** 2 + (float(db_utm[i][1]) - n) ** 2
        if math.sqrt(d2) <= gate * radius:
            out.append((float(s) - weight * d2 / (2 * radius * radius), pos, int(i)))
    out.sort(key=lambda t: (-t[0], t[1]))
    return [t[0] for t in out[:k]], [t[2] for t in out[:k]]


@pytest.mark.parametrize("weight", [0.0, 0.05, 0.5])
@pytest.mark.parametrize("gate", [1.0, 3.0, math.inf])
def test_apply_prior_matches_loop_oracle(weight, gate):
    rng = np.random.default_rng(3)
    db = rng.uniform(0, 500, size=(200, 2))
    ids = rng.permutation(200)[:120]
    scores = np.sort(rng.uniform(-0.2, 1.0, 120))[::-1]
    ids[-3:] = -1  # "no result" slots are ignored
    p = PositionPrior(240.0, 260.0, 60.0, gate_sigmas=gate, weight=weight)
    got_s, got_i = apply_prior(scores, ids, db, p, k=10)
    want_s, want_i = _oracle(scores, ids, db, 240.0, 260.0, 60.0, gate, weight, 10)
    assert got_i.tolist() == want_i
    np.testing.assert_allclose(got_s, want_s, rtol=1e-6, atol=1e-6)
    if weight == 0.0:  # no weight: the descriptor order inside the gate
        assert got_s.tolist() == sorted(got_s.tolist(), reverse=True)


def test_gate_can_leave_nothing():
    s, i = apply_prior(
        np.array([0.9, 0.8]),
        np.array([0, 1]),
        np.array([[0.0, 0.0], [10.0, 0.0]]),
        PositionPrior(1000.0, 1000.0, 5.0),
        k=5,
    )
    assert s.size == 0 and i.size == 0


def test_prior_validation_and_latlon():
    for kw, msg in [
        (dict(radius_m=0), "radius must be a positive"),
        (dict(radius_m=float("nan")), "radius"),
        (dict(weight=-1), "weight must be"),
        (dict(gate_sigmas=0), "gate_sigmas"),
        (dict(candidates=0), "candidates"),
    ]:
        with pytest.raises(ValueError, match=msg):
            PositionPrior(**{"easting": 1.0, "northing": 2.0, "radius_m": 5.0, **kw})
    with pytest.raises(ValueError, match="records no UTM zone"):
        PositionPrior.from_latlon(40.0, -80.0, 10, None)
    with pytest.raises(ValueError, match="out of range"):
        PositionPrior.from_latlon(91.0, -80.0, 10, "17T")
    # a round trip through the index's zone
    p = PositionPrior.from_latlon(40.4406, -79.9959, 25, "17T")
    ((lat, lon),) = utm_latlon(np.array([[p.easting, p.northing]]), "17T")
    assert lat == pytest.approx(40.4406, abs=1e-9) and lon == pytest.approx(-79.9959, abs=1e-9)
    assert p.to_dict("17T")["gate_m"] == pytest.approx(75)


def test_search_with_prior_over_an_index_prefers_the_place_near_the_fix():
    # Two look-alike places 1 km apart: the descriptor search prefers the far one by a hair.
    rng = np.random.default_rng(0)
    d = rng.normal(size=(6, 16)).astype(np.float32)
    d[1] = d[0] + 0.05 * rng.normal(size=16)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    utm = np.array([[0.0, 0.0], [1000.0, 0.0], [500.0, 500.0], [20.0, 0.0], [900.0, 900.0], [0.0, 30.0]])
    index = build_index(d, "exact", names=[f"im{i}" for i in range(6)], utm=utm)
    q = d[0] * 0.6 + d[1] * 0.4 + 0.0
    q = (q / np.linalg.norm(q))[None].astype(np.float32)
    q2 = d[1][None] * 1.0
    plain_s, plain_i = search_with_prior(index, np.vstack([q, q2]), 3, [None, None])
    near_s, near_i = search_with_prior(index, np.vstack([q2, q2]), 3, [PositionPrior(10.0, 0.0, 30.0), None])
    assert plain_i[1][0] == 1
    assert near_i[0][0] == 0  # the fix says "near the origin": the far twin is outside 3 sigma
    assert 1 not in near_i[0].tolist() and set(near_i[0].tolist()) <= {0, 3, 5}
    assert near_i[1].tolist() == plain_i[1].tolist()  # no prior: unchanged
    no_xy = build_index(d, "exact")
    with pytest.raises(ValueError, match="holds no coordinates"):
        search_with_prior(no_xy, q, 3, [PositionPrior(0.0, 0.0, 10.0)])


def test_query_near_radius_cli(tmp_path, capsys):
    import json

    from netvlad.cli import main
    from serve_helpers import make_index

    idx, names, utm = make_index(tmp_path, n=8)
    photo = str(tmp_path / names[1])
    ((lat, lon),) = utm_latlon(utm[[6]], "17T")  # a fix at image 6
    capsys.readouterr()
    assert main(["query", str(idx), photo, "--k", "8", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)[0]
    assert (
        main(["query", str(idx), photo, "--k", "8", "--json", "--near", f"{lat},{lon}", "--radius", "11"])
        == 0
    )
    near = json.loads(capsys.readouterr().out)[0]
    assert plain["results"][0]["name"] == names[1] and plain["prior"] is None
    # 3 sigma = 33 m around image 6 holds images 6 and 2 only (columns 40 m apart, rows 30 m)
    assert {r["name"] for r in near["results"]} == {names[2], names[6]}
    assert near["prior"]["radius_m"] == 11 and near["prior"]["gate_m"] == pytest.approx(33)
    fix = np.array(near["prior"]["utm"])
    want = sorted(
        (
            (r["score"] - DEFAULT_WEIGHT * float(np.sum((np.array(r["utm"]) - fix) ** 2)) / (2 * 11**2),
             r["name"])
            for r in plain["results"]
            if r["name"] in (names[2], names[6])
        ),
        reverse=True,
    )
    assert [r["name"] for r in near["results"]] == [n for _, n in want]
    np.testing.assert_allclose([r["score"] for r in near["results"]], [s for s, _ in want], atol=1e-5)
    assert main(["query", str(idx), photo, "--near", f"{lat},{lon}"]) == 2
    assert "--near and --radius go together" in capsys.readouterr().err
    assert main(["query", str(idx), photo, "--near", "north", "--radius", "5"]) == 2
    assert "--near wants LAT,LON" in capsys.readouterr().err
    assert main(["query", str(idx), photo, "--near", f"{lat},{lon}", "--radius", "-5"]) == 2
    assert "radius must be a positive number" in capsys.readouterr().err
