"""The projects' CNN trunks (``nn.Sequential`` slices of torchvision models) → our backbones.

- VGG-16: ``list(vgg16().features.children())[:-2]``, keys ``P.N.weight`` with N torchvision's
  ``features`` index, which our VGG keeps (``features.N``); the last conv kept names the crop
  (conv5_3: the projects drop relu5_3 and pool5).
- ResNet: ``list(resnet().children())[:-3]`` (to layer3) or ``[:-2]`` (to layer4), so children
  0, 1, 4, 5, 6, 7 are conv1, bn1, layer1..layer4 (2 and 3 are the parameterless relu and maxpool).
  Block type and counts tell ResNet-18/50/101 apart.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["build_trunk", "resnet_trunk", "vgg16_trunk"]

_RESNET_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
#: (bottleneck blocks?, blocks per stage) → our backbone name.
_RESNETS = {
    (False, (2, 2, 2, 2)): "resnet18",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
}
_KNOWN_RESNETS = {(False, (3, 4, 6, 3)): "ResNet-34", (True, (3, 8, 36, 3)): "ResNet-152"}


def _under(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def vgg16_trunk(state: dict[str, Tensor], prefix: str, label: str) -> tuple[str, str, dict[str, Tensor]]:
    """Keys ``{prefix}N.weight|bias`` of a torchvision VGG-16 ``features`` slice → ("vgg16", crop, state).

    Raises:
        ValueError: not a VGG-16 slice (torchvision's AlexNet is named as such).
    """
    from netvlad.backbones.vgg import vgg_layer_names

    sub = _under(state, prefix)
    first = sub.get("0.weight")
    if first is not None and tuple(first.shape) == (64, 3, 11, 11):
        raise ValueError(
            f"{label}: the trunk is torchvision's AlexNet (conv1 64×3×11×11), which this version does not "
            "convert; VGG-16 models are supported"
        )
    names = vgg_layer_names("vgg16")
    conv_index = [i for i, n in enumerate(names) if n.startswith("conv")]
    parts = [k.partition(".") for k in sub]
    found = sorted({int(i) for i, _, _ in parts if i.isdigit()})
    odd = [k for k, (i, _, p) in zip(sub, parts) if not i.isdigit() or p not in ("weight", "bias")]
    if not found or found != conv_index[: len(found)] or odd:
        shown = ", ".join(f"{prefix}{k} {tuple(v.shape)}" for k, v in list(sub.items())[:4])
        raise ValueError(
            f"{label}: the trunk under '{prefix}' is not torchvision's VGG-16 features (convs at "
            f"indices {conv_index[:4]}...; found {shown or 'nothing'})"
        )
    return "vgg16", names[found[-1]], {f"features.{k}": v for k, v in sub.items()}


def resnet_trunk(state: dict[str, Tensor], prefix: str, label: str) -> tuple[str, str, dict[str, Tensor]]:
    """Keys of ``nn.Sequential(*list(resnet.children())[:n])`` under ``prefix`` → (arch, crop, state).

    Raises:
        ValueError: unknown children, a ResNet depth we do not build, or a gap in the stages.
    """
    sub = _under(state, prefix)
    out: dict[str, Tensor] = {}
    for key, value in sub.items():
        child, _, rest = key.partition(".")
        if child not in _RESNET_CHILDREN:
            raise ValueError(
                f"{label}: {prefix}{key} is not part of a torchvision ResNet trunk (children 0, 1, 4-7 = "
                "conv1, bn1, layer1-layer4)"
            )
        out[f"{_RESNET_CHILDREN[child]}.{rest}"] = value
    stages = []
    for i in range(1, 5):
        blocks = {int(k.split(".")[1]) for k in out if k.startswith(f"layer{i}.")}
        if not blocks:
            break
        stages.append(max(blocks) + 1)
    if not stages or any(k.startswith(f"layer{len(stages) + 2}.") for k in out):
        raise ValueError(f"{label}: the ResNet trunk under '{prefix}' has no layer1 or skips a stage")
    bottleneck = "layer1.0.conv3.weight" in out
    n = len(stages)
    arch = next((a for (b, c), a in _RESNETS.items() if b == bottleneck and c[:n] == tuple(stages)), None)
    if arch is None:
        known = next(
            (a for (b, c), a in _KNOWN_RESNETS.items() if b == bottleneck and c[:n] == tuple(stages)),
            f"a ResNet with {'bottleneck' if bottleneck else 'basic'} blocks {stages}",
        )
        raise ValueError(f"{label}: the trunk is {known}; supported: ResNet-18, ResNet-50, ResNet-101")
    return arch, f"layer{len(stages)}", out


def build_trunk(arch: str, crop: str, state: dict[str, Tensor], label: str):
    """Our backbone ``arch`` cropped at ``crop`` holding exactly the file's weights.

    Every parameter and buffer must come from the file (BatchNorm's ``num_batches_tracked``,
    absent from old files, excepted) and every file key must be used.

    Raises:
        ValueError: missing, unexpected or mis-shaped keys (the first few named).
    """
    from netvlad.backbones import build_backbone

    with torch.device("meta"):  # every tensor comes from the file: no random init to pay for
        backbone = build_backbone(arch, crop=crop)
    expected = backbone.state_dict()
    state = dict(state)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    problems = []
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing:
        problems.append(f"missing {', '.join(missing[:4])}")
    if extra:
        problems.append(f"unexpected {', '.join(extra[:4])}")
    problems += [f"{k} is {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}" for k in shapes[:3]]
    if problems:
        raise ValueError(f"{label}: the weights do not fit {arch} cropped at {crop}: {'; '.join(problems)}")
    state = {k: v.to(expected[k].dtype).contiguous() for k, v in state.items()}
    backbone.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*backbone.named_parameters(), *backbone.named_buffers()] if t.is_meta]
    if left:  # a tensor outside the state dict (none in our VGG/ResNet): better an error than garbage
        raise ValueError(f"{label}: {arch} has tensors the file cannot fill: {', '.join(left[:4])}")
    backbone.weights_source = label
    return backbone
