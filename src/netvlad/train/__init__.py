"""Weakly supervised training (``trainWeakly``), model selection (``pickBestNet``), ``addPCA``.

Public API:
    `TrainConfig` (every option, with its help text), `fit` (train a model you built),
    `RunSpec` / `start_run` / `resume_run` / `read_run` (runs as the command line starts them:
    datasets and model by name, rebuilt from the run folder on resume),
    `pick_best`, `best_epoch`, `export_best`, `cleanup`, `read_run_recalls`,
    `add_pca` (PCA-whitening with its cached fit), `freeze_for_training` (backPropToLayer,
    fixLayers), `evaluate_places` / `evaluate_cached` / `refresh_cache` (the tests and the cache),
    and MSLS's query sampling (`query_weights`, `msls_sampling_weights`, `epoch_order`).
"""

from __future__ import annotations

from netvlad.train.cache import evaluate_cached, evaluate_places, refresh_cache
from netvlad.train.config import (
    PAPER_BACKPROP_FROM,
    RECALL_NS,
    TrainConfig,
    matlab_round,
    resolve_backprop_from,
)
from netvlad.train.dist import init_distributed, rank_world
from netvlad.train.layers import freeze_for_training
from netvlad.train.loop import Position, fit
from netvlad.train.pca import PCAResult, add_pca
from netvlad.train.runs import RunSpec, is_run_dir, read_run, resume_run, start_run
from netvlad.train.sampling import QUERY_SAMPLING, epoch_order, msls_sampling_weights, query_weights
from netvlad.train.select import best_epoch, cleanup, export_best, pick_best, read_run_recalls

__all__ = [
    "PAPER_BACKPROP_FROM",
    "PCAResult",
    "QUERY_SAMPLING",
    "RECALL_NS",
    "Position",
    "RunSpec",
    "TrainConfig",
    "add_pca",
    "best_epoch",
    "cleanup",
    "epoch_order",
    "evaluate_cached",
    "evaluate_places",
    "export_best",
    "fit",
    "freeze_for_training",
    "init_distributed",
    "is_run_dir",
    "matlab_round",
    "msls_sampling_weights",
    "pick_best",
    "query_weights",
    "rank_world",
    "read_run",
    "read_run_recalls",
    "refresh_cache",
    "resolve_backprop_from",
    "resume_run",
    "start_run",
]
