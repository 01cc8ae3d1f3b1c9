"""CaffeNet, the Caffe reference AlexNet (MatConvNet ``imagenet-caffe-ref``, the paper's ``caffe``).

Layers (names as in MatConvNet): conv1 11×11/4 96 → relu1 → pool1 3×3/2 → norm1 → conv2 5×5 pad 2,
2 groups, 256 → relu2 → pool2 → norm2 → conv3 3×3 pad 1 384 → relu3 → conv4 3×3 pad 1 384, 2 groups
→ relu4 → conv5 3×3 pad 1 256, 2 groups → relu5 → pool5. CaffeNet pools *before* it normalises
(the original AlexNet paper does the opposite). The default crop ``conv5`` excludes relu5.

This is **not** torchvision's ``alexnet``: that one is the one-GPU variant of Krizhevsky's
"one weird trick" paper (64/192/384/256/256 channels, no LRN, no groups), so its files are refused
with a message saying so. Keys keep a ``features.N`` layout (N = index in ``layer_names``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from .base import MATCONVNET_PREPROCESS, Backbone

__all__ = ["ALEXNET_LAYERS", "AlexNet", "MatConvNetLRN"]

ALEXNET_LAYERS = [
    "conv1", "relu1", "pool1", "norm1",
    "conv2", "relu2", "pool2", "norm2",
    "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool5",
]  # fmt: skip

# (in, out, kernel, stride, pad, groups)
_CONVS = {
    "conv1": (3, 96, 11, 4, 0, 1),
    "conv2": (96, 256, 5, 1, 2, 2),
    "conv3": (256, 384, 3, 1, 1, 1),
    "conv4": (384, 384, 3, 1, 1, 2),
    "conv5": (384, 256, 3, 1, 1, 2),
}
_CAFFE_REF_URL = "http://www.vlfeat.org/matconvnet/models/imagenet-caffe-ref.mat"


class MatConvNetLRN(nn.Module):
    """Cross-channel local response normalisation in MatConvNet's convention (``vl_nnnormalize``).

    y_c = x_c / (kappa + alpha · Σ_{q ∈ Q(c)} x_q²)^beta,
    Q(c) = [c − ⌊(N−1)/2⌋, c + ⌈(N−1)/2⌉] ∩ [0, C).

    ``alpha`` is *not* divided by N here (Caffe's and torch's ``LocalResponseNorm`` divide by N,
    i.e. their alpha is N times ours: CaffeNet's Caffe alpha 1e-4 is MatConvNet's 1e-4/5 = 2e-5).
    For even N the window is also one channel later than torch's. MatConvNet's CPU code uses a
    polynomial ``fast_pow`` approximation; this is the exact power.
    """

    def __init__(self, size: int = 5, kappa: float = 1.0, alpha: float = 1e-4 / 5, beta: float = 0.75):
        super().__init__()
        if size < 1:
            raise ValueError(f"LRN window size must be >= 1, got {size}")
        self.size, self.kappa, self.alpha, self.beta = size, kappa, alpha, beta

    def forward(self, x: Tensor) -> Tensor:
        """x: B×C×H×W -> same shape."""
        before = (self.size - 1) // 2
        after = self.size - 1 - before
        sq = F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, before, after))  # B×1×(C+N−1)×H×W, zero channels
        window_sum = F.avg_pool3d(sq, (self.size, 1, 1), stride=1).squeeze(1) * self.size
        return x * (self.kappa + self.alpha * window_sum).pow(-self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, kappa={self.kappa}, alpha={self.alpha:g}, beta={self.beta}"


class AlexNet(Backbone):
    """CaffeNet reference cropped at a MatConvNet layer name (default ``conv5``, before relu5).

    ``default_preprocess`` subtracts the VGG mean pixel; the original subtracts the top-left
    pixel of CaffeNet's mean *image*, which a converter must read from the .mat file.
    """

    def __init__(self, crop: str | None = None) -> None:
        super().__init__(
            crop,
            name="alexnet",
            layer_names=ALEXNET_LAYERS,
            default_crop="conv5",
            default_preprocess=MATCONVNET_PREPROCESS,
        )
        layers: list[nn.Module] = []
        for layer in self.kept_layer_names:
            if layer.startswith("conv"):
                cin, cout, k, s, p, g = _CONVS[layer]
                layers.append(nn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p, groups=g))
            elif layer.startswith("relu"):
                layers.append(nn.ReLU(inplace=True))
            elif layer.startswith("pool"):
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=False))
            else:
                layers.append(MatConvNetLRN(5, 1.0, 1e-4 / 5, 0.75))
        self.features = nn.Sequential(*layers)
        self._init_weights()
        self._finish_init()

    def _layer_modules(self) -> list[tuple[str, list[nn.Module]]]:
        return [(n, [m]) for n, m in zip(self.kept_layer_names, self.features)]

    def _imagenet_state_dict(self) -> dict[str, Tensor]:
        raise ValueError(
            "there are no downloadable PyTorch ImageNet weights for the CaffeNet reference "
            "(torchvision's alexnet is a different network); download MatConvNet's "
            f"imagenet-caffe-ref.mat ({_CAFFE_REF_URL}) and convert it with `netvlad convert`"
        )

    def _mismatch_hint(self, state_dict: Mapping[str, Tensor]) -> str:
        w = state_dict.get("features.0.weight")
        if w is not None and tuple(w.shape) == (64, 3, 11, 11):
            return (
                "this is torchvision's AlexNet (64/192/384/256/256 channels, no LRN, no grouped convs), "
                "a different network from the CaffeNet reference used by NetVLAD; convert MatConvNet's "
                "imagenet-caffe-ref.mat with `netvlad convert` instead"
            )
        return ""

    def forward(self, x: Tensor) -> Tensor:
        """B×3×H×W -> B×C×h×w (conv5: 256 channels, stride 16)."""
        return self.features(x)
