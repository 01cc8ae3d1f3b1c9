"""The original NetVLAD release's .mat files: head layers saved as MATLAB class objects (MCOS).

Files are written through mat-io the way MATLAB's ``save`` stores classdef objects (layerVLAD and
layerVLADv2 through their saveobj struct, the other classes as plain properties), in v7 and v7.3,
then converted and compared with the independent NumPy MatConvNet forward pass
(tests/convert_reference.py) on real photos.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from convert_reference import (
    VGG_MEAN,
    ClassObject,
    as_class_objects,
    campus_photos,
    descriptor,
    matconvnet_forward,
    netvlad_head,
    pool_head,
    released_net,
    vgg16_backbone,
    write_mat_objects,
    write_v5,
    write_v73,
)
from netvlad.cli import main
from netvlad.convert import MatlabObject, convert_matconvnet, read_mat
from netvlad.convert.matfile import has_subsystem
from netvlad.models import load_model

pytest.importorskip("matio", reason="mat-io (Python >= 3.11) writes the class-object test files")

TOL = 1e-4
VERSIONS = ["v7", "v7.3"]
CLASS_FORMAT = "MatConvNet SimpleNN (NetVLAD model, MATLAB class objects)"


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("version", VERSIONS)
def test_objects_are_read_with_their_properties(tmp_path, version, caffe_weights):
    """The file holds real MCOS objects, and read_mat returns their classes and property values;
    everything else equals what scipy/h5py read from the same network stored as structs."""
    rng = np.random.default_rng(1)
    layers = caffe_weights[:3] + netvlad_head(rng, 96, k=4, pca_dim=5)
    stored = as_class_objects(layers)
    path = write_mat_objects(tmp_path / "o.mat", {"net": released_net(stored)}, version)
    assert has_subsystem(path)
    got = read_mat(path)["net"]
    vlad, post = got["layers"][4], got["layers"][6]
    assert isinstance(vlad, MatlabObject) and vlad.classname == "layerVLAD"
    assert list(vlad.properties) == ["any"]  # saveobj: one struct of every property
    saved = vlad.properties["any"]
    assert list(saved) == [
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
    ]
    assert saved["name"] == "vlad:core" and float(saved["K"][0, 0]) == 4 and float(saved["D"][0, 0]) == 96
    assert len(saved["weights"]) == 2
    for ours, theirs in zip(saved["weights"], layers[4]["weights"]):
        assert ours.shape == theirs.shape == (1, 1, 96, 4) and ours.dtype == np.float32
        np.testing.assert_array_equal(ours, theirs)
    assert isinstance(post, MatlabObject) and post.classname == "layerWholeL2Normalize"
    assert post.properties["name"] == "postL2" and post.properties["type"] == "custom"
    # The struct parts read through mat-io equal the scipy/h5py reading of an object-free file.
    writer = write_v5 if version == "v7" else write_v73
    plain = read_mat(writer(tmp_path / "s.mat", {"net": released_net(layers)}))["net"]
    objects = {f"net.layers[{i}]" for i, item in enumerate(stored) if isinstance(item, ClassObject)}
    assert objects == {"net.layers[4]", "net.layers[6]", "net.layers[8]"}
    _assert_same(got, plain, "net", skip=objects)


def _assert_same(a, b, where, skip=()):
    if where in skip:
        return
    if isinstance(b, dict):
        assert isinstance(a, dict) and list(a) == list(b), where
        for k in b:
            _assert_same(a[k], b[k], f"{where}.{k}", skip)
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]", skip)
    elif isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and a.shape == b.shape, where
        # scipy reads a logical as uint8, mat-io and h5py as bool
        assert a.dtype == b.dtype or {a.dtype, b.dtype} == {np.dtype(bool), np.dtype(np.uint8)}, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert type(a) is type(b) and a == b, where


# --------------------------------------------------------------------------- released layouts


@pytest.mark.parametrize("version", VERSIONS)
def test_released_vgg16_with_class_objects_matches_reference(tmp_path, capsys, version):
    """vd16_pitts30k_conv5_3_vlad_preL2_intra_white.mat as released: VGG-16 cropped at conv5_3,
    preL2 → layerVLAD (saveobj) → intranorm → layerWholeL2Normalize → WPCA → layerWholeL2Normalize."""
    rng = np.random.default_rng(2)
    layers = vgg16_backbone(np.random.default_rng(0)) + netvlad_head(rng, 512, k=64, pca_dim=32)
    path = write_mat_objects(
        tmp_path / "vd16_pitts30k_conv5_3_vlad_preL2_intra_white.mat",
        {"net": released_net(as_class_objects(layers))},
        version,
    )
    out = tmp_path / "pitts30k.pt"
    assert main(["convert", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{CLASS_FORMAT}: vgg16 cropped at conv5_3, head vlad_preL2_intra (K=64), WPCA to 32-D" in printed
    model = load_model(out)
    (img,) = campus_photos([(64, 48)])
    ref = matconvnet_forward(layers, img, VGG_MEAN)
    ours = descriptor(model, img)
    assert ours.shape == ref.shape == (32,)
    assert np.abs(ours - ref).max() <= TOL


@pytest.mark.parametrize(
    "head,version,saveobj",
    [
        ("vladv2_preL2_intra", "v7.3", True),
        ("vladv2", "v7", False),  # a layerVLADv2 stored as plain properties (no saveobj) reads the same
        ("max_preL2", "v7", None),
        ("avg", "v7.3", None),
    ],
)
def test_other_class_heads_match_reference(tmp_path, head, version, saveobj, caffe_weights):
    rng = np.random.default_rng(4)
    tokens = head.split("_")
    pool = tokens[0]
    if pool.startswith("vlad"):
        hl = netvlad_head(
            rng,
            256,
            k=8,
            vladv2=True,
            pre_l2="preL2" in tokens,
            intra="intra" in tokens,
            alpha=0.02 if "preL2" not in tokens else 8.0,
        )
    else:
        hl = pool_head(rng, 256, pool=pool, pre_l2="preL2" in tokens)
    layers = caffe_weights + hl
    stored = as_class_objects(layers)
    if saveobj is not None:
        for item in stored:
            if isinstance(item, ClassObject):
                item.saveobj = saveobj and item.classname == "layerVLADv2"
    classes = [item.classname for item in stored if isinstance(item, ClassObject)]
    expected = {"max": "layerTotalMaxPool", "avg": "layerTotalAvgPool"}.get(pool, "layerVLADv2")
    assert classes == [expected, "layerWholeL2Normalize"]
    model, info = convert_matconvnet(
        write_mat_objects(tmp_path / "m.mat", {"net": released_net(stored)}, version)
    )
    assert (info.method, info.arch, info.format) == (head, "alexnet", CLASS_FORMAT)
    (img,) = campus_photos([(120, 100)])
    ref = matconvnet_forward(layers, img, VGG_MEAN)
    assert np.abs(descriptor(model, img) - ref).max() <= TOL


def test_the_class_decides_the_kind_not_the_name(tmp_path, caffe_weights):
    """A layerTotalAvgPool named like a max pool is an average pool (the struct layout, which has no
    class, goes by the name)."""
    layers = caffe_weights + pool_head(np.random.default_rng(0), 256, pool="avg")
    stored = as_class_objects(layers)
    stored[-2].properties["name"] = "max:core"
    _, info = convert_matconvnet(write_mat_objects(tmp_path / "m.mat", {"net": released_net(stored)}, "v7"))
    assert info.method == "avg"


# --------------------------------------------------------------------------- errors


def test_unknown_class_names_the_layer_and_class(tmp_path, capsys, caffe_weights):
    rng = np.random.default_rng(5)
    stored = as_class_objects(caffe_weights + netvlad_head(rng, 256, k=4))
    index = len(stored)  # MATLAB's 1-based index of the last layer (postL2)
    stored[-1] = ClassObject("layerSomethingElse", {"type": "custom", "name": "postL2", "precious": False})
    path = write_mat_objects(tmp_path / "odd.mat", {"net": released_net(stored)}, "v7.3")
    message = (
        rf"odd\.mat: net\.layers\{{{index}\}} is a MATLAB object of class 'layerSomethingElse', not one of "
        r"the NetVLAD layer classes \(layerVLAD, layerVLADv2, layerWholeL2Normalize"
    )
    with pytest.raises(ValueError, match=message):
        convert_matconvnet(path)
    assert main(["convert", str(path), "--out", str(tmp_path / "odd.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("netvlad convert: error: ") and f"net.layers{{{index}}}" in err
    assert "layerSomethingElse" in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "odd.pt").exists()


def test_a_dagnn_network_object_is_refused(tmp_path):
    net = ClassObject("dagnn.DagNN", {"layers": [{"name": "conv1", "type": "dagnn.Conv"}], "vars": []}, False)
    path = write_mat_objects(tmp_path / "dag.mat", {"net": net}, "v7")
    with pytest.raises(
        ValueError,
        match=r"dag\.mat: variable 'net' is a MATLAB object of class 'dagnn\.DagNN', not a SimpleNN struct.*"
        r"only SimpleNN",
    ):
        convert_matconvnet(path)


@pytest.mark.parametrize("version", VERSIONS)
def test_without_matio_the_error_says_how_to_read_the_file(tmp_path, monkeypatch, version, caffe_weights):
    layers = caffe_weights + netvlad_head(np.random.default_rng(6), 256, k=4)
    path = write_mat_objects(tmp_path / "m.mat", {"net": released_net(as_class_objects(layers))}, version)
    monkeypatch.setitem(sys.modules, "matio", None)  # `import matio` now raises ImportError
    index = len(caffe_weights) + 2  # after preL2: the layerVLAD
    with pytest.raises(ValueError) as caught:
        convert_matconvnet(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        f"{path}: net.layers{{{index}}} is a MATLAB object of class 'layerVLAD' whose properties cannot be "
        "read: reading MATLAB class objects needs the mat-io package (pip install mat-io; Python >= 3.11); "
        "or convert the classes to structs in MATLAB"
    )


def test_a_matio_failure_falls_back_and_names_the_cause(tmp_path, monkeypatch, caffe_weights):
    """Should mat-io fail on a file, scipy reads the rest and the object layer says why it is empty."""
    import matio

    layers = caffe_weights + netvlad_head(np.random.default_rng(7), 256, k=4)
    path = write_mat_objects(tmp_path / "m.mat", {"net": released_net(as_class_objects(layers))}, "v7")

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported subsystem layout")

    monkeypatch.setattr(matio, "load_from_mat", broken)
    with pytest.raises(
        ValueError,
        match=r"m\.mat: net\.layers\{15\} is a MATLAB object of class 'layerVLAD' whose properties cannot be "
        r"read: mat-io could not decode it \(RuntimeError: unsupported subsystem layout\)",
    ):
        convert_matconvnet(path)
