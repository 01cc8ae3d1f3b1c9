"""ResNet-18 / ResNet-50 / ResNet-101 trunks with torchvision's module names (so torchvision files load).

He et al. 2016, in torchvision's "v1.5" form (the stride of a bottleneck sits on its 3×3 conv).
Layers: conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4 (the classifier ``fc`` is never
built). Default crop ``layer3`` (stride 16; 256 channels for ResNet-18, 1024 for ResNet-50/101):
the resolution of VGG's conv5_3, and the crop that visual place recognition work settled on for
ResNet + NetVLAD (Berton et al., "Deep Visual Geo-localization Benchmark", CVPR 2022: cropping the
last stage was both faster and at least as good); ``layer4`` is stride 32 with 512 / 2048 channels
(K·D = 131072 for ResNet-50/101).
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import IMAGENET_PREPROCESS, Backbone, download_state_dict

__all__ = ["RESNET_LAYERS", "BasicBlock", "Bottleneck", "ResNet"]

RESNET_LAYERS = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, width, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, width * 4, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_ARCHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(Backbone):
    """ResNet-18/50/101 trunk cropped at one of ``RESNET_LAYERS`` (default ``layer3``).

    BatchNorm: ``freeze_below(..., freeze_bn=True)`` keeps the frozen layers' BatchNorm in eval
    mode through ``train()``; with NetVLAD's small training batches (4 tuples) you usually also
    want ``eval()`` BatchNorm in the trained layers, which is the caller's choice.
    """

    def __init__(self, arch: str = "resnet18", crop: str | None = None) -> None:
        if arch not in _ARCHS:
            raise ValueError(f"unknown ResNet {arch!r}; choose one of: {', '.join(_ARCHS)}")
        super().__init__(
            crop,
            name=arch,
            layer_names=RESNET_LAYERS,
            default_crop="layer3",
            default_preprocess=IMAGENET_PREPROCESS,
        )
        block, repeats = _ARCHS[arch]
        kept = self.kept_layer_names
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if "bn1" in kept:
            self.bn1 = nn.BatchNorm2d(64)
        if "relu" in kept:
            self.relu = nn.ReLU(inplace=True)
        if "maxpool" in kept:
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = 64
        for i, (n, width) in enumerate(zip(repeats, (64, 128, 256, 512)), start=1):
            if f"layer{i}" not in kept:
                break
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, stride=2 if (j == 0 and i > 1) else 1))
                cin = width * block.expansion
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self._init_weights()
        self._finish_init()

    def _layer_modules(self) -> list[tuple[str, list[nn.Module]]]:
        return [(n, [getattr(self, n)]) for n in self.kept_layer_names]

    def _imagenet_state_dict(self) -> dict[str, Tensor]:
        return download_state_dict(_URLS[self.name], self.name)

    def forward(self, x: Tensor) -> Tensor:
        """B×3×H×W (ImageNet-normalised) -> B×C×h×w (layer3: stride 16)."""
        for name in self.kept_layer_names:
            x = getattr(self, name)(x)
        return x
