"""Evaluation metrics exactly as the original protocols compute them (numpy only).

- recall@N (``recallAtN``): a query is a hit at N when any ground-truth positive is in
  its top N; every query is in the denominator, so a query with no positive is a failure.
- Dataset rules on the ranked lists: Tokyo 24/7 panorama de-duplication (keep the first
  occurrence of each panorama, ``nnSearchPostprocess`` of ``dbTokyo247``) and TokyoTM's exclusion
  of database images taken at the query's timestamp (``dbTokyoTimeMachine``). As in MATLAB, the
  search over-fetches (12× and 10× respectively) before filtering.
- rank loss (``testCoreRank``).
- Mapillary SLS's protocol (``msls``): queries without a positive left out, recall@k and mAP@k,
  and the challenge's prediction file (:mod:`netvlad.metrics.msls`).
- Average precision with trapezoidal interpolation (``relja_retrievalMAP``, identical to the
  official Oxford ``compute_ap``), mAP, and the revisited Oxford/Paris mP@k.

Only numpy is imported at module level; :func:`evaluate` imports :func:`netvlad.index.topk`
lazily for the exact search.
"""

from __future__ import annotations

from netvlad.metrics.ap import average_precision, evaluate_map, mean_average_precision, precision_at_k
from netvlad.metrics.evaluate import (
    RANK_SAMPLE,
    dataset_rank_loss,
    dataset_rules,
    evaluate,
    evaluate_dataset,
    rank_dataset,
    rank_lists,
)
from netvlad.metrics.msls import (
    MSLS_KS,
    PREDICTIONS_HEADER,
    PROTOCOLS,
    average_precision_at_k,
    evaluate_msls,
    has_coordinates,
    image_key,
    msls_metrics,
    protocol_line,
    protocol_ns,
    protocol_report,
    read_predictions,
    write_predictions,
)
from netvlad.metrics.plot import PLOT_TAG, is_recall_plot, plot_recall_curves, read_report_curve
from netvlad.metrics.ranking import (
    DEFAULT_NS,
    SAMPLE_SEED,
    crop_to_dim,
    dedup_ranked,
    exclude_ranked,
    first_hit_rank,
    hits_at_n,
    rank_loss,
    recall_at_n,
    sample_queries,
)
from netvlad.metrics.result import RecallResult, bad_descriptor_lines, format_recall_table

__all__ = [
    "dataset_rank_loss",
    "PLOT_TAG",
    "RecallResult",
    "bad_descriptor_lines",
    "format_recall_table",
    "is_recall_plot",
    "plot_recall_curves",
    "read_report_curve",
    "RANK_SAMPLE",
    "DEFAULT_NS",
    "MSLS_KS",
    "PREDICTIONS_HEADER",
    "PROTOCOLS",
    "average_precision_at_k",
    "dataset_rules",
    "evaluate_msls",
    "has_coordinates",
    "image_key",
    "msls_metrics",
    "protocol_line",
    "protocol_ns",
    "protocol_report",
    "rank_dataset",
    "rank_lists",
    "read_predictions",
    "write_predictions",
    "SAMPLE_SEED",
    "average_precision",
    "crop_to_dim",
    "dedup_ranked",
    "evaluate",
    "evaluate_dataset",
    "evaluate_map",
    "exclude_ranked",
    "first_hit_rank",
    "hits_at_n",
    "mean_average_precision",
    "precision_at_k",
    "rank_loss",
    "recall_at_n",
    "sample_queries",
]
