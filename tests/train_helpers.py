"""Shared fixtures for the training tests: a tiny backbone and a tiny synthetic place set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from netvlad.backbones.base import IMAGENET_PREPROCESS, Backbone
from netvlad.data.places import PlaceDataset
from netvlad.models import ModelConfig, PlaceModel, Preprocess


class TinyBackbone(Backbone):
    """conv1 (3→8, stride 2) → relu1 → conv2 (8→16, stride 2): a 48×64 image gives a 12×16 map."""

    def __init__(self, crop: str | None = None, width: int = 16):
        super().__init__(
            crop,
            name="tiny",
            layer_names=["conv1", "relu1", "conv2"],
            default_crop="conv2",
            default_preprocess=IMAGENET_PREPROCESS,
        )
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, width, 3, stride=2, padding=1)
        self._finish_init()

    def _layer_modules(self):
        return [("conv1", [self.conv1]), ("relu1", [self.relu1]), ("conv2", [self.conv2])]

    def forward(self, x):
        return self.conv2(self.relu1(self.conv1(x)))


def tiny_model(seed: int = 0, method: str = "vlad_preL2_intra", k: int = 4) -> PlaceModel:
    pre = Preprocess("imagenet", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 1.0)
    cfg = ModelConfig(backbone="tiny", crop="conv2", method=method, num_clusters=k, preprocess=pre)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PlaceModel(cfg, TinyBackbone()).eval()


def _texture(rng: np.random.Generator, h: int = 48, w: int = 64) -> np.ndarray:
    grid = rng.random((4, 5, 3))
    img = Image.fromarray((grid * 255).astype(np.uint8)).resize((w + 16, h), Image.BICUBIC)
    return np.asarray(img, np.float64)


def make_places(
    root: Path,
    n_places: int = 8,
    seed: int = 0,
    spacing: float = 40.0,
    db_per_place: int = 3,
    q_per_place: int = 2,
    nuisance: float = 0.8,
    view_seed: int | None = None,
) -> PlaceDataset:
    """Places on a line `spacing` m apart. Each place has a texture; its db images (at 0, 3, 6 m)
    and queries (at 1.5, 4.5 m) are shifted crops of it under a strong view-dependent nuisance
    pattern, which an untrained network confuses with place identity. `view_seed` draws new views
    of the same places (a validation set of the training town under new conditions)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    view_rng = rng if view_seed is None else np.random.default_rng(view_seed)
    (root / "db").mkdir(parents=True, exist_ok=True)
    (root / "q").mkdir(parents=True, exist_ok=True)
    db, q, dbu, qu = [], [], [], []

    def view(tex, shift, r):
        img = tex[:, shift : shift + 64]
        # condition change: per-view colour cast and strong fresh pixel noise; random filters
        # respond mostly to the noise, learnt ones can average it out
        gain = 1.0 + 0.5 * nuisance * r.uniform(-1, 1, 3)
        out = img * gain + r.normal(0, 80 * nuisance, img.shape)
        return np.clip(out, 0, 255).astype(np.uint8)

    for p in range(n_places):
        tex = _texture(rng)
        r = view_rng
        x0 = p * spacing
        for j in range(db_per_place):
            name = f"p{p:02d}_{j}.png"
            Image.fromarray(view(tex, int(r.integers(0, 16)), r)).save(root / "db" / name)
            db.append(name)
            dbu.append((x0 + 3.0 * j, 0.0))
        for j in range(q_per_place):
            name = f"p{p:02d}_q{j}.png"
            Image.fromarray(view(tex, int(r.integers(0, 16)), r)).save(root / "q" / name)
            q.append(name)
            qu.append((x0 + 1.5 + 3.0 * j, 0.0))
    return PlaceDataset(
        name=f"tiny{seed}",
        db_root=root / "db",
        query_root=root / "q",
        db_images=db,
        query_images=q,
        db_utm=np.array(dbu),
        query_utm=np.array(qu),
    )
