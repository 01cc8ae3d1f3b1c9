"""Model configuration: input preprocessing, the model config dataclass and the named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from netvlad.backbones import IMAGENET_PREPROCESS, LITE0_PREPROCESS, MATCONVNET_PREPROCESS
from netvlad.layers import VLAD_ORDERS, parse_method

__all__ = ["IMAGENET", "LITE0", "MATCONVNET", "PRESETS", "ModelConfig", "Preprocess", "list_presets"]


def _check_float_range(img: np.ndarray) -> None:
    """A float image must be finite and on 0–255 (MATLAB's convention, not 0–1)."""
    if not np.isfinite(img).all():
        raise ValueError("float image holds NaN or inf values")
    lo, hi = float(img.min(initial=0.0)), float(img.max(initial=0.0))
    if lo < 0 or hi > 255:
        raise ValueError(f"float image values must lie in [0, 255] (not 0–1), got [{lo:g}, {hi:g}]")


@dataclass(frozen=True)
class Preprocess:
    """How an H×W×3 uint8 RGB image becomes the network input; travels with the model.

    y = (x · scale/255 − mean) / std per channel, after an optional resize.

    Attributes:
        style: "matconvnet" (0–255 RGB minus the mean pixel, no std: the MATLAB models) or
            "imagenet" (0–1 RGB, ImageNet mean/std: torchvision-style and EfficientNet weights).
        mean: per-channel RGB mean, in the units of ``scale``.
        std: per-channel RGB std (1 for matconvnet).
        scale: 255.0 (matconvnet) or 1.0 (imagenet): the value of a white pixel before mean/std.
        max_side: if set, images whose longer side exceeds it are downscaled (PIL bilinear,
            antialiased) so the longer side equals it; smaller images are never upscaled.
            None (the original's behaviour): full resolution.
        resize: if set, (H, W): every image is resized to exactly H×W, aspect ratio ignored (PIL
            bilinear, which is what torchvision's ``Resize((H, W))`` does to a PIL image). The
            PyTorch projects extract at 480×640 this way (Patch-NetVLAD, OpenIBL, the VG benchmark);
            their converted models keep it. Exclusive with ``max_side``.
        resize_stage: when ``resize`` happens: "image" (the 8-bit image, PIL bilinear) or "tensor"
            (the normalised float tensor, bilinear with align_corners=False and no antialiasing:
            torchvision 0.8's ``functional.resize`` on a tensor, which the VG benchmark applies
            after ``Normalize``). Both equal the identity for images already H×W.
    """

    style: str = "matconvnet"
    mean: tuple[float, float, float] = MATCONVNET_PREPROCESS["mean"]
    std: tuple[float, float, float] = MATCONVNET_PREPROCESS["std"]
    scale: float = MATCONVNET_PREPROCESS["scale"]
    max_side: int | None = None
    resize: tuple[int, int] | None = None
    resize_stage: str = "image"

    def __post_init__(self):
        if self.style not in ("matconvnet", "imagenet"):
            raise ValueError(f"unknown preprocessing style {self.style!r}; choose from matconvnet, imagenet")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"Preprocess needs 3 means and 3 positive stds, got {self.mean}, {self.std}")
        if self.max_side is not None and int(self.max_side) < 1:
            raise ValueError(f"max_side must be a positive integer or None, got {self.max_side}")
        if self.resize is not None:
            size = tuple(int(v) for v in self.resize)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"resize must be (H, W) with positive sizes or None, got {self.resize}")
            if self.max_side is not None:
                raise ValueError("Preprocess takes max_side or resize, not both")
            object.__setattr__(self, "resize", size)
        if self.resize_stage not in ("image", "tensor"):
            raise ValueError(f"resize_stage must be 'image' or 'tensor', got {self.resize_stage!r}")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W') of the network input for an H×W image under ``resize`` / ``max_side``."""
        if self.resize is not None:
            return self.resize
        if self.max_side is None or max(height, width) <= self.max_side:
            return height, width
        s = self.max_side / max(height, width)
        return max(1, round(height * s)), max(1, round(width * s))

    def rescale(self, img: np.ndarray) -> np.ndarray:
        """Resize an H×W×3 image (uint8, or float on 0–255) to :meth:`output_size` (no-op when that
        is its size already, or when the resize happens on the tensor: ``resize_stage="tensor"``)."""
        h, w = img.shape[:2]
        size = self.output_size(h, w)
        if size == (h, w) or (self.resize is not None and self.resize_stage == "tensor"):
            return img
        if img.dtype != np.uint8:  # float images: each channel as a 32-bit float PIL image ("F")
            chans = [Image.fromarray(np.ascontiguousarray(img[..., c], np.float32), "F") for c in range(3)]
            resized = [np.asarray(ch.resize(size[::-1], Image.Resampling.BILINEAR)) for ch in chans]
            return np.stack(resized, axis=2)
        return np.array(Image.fromarray(img).resize(size[::-1], Image.Resampling.BILINEAR))

    def apply(self, img: np.ndarray) -> torch.Tensor:
        """An RGB image → 3×H'×W' float32 tensor ready for the backbone.

        Args:
            img: H×W×3 or H×W (grey) array: uint8, or float on 0–255 as MATLAB's ``single``
                images (``computeRepresentation`` takes those; values are used as they are,
                not rounded).

        Returns:
            3×H'×W' float32 (H'×W': :meth:`output_size`).

        Raises:
            ValueError: another dtype or shape, or a float image with values outside [0, 255]
                (a 0–1 image would pass silently as a nearly black one otherwise).
        """
        img = np.asarray(img)
        is_float = np.issubdtype(img.dtype, np.floating)
        if img.dtype != np.uint8 and not is_float:
            raise ValueError(f"Preprocess.apply expects uint8, or float on 0–255, got {img.dtype}")
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"Preprocess.apply expects an H×W×3 RGB image, got shape {img.shape}")
        if is_float:
            _check_float_range(img)
        img = self.rescale(img)
        if not img.flags.writeable:  # e.g. np.asarray(PIL image); torch warns on read-only memory
            img = img.copy()
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).to(torch.float32)
        if self.scale != 255.0:
            t.mul_(self.scale / 255.0)
        t.sub_(torch.tensor(self.mean).view(3, 1, 1))
        if self.std != (1.0, 1.0, 1.0):
            t.div_(torch.tensor(self.std).view(3, 1, 1))
        if self.resize_stage == "tensor" and self.resize is not None and tuple(t.shape[1:]) != self.resize:
            t = torch.nn.functional.interpolate(t[None], size=self.resize, mode="bilinear",
                                                align_corners=False, antialias=False)[0]
        return t

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        return self.apply(img)

    def to_dict(self) -> dict[str, Any]:
        d = {"style": self.style, "mean": list(self.mean), "std": list(self.std), "scale": self.scale,
             "max_side": self.max_side}
        # Written only when set, so configs (and model fingerprints) from before the field are unchanged.
        if self.resize is not None:
            d["resize"] = list(self.resize)
        if self.resize_stage != "image":
            d["resize_stage"] = self.resize_stage
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown preprocessing fields {sorted(unknown)}")
        return cls(**d)


#: MatConvNet VGG-16/19 mean pixel on 0–255 RGB, no std. The CaffeNet model's true
#: value is the (1,1) pixel of its average image; the converter reads it from the .mat file.
MATCONVNET = Preprocess(**MATCONVNET_PREPROCESS)
IMAGENET = Preprocess(**IMAGENET_PREPROCESS)
#: EfficientNet-Lite's TF input normalisation (x − 127)/128 on 0–255, which its weights expect
#: (the backbone module documents the source), written on the 0–1 scale.
LITE0 = Preprocess(**LITE0_PREPROCESS)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a :class:`PlaceModel` (saved inside every checkpoint).

    Attributes:
        backbone: a name in ``netvlad.backbones.BACKBONES`` (vgg16, vgg19, alexnet, resnet18,
            resnet50, lite0).
        crop: the backbone layer to crop at (MatConvNet names, e.g. conv5_3); None = the backbone's
            default (a built model records the concrete name).
        method: aggregation method string (see ``netvlad.layers.parse_method``).
        num_clusters: K for NetVLAD (64 in all paper experiments).
        whiten_dim: output size of the PCA-whitening Linear, or None for no whitening.
        preprocess: input preprocessing.
        pretrained: where the backbone weights came from ("imagenet", a file name, a converted
            MATLAB model) or None for random init. Provenance only: a checkpoint holds the weights.
        vlad_order: flat layout of the NetVLAD vector (``netvlad.layers.VLAD_ORDERS``): "matlab"
            (d·K + k, the original's) or "torch" (k·D + d, models converted from PyTorch projects).
    """

    backbone: str = "vgg16"
    crop: str | None = "conv5_3"
    method: str = "vlad_preL2_intra"
    num_clusters: int = 64
    whiten_dim: int | None = None
    preprocess: Preprocess = field(default_factory=lambda: MATCONVNET)
    pretrained: str | None = None
    vlad_order: str = "matlab"

    def __post_init__(self):
        object.__setattr__(self, "method", parse_method(self.method).name)
        if self.vlad_order not in VLAD_ORDERS:
            raise ValueError(f"unknown vlad_order {self.vlad_order!r}; choose from {', '.join(VLAD_ORDERS)}")
        if self.num_clusters < 2:
            raise ValueError(f"num_clusters must be >= 2, got {self.num_clusters}")
        if self.whiten_dim is not None and self.whiten_dim < 1:
            raise ValueError(f"whiten_dim must be positive or None, got {self.whiten_dim}")

    def replace(self, **changes) -> ModelConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        if self.vlad_order == "matlab":  # the default is left out: older fingerprints stay valid
            del d["vlad_order"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config fields {sorted(unknown)}")
        if isinstance(d.get("preprocess"), dict):
            pre = dict(d["preprocess"])
            if pre.get("resize") is not None:
                pre["resize"] = tuple(pre["resize"])
            d["preprocess"] = Preprocess.from_dict(pre)
        return cls(**d)


# Presets are data: the CLI and create_model choose among them. Only lite0 ships real weights
# offline (the `pretrained` extra); the others start from random backbones unless given weights.
PRESETS: dict[str, ModelConfig] = {
    "vgg16-netvlad": ModelConfig("vgg16", "conv5_3", "vlad_preL2_intra", 64, None, MATCONVNET),
    "vgg19-netvlad": ModelConfig("vgg19", "conv5_4", "vlad_preL2_intra", 64, None, MATCONVNET),
    "alexnet-netvlad": ModelConfig("alexnet", "conv5", "vlad_preL2_intra", 64, None, MATCONVNET),
    "vgg16-max": ModelConfig("vgg16", "conv5_3", "max", 64, None, MATCONVNET),
    "vgg16-avg": ModelConfig("vgg16", "conv5_3", "avg", 64, None, MATCONVNET),
    "resnet18-netvlad": ModelConfig("resnet18", None, "vlad_preL2_intra", 64, None, IMAGENET),
    "resnet50-netvlad": ModelConfig("resnet50", None, "vlad_preL2_intra", 64, None, IMAGENET),
    "lite0-netvlad": ModelConfig("lite0", None, "vlad_preL2_intra", 64, None, LITE0, "imagenet"),
    "lite0-max": ModelConfig("lite0", None, "max", 64, None, LITE0, "imagenet"),
}


def list_presets() -> list[str]:
    """Names of the presets, in table order."""
    return list(PRESETS)
