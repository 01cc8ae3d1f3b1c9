"""One image at a time: its descriptor, or its pixels bounded for a model (``netvlad init``)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from netvlad.data.images import load_image, to_rgb_array
from netvlad.extract.config import DEFAULT_MAX_PIXELS, ExtractConfig
from netvlad.extract.run import _check_model, _forward, _prepared
from netvlad.extract.sizing import SizePolicy, fitted_preprocess

logger = logging.getLogger("netvlad.extract")


def _load_checked(path: Path, policy: SizePolicy) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Decode ``path`` under ``policy``: (pixels, the downscale target or None); logs the downscale."""
    target = None

    def fit(h: int, w: int) -> tuple[int, int] | None:
        nonlocal target
        target, note = policy.check(path, h, w)
        if note:
            logger.warning(note)
        return target

    return load_image(path, honour_exif=policy.cfg.exif_orientation, fit=fit), target


class ModelImageReader:
    """Reads images for ``model`` the way extraction would (``exif_orientation``, ``max_pixels``,
    ``oversize`` of ``config``), before the model's own preprocessing: ``reader(path)`` → H×W×3
    uint8 array.

    For callers that run the model on whole images themselves (``netvlad init`` through
    ``init_clusters(loader=reader)``): an image whose network input would exceed ``max_pixels``
    comes back already downscaled to the bounded size (a warning names it), which the model's
    resize then leaves as it is. One reader estimates the model's memory per pixel once.

    Calling it raises ImageLoadError for an unreadable file, a decompression bomb, or an image over
    ``max_pixels`` with ``oversize="refuse"`` (names the file).
    """

    def __init__(self, model, config: ExtractConfig | None = None, **overrides):
        cfg = dataclasses.replace(config or ExtractConfig(), **overrides)
        self.policy = SizePolicy(model.preprocess, cfg, model)

    def __call__(self, path: str | Path) -> np.ndarray:
        return _load_checked(Path(path), self.policy)[0]


def _to_uint8_rgb(image: Any, exif_orientation: bool) -> np.ndarray:
    if isinstance(image, Image.Image):
        return to_rgb_array(ImageOps.exif_transpose(image) if exif_orientation else image)
    if isinstance(image, torch.Tensor):
        raise TypeError("compute_representation takes a path, PIL image or H×W×3 uint8 array, not a tensor")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"image array must be uint8 (0-255), got {arr.dtype}; scale and convert it first")
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 2, 3, 4)):
        if arr.ndim == 3 and arr.shape[2] == 3:
            return np.ascontiguousarray(arr)
        mode = {1: "L", 2: "LA", 4: "RGBA"}[1 if arr.ndim == 2 else arr.shape[2]]
        return to_rgb_array(Image.fromarray(arr.reshape(arr.shape[:2]) if mode == "L" else arr, mode))
    raise ValueError(f"image array must be H×W, H×W×1, H×W×3 or H×W×4, got shape {arr.shape}")


def compute_representation(model, image: Any, device: str | torch.device | None = None,
                           channels_last: bool = True, *, exif_orientation: bool = False,
                           max_pixels: int | None = DEFAULT_MAX_PIXELS,
                           oversize: str = "downscale") -> np.ndarray:
    """One image's descriptor (MATLAB ``computeRepresentation``).

    Args:
        model: a ready PlaceModel.
        image: a path, a PIL image (any mode) or an H×W(×1|3|4) uint8 array (grey is replicated,
            alpha dropped).
        device: where to run (default: where the model's parameters are).
        channels_last: NHWC activations (faster on CPU).
        exif_orientation: apply the EXIF orientation of a path or PIL image. Off by default, as
            in the datasets' protocols; on for a user's photo.
        max_pixels, oversize: the memory bound, as in :class:`ExtractConfig` (a bigger network
            input is downscaled with a warning, or refused with ImageLoadError).

    Returns:
        (out_dim,) float32.
    """
    _check_model(model)
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else "cpu"
    cfg = ExtractConfig(device=str(device), channels_last=channels_last, progress=False,
                        max_pixels=max_pixels, oversize=oversize, exif_orientation=exif_orientation)
    policy = SizePolicy(model.preprocess, cfg, model)
    if isinstance(image, (str, Path)):
        arr, target = _load_checked(Path(image), policy)
    else:
        arr = _to_uint8_rgb(image, exif_orientation)
        target, note = policy.check("image", *arr.shape[:2])
        if note:
            logger.warning(note)
    x = fitted_preprocess(model.preprocess, target).apply(arr)[None]
    with _prepared(model, device, channels_last) as dev, torch.inference_mode():
        return _forward(model, x, cfg, dev)[0]
