"""Weakly supervised training (``trainWeakly``), model selection (``pickBestNet``) and helpers.

Public API: `TrainConfig`, `fit`, `pick_best`, `best_epoch`, `cleanup`, `evaluate_places`,
`refresh_cache`, and MSLS's query sampling (`query_weights`, `msls_sampling_weights`, `epoch_order`).
"""

from __future__ import annotations

from netvlad.train.cache import evaluate_places, refresh_cache
from netvlad.train.config import PAPER_BACKPROP_FROM, RECALL_NS, TrainConfig, resolve_backprop_from
from netvlad.train.loop import Position, fit
from netvlad.train.sampling import QUERY_SAMPLING, epoch_order, msls_sampling_weights, query_weights
from netvlad.train.select import best_epoch, cleanup, pick_best, read_run_recalls

__all__ = [
    "PAPER_BACKPROP_FROM",
    "QUERY_SAMPLING",
    "RECALL_NS",
    "Position",
    "TrainConfig",
    "best_epoch",
    "cleanup",
    "epoch_order",
    "evaluate_places",
    "fit",
    "msls_sampling_weights",
    "query_weights",
    "pick_best",
    "read_run_recalls",
    "refresh_cache",
    "resolve_backprop_from",
]
