"""MatConvNet SimpleNN network → :class:`netvlad.models.PlaceModel` with identical descriptors.

Weight layouts (MatConvNet → PyTorch):

- conv filters H×W×Cin×Cout → Cout×Cin×H×W (``permute(3, 2, 0, 1)``), biases flattened;
- ``layerVLAD`` weights {assignment 1×1×D×K, offset 1×1×D×K = −c_k} → ``assignment.weight``
  K×D×1×1 and ``centroids`` K×D = −offsetᵀ; ``layerVLADv2`` adds a 1×K bias;
- ``WPCA`` 1×1×(D·K)×P with bias P → ``set_whitening(Uᵀ, b)``. Its rows follow MATLAB's
  column-major [K, D] vec (index d·K + k), which is the order our NetVLAD emits, so no permutation.

Preprocessing becomes 0–255 RGB minus ``averageImage(1,1,:)``, no std, no resize.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from netvlad.backbones import build_backbone
from netvlad.convert.matconvnet import (
    HeadSpec,
    MatLayer,
    MatNet,
    conv_geometry,
    load_matconvnet,
    pool_geometry,
    split_network,
)
from netvlad.layers import parse_method
from netvlad.models import ModelConfig, PlaceModel, Preprocess

__all__ = ["ConvertConfig", "ConversionInfo", "convert_matconvnet", "SUPPORTED_ARCHS"]

log = logging.getLogger(__name__)

#: Backbones a SimpleNN file can map to (MatConvNet names match ours for these).
SUPPORTED_ARCHS = ("vgg16", "vgg19", "alexnet")


@dataclass(frozen=True)
class ConvertConfig:
    """Options of :func:`convert_matconvnet` (the ``netvlad convert`` defaults).

    Attributes:
        method: aggregation method for a backbone-only (ImageNet) file; a released model's own
            head wins and a different value is an error. None = ``vlad_preL2_intra``.
        crop: backbone crop layer for an ImageNet file (None = the backbone's default: conv5_3,
            conv5_4 or conv5, excluding the ReLU as in the paper). Released models keep theirs.
        num_clusters: K for a new NetVLAD head on an ImageNet file.
    """

    method: str | None = None
    crop: str | None = None
    num_clusters: int = 64


@dataclass
class ConversionInfo:
    """What a converter found (printed by ``netvlad convert``, stored in the checkpoint's ``extra``).

    Attributes:
        source: the file converted.
        format: what the file was recognised as, in words (e.g. "MatConvNet SimpleNN (NetVLAD
            model, MATLAB class objects)").
        arch, crop, method: the backbone, its crop layer and the aggregation method.
        released: the file holds a trained aggregation head (False: a backbone only).
        num_clusters: K of a NetVLAD head (None otherwise).
        whiten_dim: output dimension of the file's (W)PCA layer, None without one.
        preprocess: the model's input preprocessing (``Preprocess.to_dict()``).
        vlad_order: flat layout of the NetVLAD vector ("matlab" or "torch").
        notes: anything the user should know (uninitialised head, ignored keys, ...).
    """

    source: str
    format: str
    arch: str
    crop: str
    method: str
    released: bool
    num_clusters: int | None
    whiten_dim: int | None
    preprocess: dict = field(default_factory=dict)
    vlad_order: str = "matlab"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "format": self.format,
            "arch": self.arch,
            "crop": self.crop,
            "method": self.method,
            "released": self.released,
            "num_clusters": self.num_clusters,
            "whiten_dim": self.whiten_dim,
            "preprocess": dict(self.preprocess),
            "vlad_order": self.vlad_order,
            "notes": list(self.notes),
        }


def _f32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float32)))


def _arch_layer_names() -> dict[str, list[str]]:
    from netvlad.backbones.alexnet import ALEXNET_LAYERS
    from netvlad.backbones.vgg import vgg_layer_names

    return {
        "vgg16": vgg_layer_names("vgg16"),
        "vgg19": vgg_layer_names("vgg19"),
        "alexnet": list(ALEXNET_LAYERS),
    }


def _identify(net: MatNet, layers: list[MatLayer]) -> str:
    """The architecture whose conv layer names start the file's (fc6… may follow)."""
    convs = [layer.name for layer in layers if layer.type == "conv"]
    for arch, names in _arch_layer_names().items():
        arch_convs = [n for n in names if n.startswith("conv")]
        if convs[: len(arch_convs)] == arch_convs:
            return arch
    shown = ", ".join(
        f"{layer.name} {'×'.join(str(s) for s in layer.weights[0].shape)}"
        for layer in layers
        if layer.type == "conv"
    )
    raise ValueError(
        f"{net.source}: the backbone's conv layers ({shown or 'none'}) do not match any supported network "
        f"({', '.join(SUPPORTED_ARCHS)} with MatConvNet layer names conv1_1…conv5_3 / conv1…conv5)"
    )


def _check_geometry(path: Path, layer: MatLayer, module: nn.Module) -> None:
    """The file's conv/pool/LRN settings must be the ones our fixed backbone hard-codes."""
    problem = None
    if layer.type == "conv":
        g = conv_geometry(layer)
        pad = g["pad"]
        groups = module.in_channels // max(g["w_in"], 1)
        if (pad[0], pad[2]) != (pad[1], pad[3]):
            problem = f"asymmetric padding {pad}"
        elif (
            tuple(module.kernel_size) != g["kernel"]
            or tuple(module.stride) != g["stride"]
            or tuple(module.padding) != (pad[0], pad[2])
            or tuple(module.dilation) != g["dilate"]
            or module.groups != groups
            or module.out_channels != g["out"]
        ):
            problem = (
                f"kernel {g['kernel']}, stride {g['stride']}, pad {pad}, dilation {g['dilate']}, "
                f"groups {groups}, {g['out']} filters; expected kernel {tuple(module.kernel_size)}, "
                f"stride {tuple(module.stride)}, "
                f"pad {tuple(module.padding)}, groups {module.groups}, {module.out_channels} filters"
            )
    elif layer.type == "pool":
        g = pool_geometry(layer)
        k = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,) * 2
        s = module.stride if isinstance(module.stride, tuple) else (module.stride,) * 2
        if g["method"] != "max" or any(g["pad"]) or g["window"] != tuple(k) or g["stride"] != tuple(s):
            problem = (
                f"{g['method']} pooling {g['window']}/{g['stride']} pad {g['pad']}; expected max "
                f"{tuple(k)}/{tuple(s)} without padding (floor mode)"
            )
    elif layer.type in ("normalize", "lrn"):
        p = layer.vec("param")
        ours = [getattr(module, a, None) for a in ("size", "kappa", "alpha", "beta")]
        if None in ours or not np.allclose(p, ours, rtol=1e-6, atol=0):
            problem = f"LRN param {p.tolist()}; expected {ours}"
    elif layer.type == "relu":
        leak = layer.vec("leak", [0])
        if leak.size and leak[0] != 0:
            problem = f"leaky ReLU (leak {leak[0]})"
    if problem:
        raise ValueError(f"{path}: {layer.describe()}: {problem}")


def _backbone_state(net: MatNet, layers: list[MatLayer], backbone) -> dict[str, torch.Tensor]:
    path = net.source
    kept = backbone.kept_layer_names
    by_name = {}
    for layer in layers:
        if layer.type == "dropout":
            continue
        if layer.name in by_name:
            raise ValueError(f"{path}: two layers named {layer.name!r}")
        by_name[layer.name] = layer
        if layer.name == backbone.crop:
            break
    missing = [n for n in kept if n not in by_name]
    extra = [n for n in by_name if n not in kept]
    if missing or extra:
        raise ValueError(
            f"{path}: layers up to {backbone.crop} do not match {backbone.name}: "
            + "; ".join(
                s
                for s in (f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else "")
                if s
            )
        )
    state = {}
    for idx, name in enumerate(kept):
        layer, module = by_name[name], backbone.features[idx]
        _check_geometry(path, layer, module)
        if layer.type != "conv":
            continue
        if len(layer.weights) != 2:
            raise ValueError(
                f"{path}: {layer.describe()} needs weights {{filters, biases}}, has {len(layer.weights)}"
            )
        w, b = layer.weights
        g = conv_geometry(layer)
        w = np.asarray(w).reshape(g["kernel"][0], g["kernel"][1], g["w_in"], g["out"], order="F")
        state[f"features.{idx}.weight"] = _f32(w.transpose(3, 2, 0, 1))  # H×W×Cin×Cout → Cout×Cin×H×W
        state[f"features.{idx}.bias"] = _f32(np.asarray(b).ravel(order="F"))
    return state


def _load_head(net: MatNet, head: HeadSpec, model) -> None:
    path = net.source
    core = head.core
    if head.pool in ("vlad", "vladv2"):
        d, k = model.local_dim, model.config.num_clusters
        arrays = [np.asarray(w) for w in core.weights]
        assign, offset = arrays[0], arrays[-1]
        if assign.size != d * k or offset.size != d * k:
            raise ValueError(
                f"{path}: {core.describe()} weights have {assign.size} and {offset.size} values; expected "
                f"D×K = {d}×{k} (D from the backbone's {model.backbone.crop})"
            )
        w = assign.reshape(d, k, order="F")
        c = -offset.reshape(d, k, order="F")  # the original stores the offset −c_k
        nv = model.head
        with torch.no_grad():
            nv.assignment.weight.copy_(_f32(w.T).view(k, d, 1, 1))
            nv.centroids.copy_(_f32(c.T))
            if head.pool == "vladv2":
                bias = arrays[1]
                if bias.size != k:
                    raise ValueError(
                        f"{path}: {core.describe()} bias has {bias.size} values, expected K = {k}"
                    )
                nv.assignment.bias.copy_(_f32(bias.ravel(order="F")))
            nv.initialized.fill_(True)
    if head.whitening is not None:
        wl = head.whitening
        u, bias = (np.asarray(a) for a in wl.weights)
        n_in = model.head.out_dim
        if u.size % n_in:
            raise ValueError(
                f"{path}: {wl.describe()} has {u.size} weights, not a multiple of the head's {n_in} outputs"
            )
        u = u.reshape(n_in, u.size // n_in, order="F")
        if bias.size != u.shape[1]:
            raise ValueError(f"{path}: {wl.describe()} bias has {bias.size} values, expected {u.shape[1]}")
        model.set_whitening(_f32(u.T), _f32(bias.ravel(order="F")))


def _format(net: MatNet, head: HeadSpec) -> str:
    """What the file was found to be, for :attr:`ConversionInfo.format`."""
    found = ["NetVLAD model" if head.pool is not None else "ImageNet backbone"]
    if any(layer.classname for layer in net.layers):
        found.append("MATLAB class objects")
    return f"MatConvNet SimpleNN ({', '.join(found)})"


def _crop_and_method(path: Path, layers, head, config: ConvertConfig) -> tuple[str | None, str]:
    """The crop layer and method: a released model's own (options must agree), else the options'."""
    if head.pool is None:
        return config.crop, config.method or "vlad_preL2_intra"
    if config.crop is not None and config.crop != layers[-1].name:
        raise ValueError(
            f"{path}: this model's head is trained on {layers[-1].name}; --crop {config.crop} cannot apply"
        )
    if config.method is not None and parse_method(config.method.replace("-", "_")).name != head.method:
        raise ValueError(f"{path}: the file's head is {head.method}; --method {config.method} contradicts it")
    return layers[-1].name, head.method


def convert_matconvnet(path: str | Path, config: ConvertConfig | None = None):
    """Build a :class:`~netvlad.models.PlaceModel` from a MatConvNet .mat file (v5 or v7.3).

    Args:
        path: a released NetVLAD model (``net.layers`` …, its head layers MATLAB class objects as
            released or structs after class→struct conversion), or a MatConvNet ImageNet model
            (``imagenet-vgg-verydeep-16.mat``, ``imagenet-caffe-ref.mat``).
        config: :class:`ConvertConfig` (method/crop/K for backbone-only files).

    Returns:
        (model in eval mode on the CPU, :class:`ConversionInfo`). For an ImageNet file with a
        NetVLAD method the head is left uninitialised (``model.initialized`` is False): initialise
        its clusters from images before use, as the original's ``getClusters`` does.

    Raises:
        ValueError: not a supported network; the message names the file and what was found (a
            layer object of an unknown class, or class objects without mat-io to read them).
    """
    config = config or ConvertConfig()
    path = Path(path)
    net = load_matconvnet(path)
    layers, head = split_network(net)
    crop, method = _crop_and_method(path, layers, head, config)
    arch = _identify(net, layers)
    num_clusters = config.num_clusters
    if head.pool in ("vlad", "vladv2"):
        num_clusters = int(np.asarray(head.core.weights[0]).shape[-1])  # 1×1×D×K (or D×K)
    preprocess = Preprocess("matconvnet", net.average_rgb, (1.0, 1.0, 1.0), 255.0, None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the random init is overwritten; seeded so conversion is deterministic
        backbone = build_backbone(arch, crop=crop)  # ValueError naming the choices for a bad crop
        crop = backbone.crop
        file_names = [layer.name for layer in layers]
        if crop not in file_names:
            raise ValueError(
                f"{path}: crop layer {crop!r} is not in the file (its layers: {', '.join(file_names)})"
            )
        mconfig = ModelConfig(arch, crop, method, num_clusters, None, preprocess, path.name)
        backbone.load_weights(_backbone_state(net, layers, backbone))
        backbone.weights_source = str(path)
        model = PlaceModel(mconfig, backbone)
    _load_head(net, head, model)
    model.eval()
    notes = []
    if not model.initialized:
        notes.append(
            "the NetVLAD head is new and uninitialised: initialise its clusters from images of your "
            "training set (netvlad.models.init_clusters) before extracting descriptors"
        )
    info = ConversionInfo(
        source=str(path),
        format=_format(net, head),
        arch=arch,
        crop=crop,
        method=model.method.name,
        released=head.pool is not None,
        num_clusters=num_clusters if model.method.is_vlad else None,
        whiten_dim=model.config.whiten_dim,
        preprocess=preprocess.to_dict(),
        notes=notes,
    )
    log.info("converted %s: %s cropped at %s, %s, out_dim %d", path, arch, crop, info.method, model.out_dim)
    return model, info
