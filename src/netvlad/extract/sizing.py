"""The memory bound of a forward pass: network-input sizes, the pixel limit, activation estimates."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from netvlad.data.images import ImageLoadError
from netvlad.extract.config import ExtractConfig

#: Side of the square probe input that :func:`estimate_forward_bytes` runs; activations scale with
#: the pixel count, so a small probe gives the bytes per pixel (VGG-16's conv5 is 8×8 here).
_PROBE_SIDE = 128


def fit_size(height: int, width: int, max_pixels: int | None) -> tuple[int, int] | None:
    """The largest (height, width) of the same aspect ratio with at most ``max_pixels`` pixels, or
    None when ``height·width`` is within it already (or there is no bound)."""
    if max_pixels is None or height * width <= max_pixels:
        return None
    s = math.sqrt(max_pixels / (height * width))
    h, w = max(1, math.floor(height * s)), max(1, math.floor(width * s))
    while h * w > max_pixels:  # floating-point slack at the boundary
        if h >= w:
            h -= 1
        else:
            w -= 1
    return h, w


def fitted_preprocess(pre: Any, target: tuple[int, int] | None) -> Any:
    """``pre`` resizing to exactly ``target`` (H, W) instead of its own resize (None: ``pre``)."""
    return pre if target is None else dataclasses.replace(pre, resize=tuple(target), max_side=None)


class _LiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storages alive at once among those allocated inside the mode.

    ``known`` storages (weights, the input) are not counted, nor are views of anything counted
    already; a storage leaves the count when it is freed.
    """

    def __init__(self, known: set[int]):
        super().__init__()
        from torch.multiprocessing.reductions import StorageWeakRef

        self._ref = StorageWeakRef
        self.known = known
        self.live: dict[int, tuple[Any, int]] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for ptr in [p for p, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(ptr)[1]
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr and ptr not in self.known and ptr not in self.live:
                    self.live[ptr] = (self._ref(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def forward_bytes_per_pixel(model, cfg: ExtractConfig) -> float:
    """Activation bytes per network-input pixel of one forward pass of ``model`` as ``cfg`` runs it
    (device, channels_last, amp/bf16): the peak of live tensor bytes on a small probe input.

    Against the peak RSS of full-size forward passes (benchmarks/image_memory.py) it is 0.98 of it
    for VGG-16, 0.91 for ResNet-18 and 0.4-0.7 for ResNet-50, EfficientNet-Lite0 and AlexNet (the
    allocator's fragmentation and oneDNN's temporaries are not tensors): read it as "at least about".
    """
    from netvlad.extract.run import _forward, _prepared  # run imports this module

    x = torch.zeros(1, 3, _PROBE_SIDE, _PROBE_SIDE)
    with _prepared(model, cfg.device, cfg.channels_last) as device, torch.inference_mode():
        known = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
        x = x.to(device)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        known.add(x.untyped_storage().data_ptr())
        with _LiveBytes(known) as live:
            _forward(model, x, cfg, device)
    return live.peak / (_PROBE_SIDE * _PROBE_SIDE)


def estimate_forward_bytes(model, height: int, width: int, config: ExtractConfig | None = None,
                           batch: int = 1) -> int:
    """Estimated activation memory (bytes) of a forward pass of ``batch`` network inputs of
    ``height``×``width`` pixels (after preprocessing), weights and input excluded.

    Runs the model once on a 128×128 probe (see :func:`forward_bytes_per_pixel`), so call it once
    per model and scale. VGG-16 fp32: about 520 bytes per pixel (52 GB for a 10000×10000 input).
    """
    cfg = config or ExtractConfig(progress=False)
    return int(forward_bytes_per_pixel(model, cfg) * height * width * batch)


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.0f} MB"


class SizePolicy:
    """Per image: the network-input size, and what ``max_pixels`` / ``oversize`` make of it.

    Messages name the image, its network-input size and, when a model was given, the estimated
    forward-pass memory (the probe runs on the first oversize image only).
    """

    def __init__(self, pre: Any, cfg: ExtractConfig, model: Any = None):
        self.pre, self.cfg, self.model = pre, cfg, model
        self._per_pixel: float | None = None

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) the preprocessing makes of an image of (height, width)."""
        return tuple(self.pre.output_size(height, width))

    def target(self, height: int, width: int) -> tuple[int, int] | None:
        """The downscaled input size for an image of (height, width), or None when within bounds."""
        return fit_size(*self.input_size(height, width), self.cfg.max_pixels)

    def pixels(self, height: int, width: int) -> int:
        """Network-input pixels of the image after any downscale (what a batch is capped by)."""
        h, w = self.target(height, width) or self.input_size(height, width)
        return h * w

    def _about(self, h: int, w: int) -> str:
        if self.model is None:
            return ""
        if self._per_pixel is None:
            try:
                self._per_pixel = forward_bytes_per_pixel(self.model, self.cfg)
            except RuntimeError:  # a model that cannot run a 128×128 probe: say nothing rather than fail
                self._per_pixel = float("nan")
        return "" if math.isnan(self._per_pixel) else f", forward pass about {_gb(self._per_pixel * h * w)}"

    def check(self, path: Any, height: int, width: int) -> tuple[tuple[int, int] | None, str | None]:
        """(target, warning) for an image of (height, width): target None keeps its size.

        Raises:
            ImageLoadError: over ``max_pixels`` with ``oversize="refuse"``.
        """
        target = self.target(height, width)
        if target is None:
            return None, None
        ih, iw = self.input_size(height, width)
        what = (f"{path}: network input {iw}×{ih} px ({ih * iw / 1e6:.1f} Mpx{self._about(ih, iw)}) "
                f"is over max_pixels {self.cfg.max_pixels}")
        if self.cfg.oversize == "refuse":
            raise ImageLoadError(f"{what}; refused (downscale it, raise max_pixels or use oversize "
                                 "downscale)")
        return target, f"{what}: downscaled to {target[1]}×{target[0]} px"
