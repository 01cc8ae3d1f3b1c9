"""Which training queries an epoch visits: all once in random order, or drawn with MSLS's weights.

Mapillary's ``msls.py`` (``__calcSamplingWeights__``, ``new_epoch``) draws each epoch's queries
with replacement, ``random.choices(range(N), weights, k=N)``, where N counts the queries with a
positive and a query's weight is 1, plus N / #night queries if it was taken at night, plus
N / #sideways queries if it looks sideways: the rare conditions are visited about as often as the
common ones. Night and sideways come from the dataset's ``query_conditions``
(``night_*`` / ``*_sideways``, as ``netvlad.data.formats.msls`` and the ``@`` layout of MSLS give them).
"""

from __future__ import annotations

import logging

import numpy as np

from netvlad.geo import radius_search

QUERY_SAMPLING = ("auto", "uniform", "msls")

logger = logging.getLogger(__name__)


def msls_sampling_weights(conditions, has_positive: np.ndarray) -> np.ndarray:
    """MSLS's per-query sampling weights (unnormalised).

    Args:
        conditions: Q labels; ``night_...`` marks a night query, ``..._sideways`` a sideways one.
        has_positive: (Q,) bool, queries with a training positive (the others weigh 0: ``msls.py``
            does not list them).

    Returns:
        (Q,) float64 weights.
    """
    has_positive = np.asarray(has_positive, dtype=bool)
    labels = [str(c).lower() for c in conditions]
    if len(labels) != has_positive.size:
        raise ValueError(f"{len(labels)} conditions for {has_positive.size} queries")
    night = np.array([c.startswith("night") for c in labels], dtype=bool) & has_positive
    sideways = np.array([c.endswith("sideways") for c in labels], dtype=bool) & has_positive
    n = int(has_positive.sum())
    w = np.ones(has_positive.size, dtype=np.float64)
    if night.any():
        w[night] += n / night.sum()
    if sideways.any():
        w[sideways] += n / sideways.sum()
    w[~has_positive] = 0.0
    return w


def _has_training_positive(ds) -> np.ndarray:
    """(Q,) bool: a database image within train_pos_radius and beyond trivial_radius."""
    _, d2 = radius_search(ds.db_utm, ds.query_utm, ds.train_pos_radius, tree=ds.tree, sort=False)
    lo = ds.trivial_radius ** 2 if ds.trivial_radius > 0 else -1.0
    return np.array([bool(np.any(d > lo)) for d in d2], dtype=bool)


def query_weights(ds, mode: str) -> np.ndarray | None:
    """Sampling weights of ``ds``'s queries for ``mode`` (`QUERY_SAMPLING`), None for uniform.

    ``auto`` is ``msls`` for a dataset with MSLS's protocol and night/view labels, else uniform.

    Raises:
        ValueError: ``msls`` for a dataset without night/sideways labels, or no query with a positive.
    """
    if mode not in QUERY_SAMPLING:
        raise ValueError(f"query sampling must be one of {', '.join(QUERY_SAMPLING)}, got {mode!r}")
    conditions = getattr(ds, "query_conditions", None)
    labelled = conditions is not None and any(
        str(c).lower().startswith(("day_", "night_")) for c in conditions)
    if mode == "uniform" or (mode == "auto" and not (labelled and getattr(ds, "protocol", "") == "msls")):
        return None
    if not labelled:
        raise ValueError(f"{ds.name}: MSLS query sampling needs night/view-direction labels per query "
                         "(MSLS's postprocessed.csv night and view_direction columns)")
    has_pos = _has_training_positive(ds)
    if not has_pos.any():
        raise ValueError(f"{ds.name}: no query has a database image within {ds.train_pos_radius:g} m")
    w = msls_sampling_weights(conditions, has_pos)
    labels = [str(c).lower() for c, p in zip(conditions, has_pos) if p]
    logger.info("MSLS query sampling: %d night and %d sideways of %d queries with a positive",
                sum(c.startswith("night") for c in labels), sum(c.endswith("sideways") for c in labels),
                len(labels))
    return w


def epoch_order(n: int, seed: int, epoch: int, weights: np.ndarray | None = None) -> np.ndarray:
    """The training-query rows an epoch visits, in order.

    Uniform (``weights`` None): a permutation from ``default_rng(seed + epoch)`` (MATLAB's
    rng(42 + iEpoch)). Weighted: n draws with replacement, probability ∝ weight (``msls.py``).

    Returns:
        (n,) int64 rows.
    """
    rng = np.random.default_rng(seed + epoch)
    if weights is None:
        return rng.permutation(n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(w >= 0) or w.sum() <= 0:
        raise ValueError(f"sampling weights must be {n} non-negative numbers, not all zero")
    return rng.choice(n, size=n, replace=True, p=w / w.sum()).astype(np.int64)
