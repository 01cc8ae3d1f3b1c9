"""MatConvNet .mat → PlaceModel: readers, layouts, errors, and descriptor parity with an independent
NumPy MatConvNet forward pass (tests/convert_reference.py) on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convert_reference import (
    VGG_MEAN,
    caffe_ref_backbone,
    campus_photos,
    descriptor,
    imagenet_vars,
    matconvnet_forward,
    netvlad_head,
    pool_head,
    released_net,
    vgg16_backbone,
    write_v5,
    write_v5_with_object,
    write_v73,
)
from netvlad.cli import main
from netvlad.convert import ConvertConfig, convert_matconvnet, read_mat
from netvlad.models import load_model

TOL = 1e-4
WRITERS = {"v5": write_v5, "v73": write_v73}


@pytest.fixture(scope="module")
def vgg_weights():
    return vgg16_backbone(np.random.default_rng(0))


@pytest.fixture(scope="module")
def photos():
    return campus_photos([(80, 56), (64, 72)])


# --------------------------------------------------------------------------- readers


def test_v5_and_v73_readers_give_the_same_values(tmp_path):
    rng = np.random.default_rng(1)
    value = {
        "layers": [
            {
                "name": "conv1",
                "type": "conv",
                "weights": [
                    rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
                    np.arange(4, dtype=np.float32).reshape(1, 4),
                ],
            },
            {"name": "x", "type": "custom", "flag": True, "empty": np.zeros((0, 0)), "opts": []},
        ],
        "meta": {"averageImage": np.arange(6.0).reshape(1, 2, 3), "id": "abc", "blank": ""},
    }
    a = read_mat(write_v5(tmp_path / "a.mat", {"net": value}))["net"]
    b = read_mat(write_v73(tmp_path / "b.mat", {"net": value}))["net"]
    for got in (a, b):
        w = got["layers"][0]["weights"]
        np.testing.assert_array_equal(w[0], value["layers"][0]["weights"][0])  # MATLAB dims, not reversed
        assert w[1].shape == (1, 4)
        assert got["layers"][0]["name"] == "conv1" and got["layers"][1]["type"] == "custom"
        assert bool(np.asarray(got["layers"][1]["flag"]).ravel()[0]) is True
        assert got["layers"][1]["opts"] == [] and got["layers"][1]["empty"].size == 0
        np.testing.assert_array_equal(got["meta"]["averageImage"], value["meta"]["averageImage"])
        assert got["meta"]["id"] == "abc" and got["meta"]["blank"] == ""
    assert list(a["layers"][0]) == list(b["layers"][0]) == ["name", "type", "weights"]  # field order kept


# --------------------------------------------------------------------------- released models


@pytest.mark.parametrize("fmt", ["v5", "v73"])
def test_released_vgg16_netvlad_white_matches_matlab_reference(tmp_path, fmt, vgg_weights, photos):
    rng = np.random.default_rng(2)
    layers = vgg_weights + netvlad_head(rng, 512, k=64, pca_dim=48)
    path = WRITERS[fmt](
        tmp_path / f"vd16_pitts30k_conv5_3_vlad_preL2_intra_white_{fmt}.mat", {"net": released_net(layers)}
    )
    model, info = convert_matconvnet(path)
    assert (info.arch, info.crop, info.method, info.num_clusters, info.whiten_dim) == (
        "vgg16",
        "conv5_3",
        "vlad_preL2_intra",
        64,
        48,
    )
    assert (
        model.out_dim == 48 and model.preprocess.std == (1.0, 1.0, 1.0) and model.preprocess.max_side is None
    )
    np.testing.assert_allclose(model.preprocess.mean, VGG_MEAN, rtol=1e-6)
    refs = []
    for img in photos:
        ref = matconvnet_forward(layers, img, VGG_MEAN)
        ours = descriptor(model, img)
        assert np.abs(ours - ref).max() <= TOL
        refs.append(ref)
    assert np.abs(refs[0] - refs[1]).max() > 100 * TOL  # the photos give different descriptors
    # Before WPCA: the 32768-D vector in MATLAB's order, index d·K + k (the [1,K,D] column-major vec).
    ref = matconvnet_forward(layers[:-2], photos[0], VGG_MEAN)
    with torch.no_grad():
        x = model.preprocess.apply(photos[0])[None]
        vlad = model.head(model.backbone(x))[0].double().numpy()
    assert vlad.shape == (32768,) and np.abs(vlad - ref).max() <= TOL
    cluster_major = ref.reshape(512, 64).T.ravel()  # the other order really differs
    assert np.abs(vlad - cluster_major).max() > 100 * TOL


@pytest.mark.parametrize("head", ["vladv2_preL2_intra", "vlad", "max_preL2", "avg"])
def test_other_heads_match_reference(tmp_path, head, caffe_weights):
    rng = np.random.default_rng(4)
    tokens = head.split("_")
    pool = tokens[0]
    if pool.startswith("vlad"):
        hl = netvlad_head(
            rng,
            256,
            k=16,
            vladv2=pool == "vladv2",
            pre_l2="preL2" in tokens,
            intra="intra" in tokens,
            alpha=0.02 if "preL2" not in tokens else 8.0,
        )
    else:
        hl = pool_head(rng, 256, pool=pool, pre_l2="preL2" in tokens)
    layers = caffe_weights + hl
    model, info = convert_matconvnet(write_v5(tmp_path / "m.mat", {"net": released_net(layers)}))
    assert info.method == head and info.arch == "alexnet"
    assert info.format == "MatConvNet SimpleNN (NetVLAD model)"  # struct layers (hloc's *_struct.mat)
    (img,) = campus_photos([(120, 100)])
    ref = matconvnet_forward(layers, img, VGG_MEAN)
    assert np.abs(descriptor(model, img) - ref).max() <= TOL


def test_caffenet_released_model_uses_the_mean_images_top_left_pixel(tmp_path):
    rng = np.random.default_rng(5)
    mean_image = (rng.uniform(90, 140, (227, 227, 3))).astype(np.float32)  # a real-looking mean *image*
    layers = caffe_ref_backbone(rng, with_fc=False)[:-2] + netvlad_head(rng, 256, k=64, pca_dim=32)
    path = write_v73(
        tmp_path / "caffe_pitts30k_conv5_vlad_preL2_intra_white.mat",
        {"net": released_net(layers, average=mean_image)},
    )
    model, info = convert_matconvnet(path)
    assert (info.arch, info.crop) == ("alexnet", "conv5")
    np.testing.assert_allclose(model.preprocess.mean, mean_image[0, 0], rtol=1e-6)
    (img,) = campus_photos([(131, 99)])
    ref = matconvnet_forward(layers, img, mean_image[0, 0])
    assert np.abs(descriptor(model, img) - ref).max() <= TOL


# --------------------------------------------------------------------------- ImageNet models


def test_imagenet_vgg16_becomes_a_backbone_for_training(tmp_path, vgg_weights, photos):
    rng = np.random.default_rng(6)
    full = vgg16_backbone(np.random.default_rng(0), swapped=False, crop=None, with_fc=True)
    path = write_v5(tmp_path / "imagenet-vgg-verydeep-16.mat", imagenet_vars(full, [[VGG_MEAN]]))
    model, info = convert_matconvnet(path)  # default: vlad_preL2_intra, uninitialised
    assert not info.released and info.crop == "conv5_3" and not model.initialized and info.notes
    # The conv5_3 map (before relu5_3) equals the reference's; a max head makes it comparable end to end.
    model, _ = convert_matconvnet(path, ConvertConfig(method="max"))
    crop = [layer for layer in full if layer["name"] != "relu5_3"][: len(vgg_weights)]
    ref = matconvnet_forward(crop + pool_head(rng, 512, "max"), photos[0], VGG_MEAN)
    assert np.abs(descriptor(model, photos[0]) - ref).max() <= TOL


@pytest.mark.parametrize("fmt,legacy", [("v73", False), ("v5", True)], ids=["v73-meta", "v5-pre-beta17"])
def test_imagenet_caffe_ref_with_lrn_and_groups(tmp_path, fmt, legacy):
    rng = np.random.default_rng(7)
    full = caffe_ref_backbone(rng, with_fc=True)
    mean_image = rng.uniform(90, 140, (227, 227, 3)).astype(np.float32)
    path = WRITERS[fmt](tmp_path / "imagenet-caffe-ref.mat", imagenet_vars(full, mean_image, legacy=legacy))
    model, info = convert_matconvnet(path, ConvertConfig(method="avg_preL2"))
    assert (info.arch, info.crop) == ("alexnet", "conv5")
    (img,) = campus_photos([(115, 131)])
    conv5 = [layer for layer in full][: [layer["name"] for layer in full].index("conv5") + 1]
    ref = matconvnet_forward(conv5 + pool_head(rng, 256, "avg", pre_l2=True), img, mean_image[0, 0])
    assert np.abs(descriptor(model, img) - ref).max() <= TOL


# --------------------------------------------------------------------------- errors


# Class objects whose properties are not in the file (no MCOS subsystem, e.g. a file assembled by
# another tool): the layer, its class and why are named. Released files with their subsystem are
# converted directly (tests/test_convert_mcos.py).


def test_class_objects_without_their_properties_v5(tmp_path):
    path = write_v5_with_object(tmp_path / "vd16_pitts30k.mat", "layerVLAD")
    with pytest.raises(
        ValueError,
        match=r"vd16_pitts30k\.mat: net\.layers\{2\} is a MATLAB object of class 'layerVLAD' whose "
        r"properties cannot be read: the file has no MCOS subsystem.*struct\(net\.layers\{i\}\)",
    ):
        convert_matconvnet(path)


def test_class_objects_without_their_properties_v73(tmp_path, caffe_weights):
    rng = np.random.default_rng(8)
    layers = caffe_weights + netvlad_head(rng, 256, k=4)
    path = write_v73(
        tmp_path / "m.mat",
        {"net": released_net(layers)},
        objects={("net", "layers", 14): "layerVLAD", ("net", "layers", 16): "layerWholeL2Normalize"},
    )
    with pytest.raises(
        ValueError,
        match=r"m\.mat: net\.layers\{15\} is a MATLAB object of class 'layerVLAD' whose properties cannot "
        r"be read: the file has no MCOS subsystem",
    ):
        convert_matconvnet(path)


def test_not_a_network(tmp_path):
    path = write_v5(
        tmp_path / "pitts30k_train.mat", {"dbStruct": {"whichSet": "train", "utmDb": np.zeros((2, 3))}}
    )
    with pytest.raises(ValueError, match=r"no MatConvNet network.*found variables: dbStruct"):
        convert_matconvnet(path)
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ValueError, match=r"junk\.mat: not a MATLAB \.mat file"):
        convert_matconvnet(junk)


def test_wrong_layer_types_and_missing_weights(tmp_path, vgg_weights):
    layers = [dict(vgg_weights[0]), {"name": "bn1", "type": "bnorm"}]
    with pytest.raises(ValueError, match=r"net\.layers\{2\} \('bn1', type 'bnorm'\): unsupported layer type"):
        convert_matconvnet(write_v5(tmp_path / "a.mat", {"net": released_net(layers)}))
    broken = [dict(layer) for layer in vgg_weights[:4]]
    broken[2]["weights"] = []
    with pytest.raises(ValueError, match=r"net\.layers\{3\} \('conv1_2', type 'conv'\) has no weights"):
        convert_matconvnet(write_v5(tmp_path / "b.mat", {"net": released_net(broken)}))
    odd = [dict(vgg_weights[0], name="layer1")]
    with pytest.raises(
        ValueError, match=r"conv layers \(layer1 3×3×3×64\) do not match any supported network"
    ):
        convert_matconvnet(write_v5(tmp_path / "c.mat", {"net": released_net(odd)}))
    no_post = vgg_weights[:2] + netvlad_head(np.random.default_rng(0), 64, k=4)[:-1]
    with pytest.raises(ValueError, match=r"no postL2"):
        convert_matconvnet(write_v5(tmp_path / "d.mat", {"net": released_net(no_post)}))


def test_geometry_mismatch_is_reported(tmp_path, caffe_weights):
    layers = [dict(layer) for layer in caffe_weights]
    layers[4]["pad"] = np.array([[1.0, 1, 1, 1]])
    layers += netvlad_head(np.random.default_rng(0), 256, k=4)
    with pytest.raises(ValueError, match=r"'conv2'.*pad \(1, 1, 1, 1\).*expected.*pad \(2, 2\)"):
        convert_matconvnet(write_v5(tmp_path / "m.mat", {"net": released_net(layers)}))


# --------------------------------------------------------------------------- CLI


def test_cli_convert_writes_a_loadable_checkpoint(tmp_path, capsys, caffe_weights):
    rng = np.random.default_rng(9)
    layers = caffe_weights + netvlad_head(rng, 256, k=8, pca_dim=16)
    path = write_v73(tmp_path / "m.mat", {"net": released_net(layers)})
    out = tmp_path / "m.pt"
    assert main(["convert", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "alexnet cropped at conv5, head vlad_preL2_intra (K=8), WPCA to 16-D" in printed
    model = load_model(out)
    (img,) = campus_photos([(100, 90)])
    ref = matconvnet_forward(layers, img, VGG_MEAN)
    assert np.abs(descriptor(model, img) - ref).max() <= TOL
    assert main(["convert", str(path), "--out", str(out), "--method", "max"]) == 2
    assert "contradicts" in capsys.readouterr().err
