"""Training tuples: loading a tuple's images (with the jitter options) and embedding them."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from netvlad._matlab import matlab_round
from netvlad.data.images import load_image
from netvlad.train.config import TrainConfig


def load_tuple_images(
    paths: list[Path], config: TrainConfig, rng: np.random.Generator, base_short_side: int | None
) -> tuple[list[np.ndarray], bool]:
    """A tuple's images (H×W×3 uint8 each, query first) and whether to flip the whole tuple.

    ``jitterScale``: one factor ``sc`` per tuple; the shorter side becomes round(sc·S0), S0 being
    the shorter side of the first database image (`base_short_side`), rounded as MATLAB rounds.
    ``jitterFlip``: the flip is drawn with probability 0.5 from `rng`.
    """
    imgs = [load_image(p) for p in paths]
    if config.jitter_scale:
        sc = config.jitter_scale[int(rng.integers(len(config.jitter_scale)))]
        target = matlab_round(sc * base_short_side)
        out = []
        for im in imgs:
            h, w = im.shape[:2]
            f = target / min(h, w)
            size = (max(1, matlab_round(w * f)), max(1, matlab_round(h * f)))
            out.append(np.asarray(Image.fromarray(im).resize(size, Image.BILINEAR)))
        imgs = out
    flip = bool(config.jitter_flip and rng.random() < 0.5)
    return imgs, flip


def embed(model, tensors: list[torch.Tensor], device, amp: bool) -> torch.Tensor:
    """Forward images, batching the ones of equal size together.

    Args:
        tensors: preprocessed 3×H×W images (sizes may differ).
        amp: bfloat16 autocast on ``device``'s type (CUDA or CPU).
    Returns:
        len(tensors)×out_dim float32 descriptors, rows in input order.
    """
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(tensors)
    ctx = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    for idx in groups.values():
        x = torch.stack([tensors[i] for i in idx]).to(device)
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with ctx:
            y = model(x).float()
        for j, i in enumerate(idx):
            out[i] = y[j]
    return torch.stack(out)  # type: ignore[arg-type]
