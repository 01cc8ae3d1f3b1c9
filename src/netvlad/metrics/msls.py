"""Mapillary SLS's evaluation protocol (mapillary_sls ``evaluate.py`` + ``utils/eval.py``) and its
challenge prediction file.

The protocol differs from NetVLAD's recallAtN in two ways:

- a query without any database image within the positive radius (25 m) is left out of the
  denominator (``msls.py`` lists it in ``query_keys_with_no_match`` and evaluates the others);
- besides recall@k it reports mAP@k: for each query, AP@k = Σ precision@i over the ranks i ≤ k that
  hold a positive (each database image counted once), divided by min(#positives, k); the mean over
  the counted queries (``apk`` / ``mapk``).

k defaults to 1, 5, 10, 20 as ``evaluate.py``. Panoramas and the subtask's rows are chosen by the
dataset loader (``netvlad.data.formats.msls``), as ``msls.py`` does before evaluating.

Prediction file (``evaluate.py --prediction``, the Codalab server): one line per query, its key
then the keys of its ranked database images, separated by spaces; keys are file names without
``.jpg``; ``#`` lines are comments.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from netvlad.metrics.ranking import DEFAULT_NS, SAMPLE_SEED

#: The Ns of Mapillary's evaluate.py.
MSLS_KS: list[int] = [1, 5, 10, 20]
PROTOCOLS = ("netvlad", "msls")
#: First line of the prediction files :func:`write_predictions` writes (a comment to evaluate.py).
PREDICTIONS_HEADER = "# MSLS prediction file: query key, then its ranked database keys (netvlad evaluate)"

logger = logging.getLogger(__name__)


def protocol_ns(protocol: str, ns: Sequence[int] | None) -> list[int]:
    """The Ns to report: ``ns`` when given, else the protocol's (1, 5, 10, 20 for msls)."""
    if ns is not None:
        return sorted({int(n) for n in ns})
    return list(MSLS_KS if protocol == "msls" else DEFAULT_NS)


def average_precision_at_k(ranked: np.ndarray, positives: np.ndarray, k: int) -> float:
    """AP@k of one ranked list as ``apk``: Σ_{i ≤ k, ranked[i] a new positive} hits_i / i, over
    min(#positives, k). Entries < 0 (no result) are skipped."""
    positives = np.asarray(positives)
    top = np.asarray(ranked)[:k]
    top = top[top >= 0]
    if positives.size == 0:
        raise ValueError("AP of a query without positives (the MSLS protocol leaves such queries out)")
    is_pos = np.isin(top, positives)
    _, first = np.unique(top, return_index=True)
    new = np.zeros(top.size, dtype=bool)
    new[first] = True
    hit = is_pos & new
    ranks = np.flatnonzero(hit) + 1.0
    return float(np.sum(np.arange(1, ranks.size + 1) / ranks) / min(positives.size, k))


def msls_metrics(ranked, positives: Sequence[np.ndarray], ks: Sequence[int] = MSLS_KS) -> dict:
    """recall@k and mAP@k over the queries that have a positive (Mapillary's ``eval``).

    Args:
        ranked: Q×M database ids, best first (−1 = no result), or Q 1-D arrays.
        positives: Q arrays of positive database ids.
        ks: the ks.

    Returns:
        {"recall": {k: fraction}, "map": {k: mean AP@k}, "num_queries" (counted), "counted" (Q,)
        bool}.

    Raises:
        ValueError: no query has a positive.
    """
    rows = [np.asarray(r, dtype=np.int64) for r in ranked]
    if len(rows) != len(positives):
        raise ValueError(f"positives has {len(positives)} entries for {len(rows)} queries")
    counted = np.array([np.asarray(p).size > 0 for p in positives], dtype=bool)
    if not counted.any():
        raise ValueError("no query has a database image within the positive radius: nothing to evaluate")
    ks = sorted({int(k) for k in ks})
    recall, mean_ap = {}, {}
    idx = np.flatnonzero(counted)
    for k in ks:
        hits = [np.isin(rows[i][:k][rows[i][:k] >= 0], positives[i]).any() for i in idx]
        recall[k] = float(np.mean(hits))
        mean_ap[k] = float(np.mean([average_precision_at_k(rows[i], positives[i], k) for i in idx]))
    return {"recall": recall, "map": mean_ap, "num_queries": int(idx.size), "counted": counted}


def evaluate_msls(
    db_desc: np.ndarray,
    q_desc: np.ndarray,
    positives: Sequence[np.ndarray],
    ns: Sequence[int] = MSLS_KS,
    crop_dim: int | None = None,
    groups: np.ndarray | None = None,
    exclude: Sequence[np.ndarray] | None = None,
    sample: int | None = None,
    conditions: Sequence[str] | None = None,
    seed: int = SAMPLE_SEED,
    block: int | None = None,
    keep: int = 5,
) -> dict:
    """Descriptors → the MSLS protocol's recall@k and mAP@k (same ranking as :func:`evaluate`).

    Arguments as :func:`netvlad.metrics.evaluate`. NaN rows (failed images): a NaN database image is
    never ranked; a NaN query with positives retrieves nothing and counts as a failure.

    Returns:
        the :func:`evaluate` dict restricted to the counted queries ("num_queries", "query_indices",
        "first_hit", "hits", "top", "num_positives", "recall", "by_condition" are theirs), plus
        "map" ({k: mean AP@k}), "num_queries_total" (evaluated, counted or not) and
        "no_positive" (indices of the queries left out: no database image within the radius).
    """
    from netvlad.metrics.evaluate import evaluate

    ns = sorted({int(n) for n in ns})
    res = evaluate(db_desc, q_desc, positives, ns=ns, crop_dim=crop_dim, groups=groups, exclude=exclude,
                   sample=sample, seed=seed, block=block, keep=max(ns))
    sel = res["query_indices"]
    pos = [np.asarray(positives[i], dtype=np.int64) for i in sel]
    m = msls_metrics(res["top"], pos, ns)
    c = m["counted"]
    out = dict(res)
    out.update({
        "num_queries_total": int(len(sel)),
        "num_queries": m["num_queries"],
        "no_positive": sel[~c],
        "query_indices": sel[c],
        "first_hit": res["first_hit"][c],
        "hits": res["hits"][c],
        "top": res["top"][c][:, :keep],
        "num_positives": res["num_positives"][c],
        "recall": m["recall"],
        "map": m["map"],
        "bad_queries": np.intersect1d(res["bad_queries"], sel[c]),
    })
    if conditions is not None:
        labels = [str(conditions[i]) for i in sel[c]]
        out["conditions"] = labels
        counted_top = res["top"][c]
        counted_pos = [pos[j] for j in np.flatnonzero(c)]
        by = {}
        for lab in dict.fromkeys(labels):
            mask = np.array([x == lab for x in labels])
            sub = msls_metrics(counted_top[mask], [counted_pos[j] for j in np.flatnonzero(mask)], ns)
            by[lab] = {"num_queries": int(mask.sum()), "recall": sub["recall"], "map": sub["map"]}
        out["by_condition"] = by
    return out


def protocol_report(res: dict, query_names: Sequence[str]) -> dict:
    """Report fields naming the protocol (for ``evaluate --report``): "protocol"; with msls also
    "map" ({k as string: mean AP@k}), "num_queries_total" and "no_positive" (count and names of the
    queries left out of the denominator)."""
    out = {"protocol": res.get("protocol", "netvlad")}
    if "map" in res:
        out["map"] = {str(k): v for k, v in res["map"].items()}
        out["num_queries_total"] = res["num_queries_total"]
        out["no_positive"] = {"count": int(len(res["no_positive"])),
                              "names": [query_names[int(i)] for i in res["no_positive"]]}
    return out


def protocol_line(res: dict, ds) -> str:
    """One line saying how the recall below was counted."""
    if res.get("protocol") == "msls":
        left = res["num_queries_total"] - res["num_queries"]
        return (f"protocol msls (Mapillary's evaluation): {res['num_queries']} of {res['num_queries_total']} "
                f"queries have a database image within {ds.pos_radius:g} m; the other {left} are left out of "
                "the denominator")
    return "protocol netvlad (recallAtN): every query in the denominator, one without a positive is a failure"


def has_coordinates(ds) -> bool:
    """False for a dataset whose images carry no coordinates at all (MSLS test cities: NaN)."""
    utm = np.asarray(ds.db_utm, dtype=np.float64)
    return utm.size == 0 or not np.isnan(utm).all()


# ----------------------------------------------------------------------------- prediction file


def image_key(name: str) -> str:
    """The MSLS key of an image: its file name without the extension (``.../images/KEY.jpg``); for
    a name in VPR-datasets-downloader's ``@`` layout, its panorama-id field, where
    format_mapillary.py keeps the MSLS key."""
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    if base.startswith("@"):
        parts = base.split("@")
        if len(parts) > 8 and parts[7]:
            return parts[7]
    return base.rsplit(".", 1)[0] if "." in base else base


def write_predictions(path: str | Path, query_names: Sequence[str], db_names: Sequence[str],
                      ranked: np.ndarray) -> Path:
    """Write the MSLS challenge prediction file (atomically).

    Args:
        path: the output text file.
        query_names: Q image names (keys are taken with :func:`image_key`).
        db_names: N database image names.
        ranked: Q×k database ids, best first; −1 (a query whose descriptor is NaN) is filled with
            the first database images not listed, so that every line has k keys, as evaluate.py's
            ``np.loadtxt`` needs (a warning counts such queries).

    Returns:
        ``path``.

    Raises:
        ValueError: two queries or two database images with the same key.
    """
    from netvlad._atomic import atomic_write_text

    qkeys = [image_key(n) for n in query_names]
    dbkeys = [image_key(n) for n in db_names]
    for what, keys in (("query", qkeys), ("database", dbkeys)):
        if len(set(keys)) != len(keys):
            dup = next(k for i, k in enumerate(keys) if k in keys[:i])
            raise ValueError(f"{path}: two {what} images have the key {dup!r}: the prediction file "
                             "could not tell them apart")
    ranked = np.asarray(ranked, dtype=np.int64)
    if ranked.shape[0] != len(qkeys):
        raise ValueError(f"{path}: {ranked.shape[0]} ranked lists for {len(qkeys)} queries")
    k = ranked.shape[1]
    lines = [PREDICTIONS_HEADER]
    filled = 0
    for qk, row in zip(qkeys, ranked):
        row = row[row >= 0]
        if row.size < k:
            filled += 1
            extra = np.setdiff1d(np.arange(len(dbkeys)), row)[: k - row.size]
            row = np.concatenate([row, extra])
        lines.append(" ".join([qk, *(dbkeys[i] for i in row)]))
    if filled:
        logger.warning("%s: %d queries retrieved fewer than %d images (NaN descriptors); their lines "
                       "are filled with database images in file order", path, filled, k)
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
    return Path(path)


def read_predictions(path: str | Path) -> dict[str, list[str]]:
    """A prediction file as {query key: ranked database keys} (``#`` lines skipped).

    Raises:
        ValueError: a query listed twice or a line without keys (names the line).
    """
    path = Path(path)
    out: dict[str, list[str]] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if parts[0] in out:
            raise ValueError(f"{path}: line {i}: query {parts[0]!r} listed twice")
        out[parts[0]] = parts[1:]
    return out
