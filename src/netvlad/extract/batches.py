"""Image list → batches: the size-bucketed batch plan and the DataLoader side that decodes images.

The plan depends only on the image list, the sizes read from file headers, the batch size and the
pixel bound, so a resumed run computes exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netvlad.data.images import ImageLoadError, image_size, load_image
from netvlad.extract.config import ExtractConfig
from netvlad.extract.sizing import SizePolicy, fitted_preprocess

logger = logging.getLogger("netvlad.extract")


def plan_batches(sizes: Sequence[Any], batch_size: int, pixels: Sequence[int] | None = None,
                 max_pixels: int | None = None) -> list[list[int]]:
    """Group image indices by size into batches of at most ``batch_size``.

    Buckets come in order of their first image, indices keep their order within a bucket, so a
    set of equal-size images is batched in file order. Deterministic: resuming relies on it.

    With ``pixels`` (each image's network-input pixel count, equal within a bucket) and
    ``max_pixels``, a batch also holds at most ``max_pixels`` pixels (always at least one image):
    the memory of a forward pass grows with the pixels of the whole batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    buckets: dict[Any, list[int]] = {}
    for i, s in enumerate(sizes):
        buckets.setdefault(s, []).append(i)
    plan = []
    for b in buckets.values():
        n = batch_size
        if pixels is not None and max_pixels is not None and pixels[b[0]] > 0:
            n = max(1, min(batch_size, max_pixels // pixels[b[0]]))
        plan.extend(b[j:j + n] for j in range(0, len(b), n))
    return plan


class _ImageFiles(torch.utils.data.Dataset):
    """Decodes and preprocesses one image; a bad file becomes (index, None, message).

    An image over ``max_pixels`` is decoded straight to its downscaled size (JPEG: at reduced DCT
    scale), or refused, from the size :class:`SizePolicy` gives for its decoded orientation.
    """

    def __init__(self, paths: Sequence[Path], policy: SizePolicy):
        self.paths = list(paths)
        self.policy = policy

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path, target = self.paths[i], None

        def fit(h: int, w: int) -> tuple[int, int] | None:
            nonlocal target
            target = self.policy.check(path, h, w)[0]
            return target

        try:
            img = load_image(path, honour_exif=self.policy.cfg.exif_orientation, fit=fit)
        except ImageLoadError as exc:
            return i, None, str(exc)
        return i, fitted_preprocess(self.policy.pre, target).apply(img), None


def _collate(items):
    groups: dict[tuple, tuple[list[int], list[torch.Tensor]]] = {}
    bad = []
    for i, t, err in items:
        if err is not None:
            bad.append((i, err))
        else:
            # Split by decoded shape too, in case a header disagreed with the pixels.
            rows, ts = groups.setdefault(tuple(t.shape), ([], []))
            rows.append(i)
            ts.append(t)
    return [(rows, torch.stack(ts)) for rows, ts in groups.values()], bad


def _worker_init(_worker_id: int) -> None:
    # Decoding is single-threaded; extra intra-op threads in workers only steal the main
    # process's cores.
    torch.set_num_threads(1)


def preprocess_for(model: torch.nn.Module, max_side: int | None) -> Any:
    """The model's Preprocess with ``ExtractConfig.max_side`` applied (None: as is, 0: no resize)."""
    pre = model.preprocess
    if max_side is None:
        return pre
    if int(max_side) < 0:
        raise ValueError(f"max_side must be >= 0 (0: native resolution), got {max_side}")
    # Preprocess says "no resize" with max_side=None and resize=None; an explicit value replaces both.
    return dataclasses.replace(pre, max_side=int(max_side) or None, resize=None)


def _plan(model, paths: Sequence[Path], todo: np.ndarray, cfg: ExtractConfig
          ) -> tuple[list[list[int]], list[tuple[int, str]]]:
    """The batches of the images still to do, and the (row, reason) of those that are bad.

    Every header is read (done images too: the plan must be the uninterrupted run's plan). A bad
    or refused image still to do raises ImageLoadError unless ``cfg.skip_bad``; the downscale of an
    oversize one is logged here, once, in the main process.
    """
    policy = SizePolicy(preprocess_for(model, cfg.max_side), cfg, model)
    sizes: list[Any] = []
    pixels: list[int] = []
    bad: list[tuple[int, str]] = []
    for i, p in enumerate(paths):
        try:
            hw = image_size(p, honour_exif=cfg.exif_orientation)
            sizes.append(hw)
            pixels.append(policy.pixels(*hw))
            note = policy.check(p, *hw)[1] if todo[i] else None
        except ImageLoadError as exc:
            if len(sizes) == i:
                sizes.append(("bad", i))  # a bucket of its own
                pixels.append(0)
            if todo[i] and not cfg.skip_bad:
                raise
            if todo[i]:
                bad.append((i, str(exc)))
            continue
        if note:
            logger.warning(note)
    # A refused image keeps its size bucket so that redoing it later cannot move other batches.
    skip = {i for i, _ in bad}
    plan = [[i for i in b if todo[i] and i not in skip]
            for b in plan_batches(sizes, cfg.batch_size, pixels, cfg.max_pixels)]
    return [b for b in plan if b], bad
