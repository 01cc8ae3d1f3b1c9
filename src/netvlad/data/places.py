"""`PlaceDataset`: image names + UTM geometry + the evaluation/training protocol of one benchmark.

Ground-truth semantics follow the MATLAB ``dbBase`` class of Relja/netvlad v1.03:

- positives: database images with squared UTM distance ≤ ``pos_radius``² (25 m), here sorted by
  distance (MATLAB returns them in hash-grid order);
- non-trivial (training) positives: ``trivial_radius``² < d² ≤ ``train_pos_radius``² (1 m, 10 m);
  the lower bound drops near-duplicates such as other crops of the same panorama;
- negatives: everything beyond ``pos_radius``.

Rules (``rules``, implemented once in `netvlad.protocol`):

- ``"tokyotm_timestamp"`` (``dbTokyoTimeMachine``): a database image taken at the query's own
  timestamp is neither a non-trivial positive nor a valid retrieval result (the queries are
  drawn from the Time Machine imagery itself).
- ``"tokyo247_dedup"`` (``dbTokyo247``): the database holds 12 perspective cutouts per panorama;
  a ranked list keeps only the first cutout of each panorama (``db_groups``), Torii et al. CVPR'15.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netvlad import protocol
from netvlad.geo import radius_search
from netvlad.protocol import KNOWN_RULES, RETRIEVE_FACTOR, as_rows  # noqa: F401 - re-exported here

# How recall is counted by default: "netvlad" (recallAtN: every query in the denominator) or "msls"
# (Mapillary's evaluate.py: queries without a positive left out; netvlad.metrics.msls).
PROTOCOLS = ("netvlad", "msls")
TOKYO247_CONDITIONS = ("night", "day", "sunset")  # index = (query number) mod 3


def dedup_ranked(ranked: np.ndarray, groups: np.ndarray, n_top: int | None = None) -> np.ndarray:
    """Panorama non-maximum suppression of one ranked list (`netvlad.protocol.dedup_ranked` of a row).

    Args:
        ranked: (M,) database indices, best first. Negative entries (padding) are dropped.
        groups: (N,) group id per database image (panorama id).
        n_top: keep at most this many.

    Returns:
        (≤ min(M, n_top),) int64 database indices.
    """
    return as_rows(protocol.dedup_ranked([ranked], groups, n_top))[0]


def dedup_ranked_matrix(ranked: np.ndarray, groups: np.ndarray, n_top: int) -> np.ndarray:
    """`netvlad.protocol.dedup_ranked` of a (Q, M) ranked matrix, padded with -1 to n_top columns.

    Returns:
        (Q, n_top) int64.
    """
    return protocol.dedup_ranked(np.asarray(ranked, dtype=np.int64), groups, n_top)


def _opt_array(a, n: int, name: str, dtype=None):
    if a is None:
        return None
    a = np.asarray(a, dtype=dtype)
    if a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries, expected {n}")
    return a


@dataclass
class PlaceDataset:
    """A place-recognition benchmark: database and query images with UTM positions and protocol rules.

    Image names are relative to ``db_root`` / ``query_root``. ``db_utm``/``query_utm`` are (N, 2)
    / (Q, 2) float64 (easting, northing) metres, all in ``zone`` (e.g. ``"17T"``; None when unknown
    or not geographic, e.g. Nordland frame indices).
    """

    name: str
    db_root: Path
    query_root: Path
    db_images: list[str]
    query_images: list[str]
    db_utm: np.ndarray
    query_utm: np.ndarray
    zone: str | None = None
    db_timestamps: np.ndarray | None = None
    query_timestamps: np.ndarray | None = None
    db_headings: np.ndarray | None = None
    query_headings: np.ndarray | None = None
    pos_radius: float = 25.0
    train_pos_radius: float = 10.0
    trivial_radius: float = 1.0
    rules: frozenset[str] = frozenset()
    protocol: str = "netvlad"
    db_groups: np.ndarray | None = None
    query_conditions: list[str] | None = None
    # Zone of each image as read from the source, when the source gave one per image; lets the
    # doctor report collections that were re-projected or could not be put into one zone.
    db_zones: list[str] | None = None
    query_zones: list[str] | None = None
    # Loader remarks worth showing to the user (photos without GPS, re-projection, ...).
    notes: list[str] = field(default_factory=list)
    _tree: object = field(default=None, init=False, repr=False, compare=False)
    _pos_cache: list | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.db_root = Path(self.db_root)
        self.query_root = Path(self.query_root)
        self.db_images = [str(s) for s in self.db_images]
        self.query_images = [str(s) for s in self.query_images]
        n, q = len(self.db_images), len(self.query_images)
        self.db_utm = np.asarray(self.db_utm, dtype=np.float64).reshape(-1, 2)
        self.query_utm = np.asarray(self.query_utm, dtype=np.float64).reshape(-1, 2)
        if self.db_utm.shape[0] != n:
            raise ValueError(f"{self.name}: db_utm has {self.db_utm.shape[0]} rows for {n} database images")
        if self.query_utm.shape[0] != q:
            raise ValueError(f"{self.name}: query_utm has {self.query_utm.shape[0]} rows for {q} queries")
        self.db_timestamps = _opt_array(self.db_timestamps, n, "db_timestamps")
        self.query_timestamps = _opt_array(self.query_timestamps, q, "query_timestamps")
        self.db_headings = _opt_array(self.db_headings, n, "db_headings", np.float64)
        self.query_headings = _opt_array(self.query_headings, q, "query_headings", np.float64)
        self.db_groups = _opt_array(self.db_groups, n, "db_groups", np.int64)
        if self.query_conditions is not None and len(self.query_conditions) != q:
            raise ValueError(
                f"{self.name}: query_conditions has {len(self.query_conditions)} entries for {q}"
            )
        self.rules = frozenset(self.rules)
        unknown = self.rules - KNOWN_RULES
        if unknown:
            raise ValueError(f"{self.name}: unknown rule(s) {sorted(unknown)}; known: {sorted(KNOWN_RULES)}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"{self.name}: unknown protocol {self.protocol!r}; "
                             f"known: {', '.join(PROTOCOLS)}")
        if "tokyotm_timestamp" in self.rules and (
            self.db_timestamps is None or self.query_timestamps is None
        ):
            raise ValueError(f"{self.name}: rule tokyotm_timestamp needs db and query timestamps")
        if "tokyo247_dedup" in self.rules and self.db_groups is None:
            raise ValueError(f"{self.name}: rule tokyo247_dedup needs db_groups (panorama id per db image)")
        if not 0 <= self.trivial_radius < self.train_pos_radius:
            raise ValueError(f"{self.name}: need 0 <= trivial_radius < train_pos_radius")

    # ------------------------------------------------------------------ sizes and paths
    @property
    def num_db(self) -> int:
        return len(self.db_images)

    @property
    def num_queries(self) -> int:
        return len(self.query_images)

    def db_paths(self) -> list[Path]:
        """Absolute-or-root-relative paths of the database images, in index order."""
        return [self.db_root / n for n in self.db_images]

    def query_paths(self) -> list[Path]:
        return [self.query_root / n for n in self.query_images]

    # ------------------------------------------------------------------ geometry
    @property
    def tree(self):
        """cKDTree over ``db_utm`` (built once)."""
        if self._tree is None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.db_utm)
        return self._tree

    def _search(self, q_utm: np.ndarray, radius: float):
        return radius_search(self.db_utm, q_utm, radius, tree=self.tree, sort=True)

    def positives(self, q: int) -> np.ndarray:
        """(P,) int64 db indices within ``pos_radius`` of query ``q``, nearest first (ties by index)."""
        if self._pos_cache is not None:
            return self._pos_cache[q]
        return self._search(self.query_utm[q], self.pos_radius)[0][0]

    def all_positives(self) -> list[np.ndarray]:
        """Positives of every query (one KD-tree pass; cached). List of Q int64 arrays."""
        if self._pos_cache is None:
            self._pos_cache = self._search(self.query_utm, self.pos_radius)[0]
        return self._pos_cache

    def _nontrivial(self, utm_row: np.ndarray, timestamp=None, exclude: int | None = None) -> np.ndarray:
        ids, d2 = self._search(utm_row, self.train_pos_radius)
        ids, d2 = ids[0], d2[0]
        keep = d2 > self.trivial_radius**2 if self.trivial_radius > 0 else np.ones(ids.shape, bool)
        if "tokyotm_timestamp" in self.rules and timestamp is not None:
            keep &= self.db_timestamps[ids] != timestamp
        if exclude is not None:
            keep &= ids != exclude
        return ids[keep]

    def nontrivial_positives(self, q: int) -> np.ndarray:
        """Training positives of query ``q``: trivial_radius < d ≤ train_pos_radius (MATLAB 1 < d² ≤ 100).

        With rule ``tokyotm_timestamp``, db images with the query's timestamp are excluded.
        ``trivial_radius == 0`` removes the lower bound (``dbTiny``). Sorted nearest first.
        """
        ts = self.query_timestamps[q] if self.query_timestamps is not None else None
        return self._nontrivial(self.query_utm[q], ts)

    def db_positives(self, i: int) -> np.ndarray:
        """Db images within ``pos_radius`` of db image ``i`` (MATLAB ``posDb``; includes ``i``)."""
        return self._search(self.db_utm[i], self.pos_radius)[0][0]

    def db_nontrivial_positives(self, i: int) -> np.ndarray:
        """MATLAB ``nontrivialPosDb``: like `nontrivial_positives` for db image ``i`` (never ``i`` itself)."""
        ts = self.db_timestamps[i] if self.db_timestamps is not None else None
        return self._nontrivial(self.db_utm[i], ts, exclude=i)

    def negative_mask(self, q: int) -> np.ndarray:
        """(N,) bool, True where the db image is a negative (beyond ``pos_radius``) for query ``q``."""
        mask = np.ones(self.num_db, dtype=bool)
        mask[self.positives(q)] = False
        return mask

    def is_negative(self, q: int, ids) -> np.ndarray:
        """Bool array: which of ``ids`` lie beyond ``pos_radius`` of query ``q``."""
        ids = np.asarray(ids, dtype=np.int64)
        d2 = np.sum((self.db_utm[ids] - self.query_utm[q]) ** 2, axis=-1)
        return d2 > self.pos_radius**2

    def is_positive(self, q: int, ids) -> np.ndarray:
        """Bool array: which of ``ids`` lie within ``pos_radius`` of query ``q`` (MATLAB ``isPosQ``)."""
        return ~self.is_negative(q, ids)

    def num_negatives(self) -> np.ndarray:
        """(Q,) how many db images are negatives for each query."""
        return self.num_db - np.array([p.size for p in self.all_positives()], dtype=np.int64)

    def sample_negatives(self, q: int, n: int, rng=None) -> np.ndarray:
        """``n`` distinct random negatives of query ``q`` (uniform over db images beyond pos_radius).

        Unlike MATLAB's ``sampleNegsQ`` (rejection sampling that never ends when too few
        negatives exist), this draws directly from the complement of the positives: O(n log P).

        Args:
            q: query index.
            n: how many.
            rng: ``np.random.Generator``, an int seed, or None.

        Returns:
            (n,) int64 db indices, in random order.

        Raises:
            ValueError: fewer than ``n`` negatives exist.
        """
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        pos = np.unique(self.positives(q))
        available = self.num_db - pos.size
        if n > available:
            raise ValueError(
                f"{self.name}: query {q} ({self.query_images[q]}) has only {available} negatives "
                f"(db images beyond {self.pos_radius:g} m), {n} requested"
            )
        r = rng.choice(available, size=n, replace=False)
        # The r-th non-positive index is r + #{positives p : p - rank(p) <= r}.
        return (r + np.searchsorted(pos - np.arange(pos.size), r, side="right")).astype(np.int64)

    # ------------------------------------------------------------------ protocol
    def ranking_rules(self) -> tuple[np.ndarray | None, list[np.ndarray] | None]:
        """(groups, exclude) of the dataset's rules (`netvlad.protocol.ranking_rules`)."""
        return protocol.ranking_rules(self.rules, self.num_db, self.db_groups, self.db_timestamps,
                                      self.query_timestamps, self.name)

    def retrieve_factor(self) -> int:
        """How many more results to retrieve before `postprocess_ranked` (MATLAB 10·nTop / 12·nTop)."""
        return protocol.retrieve_factor(self.rules)

    def postprocess_ranked(self, q: int, ranked, n_top: int | None = None) -> np.ndarray:
        """Apply the dataset's ranked-list rules to query ``q``'s results (MATLAB ``nnSearchPostprocess``).

        ``tokyotm_timestamp`` drops db images with the query's timestamp; ``tokyo247_dedup``
        keeps the first cutout of each panorama. Without rules the list is returned as is.

        Args:
            ranked: (M,) db indices, best first (retrieve ``retrieve_factor()·n_top`` of them).
            n_top: truncate to this many.

        Returns:
            (≤ n_top,) int64 db indices.
        """
        groups, exclude = self.ranking_rules()
        row = protocol.apply_rules([ranked], groups, None if exclude is None else [exclude[q]], n_top)
        return as_rows(row)[0]

    def subset_queries(self, idx) -> PlaceDataset:
        """A copy keeping only queries ``idx`` (order as given); the database is shared."""
        idx = np.asarray(idx, dtype=np.int64).ravel()

        def pick(a):
            return None if a is None else np.asarray(a)[idx]

        return dataclasses.replace(
            self,
            query_images=[self.query_images[i] for i in idx],
            query_utm=self.query_utm[idx],
            query_timestamps=pick(self.query_timestamps),
            query_headings=pick(self.query_headings),
            query_conditions=None
            if self.query_conditions is None
            else [self.query_conditions[i] for i in idx],
            query_zones=None if self.query_zones is None else [self.query_zones[i] for i in idx],
            notes=list(self.notes),
        )

    def summary(self) -> dict:
        """Plain-dict description (counts, radii, extent, rules, optional fields present)."""
        allu = np.concatenate([self.db_utm, self.query_utm])
        finite = allu[np.all(np.isfinite(allu), axis=1)]
        extent = (finite.max(0) - finite.min(0)).tolist() if finite.size else [0.0, 0.0]
        out = {
            "name": self.name,
            "db_root": str(self.db_root),
            "query_root": str(self.query_root),
            "num_db": self.num_db,
            "num_queries": self.num_queries,
            "zone": self.zone,
            "pos_radius": self.pos_radius,
            "train_pos_radius": self.train_pos_radius,
            "trivial_radius": self.trivial_radius,
            "extent_m": extent,
            "rules": sorted(self.rules),
            "protocol": self.protocol,
            "timestamps": self.db_timestamps is not None and self.query_timestamps is not None,
            "headings": self.db_headings is not None or self.query_headings is not None,
            "db_groups": None if self.db_groups is None else int(np.unique(self.db_groups).size),
        }
        if self.query_conditions is not None:
            conds, counts = np.unique(self.query_conditions, return_counts=True)
            out["query_conditions"] = dict(zip(conds.tolist(), counts.tolist()))
        return out
