"""VGG-16 / VGG-19 trunks with MatConvNet layer names and torchvision state-dict keys.

Simonyan & Zisserman 2015 (MatConvNet ``imagenet-vgg-verydeep-16/19``, the paper's ``vd16``/``vd19``).
``features`` is an ``nn.Sequential`` indexed exactly like torchvision's ``vgg16().features`` so a
torchvision ``vgg16-397923af.pth`` loads (``features.0.weight`` ... ``features.28.bias``; the
``classifier.*`` keys are ignored). The default crop ``conv5_3`` keeps the conv but not
``relu5_3``: NetVLAD sees pre-ReLU responses, as in the original and its TF port.
Max pooling is 2×2/2 in floor mode (MatConvNet pads are 0).
"""

from __future__ import annotations

import logging

from torch import Tensor, nn

from .base import IMAGENET_PREPROCESS, MATCONVNET_PREPROCESS, Backbone, download_state_dict

__all__ = ["VGG", "VGG_CONFIGS", "vgg_layer_names"]

#: convs per block (64, 128, 256, 512, 512 channels), as torchvision's configs "D" and "E".
VGG_CONFIGS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
_WIDTHS = (64, 128, 256, 512, 512)
logger = logging.getLogger(__name__)

_URLS = {
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
}


def vgg_layer_names(arch: str) -> list[str]:
    """MatConvNet names in ``features`` index order: conv1_1, relu1_1, conv1_2, relu1_2, pool1, ..."""
    names = []
    for b, n in enumerate(VGG_CONFIGS[arch], start=1):
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return names


class VGG(Backbone):
    """VGG-16/19 cropped at a MatConvNet layer name (default ``conv5_3`` / ``conv5_4``, before the ReLU).

    ``default_preprocess`` is MatConvNet's (0–255 RGB minus the mean pixel, no std), which the
    Caffe/MatConvNet weights expect. torchvision's weights (``weights="imagenet"``) are a different
    training run expecting ImageNet mean/std on 0–1; after ``load_weights("imagenet")`` the
    attribute switches to that, and so it does for a torchvision *file* (recognised by its
    1000-class ``classifier.6``). Another file keeps MatConvNet's preprocessing, with a warning:
    MATLAB weights should come through ``netvlad convert``.
    """

    def __init__(self, arch: str = "vgg16", crop: str | None = None) -> None:
        if arch not in VGG_CONFIGS:
            raise ValueError(f"unknown VGG {arch!r}; choose one of: {', '.join(VGG_CONFIGS)}")
        super().__init__(
            crop,
            name=arch,
            layer_names=vgg_layer_names(arch),
            default_crop="conv5_3" if arch == "vgg16" else "conv5_4",
            default_preprocess=MATCONVNET_PREPROCESS,
        )
        layers: list[nn.Module] = []
        in_ch = 3
        for layer in self.kept_layer_names:
            if layer.startswith("conv"):
                out_ch = _WIDTHS[int(layer[4]) - 1]
                layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1))
                in_ch = out_ch
            elif layer.startswith("relu"):
                layers.append(nn.ReLU(inplace=True))
            else:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=False))
        self.features = nn.Sequential(*layers)
        self._init_weights()
        self._finish_init()

    def _layer_modules(self) -> list[tuple[str, list[nn.Module]]]:
        return [(n, [m]) for n, m in zip(self.kept_layer_names, self.features)]

    def _imagenet_state_dict(self) -> dict[str, Tensor]:
        return download_state_dict(_URLS[self.name], self.name)

    def _after_load(self, sd, source: str) -> None:
        # torchvision's ImageNet VGG files (classifier.6 = 1000 classes) were trained on 0-1 input with
        # ImageNet mean/std, unlike the Caffe/MatConvNet weights (0-255 minus the mean pixel) that
        # `netvlad convert` brings. Feeding either the other's input silently costs recall.
        head = sd.get("classifier.6.weight", sd.get("classifier.6.bias"))
        if source.endswith("ImageNet weights") or (head is not None and tuple(head.shape)[0] == 1000):
            self.default_preprocess = dict(IMAGENET_PREPROCESS)
            logger.info("%s: torchvision ImageNet weights: using ImageNet mean/std preprocessing", source)
        else:
            logger.warning(
                "%s: cannot tell which training run these %s weights come from; keeping MatConvNet "
                "preprocessing (0-255 minus the mean pixel). torchvision files include classifier.6 and "
                "get ImageNet mean/std; MATLAB weights should come through `netvlad convert`.",
                source, self.name)

    def forward(self, x: Tensor) -> Tensor:
        """B×3×H×W (normalised as ``default_preprocess`` says) -> B×C×h×w, h = floor-pooled H/16."""
        return self.features(x)
