"""Off-the-shelf NetVLAD: initialise the clusters from local descriptors of real images (``getClusters``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from netvlad.layers import NetVLAD
from netvlad.models.model import PlaceModel

__all__ = ["ClusterInit", "InitConfig", "init_clusters"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InitConfig:
    """Descriptor sampling for cluster initialisation (``getClusters``' defaults).

    Attributes:
        per_image: local descriptors sampled (without replacement) per image.
        max_images: images used at most (50000 descriptors / 100 per image in the original).
        seed: seeds image choice, per-image sampling and k-means (43 in the original).
    """

    per_image: int = 100
    max_images: int = 500
    seed: int = 43


@dataclass(frozen=True)
class ClusterInit:
    """What :func:`init_clusters` did."""

    num_images: int
    num_descriptors: int
    alpha: float


_DEF = InitConfig()


@torch.no_grad()
def init_clusters(
    model: PlaceModel,
    images: Iterable[Any],
    per_image: int = _DEF.per_image,
    max_images: int = _DEF.max_images,
    seed: int = _DEF.seed,
    progress: bool = True,
    loader: Callable[[Any], np.ndarray] | None = None,
    kmeans_backend: str = "auto",
) -> ClusterInit:
    """Sample local descriptors from images and initialise the model's NetVLAD layer in place.

    Each chosen image is preprocessed with ``model.preprocess`` and run alone at its own size in eval
    mode; ``min(per_image, h·w)`` of its backbone descriptors (after preL2 when the method has it)
    are drawn uniformly without replacement; then ``NetVLAD.init_from_descriptors(seed=seed)``.

    Image choice differs from the original on purpose: ``getClusters`` draws ``randsample(nDb, 500)``
    but then reads the *first* 500 database images (an indexing bug). Here the ``max_images`` images
    really are a random subset (seeded), taken in index order. For a plain iterator (no ``len``), the
    first ``max_images`` items are used.

    Args:
        model: a PlaceModel with a NetVLAD head.
        images: a sequence (or iterable) of H×W×3 uint8 arrays, or of anything ``loader`` turns into one
            (e.g. paths with ``loader=netvlad.data.load_image``). Sequences are indexed lazily.
        per_image, max_images, seed: see :class:`InitConfig`.
        progress: show a tqdm bar.
        loader: item → H×W×3 uint8 array; None means the items are arrays already.
        kmeans_backend: "auto" | "faiss" | "torch" (see ``netvlad.layers.kmeans``).

    Returns:
        :class:`ClusterInit` (images used, descriptors sampled, alpha).
    """
    if not isinstance(model.head, NetVLAD):
        raise ValueError(f"method {model.method} has no clusters to initialise (only vlad/vladv2 do)")
    if per_image < 1 or max_images < 1:
        raise ValueError(f"per_image and max_images must be >= 1, got {per_image}, {max_images}")
    rng = np.random.default_rng(seed)
    if hasattr(images, "__len__") and hasattr(images, "__getitem__"):
        n = len(images)
        if n == 0:
            raise ValueError("init_clusters: no images given")
        chosen = np.sort(rng.choice(n, size=min(n, max_images), replace=False))
        items: Iterable[Any] = (images[int(i)] for i in chosen)
        total = len(chosen)
    else:
        items = (im for i, im in zip(range(max_images), images))
        total = None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for item in tqdm(items, total=total, desc="sampling descriptors", unit="img", disable=not progress):
            img = loader(item) if loader is not None else item
            x = model.preprocess.apply(img).unsqueeze(0).to(device)
            f = model.local_features(x)[0].flatten(1).T  # N×D
            take = rng.choice(f.shape[0], size=min(per_image, f.shape[0]), replace=False)
            chunks.append(f[torch.from_numpy(np.sort(take)).to(device)].float().cpu())
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("init_clusters: no images given")
    descs = torch.cat(chunks)
    log.info("sampled %d descriptors from %d images", len(descs), len(chunks))
    alpha = model.head.init_from_descriptors(descs, seed=seed, backend=kmeans_backend)
    return ClusterInit(len(chunks), len(descs), alpha)
