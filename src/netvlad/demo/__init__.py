"""`netvlad demo`: the whole system, offline, on a 2-core CPU in a few minutes.

Step 1 (real photos): the ``mvtbdata`` campus walk. 20 database photos are indexed with the
pretrained EfficientNet-Lite0 NetVLAD model (clusters initialised from those photos), the 5
held-out photos are queried, recall@1/5 is printed and an HTML page shows each query beside its
top-5 matches.

The campus ground truth (positives within one frame along the walk) is described in ``campus``.

Step 2 (training): a small synthetic town (`netvlad.synth`) is generated; the off-the-shelf model
(clusters from the town's training database) is evaluated on the test area, trained with the
weakly supervised triplet loss on the train area (validation on val), PCA-whitened, and evaluated
again. A table of recall@1/5/10 and a PNG of the recall curves are written.

Every step is a function taking explicit arguments; `run_demo` strings them together. Parts:
``config`` (`DemoConfig`, the dependency check), ``campus`` (step 1), ``page`` (its HTML page),
``town`` (step 2), ``run`` (`run_demo`).
"""

from __future__ import annotations

from netvlad.demo.campus import Campus, campus_walk, run_campus
from netvlad.demo.config import INSTALL_LINE, DemoConfig, DemoDependencyError, check_demo_dependencies
from netvlad.demo.page import write_matches_html
from netvlad.demo.run import run_demo
from netvlad.demo.town import (
    evaluate_on,
    format_table,
    off_dim,
    plot_recall_curves,  # the recall-curve plot the demo writes, reachable as demo.plot_recall_curves
    run_town_training,
    train_on_town,
)

__all__ = [
    "INSTALL_LINE",
    "Campus",
    "DemoConfig",
    "DemoDependencyError",
    "campus_walk",
    "check_demo_dependencies",
    "evaluate_on",
    "format_table",
    "off_dim",
    "plot_recall_curves",
    "run_campus",
    "run_demo",
    "run_town_training",
    "train_on_town",
    "write_matches_html",
]
