"""Position prior: re-rank a global search the way a GPS fix with a known uncertainty would.

A robot or a phone usually knows roughly where it is. The fix is modelled as a 2-D Gaussian
around the reported position with ``radius_m`` the standard deviation of the error along each
axis (how receivers' "horizontal accuracy" is usually read). Two things follow from it:

* **gate**: database images farther than ``gate_sigmas · radius_m`` from the fix are dropped
  (3 σ keeps the true place with probability 1 − e^{−4.5} ≈ 98.9 %);
* **weight**: the remaining candidates are ranked by ``score − weight · d² / (2 σ²)``, the
  descriptor similarity plus ``weight`` times the log-likelihood of the fix (``weight=0`` keeps
  the descriptor order inside the gate).

The prior only re-ranks the ``candidates`` best descriptor matches (default 1000, all of a small
database); an image outside them cannot come back, as with any re-ranking of a shortlist.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from netvlad.geo import latlon_to_utm, utm_to_latlon

#: weight of the log-likelihood of the fix against the cosine similarity. On the synthetic town
#: (benchmarks/prior.py, RESULTS.md) 0.02 helped most with a 50 m fix and cost nothing with a fix
#: as wide as the map (200 m); 0.05 cost 2 points there, larger weights more.
DEFAULT_WEIGHT = 0.02


@dataclass(frozen=True)
class PositionPrior:
    """A position fix in the index's UTM frame.

    Attributes:
        easting, northing: metres, in the index's zone.
        radius_m: 1-σ uncertainty per axis, metres (> 0).
        gate_sigmas: candidates beyond this many σ are dropped (inf: none are).
        weight: weight of the fix's log-likelihood against the descriptor score (≥ 0).
        candidates: how many descriptor matches the prior re-ranks.
    """

    easting: float
    northing: float
    radius_m: float
    gate_sigmas: float = 3.0
    weight: float = DEFAULT_WEIGHT
    candidates: int = 1000

    def __post_init__(self):
        if not (np.isfinite(self.easting) and np.isfinite(self.northing)):
            raise ValueError(
                f"position prior: coordinates must be finite, got {self.easting}, {self.northing}"
            )
        if not (np.isfinite(self.radius_m) and self.radius_m > 0):
            raise ValueError(
                f"position prior: radius must be a positive number of metres, got {self.radius_m}"
            )
        if not self.gate_sigmas > 0:
            raise ValueError(f"position prior: gate_sigmas must be > 0, got {self.gate_sigmas}")
        if not (np.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"position prior: weight must be ≥ 0, got {self.weight}")
        if int(self.candidates) < 1:
            raise ValueError(f"position prior: candidates must be ≥ 1, got {self.candidates}")

    @classmethod
    def from_latlon(cls, lat: float, lon: float, radius_m: float, zone: str | None, **kw) -> PositionPrior:
        """A fix given in WGS84 degrees, projected into ``zone`` (the index's zone).

        Raises:
            ValueError: latitude/longitude out of range, or no zone to project into.
        """
        if not (np.isfinite(lat) and -90 <= lat <= 90 and np.isfinite(lon) and -180 <= lon <= 180):
            raise ValueError(f"position prior: latitude/longitude out of range: {lat}, {lon}")
        if not zone:
            raise ValueError(
                "position prior: the index records no UTM zone, so a latitude/longitude "
                "cannot be placed in its coordinates"
            )
        e, n, _, _ = latlon_to_utm(lat, lon, zone=zone)
        return cls(float(e), float(n), float(radius_m), **kw)

    def to_dict(self, zone: str | None = None) -> dict:
        """JSON-ready description (``latlon`` when ``zone`` is known)."""
        out = {
            "utm": [self.easting, self.northing],
            "radius_m": self.radius_m,
            "gate_m": self.radius_m * self.gate_sigmas,
            "weight": self.weight,
        }
        if zone:
            out["latlon"] = utm_latlon(np.array([[self.easting, self.northing]]), zone)[0]
        return out


def apply_prior(
    scores: np.ndarray, ids: np.ndarray, db_utm: np.ndarray, prior: PositionPrior, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank one query's descriptor matches with ``prior``.

    Args:
        scores: (C,) descriptor similarities, descending (inner products of unit vectors).
        ids: (C,) database ids (−1 = no result, ignored).
        db_utm: (N, 2) database coordinates, metres.
        prior: the fix.
        k: results to keep.

    Returns:
        (scores (≤k,) float32 combined score, ids (≤k,) int64), best first; fewer than ``k`` (or
        none) when fewer candidates lie inside the gate. Ties keep the descriptor order.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    ids = np.asarray(ids, dtype=np.int64).ravel()
    keep = ids >= 0
    scores, ids = scores[keep], ids[keep]
    d2 = np.sum((np.asarray(db_utm, dtype=np.float64)[ids] - [prior.easting, prior.northing]) ** 2, axis=1)
    s2 = prior.radius_m**2
    inside = d2 <= (prior.gate_sigmas**2) * s2
    combined = scores[inside] - prior.weight * d2[inside] / (2 * s2)
    order = np.argsort(-combined, kind="stable")[: int(k)]
    return combined[order].astype(np.float32), ids[inside][order]


def search_with_prior(
    index, queries: np.ndarray, k: int, priors
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``index.search`` with an optional prior per query.

    Args:
        index: a ``netvlad.index.SearchIndex`` (with ``utm`` when any prior is given).
        queries: (Q, D) unit descriptors.
        k: results per query.
        priors: Q entries, each a :class:`PositionPrior` or None.

    Returns:
        (scores, ids): Q arrays each, best first (a prior may leave fewer than ``k``).
    """
    priors = list(priors)
    q = np.atleast_2d(queries)
    if len(priors) != len(q):
        raise ValueError(f"{len(priors)} priors for {len(q)} queries")
    if any(p is not None for p in priors) and index.utm is None:
        raise ValueError(
            "the index holds no coordinates; a position prior needs them (build it with --dataset)"
        )
    wide = max([k] + [min(index.ntotal, int(p.candidates)) for p in priors if p is not None])
    scores, ids = index.search(q, wide)
    out_s, out_i = [], []
    for s, i, p in zip(scores, ids, priors):
        if p is None:
            s, i = s[:k], i[:k]
            keep = i >= 0
            out_s.append(s[keep])
            out_i.append(i[keep])
        else:
            cs, ci = apply_prior(s, i, index.utm, p, k)
            out_s.append(cs)
            out_i.append(ci)
    return out_s, out_i


def utm_latlon(utm: np.ndarray, zone: str) -> list[list[float]]:
    """(N, 2) UTM metres in ``zone`` → N [lat, lon] lists in degrees (for maps and JSON)."""
    utm = np.asarray(utm, dtype=np.float64).reshape(-1, 2)
    lat, lon = utm_to_latlon(utm[:, 0], utm[:, 1], zone)
    return [[float(a), float(b)] for a, b in zip(np.atleast_1d(lat), np.atleast_1d(lon))]
