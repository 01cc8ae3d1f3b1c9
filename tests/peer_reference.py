"""Independent reference forward passes of the PyTorch NetVLAD projects, for tests/test_convert_peers.py.

Written from the projects' published code paths, in plain torch.nn / numpy, never through netvlad:

- trunks in torchvision's layout: ``list(vgg16().features.children())[:-2]`` and
  ``list(resnetXX().children())[:-3]`` as ``nn.Sequential`` (so their state-dict keys are the ones
  the projects save: ``0.weight`` ... / ``4.0.conv1.weight`` ...);
- the NetVLAD forward they all share (lyakaap → pytorch-NetVlad): F.normalize over channels,
  softmax over clusters of a 1×1 conv, a loop over clusters summing assignment-weighted residuals,
  intra F.normalize, ``view(N, -1)`` (cluster-major), F.normalize;
- the projections after it (Patch-NetVLAD's WPCA conv, the VG benchmark's fc Linear, OpenIBL's
  pca_layer / ``ibl/pca.py`` load() + infer()), each followed by F.normalize;
- the input pipelines: torchvision ``Resize((480, 640))`` on a PIL image (PIL bilinear),
  ``ToTensor`` (0–1) and ``Normalize`` (mean/std), or, for the VG benchmark, ``Normalize`` first and
  then torchvision 0.8's tensor resize (bilinear, align_corners=False, no antialias).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENIBL_MEAN = (0.48501960784313836, 0.4579568627450961, 0.4076039215686255)
OPENIBL_STD = (0.00392156862745098,) * 3
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


# --------------------------------------------------------------------------- input pipelines


def to_tensor(pil: Image.Image) -> torch.Tensor:
    """torchvision ToTensor: H×W×3 uint8 → 3×H×W float in [0, 1]."""
    return torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1).float().div(255)


def normalize(t: torch.Tensor, mean, std) -> torch.Tensor:
    """torchvision Normalize: per-channel (x − mean) / std."""
    return (t - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def pil_resize(img: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """torchvision Resize((H, W)) on a PIL image: PIL's bilinear resize to W×H."""
    return Image.fromarray(img).resize((size[1], size[0]), Image.Resampling.BILINEAR)


def patch_netvlad_input(img: np.ndarray) -> torch.Tensor:
    """Patch-NetVLAD's input_transform((480, 640)): Resize, ToTensor, ImageNet Normalize → 1×3×H×W."""
    return normalize(to_tensor(pil_resize(img, (480, 640))), IMAGENET_MEAN, IMAGENET_STD)[None]


def nanne_input(img: np.ndarray) -> torch.Tensor:
    """pytorch-NetVlad's input_transform(): ToTensor, ImageNet Normalize, no resize."""
    return normalize(to_tensor(Image.fromarray(img)), IMAGENET_MEAN, IMAGENET_STD)[None]


def benchmark_input(img: np.ndarray, size=(480, 640)) -> torch.Tensor:
    """The VG benchmark's test images: base_transform, then torchvision 0.8's tensor resize."""
    t = normalize(to_tensor(Image.fromarray(img)), IMAGENET_MEAN, IMAGENET_STD)[None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def openibl_input(img: np.ndarray) -> torch.Tensor:
    """OpenIBL's get_transformer_test(480, 640): Resize, ToTensor, Normalize(mean, std = 1/255)."""
    return normalize(to_tensor(pil_resize(img, (480, 640))), OPENIBL_MEAN, OPENIBL_STD)[None]


# --------------------------------------------------------------------------- trunks


def vgg16_features(seed: int) -> nn.Sequential:
    """torchvision's vgg16().features minus its last ReLU and max-pool, He-initialised (std √(2/fan_in))."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    cin = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        with torch.device("meta"):  # no default init: every value is set below
            conv = nn.Conv2d(cin, v, kernel_size=3, padding=1)
        conv.to_empty(device="cpu")
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2.0 / (9 * cin)))
            conv.bias.copy_(torch.randn(v, generator=g) * 0.01)
        layers += [conv, nn.ReLU(inplace=True)]
        cin = v
    return nn.Sequential(*layers[:-2]).eval()


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # torchvision puts the stride here
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


def resnet_trunk(blocks: tuple[int, ...], bottleneck: bool, seed: int) -> nn.Sequential:
    """``nn.Sequential(*list(resnet.children())[:4 + len(blocks)])``: conv1, bn1, relu, maxpool, layer1...

    Random weights (He) and random BatchNorm statistics/affine parameters, in eval mode; the last
    BatchNorm of each block is damped (γ ≈ 0.3) so activations stay O(1) through the residual sums.
    """
    g = torch.Generator().manual_seed(seed)
    block = _Bottleneck if bottleneck else _Basic
    with torch.device("meta"):  # no default init: every value is set below
        children: list[nn.Module] = [
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        ]  # fmt: skip
        cin = 64
        for i, n in enumerate(blocks):
            planes = 64 * 2**i
            stage = []
            for j in range(n):
                stage.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1))
                cin = planes * block.expansion
            children.append(nn.Sequential(*stage))
        trunk = nn.Sequential(*children)
    trunk.to_empty(device="cpu")
    last = "bn3" if bottleneck else "bn2"
    last_bns = {id(getattr(m, last)) for m in trunk.modules() if isinstance(m, block)}
    with torch.no_grad():
        for m in trunk.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                scale = 0.3 if id(m) in last_bns else 1.0
                m.weight.copy_(scale * (0.8 + 0.4 * torch.rand(c, generator=g)))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.num_batches_tracked.fill_(1000)
    return trunk.eval()


# --------------------------------------------------------------------------- NetVLAD


def init_netvlad(feature_map: torch.Tensor, k: int, seed: int, vladv2: bool = False) -> dict:
    """Cluster parameters the way the projects initialise them (init_params), from this map's descriptors.

    Centres are K of the L2-normalised local descriptors; α = −ln(0.01) / mean gap between the two
    largest assignment logits, so the best cluster gets ~100× the runner-up's weight on average.
    vlad: conv weight α·ĉ, no bias. vladv2 (pytorch-NetVlad's code): weight 2α·c, bias −α‖c‖.
    """
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(feature_map[0].flatten(1).T.double(), dim=1)  # N×D
    c = x[torch.randperm(x.shape[0], generator=g)[:k]] + 0.05 * torch.randn(k, x.shape[1], generator=g,
                                                                              dtype=torch.float64)
    if vladv2:
        logits = 2 * x @ c.T - c.norm(dim=1)
    else:
        logits = x @ F.normalize(c, dim=1).T
    top2 = logits.topk(2, dim=1).values
    alpha = -math.log(0.01) / (top2[:, 0] - top2[:, 1]).mean().item()
    if vladv2:
        weight, bias = 2 * alpha * c, -alpha * c.norm(dim=1)
    else:
        weight, bias = alpha * F.normalize(c, dim=1), None
    out = {"centroids": c.float(), "conv.weight": weight.float()[:, :, None, None]}
    if bias is not None:
        out["conv.bias"] = bias.float()
    return out


def netvlad_forward(feature_map: torch.Tensor, params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The projects' NetVLAD.forward → (N×K·D descriptor, N×K×HW soft-assignment)."""
    n, d = feature_map.shape[:2]
    centroids = params["centroids"]
    k = centroids.shape[0]
    x = F.normalize(feature_map, p=2, dim=1)
    assign = F.softmax(F.conv2d(x, params["conv.weight"], params.get("conv.bias")).view(n, k, -1), dim=1)
    flat = x.view(n, d, -1)
    vlad = torch.zeros(n, k, d)
    for j in range(k):  # one cluster at a time, as the projects do
        residual = (flat - centroids[j].view(1, d, 1)) * assign[:, j : j + 1, :]
        vlad[:, j, :] = residual.sum(dim=-1)
    vlad = F.normalize(vlad, p=2, dim=2)
    vlad = F.normalize(vlad.view(n, -1), p=2, dim=1)
    return vlad, assign


def conv_projection(desc: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Patch-NetVLAD's WPCA / OpenIBL's pca_layer: 1×1 conv on N×KD×1×1, flatten, F.normalize."""
    n = desc.shape[0]
    out = F.conv2d(desc.view(n, -1, 1, 1), weight.view(weight.shape[0], -1, 1, 1), bias).view(n, -1)
    return F.normalize(out, p=2, dim=-1)


def random_projection(n_in: int, n_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random P×n_in projection and bias, scaled so the outputs are O(1) for unit-norm inputs."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_out, n_in, generator=g), 0.1 * torch.randn(n_out, generator=g)


# --------------------------------------------------------------------------- OpenIBL PCA


def write_openibl_pca(path, dim: int, n: int, seed: int) -> None:
    """A pca_params_*.h5 as ibl/pca.py train() writes it: U dim×n, lams n, mu dim×1, Utmu n×1 (float32)."""
    import h5py

    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((dim, n)))
    lams = np.sort(rng.uniform(1e-5, 1e-3, n))[::-1]
    mu = rng.standard_normal((dim, 1)) / np.sqrt(dim)
    with h5py.File(path, "w") as f:
        f.create_dataset("U", data=u.astype(np.float32))
        f.create_dataset("lams", data=lams.astype(np.float32))
        f.create_dataset("mu", data=mu.astype(np.float32))
        f.create_dataset("Utmu", data=(u.T @ mu).astype(np.float32))


def openibl_pca_infer(path, desc: torch.Tensor, n_components: int) -> torch.Tensor:
    """ibl/pca.py: PCA(n_components, whitening=True).load() then infer(desc)."""
    import h5py

    with h5py.File(path, "r") as f:
        u = f["U"][...][:, :n_components]
        lams = f["lams"][...][:n_components]
        mu = f["mu"][...]
    u = np.matmul(u, np.diag(1.0 / np.sqrt(lams)))
    utmu = np.matmul(u.T, mu)
    weight = torch.from_numpy(u.T).view(n_components, -1, 1, 1).float()
    bias = torch.from_numpy(-utmu).view(-1).float()
    n, d = desc.shape
    out = F.conv2d(desc.view(n, d, 1, 1), weight, bias=bias).view(n, -1)
    return F.normalize(out, p=2, dim=-1)
