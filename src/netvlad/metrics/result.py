"""`RecallResult`: what a recall@N evaluation found, and its JSON report (``evaluate --report``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netvlad.metrics.msls import protocol_report


@dataclass
class RecallResult:
    """The result of `netvlad.metrics.evaluate` / `evaluate_dataset` as named fields.

    Attributes:
        ns: the Ns, ascending; recall: {N: fraction of queries with a positive in the top N}.
        num_queries, num_db, dim: evaluated queries, database size, descriptor dimension.
        crop_dim, sample, seed: the evaluation's settings (None when not used).
        query_indices: (Q,) evaluated query indices, in evaluation order.
        first_hit: (Q,) 0-based rank of the first positive, −1 if none in the top max(ns).
        num_positives: (Q,) positives per query; top: Q×keep database ids (−1 padded);
        hits: Q×len(ns) bool.
        bad_queries, bad_db: indices with NaN descriptors (failed images).
        conditions: Q labels; by_condition: {label: {"num_queries", "recall"}} (optional).
        dataset, protocol: names (from `evaluate_dataset`).
        rank_loss: ``testCoreRank``'s loss when asked for.
        extra: the protocol's other entries (msls: "map", "num_queries_total", "no_positive").
    """

    ns: list[int]
    recall: dict[int, float]
    num_queries: int
    num_db: int
    dim: int
    query_indices: np.ndarray
    first_hit: np.ndarray
    num_positives: np.ndarray
    top: np.ndarray
    hits: np.ndarray
    bad_queries: np.ndarray
    bad_db: np.ndarray
    crop_dim: int | None = None
    sample: int | None = None
    seed: int | None = None
    conditions: list[str] | None = None
    by_condition: dict | None = None
    dataset: str | None = None
    protocol: str = "netvlad"
    rank_loss: float | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, res: dict) -> RecallResult:
        """From the dict `evaluate` / `evaluate_dataset` return."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in res.items() if k in names}
        known.setdefault("protocol", "netvlad")
        return cls(**known, extra={k: v for k, v in res.items() if k not in names})

    def as_dict(self) -> dict:
        """The dict form `evaluate_dataset` returns (what older code indexes by key)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for key in ("conditions", "by_condition", "dataset", "rank_loss"):
            if d[key] is None:
                del d[key]
        return {**d, **self.extra}

    def to_json(
        self, ds, label: str, db_features: str | Path, query_features: str | Path | None = None
    ) -> dict:
        """The JSON-ready report of ``netvlad evaluate --report``: the summary, then one row per
        evaluated query (its name, rank of the first positive, hits, top database names).

        Args:
            ds: the evaluated `PlaceDataset` (names of queries and database images).
            label: the report's label.
            db_features, query_features: the feature files (query_features: default the db's).
        """
        ns = self.ns
        report = {
            "label": label,
            "dataset": self.dataset,
            "db_features": str(db_features),
            "query_features": str(query_features if query_features is not None else db_features),
            "num_db": self.num_db,
            "num_queries": self.num_queries,
            "dim": self.dim,
            "crop_dim": self.crop_dim,
            "sample": self.sample,
            "seed": self.seed,
            "ns": ns,
            "recall": {str(n): self.recall[n] for n in ns},
            # Images that failed extraction (NaN rows): queries count as failures, db images are never ranked.
            "bad_queries": {"count": len(self.bad_queries),
                            "names": [ds.query_images[int(i)] for i in self.bad_queries]},
            "bad_db": {"count": len(self.bad_db), "names": [ds.db_images[int(i)] for i in self.bad_db]},
        }
        if self.by_condition is not None:
            report["by_condition"] = {
                c: {"num_queries": v["num_queries"], "recall": {str(n): v["recall"][n] for n in ns}}
                for c, v in self.by_condition.items()
            }
        if self.rank_loss is not None:
            report["rank_loss"] = self.rank_loss
        report["queries"] = [self._query_row(ds, j) for j in range(len(self.query_indices))]
        report.update(protocol_report(self.as_dict(), ds.query_images))
        return report

    def _query_row(self, ds, j: int) -> dict:
        qi, first = int(self.query_indices[j]), int(self.first_hit[j])
        row = {
            "query": ds.query_images[qi],
            "index": qi,
            "rank": first + 1 if first >= 0 else None,
            "num_positives": int(self.num_positives[j]),
            "hits": [int(h) for h in self.hits[j]],
            "top": [ds.db_images[int(t)] for t in self.top[j] if t >= 0],
        }
        if self.conditions is not None:
            row["condition"] = self.conditions[j]
        return row

    def dumps(self, ds, label: str, db_features, query_features=None) -> str:
        """`to_json` as the text ``evaluate --report`` writes."""
        return json.dumps(self.to_json(ds, label, db_features, query_features), indent=1) + "\n"


def format_recall_table(recall: dict, by_condition: dict | None = None) -> str:
    """The recall@N table ``netvlad evaluate`` prints: one row per N, a column per condition.

    Args:
        recall: {N: fraction} over all queries; by_condition: {label: {"recall": {N: fraction}}}.

    Returns:
        the table's lines joined by newlines (percentages with two decimals).
    """
    cols = ["all", *(by_condition or {})]
    lines = ["     N " + "".join(f"{c:>9}" for c in cols)]
    for n in recall:
        vals = [recall[n], *(by_condition[c]["recall"][n] for c in cols[1:])] if by_condition else [recall[n]]
        lines.append(f"{n:>6} " + "".join(f"{100 * v:>8.2f}%" for v in vals))
    return "\n".join(lines)


def _first_names(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (" ..." if len(names) > n else "")


def bad_descriptor_lines(result: RecallResult | dict, ds) -> list[str]:
    """What an evaluation says about images that failed extraction (NaN descriptors), if any.

    Args:
        result: a `RecallResult`, or the dict `evaluate_dataset` returns.
        ds: the evaluated `PlaceDataset` (names of queries and database images).

    Returns:
        up to two lines (failed queries, counted as failures; failed database images, never
        retrieved), each naming the first five images; [] when every descriptor is finite.
    """
    res = result.as_dict() if isinstance(result, RecallResult) else result
    lines = []
    bq = [ds.query_images[int(i)] for i in res.get("bad_queries", [])]
    bd = [ds.db_images[int(i)] for i in res.get("bad_db", [])]
    if bq:
        lines.append(
            f"{len(bq)} of {res['num_queries']} queries have NaN descriptors (images that failed "
            f"extraction), counted as failures: {_first_names(bq)}"
        )
    if bd:
        lines.append(
            f"{len(bd)} of {res['num_db']} database images have NaN descriptors (images that failed "
            f"extraction), never retrieved: {_first_names(bd)}"
        )
    return lines
