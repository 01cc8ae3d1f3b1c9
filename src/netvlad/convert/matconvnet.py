"""Parse MatConvNet SimpleNN networks (released NetVLAD models, ImageNet models) from a .mat file.

Two layouts are understood:

- released NetVLAD models: one variable ``net`` with ``net.layers`` (a cell of layers) and
  ``net.meta.normalization.averageImage``. In the original release the head's custom layers are
  MATLAB class objects (:data:`LAYER_CLASSES`: ``layerVLAD``/``layerVLADv2`` save every property
  through ``saveobj`` as one struct, the others as plain properties); after netvlad_tf_open's
  class→struct conversion (hloc's ``*_struct.mat``) they are structs with ``type = 'custom'``, and
  their kind is recognised from the name and weights. Head layers follow ``addLayers``/``addPCA``:
  ``preL2`` (normalize) → ``vlad:core`` (custom; weights {assignment D×K, offset −c D×K}, plus a
  1×K bias for vladv2) or ``max:core``/``avg:core`` → ``vlad:intranorm`` (normalize) → ``postL2``
  (custom) → ``WPCA``/``PCA`` (conv 1×1×dim×pcaDim with bias) → ``finalL2`` (custom).
- MatConvNet ImageNet models (``imagenet-vgg-verydeep-16.mat``, ``imagenet-caffe-ref.mat``):
  top-level ``layers`` and ``meta`` (or, before MatConvNet beta-17, ``normalization`` and layer
  fields ``filters``/``biases`` instead of ``weights``, which ``vl_simplenn_tidy`` upgrades).

Everything here is NumPy; weights keep MatConvNet's layout (conv filters H×W×Cin×Cout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from netvlad.convert.matfile import MatlabObject, read_mat

__all__ = [
    "MatLayer",
    "MatNet",
    "HeadSpec",
    "load_matconvnet",
    "split_network",
    "LAYER_CLASSES",
    "CLASS2STRUCT_HINT",
]

#: The original's custom layer classes (addLayers/addPCA) → the head kind they compute.
LAYER_CLASSES = {
    "layerVLAD": "vlad",
    "layerVLADv2": "vladv2",
    "layerWholeL2Normalize": "wholel2",
    "layerTotalMaxPool": "max",
    "layerTotalAvgPool": "avg",
}

#: Each class's default ``name`` property (what a layer built without a name carries).
_CLASS_DEFAULT_NAMES = {
    "layerVLAD": "VLAD",
    "layerVLADv2": "VLAD",
    "layerWholeL2Normalize": "wholeL2",
    "layerTotalMaxPool": "maxTotal",
    "layerTotalAvgPool": "avgTotal",
}

#: The way around a file whose class objects cannot be read here (no mat-io): structs instead,
#: made in MATLAB (netvlad_tf_open's matlab/net_class2struct.m does exactly this).
CLASS2STRUCT_HINT = (
    "or convert the classes to structs in MATLAB (NetVLAD code on the path): "
    "`for i = 1:numel(net.layers), net.layers{i} = struct(net.layers{i}); end; "
    "save('converted.mat', 'net')`, and convert converted.mat"
)

_BACKBONE_TYPES = {"conv", "relu", "pool", "normalize", "lrn", "dropout", "softmax", "softmaxloss"}


@dataclass
class MatLayer:
    """One SimpleNN layer: ``index`` is its 1-based position in ``net.layers`` (MATLAB's)."""

    index: int
    name: str
    type: str
    weights: list[np.ndarray] = field(repr=False)
    fields: dict[str, Any] = field(default_factory=dict, repr=False)
    classname: str | None = None  # the MATLAB class of a layer stored as an object (a LAYER_CLASSES key)

    def vec(self, key: str, default: list[float] | None = None) -> np.ndarray:
        """A numeric field as a flat float64 vector (``default`` when absent or empty)."""
        value = self.fields.get(key)
        if value is None or (isinstance(value, np.ndarray) and value.size == 0):
            if default is None:
                raise KeyError(key)
            return np.asarray(default, dtype=np.float64)
        return np.asarray(value, dtype=np.float64).ravel(order="F")

    def text(self, key: str, default: str = "") -> str:
        value = self.fields.get(key, default)
        return value if isinstance(value, str) else default

    def describe(self) -> str:
        kind = f"class {self.classname!r}" if self.classname else f"type {self.type!r}"
        return f"net.layers{{{self.index}}} ({self.name!r}, {kind})"


@dataclass
class MatNet:
    """A parsed SimpleNN network; ``average_rgb`` is ``averageImage(1,1,:)`` (0–255 RGB)."""

    source: Path
    layers: list[MatLayer]
    average_rgb: tuple[float, float, float]
    meta: dict[str, Any]
    released: bool  # True for a ``net`` variable (NetVLAD release layout), False for ImageNet files


@dataclass
class HeadSpec:
    """The aggregation head found after the backbone (all None/False for a backbone-only file)."""

    pool: str | None = None  # "vlad" | "vladv2" | "max" | "avg"
    pre_l2: bool = False
    intra: bool = False
    core: MatLayer | None = None
    whitening: MatLayer | None = None

    @property
    def method(self) -> str | None:
        if self.pool is None:
            return None
        return "_".join([self.pool] + ["preL2"] * self.pre_l2 + ["intra"] * self.intra)


def load_matconvnet(path: str | Path) -> MatNet:
    """Read a SimpleNN network from a v5 or v7.3 .mat file.

    Layers stored as MATLAB class objects (:data:`LAYER_CLASSES`) become layer structs whose
    ``classname`` says their kind.

    Raises:
        ValueError: the file is not a SimpleNN network, holds a layer object of another class or
            one whose properties cannot be read, or a layer lacks its weights; the message names
            the file, what was found and how to fix it.
    """
    path = Path(path)
    variables = read_mat(path)
    if "net" in variables:
        net = variables["net"]
        if isinstance(net, MatlabObject):
            raise ValueError(
                f"{path}: variable 'net' is a {net}, not a SimpleNN struct with 'layers' "
                "(MatConvNet DagNN networks are not supported, only SimpleNN)"
            )
        if not isinstance(net, dict):
            raise ValueError(
                f"{path}: variable 'net' is a {type(net).__name__}, expected a struct with 'layers'"
            )
        released = True
    elif "layers" in variables:
        net = variables
        released = False
    else:
        raise ValueError(
            f"{path}: no MatConvNet network in this file (expected a variable 'net' with field 'layers', "
            f"or a top-level 'layers'; found variables: {', '.join(sorted(variables)) or 'none'})"
        )
    if "params" in net and "vars" in net:
        raise ValueError(
            f"{path}: this is a MatConvNet DagNN network (params/vars); only SimpleNN is supported"
        )
    raw_layers = net.get("layers")
    if isinstance(raw_layers, dict):
        raw_layers = [raw_layers]
    if not isinstance(raw_layers, list) or not raw_layers:
        raise ValueError(f"{path}: 'layers' is not a non-empty cell array of layer structs")
    layers = [
        (_object_layer if isinstance(item, MatlabObject) else _parse_layer)(path, i + 1, item)
        for i, item in enumerate(raw_layers)
    ]
    meta = net.get("meta") if isinstance(net.get("meta"), dict) else {}
    norm = meta.get("normalization") if isinstance(meta.get("normalization"), dict) else None
    if norm is None and isinstance(net.get("normalization"), dict):  # pre-beta17 layout
        norm = net["normalization"]
    return MatNet(path, layers, _average_rgb(path, norm), meta, released)


def _object_layer(path: Path, index: int, obj: MatlabObject) -> MatLayer:
    """A layer saved as a class object → the layer struct ``struct(obj)`` would have given."""
    where = f"{path}: net.layers{{{index}}} is a {obj}"
    if obj.classname not in LAYER_CLASSES:
        raise ValueError(
            f"{where}, not one of the NetVLAD layer classes ({', '.join(LAYER_CLASSES)}); cannot convert it"
        )
    if obj.properties is None:
        raise ValueError(f"{where} whose properties cannot be read: {obj.unreadable}; {CLASS2STRUCT_HINT}")
    props = obj.properties
    if set(props) == {"any"} and isinstance(props["any"], dict):  # saveobj's struct (layerVLAD, v2)
        props = props["any"]
    # The class decides the kind, whatever its type property says (always 'custom' in the original).
    item = {**props, "type": "custom"}
    if not isinstance(item.get("name"), str):
        item["name"] = _CLASS_DEFAULT_NAMES[obj.classname]
    layer = _parse_layer(path, index, item)
    layer.classname = obj.classname
    return layer


def _parse_layer(path: Path, index: int, item: Any) -> MatLayer:
    if not isinstance(item, dict):
        raise ValueError(f"{path}: net.layers{{{index}}} is a {type(item).__name__}, expected a layer struct")
    name = item.get("name", f"layer{index}")
    ltype = item.get("type")
    if not isinstance(ltype, str):
        raise ValueError(f"{path}: net.layers{{{index}}} ({name!r}) has no 'type' field")
    fields = {k: v for k, v in item.items() if k not in ("name", "type", "weights", "filters", "biases")}
    weights: list[np.ndarray] = []
    if "weights" in item:
        raw = item["weights"]
        raw = raw if isinstance(raw, list) else [raw]
        weights = [np.asarray(w) for w in raw if not (isinstance(w, np.ndarray) and w.size == 0)]
    elif "filters" in item:  # MatConvNet < beta17: filters/biases fields
        weights = [np.asarray(item["filters"])]
        if isinstance(item.get("biases"), np.ndarray) and item["biases"].size:
            weights.append(np.asarray(item["biases"]))
    for w in weights:
        if not isinstance(w, np.ndarray) or w.dtype.kind not in "fiu":
            raise ValueError(f"{path}: net.layers{{{index}}} ({name!r}) has non-numeric weights")
    return MatLayer(index, str(name), ltype, weights, fields)


def _average_rgb(path: Path, norm: dict | None) -> tuple[float, float, float]:
    if norm is None or not isinstance(norm.get("averageImage"), np.ndarray) or norm["averageImage"].size == 0:
        raise ValueError(
            f"{path}: no meta.normalization.averageImage (the mean pixel subtracted from 0–255 RGB input)"
        )
    avg = np.asarray(norm["averageImage"], dtype=np.float64)
    if avg.size == 3:
        rgb = avg.ravel(order="F")
    elif avg.ndim >= 3 and avg.shape[2] == 3:
        # The original subtracts only the top-left pixel, even for CaffeNet's full mean image.
        rgb = avg[0, 0, :3]
    else:
        raise ValueError(f"{path}: averageImage has shape {avg.shape}, expected 1×1×3 or H×W×3")
    return (float(rgb[0]), float(rgb[1]), float(rgb[2]))


def _is_l2_normalize(layer: MatLayer) -> bool:
    """MatConvNet ``normalize`` [N, κ, α, β] that is an L2 normalisation (preL2 / intranorm).

    An LRN with κ≈0, α=1, β=½ and a window wide enough to span every channel is x/sqrt(κ+Σx²).
    Channel counts are not known here; CaffeNet's LRN has κ=1, so κ alone separates the two.
    """
    if layer.type not in ("normalize", "lrn"):
        return False
    p = layer.vec("param", [5, 1, 1e-4, 0.75])
    return p.size == 4 and p[1] < 1e-6 and p[2] == 1 and p[3] == 0.5


def _custom_kind(layer: MatLayer) -> str:
    if layer.classname is not None:
        return LAYER_CLASSES[layer.classname]
    # A struct (class→struct converted) layer: recognised from its name and weights.
    name = layer.name.lower()
    if "vlad" in name and ("core" in name or len(layer.weights) >= 2 or name == "vlad"):
        return "vladv2" if len(layer.weights) == 3 else "vlad"
    if len(layer.weights) in (2, 3) and {"K", "D"} <= set(layer.fields):  # renamed layerVLAD(v2)
        return "vladv2" if len(layer.weights) == 3 else "vlad"
    if name.startswith("max"):
        return "max"
    if name.startswith("avg"):
        return "avg"
    if "l2" in name:  # postL2 / finalL2 / wholeL2 (layerWholeL2Normalize)
        return "wholel2"
    return "unknown"


def split_network(net: MatNet) -> tuple[list[MatLayer], HeadSpec]:
    """Split into backbone layers and the aggregation head, validating the head's layout.

    Returns:
        (backbone layers in file order, HeadSpec). For an ImageNet model the backbone is every
        layer (including fc6–fc8 as convs) and the head is empty.

    Raises:
        ValueError: an unknown layer type, a head out of ``addLayers`` order, or missing weights.
    """
    path = net.source
    start = len(net.layers)
    for i, layer in enumerate(net.layers):
        if layer.type == "custom" or _is_l2_normalize(layer):
            start = i
            break
        if layer.type not in _BACKBONE_TYPES:
            raise ValueError(
                f"{path}: {layer.describe()}: unsupported layer type (supported: "
                f"{', '.join(sorted(_BACKBONE_TYPES))}, and the NetVLAD head's custom layers)"
            )
        if layer.type == "conv" and not layer.weights:
            raise ValueError(
                f"{path}: {layer.describe()} has no weights (expected {{filters H×W×Cin×Cout, bias}})"
            )
    backbone, head_layers = net.layers[:start], net.layers[start:]
    head = HeadSpec()
    stage = "pre"  # pre → core → (intra) → post → (pca) → final
    for layer in head_layers:
        kind = (
            "l2norm"
            if _is_l2_normalize(layer)
            else _custom_kind(layer)
            if layer.type == "custom"
            else layer.type
        )
        if kind == "l2norm" and stage == "pre" and not head.pre_l2:
            head.pre_l2 = True
        elif kind in ("vlad", "vladv2", "max", "avg") and stage == "pre":
            head.pool, head.core, stage = kind, layer, "core"
            if kind in ("vlad", "vladv2") and len(layer.weights) != (3 if kind == "vladv2" else 2):
                raise ValueError(
                    f"{path}: {layer.describe()} has {len(layer.weights)} weight arrays; layerVLAD stores 2 "
                    "(assignment D×K, offset −c D×K) and layerVLADv2 3 (assignment, bias 1×K, offset)"
                )
        elif kind == "l2norm" and stage == "core" and head.pool in ("vlad", "vladv2"):
            head.intra, stage = True, "intra"
        elif kind == "wholel2" and stage in ("core", "intra"):
            stage = "post"
        elif kind == "conv" and stage == "post":
            if len(layer.weights) != 2:
                raise ValueError(f"{path}: {layer.describe()} (PCA) needs weights {{U 1×1×dim×pcaDim, bias}}")
            head.whitening, stage = layer, "pca"
        elif kind == "wholel2" and stage == "pca":
            stage = "final"
        elif kind == "dropout":
            continue
        else:
            raise ValueError(
                f"{path}: {layer.describe()} is not where the NetVLAD head expects it (expected preL2 → "
                "vlad:core|max:core|avg:core → vlad:intranorm → postL2 → WPCA → finalL2)"
            )
    if head_layers and head.pool is None:
        raise ValueError(f"{path}: head layers found but no pooling core (vlad:core, max:core or avg:core)")
    if stage in ("core", "intra"):
        raise ValueError(
            f"{path}: the head has no postL2 whole-vector normalisation after {head.core.name!r}"
        )
    if stage == "pca":
        raise ValueError(f"{path}: the PCA layer {head.whitening.name!r} is not followed by finalL2")
    return backbone, head


def conv_geometry(layer: MatLayer) -> dict[str, Any]:
    """Kernel, stride, padding (top, bottom, left, right), dilation and groups-in of a conv layer.

    ``w_in`` is the filter's Cin; the layer's group count is (input channels) / w_in.
    """
    w = layer.weights[0]
    shape = tuple(w.shape) + (1,) * (4 - w.ndim)
    pad = layer.vec("pad", [0]).astype(int)
    pad = np.repeat(pad, 4) if pad.size == 1 else pad
    stride = layer.vec("stride", [1]).astype(int)
    stride = np.repeat(stride, 2) if stride.size == 1 else stride
    dilate = layer.vec("dilate", [1]).astype(int)
    dilate = np.repeat(dilate, 2) if dilate.size == 1 else dilate
    return {
        "kernel": (shape[0], shape[1]),
        "w_in": shape[2],
        "out": shape[3],
        "pad": tuple(int(p) for p in pad[:4]),
        "stride": (int(stride[0]), int(stride[1])),
        "dilate": (int(dilate[0]), int(dilate[1])),
    }


def pool_geometry(layer: MatLayer) -> dict[str, Any]:
    """Window, stride, padding (t, b, l, r) and method of a pool layer."""
    win = layer.vec("pool", [2]).astype(int)
    win = np.repeat(win, 2) if win.size == 1 else win
    stride = layer.vec("stride", [1]).astype(int)
    stride = np.repeat(stride, 2) if stride.size == 1 else stride
    pad = layer.vec("pad", [0]).astype(int)
    pad = np.repeat(pad, 4) if pad.size == 1 else pad
    return {
        "window": (int(win[0]), int(win[1])),
        "stride": (int(stride[0]), int(stride[1])),
        "pad": tuple(int(p) for p in pad[:4]),
        "method": layer.text("method", "max"),
    }
