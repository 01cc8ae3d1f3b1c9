"""Test helpers for the MatConvNet converter: build networks in the released .mat layouts, write
them exactly as MATLAB does (v5 through scipy, v7.3 through h5py, class objects through mat-io),
and run an independent NumPy implementation of the MatConvNet forward pass written from
MatConvNet's documented formulas (vl_nnconv, vl_nnpool, vl_nnnormalize) and the NetVLAD layers'
forward_ methods.

Networks are plain Python values (dict = struct, list = cell, str = char, ndarray = numeric in
MATLAB's shape), so the reference reads the same values that go into the file, never our parser.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------- inputs and outputs


def campus_photos(sizes):
    """Real street photos (mvtbdata's campus sequence) downscaled to ``sizes`` (W, H), as uint8 RGB."""
    import mvtbdata
    from PIL import Image

    folder = Path(mvtbdata.__file__).parent / "images" / "campus"
    files = sorted(folder.glob("*.png"))[::7][: len(sizes)]
    return [
        np.array(Image.open(f).convert("RGB").resize(s, Image.Resampling.BILINEAR))
        for f, s in zip(files, sizes)
    ]


def descriptor(model, img):
    """Our model's float64 descriptor of one H×W×3 uint8 image (the model's own preprocessing)."""
    import torch

    with torch.no_grad():
        return model(model.preprocess.apply(img)[None])[0].double().numpy()


# --------------------------------------------------------------------------- network builders

VGG16_BLOCKS = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
VGG_MEAN = [123.68, 116.779, 103.939]


def _conv(name, rng, k, cin, cout, pad, stride=1, scale=1.0, bias_shape="row"):
    std = scale * np.sqrt(2.0 / (k * k * cin))
    w = (rng.standard_normal((k, k, cin, cout)) * std).astype(np.float32)
    b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
    b = b.reshape(1, cout) if bias_shape == "row" else b.reshape(cout, 1)
    # Fields as vl_simplenn_tidy leaves them.
    return {
        "name": name,
        "type": "conv",
        "weights": [w, b],
        "size": np.array([[k, k, cin, cout]], float),
        "pad": np.array([[pad] * 4], float),
        "stride": np.array([[stride, stride]], float),
        "dilate": np.array([[1.0]]),
        "opts": [],
        "precious": False,
        "learningRate": np.array([[1.0, 2.0]]),
        "weightDecay": np.array([[1.0, 0.0]]),
    }


def _relu(name):
    return {"name": name, "type": "relu", "leak": np.array([[0.0]]), "precious": False}


def _pool(name, win, stride):
    return {
        "name": name,
        "type": "pool",
        "method": "max",
        "pool": np.array([[win, win]], float),
        "stride": np.array([[stride, stride]], float),
        "pad": np.zeros((1, 4)),
        "opts": [],
        "precious": False,
    }


def _l2norm(name, d):
    return {"name": name, "type": "normalize", "param": np.array([[2 * d, 1e-12, 1, 0.5]]), "precious": False}


def vgg16_backbone(rng, swapped=True, crop="conv5_3", with_fc=False):
    """VGG-16 layers in MatConvNet order; ``swapped``: relja_swapLayersForEfficiency's pool/relu order."""
    layers, cin = [], 3
    for b, (cout, n) in enumerate(VGG16_BLOCKS, start=1):
        for i in range(1, n + 1):
            layers.append(_conv(f"conv{b}_{i}", rng, 3, cin, cout, pad=1))
            cin = cout
            if b == 5 and i == n and crop == "conv5_3":
                return layers
            relu = _relu(f"relu{b}_{i}")
            if i < n or not swapped:
                layers.append(relu)
        layers.append(_pool(f"pool{b}", 2, 2))
        if swapped:
            layers.append(relu)
    if with_fc:  # fc6-fc8 as convs; output widths shrunk (4096 -> 8) to keep test files small
        layers += [
            _conv("fc6", rng, 7, 512, 8, 0),
            _relu("relu6"),
            _conv("fc7", rng, 1, 8, 8, 0),
            _relu("relu7"),
            _conv("fc8", rng, 1, 8, 5, 0),
            {"name": "prob", "type": "softmax"},
        ]
    return layers


def caffe_ref_backbone(rng, with_fc=True):
    """CaffeNet (imagenet-caffe-ref.mat): LRN after pool, 2-group conv2/4/5 (Cin of the filters halved)."""
    lrn = {"type": "normalize", "param": np.array([[5, 1, 2e-5, 0.75]]), "precious": False}
    layers = [
        _conv("conv1", rng, 11, 3, 96, 0, stride=4),
        _relu("relu1"),
        _pool("pool1", 3, 2),
        {"name": "norm1", **lrn},
        _conv("conv2", rng, 5, 48, 256, 2),
        _relu("relu2"),
        _pool("pool2", 3, 2),
        {"name": "norm2", **lrn},
        _conv("conv3", rng, 3, 256, 384, 1),
        _relu("relu3"),
        _conv("conv4", rng, 3, 192, 384, 1),
        _relu("relu4"),
        _conv("conv5", rng, 3, 192, 256, 1),
        _relu("relu5"),
        _pool("pool5", 3, 2),
    ]
    if with_fc:  # output widths shrunk (4096 -> 8)
        layers += [
            _conv("fc6", rng, 6, 256, 8, 0),
            _relu("relu6"),
            _conv("fc7", rng, 1, 8, 8, 0),
            _relu("relu7"),
            _conv("fc8", rng, 1, 8, 5, 0),
            {"name": "prob", "type": "softmax"},
        ]
    return layers


def netvlad_head(rng, d, k=64, vladv2=False, pre_l2=True, intra=True, pca_dim=None, alpha=8.0):
    """addLayers (+ addPCA) head layers after class→struct conversion, with random weights."""
    layers = [_l2norm("preL2", d)] if pre_l2 else []
    c = rng.standard_normal((d, k))
    c /= np.linalg.norm(c, axis=0, keepdims=True) * 1.5  # k-means centres of unit vectors: norm < 1
    common = {
        "K": np.array([[float(k)]]),
        "D": np.array([[float(d)]]),
        "vladDim": np.array([[float(d * k)]]),
        "momentum": [np.zeros((1, 1, d, k), np.float32)] * 2,
        "learningRate": np.array([[1.0, 1.0]]),
        "weightDecay": np.array([[1.0, 1.0]]),
        "precious": False,
    }
    if vladv2:
        w = (2 * alpha * c).astype(np.float32).reshape(1, 1, d, k)
        bias = (-alpha * (c**2).sum(0)).astype(np.float32).reshape(1, k)
        weights = [w, bias, (-c).astype(np.float32).reshape(1, 1, d, k)]
    else:
        cn = c / np.linalg.norm(c, axis=0, keepdims=True)
        weights = [
            (alpha * cn).astype(np.float32).reshape(1, 1, d, k),
            (-c).astype(np.float32).reshape(1, 1, d, k),
        ]
    layers.append({"type": "custom", "name": "vlad:core", **common, "weights": weights})
    if intra:
        layers.append(_l2norm("vlad:intranorm", d))
    layers.append({"type": "custom", "name": "postL2", "precious": False})
    if pca_dim:
        u = rng.standard_normal((d * k, pca_dim)) / np.sqrt(d * k)
        layers.append(
            {
                "name": "WPCA",
                "type": "conv",
                "weights": [
                    u.astype(np.float32).reshape(1, 1, d * k, pca_dim),
                    (rng.standard_normal((pca_dim, 1)) * 0.01).astype(np.float32),
                ],
                "size": np.array([[1, 1, d * k, pca_dim]], float),
                "pad": np.zeros((1, 4)),
                "stride": np.ones((1, 2)),
                "dilate": np.ones((1, 1)),
                "opts": [],
                "precious": False,
            }
        )
        layers.append({"type": "custom", "name": "finalL2", "precious": False})
    return layers


def pool_head(rng, d, pool="max", pre_l2=False):
    layers = [_l2norm("preL2", d)] if pre_l2 else []
    layers.append({"type": "custom", "name": f"{pool}:core", "precious": False})
    layers.append({"type": "custom", "name": "postL2", "precious": False})
    return layers


def released_net(layers, average=VGG_MEAN, session="vd16_pitts30k_conv5_3_vlad_preL2_intra_white"):
    """The variable ``net`` of a released model (after net_class2struct)."""
    avg = np.asarray(average, np.float32).reshape(1, 1, 3) if np.size(average) == 3 else average
    return {
        "layers": layers,
        "meta": {
            "normalization": {
                "averageImage": avg,
                "imageSize": np.array([[224.0, 224, 3]]),
                "interpolation": "bilinear",
                "keepAspect": True,
                "border": np.zeros((1, 2)),
                "cropSize": np.array([[0.875]]),
            },
            "netID": "vd16",
            "sessionID": session,
            "epoch": np.array([[3.0]]),
        },
    }


def imagenet_vars(layers, average, legacy=False):
    """Top-level variables of a MatConvNet ImageNet model (``legacy``: pre-beta17 filters/biases)."""
    classes = {"name": ["n01440764", "n01443537"], "description": ["tench", "goldfish"]}
    avg = np.asarray(average, np.float32)
    if not legacy:
        return {
            "layers": layers,
            "meta": {
                "normalization": {"averageImage": avg, "imageSize": np.array([[224.0, 224, 3]])},
                "classes": classes,
            },
        }
    old = []
    for layer in layers:
        layer = dict(layer)
        if "weights" in layer:
            w, b = layer.pop("weights")
            layer["filters"], layer["biases"] = w, b
        old.append(layer)
    return {
        "layers": old,
        "normalization": {"averageImage": avg, "imageSize": np.array([[224.0, 224, 3]])},
        "classes": classes,
    }


# --------------------------------------------------------------------------- writers


def _to_scipy(value):
    if isinstance(value, dict):
        return {k: _to_scipy(v) for k, v in value.items()}
    if isinstance(value, list):
        arr = np.empty((1, len(value)), dtype=object)
        for i, v in enumerate(value):
            arr[0, i] = _to_scipy(v)
        return arr
    if isinstance(value, bool):
        return np.array([[value]])
    return value


def write_v5(path: Path, variables: dict) -> Path:
    """MATLAB v5 (``save -v7`` without compression) through scipy: dicts → structs, lists → cells."""
    import scipy.io

    scipy.io.savemat(str(path), {k: _to_scipy(v) for k, v in variables.items()}, format="5", oned_as="row")
    return path


def write_v73(path: Path, variables: dict, objects: dict | None = None) -> Path:
    """MATLAB ``save -v7.3`` layout through h5py.

    Structs are groups (``MATLAB_class='struct'``, ``MATLAB_fields``), cells are datasets of object
    references into ``#refs#``, char is uint16 with ``MATLAB_int_decode=2``, numeric arrays are
    stored with their dims reversed, empty arrays hold their dims with ``MATLAB_empty=1``, and
    a 512-byte user block carries MATLAB's text header. ``objects`` maps a cell index path like
    ``("net", "layers", 30)`` to a class name written as an undecodable MCOS object.
    """
    import h5py

    objects = objects or {}
    counter = [0]

    def ref_name():
        counter[0] += 1
        return f"{counter[0]:x}"

    def put(parent, name, value, where):
        if where in objects:
            ds = parent.create_dataset(name, data=np.array([[0xDD000000, 2, 1, 1, 1, 1]], np.uint32).T)
            ds.attrs["MATLAB_class"] = np.bytes_(objects[where])
            ds.attrs["MATLAB_object_decode"] = np.int32(3)
            return ds
        if isinstance(value, dict):
            g = parent.create_group(name)
            g.attrs["MATLAB_class"] = np.bytes_("struct")
            vlen = h5py.vlen_dtype(np.dtype("S1"))
            names = np.empty(len(value), dtype=object)
            for i, k in enumerate(value):
                names[i] = np.array([c.encode() for c in k], dtype="S1")
            g.attrs.create("MATLAB_fields", names, dtype=vlen)
            for k, v in value.items():
                put(g, k, v, where + (k,))
            return g
        if isinstance(value, list):
            refs_group = parent.file.require_group("#refs#")
            if not value:
                ds = parent.create_dataset(name, data=np.array([0, 0], np.uint64))
                ds.attrs["MATLAB_class"] = np.bytes_("cell")
                ds.attrs["MATLAB_empty"] = np.uint8(1)
                return ds
            refs = []
            for i, v in enumerate(value):
                refs.append(put(refs_group, ref_name(), v, where + (i,)).ref)
            ds = parent.create_dataset(name, data=np.array(refs, dtype=h5py.ref_dtype).reshape(len(refs), 1))
            ds.attrs["MATLAB_class"] = np.bytes_("cell")
            return ds
        if isinstance(value, str):
            if not value:
                ds = parent.create_dataset(name, data=np.array([0, 1], np.uint64))
                ds.attrs["MATLAB_empty"] = np.uint8(1)
            else:
                ds = parent.create_dataset(name, data=np.array([[ord(c)] for c in value], np.uint16))
            ds.attrs["MATLAB_class"] = np.bytes_("char")
            ds.attrs["MATLAB_int_decode"] = np.int32(2)
            return ds
        if isinstance(value, bool):
            ds = parent.create_dataset(name, data=np.array([[int(value)]], np.uint8))
            ds.attrs["MATLAB_class"] = np.bytes_("logical")
            ds.attrs["MATLAB_int_decode"] = np.int32(1)
            return ds
        arr = np.asarray(value)
        if arr.ndim < 2:
            arr = arr.reshape(1, -1)
        cls = {
            np.float32: "single",
            np.float64: "double",
            np.uint8: "uint8",
            np.int32: "int32",
            np.uint32: "uint32",
            np.int64: "int64",
        }[arr.dtype.type]
        if arr.size == 0:
            ds = parent.create_dataset(name, data=np.array(arr.shape, np.uint64))
            ds.attrs["MATLAB_empty"] = np.uint8(1)
        else:
            ds = parent.create_dataset(name, data=np.ascontiguousarray(arr.T))  # dims reversed
        ds.attrs["MATLAB_class"] = np.bytes_(cls)
        return ds

    with h5py.File(path, "w", userblock_size=512) as f:
        for k, v in variables.items():
            put(f, k, v, (k,))
    header = (
        (
            f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {time.strftime('%a %b %d %H:%M:%S %Y')} "
            "HDF5 schema 1.00 ."
        )
        .encode()
        .ljust(116)
        + b"\x00" * 8
        + b"\x00\x02IM"
    )
    with open(path, "r+b") as fh:
        fh.write(header.ljust(512, b"\x00"))
    return path


def write_v5_with_object(path: Path, classname: str) -> Path:
    """A v5 file whose ``net.layers`` cell holds a struct and a classdef (MCOS) object.

    scipy cannot write MATLAB objects, so the bytes are assembled here following the MAT-file v5
    element layout: miMATRIX elements with array flags, dims, name, and for mxOPAQUE_CLASS the
    "MCOS" type string, the class name and a uint32 metadata matrix (as MATLAB writes them).
    """
    import struct

    def elem(dtype, payload):
        pad = (-len(payload)) % 8
        return struct.pack("<II", dtype, len(payload)) + payload + b"\x00" * pad

    mi_int8, mi_int32, mi_uint32, mi_matrix = 1, 5, 6, 14

    def flags(cls):
        return elem(mi_uint32, struct.pack("<II", cls, 0))

    def matrix(body):
        return elem(mi_matrix, body)

    def char(s):  # mxCHAR_CLASS = 4, stored as miUINT16 (4)
        data = np.array([ord(c) for c in s], "<u2").tobytes()
        return matrix(
            flags(4) + elem(mi_int32, struct.pack("<ii", 1, len(s))) + elem(mi_int8, b"") + elem(4, data)
        )

    def struct_(fields):  # mxSTRUCT_CLASS = 2
        names = list(fields)
        width = max(len(n) for n in names) + 1
        body = flags(2) + elem(mi_int32, struct.pack("<ii", 1, 1)) + elem(mi_int8, b"")
        body += struct.pack("<HHI", mi_int32, 4, width)  # small element: field name length
        body += elem(mi_int8, b"".join(n.encode().ljust(width, b"\x00") for n in names))
        body += b"".join(fields[n] for n in names)
        return matrix(body)

    def opaque(cls_name):  # mxOPAQUE_CLASS = 17
        meta = np.array([0xDD000000, 2, 1, 1, 1, 1], "<u4").tobytes()
        inner = matrix(
            flags(13) + elem(mi_int32, struct.pack("<ii", 6, 1)) + elem(mi_int8, b"") + elem(mi_uint32, meta)
        )
        return matrix(
            flags(17) + elem(mi_int8, b"") + elem(mi_int8, b"MCOS") + elem(mi_int8, cls_name.encode()) + inner
        )

    conv = struct_({"name": char("conv1_1"), "type": char("conv")})
    cells = [conv, opaque(classname)]
    cell = matrix(
        flags(1) + elem(mi_int32, struct.pack("<ii", 1, len(cells))) + elem(mi_int8, b"") + b"".join(cells)
    )
    names = ["layers"]
    body = flags(2) + elem(mi_int32, struct.pack("<ii", 1, 1)) + elem(mi_int8, b"net")
    body += struct.pack("<HHI", mi_int32, 4, 32) + elem(
        mi_int8, b"".join(n.encode().ljust(32, b"\x00") for n in names)
    )
    body += cell
    header = b"MATLAB 5.0 MAT-file, written by the netvlad tests".ljust(116) + b"\x00" * 8 + b"\x00\x01IM"
    path.write_bytes(header + matrix(body))
    return path


# --------------------------------------------------------------------------- class objects (mat-io)

#: Properties of the original's custom layer classes, in their classdef order.
CLASS_PROPERTIES = {
    "layerVLAD": (
        "type",
        "name",
        "K",
        "D",
        "vladDim",
        "weights",
        "momentum",
        "learningRate",
        "weightDecay",
        "precious",
    ),
    "layerWholeL2Normalize": ("type", "name", "precious"),
    "layerTotalMaxPool": ("type", "name", "precious"),
    "layerTotalAvgPool": ("type", "name", "precious"),
}
CLASS_PROPERTIES["layerVLADv2"] = CLASS_PROPERTIES["layerVLAD"]

#: Classes whose saveobj (relja_saveobj) returns a struct of every property.
SAVEOBJ_CLASSES = ("layerVLAD", "layerVLADv2")


class ClassObject:
    """A MATLAB classdef instance to be written by :func:`write_mat_objects`.

    ``properties`` are plain Python values (as in the network builders). ``saveobj``: stored as
    a class with a saveobj method stores it (one property ``any`` holding the returned struct);
    default: as the original's classes do (:data:`SAVEOBJ_CLASSES`).
    """

    def __init__(self, classname: str, properties: dict, saveobj: bool | None = None):
        self.classname = classname
        self.properties = properties
        self.saveobj = classname in SAVEOBJ_CLASSES if saveobj is None else saveobj


def class_of(layer: dict) -> str | None:
    """The class addLayers/addPCA used for a custom head layer (by its name and weights)."""
    if layer.get("type") != "custom":
        return None
    name = layer["name"]
    if "vlad" in name:
        return "layerVLADv2" if len(layer["weights"]) == 3 else "layerVLAD"
    if name.startswith("max"):
        return "layerTotalMaxPool"
    if name.startswith("avg"):
        return "layerTotalAvgPool"
    return "layerWholeL2Normalize"


def as_class_objects(layers: list) -> list:
    """The layers as the original release stores them: custom head layers become class objects.

    Each object's properties are its class's (:data:`CLASS_PROPERTIES`), taken from the layer
    struct, so the NumPy reference run on ``layers`` reads the very values written.
    """
    out = []
    for layer in layers:
        cls = class_of(layer)
        if cls is None:
            out.append(layer)
            continue
        props = {key: layer[key] for key in CLASS_PROPERTIES[cls]}
        out.append(ClassObject(cls, props))
    return out


def _to_matio(value):
    from matio.utils import MatlabOpaque

    if isinstance(value, ClassObject):
        props = {k: _to_matio(v) for k, v in value.properties.items()}
        if value.saveobj:  # what the file holds for a class with saveobj: the returned struct
            props = {"any": props}
        return MatlabOpaque(properties=props, classname=value.classname)
    if isinstance(value, dict):
        return {k: _to_matio(v) for k, v in value.items()}
    if isinstance(value, list):
        # Built element by element: np.array() would merge equal-shape arrays into one.
        arr = np.empty((1, len(value)), dtype=object)
        for i, v in enumerate(value):
            arr[0, i] = _to_matio(v)
        return arr
    if isinstance(value, bool):
        return np.array([[value]])
    return value


def write_mat_objects(path: Path, variables: dict, version: str) -> Path:
    """Write with MATLAB class objects through mat-io (``version`` "v7" or "v7.3").

    Values as for :func:`write_v5`, plus :class:`ClassObject` instances, which become MCOS
    objects in the file's subsystem exactly as MATLAB's ``save`` stores them.
    """
    import matio

    # mat-io marks saveobj return values per class.
    saveobj = sorted({obj.classname for obj in _class_objects(variables) if obj.saveobj})
    matio.save_to_mat(
        str(path),
        {k: _to_matio(v) for k, v in variables.items()},
        version=version,
        saveobj_classes=saveobj,
        **({"do_compression": False} if version == "v7" else {}),
    )
    return path


def _class_objects(value):
    if isinstance(value, ClassObject):
        yield value
        for v in value.properties.values():
            yield from _class_objects(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _class_objects(v)
    elif isinstance(value, list):
        for v in value:
            yield from _class_objects(v)


# --------------------------------------------------------------------------- NumPy MatConvNet forward


def _np_conv(x, w, b, pad, stride):
    """vl_nnconv: x H×W×C, w kh×kw×Cin_g×Cout (groups = C / Cin_g), pad [t b l r], stride [h w]."""
    kh, kw, cin_g, cout = w.shape
    xp = np.pad(x, ((pad[0], pad[1]), (pad[2], pad[3]), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(0, 1))[:: stride[0], :: stride[1]]
    groups = x.shape[2] // cin_g
    cout_g = cout // groups
    outs = []
    for g in range(groups):
        patch = win[:, :, g * cin_g : (g + 1) * cin_g]  # Ho×Wo×Cin_g×kh×kw
        outs.append(np.einsum("hwcij,ijco->hwo", patch, w[..., g * cout_g : (g + 1) * cout_g], optimize=True))
    return np.concatenate(outs, axis=2) + np.asarray(b, np.float64).ravel()


def _np_pool(x, win, stride, pad):
    """vl_nnpool max, floor mode: out = floor((H + pt + pb − kh)/sh) + 1."""
    xp = np.pad(x, ((pad[0], pad[1]), (pad[2], pad[3]), (0, 0)), constant_values=-np.inf)
    v = np.lib.stride_tricks.sliding_window_view(xp, tuple(win), axis=(0, 1))[:: stride[0], :: stride[1]]
    return v.max(axis=(3, 4))


def _np_normalize(x, param):
    """vl_nnnormalize: y_k = x_k (κ + α Σ_{t∈G(k)} x_t²)^−β, G(k) = [k − ⌊(N−1)/2⌋, k + ⌈(N−1)/2⌉]."""
    n, kappa, alpha, beta = [float(p) for p in np.ravel(param)]
    c = x.shape[-1]
    sq = x**2
    lo, hi = int(np.floor((n - 1) / 2)), int(np.ceil((n - 1) / 2))
    cs = np.concatenate([np.zeros(x.shape[:-1] + (1,)), np.cumsum(sq, axis=-1)], axis=-1)
    idx = np.arange(c)
    s = cs[..., np.minimum(idx + hi, c - 1) + 1] - cs[..., np.maximum(idx - lo, 0)]
    return x * (kappa + alpha * s) ** (-beta)


def _vec(x):
    return np.asarray(x, np.float64).ravel(order="F")


def matconvnet_forward(layers, image, average_rgb):
    """Run SimpleNN ``layers`` on one H×W×3 uint8 RGB image the way computeRepresentation does.

    Returns the flattened output column (float64), e.g. the 4096-D whitened NetVLAD vector, or the
    H×W×C map when the layers end in the backbone.
    """
    x = image.astype(np.float64) - np.asarray(average_rgb, np.float64).reshape(1, 1, 3)
    for layer in layers:
        t, name = layer["type"], layer.get("name", "")
        if t == "conv":
            w, b = layer["weights"]
            w = np.asarray(w, np.float64)
            if w.ndim == 4 and x.ndim == 3 and w.shape[2] * (x.shape[2] // w.shape[2]) == x.shape[2]:
                pad = np.resize(_vec(layer.get("pad", 0)).astype(int), 4)
                stride = np.resize(_vec(layer.get("stride", 1)).astype(int), 2)
                x = _np_conv(x, w, b, pad, stride)
            else:  # WPCA on the 1×1×dim vector
                x = w.reshape(-1, w.shape[-1]).T @ x.ravel(order="F") + _vec(b)
        elif t == "relu":
            x = np.maximum(x, 0)
        elif t == "pool":
            win = np.resize(_vec(layer["pool"]).astype(int), 2)
            stride = np.resize(_vec(layer.get("stride", 1)).astype(int), 2)
            pad = np.resize(_vec(layer.get("pad", 0)).astype(int), 4)
            x = _np_pool(x, win, stride, pad)
        elif t == "normalize":
            x = _np_normalize(x, layer["param"])
        elif t == "custom" and "vlad" in name:
            ws = [np.asarray(w, np.float64) for w in layer["weights"]]
            assign, offset = ws[0], ws[-1]
            d, k = assign.shape[2], assign.shape[3]
            xi = x.reshape(-1, d, order="F")  # N×D, column-major over H×W like MATLAB
            s = xi @ assign.reshape(d, k)
            if len(ws) == 3:
                s = s + ws[1].reshape(1, k)
            a = np.exp(s - s.max(axis=1, keepdims=True))
            a /= a.sum(axis=1, keepdims=True)
            y = np.zeros((1, k, d))  # MATLAB's [1, K, D] output
            for ik in range(k):
                y[0, ik, :] = (a[:, ik : ik + 1] * (xi + offset[0, 0, :, ik])).sum(0)
            x = y
        elif t == "custom" and name.startswith(("max", "avg")):
            x = (x.max(axis=(0, 1)) if name.startswith("max") else x.mean(axis=(0, 1))).reshape(1, 1, -1)
        elif t == "custom":  # postL2 / finalL2: whole-vector L2 with epsilon outside the sqrt
            v = x.ravel(order="F")
            x = v / (np.sqrt((v**2).sum()) + 1e-12)
        elif t == "softmax":
            break
        else:
            raise ValueError(f"reference forward: unsupported layer {name} ({t})")
    return x if x.ndim == 3 and x.shape[:2] != (1, 1) else np.ravel(x, order="F")
