"""Step 1 of the demo: the ``mvtbdata`` campus walk, indexed and queried with a pretrained model.

Campus ground truth: the 25 photos P1070491–P1070515 are consecutive frames of one walk through
a university campus (Corke, *Robotics, Vision and Control*, place recognition example). The
held-out queries are frames 492, 502, 508, 511 and 513. A database frame is a positive of a query
when its frame number is within ``frame_window`` (default 1) of the query's: the photos taken just
before and just after along the walk. With window 1 every query has exactly two positives
(491/493, 501/503, 507/509, 510/512, 512/514).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netvlad.demo.config import INSTALL_LINE, DemoDependencyError
from netvlad.demo.page import write_matches_html

_CAMPUS_RE = re.compile(r"P(\d+)\.(png|jpg)$", re.IGNORECASE)


@dataclass
class Campus:
    """The mvtbdata campus walk: database / query photo paths, frame numbers and positives."""

    db_paths: list[Path]
    query_paths: list[Path]
    db_frames: np.ndarray
    query_frames: np.ndarray
    positives: list[np.ndarray]


def campus_walk(root: str | Path | None = None, frame_window: int = 1) -> Campus:
    """Load the campus sequence (``<root>/*.png`` database, ``<root>/holdout/*.png`` queries).

    Args:
        root: the campus folder; default the installed ``mvtbdata`` package's ``images/campus``.
        frame_window: positives are database frames with |frame − query frame| <= this.
    """
    if root is None:
        spec = importlib.util.find_spec("mvtbdata")
        if spec is None or not spec.submodule_search_locations:
            raise DemoDependencyError(f"mvtbdata is not installed; install the demo extra: {INSTALL_LINE}")
        root = Path(next(iter(spec.submodule_search_locations))) / "images" / "campus"
    root = Path(root)

    def frames(folder: Path) -> tuple[list[Path], np.ndarray]:
        files = sorted(p for p in folder.glob("*") if _CAMPUS_RE.search(p.name))
        return files, np.array([int(_CAMPUS_RE.search(p.name).group(1)) for p in files], np.int64)

    db, db_f = frames(root)
    qs, q_f = frames(root / "holdout")
    if not db or not qs:
        raise FileNotFoundError(f"{root}: expected P<frame>.png photos and a holdout/ folder of queries")
    positives = [np.flatnonzero(np.abs(db_f - f) <= frame_window) for f in q_f]
    return Campus(db, qs, db_f, q_f, positives)


def run_campus(
    model,
    campus: Campus,
    out_dir: str | Path,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
    k: int = 5,
) -> dict:
    """Index the campus database with `model` (clusters initialised from it), query, score, write HTML.

    Returns:
        {"recall": {1: r, 5: r}, "ranked": Q×k ids, "scores": Q×k, "html": path}.
    """
    from netvlad.data import load_image
    from netvlad.extract import compute_descriptors
    from netvlad.index import topk
    from netvlad.metrics import recall_at_n
    from netvlad.models import init_clusters

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not getattr(model, "initialized", True):
        init_clusters(model, campus.db_paths, loader=load_image, progress=progress)
    db = compute_descriptors(
        model, campus.db_paths, batch_size=batch_size, device=device, num_workers=0, progress=progress
    )
    q = compute_descriptors(
        model, campus.query_paths, batch_size=batch_size, device=device, num_workers=0, progress=progress
    )
    scores, ranked = topk(q, db, k=min(k, len(db)))
    recall = recall_at_n(ranked, campus.positives, ns=[1, 5])
    page = write_matches_html(out_dir / "campus.html", campus, ranked, scores, recall)
    return {"recall": recall, "ranked": ranked, "scores": scores, "html": page}
