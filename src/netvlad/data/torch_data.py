"""`ImageListDataset`: a torch Dataset over image paths (the one module of ``netvlad.data`` using torch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from netvlad.data.images import ImageLoadError, load_image


class ImageListDataset(Dataset):
    """Images read from ``paths`` and turned into tensors by ``preprocess``.

    Args:
        paths: image files.
        preprocess: H×W×3 uint8 array -> 3×H×W float tensor (e.g. ``Preprocess.apply``).
        honour_exif: apply the EXIF orientation tag when reading (off, as in the benchmarks).

    ``dataset[i]`` is ``(tensor, i)``; errors name the file.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        preprocess: Callable[[np.ndarray], torch.Tensor],
        honour_exif: bool = False,
    ):
        self.paths = [Path(p) for p in paths]
        self.preprocess = preprocess
        self.honour_exif = honour_exif

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.paths[index]
        img = load_image(path, honour_exif=self.honour_exif)
        try:
            x = self.preprocess(img)
        except Exception as exc:
            raise ImageLoadError(f"{path}: preprocessing failed ({type(exc).__name__}: {exc})") from exc
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        return x, index
