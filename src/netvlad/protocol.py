"""The benchmarks' ranked-list rules, in one place (MATLAB ``nnSearchPostprocess`` of ``dbTokyo247`` and
``dbTokyoTimeMachine``); `netvlad.data.PlaceDataset` names the rules a dataset follows and
`netvlad.metrics` applies them when it ranks.

- ``"tokyotm_timestamp"``: a database image taken at the query's own timestamp is not a valid
  result (the TokyoTM queries are drawn from the Time Machine imagery itself); MATLAB fetches
  10·nTop results before dropping them.
- ``"tokyo247_dedup"``: the database holds 12 perspective cutouts per panorama; a ranked list keeps
  only the first cutout of each panorama (Torii et al. CVPR'15); MATLAB fetches 12·nTop.

numpy only: every part may import it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KNOWN_RULES = frozenset({"tokyotm_timestamp", "tokyo247_dedup"})
#: Over-retrieval factors of MATLAB's nnSearchPostprocess: fetch factor·nTop, filter, keep nTop.
RETRIEVE_FACTOR = {"tokyotm_timestamp": 10, "tokyo247_dedup": 12}
#: Cutouts per Tokyo 24/7 panorama (group = id // 12 when a dataset gives no groups).
CUTOUTS_PER_PANORAMA = 12


def as_rows(ranked) -> list[np.ndarray]:
    """Ranked lists (Q×M array padded with −1, or Q 1-D arrays) as Q int64 arrays without padding."""
    if isinstance(ranked, np.ndarray) and ranked.ndim == 2:
        return [r[r >= 0] for r in ranked.astype(np.int64)]
    return [np.asarray(r, dtype=np.int64)[np.asarray(r) >= 0] for r in ranked]


def pad_rows(rows: list[np.ndarray], width: int | None = None) -> np.ndarray:
    """Q 1-D arrays as a Q×width int64 array padded with −1 (width: the longest row)."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = np.full((len(rows), width), -1, np.int64)
    for i, r in enumerate(rows):
        r = r[:width]
        out[i, : len(r)] = r
    return out


def dedup_ranked(ranked, groups: np.ndarray, k: int | None = None) -> np.ndarray:
    """Keep the first occurrence of each group in every ranked list (Tokyo 24/7 panorama NMS).

    Args:
        ranked: Q×M int array of database ids (−1 = no result), or a list of 1-D arrays.
        groups: group id per database image (N,), e.g. panorama = id // 12.
        k: keep at most k results per query.

    Returns:
        Q×M' int64 array padded with −1.
    """
    groups = np.asarray(groups)
    rows = []
    for r in as_rows(ranked):
        _, first = np.unique(groups[r], return_index=True)
        rows.append(r[np.sort(first)])
    return pad_rows(rows, k)


def exclude_ranked(ranked, exclude: Sequence[np.ndarray], k: int | None = None) -> np.ndarray:
    """Remove per-query excluded database ids from the ranked lists (TokyoTM same timestamp).

    Args:
        ranked: Q×M int array (−1 = no result) or list of 1-D arrays.
        exclude: Q arrays of database ids to drop (may be empty).
        k: keep at most k results per query.

    Returns:
        Q×M' int64 array padded with −1.
    """
    rows = as_rows(ranked)
    if len(exclude) != len(rows):
        raise ValueError(f"exclude has {len(exclude)} entries for {len(rows)} queries")
    return pad_rows([r[~np.isin(r, np.asarray(e, dtype=np.int64))] for r, e in zip(rows, exclude)], k)


def ranking_rules(
    rules, n_db: int, db_groups=None, db_timestamps=None, query_timestamps=None, name: str = "dataset"
) -> tuple[np.ndarray | None, list[np.ndarray] | None]:
    """What `rules` do to ranked lists: (groups, exclude).

    Args:
        rules: rule names (``KNOWN_RULES``).
        n_db: database size.
        db_groups: panorama id per database image (default: id // 12).
        db_timestamps, query_timestamps: needed by "tokyotm_timestamp".

    Returns:
        groups: (N,) group per database image, or None (no de-duplication);
        exclude: Q arrays of database ids dropped from each query's list, or None.

    Raises:
        ValueError: an unknown rule, or "tokyotm_timestamp" without timestamps.
    """
    rules = set(rules or ())
    unknown = rules - KNOWN_RULES
    if unknown:
        raise ValueError(f"{name}: unknown rule(s) {sorted(unknown)}; known: {sorted(KNOWN_RULES)}")
    groups = None
    if "tokyo247_dedup" in rules:
        groups = np.arange(n_db) // CUTOUTS_PER_PANORAMA if db_groups is None else np.asarray(db_groups)
    exclude = None
    if "tokyotm_timestamp" in rules:
        if db_timestamps is None or query_timestamps is None:
            raise ValueError(f"dataset {name}: the tokyotm_timestamp rule needs db and query timestamps")
        dbt = np.asarray(db_timestamps)
        exclude = [np.flatnonzero(dbt == t) for t in np.asarray(query_timestamps)]
    return groups, exclude


def apply_rules(ranked, groups: np.ndarray | None, exclude: Sequence[np.ndarray] | None,
                k: int | None = None) -> np.ndarray:
    """The rules applied to ranked lists: exclusions first, then de-duplication, as MATLAB.

    Returns:
        Q×k int64 array padded with −1 (k: the longest list when None).
    """
    if exclude is not None:
        ranked = exclude_ranked(ranked, exclude)
    if groups is not None:
        ranked = dedup_ranked(ranked, groups)
    return pad_rows(as_rows(ranked), k)


def retrieve_factor(rules) -> int:
    """How many times more results to fetch before the rules filter them: the product of the
    rules' factors (10 for TokyoTM, 12 for Tokyo 24/7, 1 without rules)."""
    return int(np.prod([RETRIEVE_FACTOR[r] for r in set(rules)], dtype=np.int64))
