"""PyTorch checkpoints of the NetVLAD projects → netvlad models: per project, a file in its exact layout
(random weights) converted with `netvlad convert`, and our descriptor compared with an independent
reference forward pass of the project's published semantics (tests/peer_reference.py) on a real photo.
Also: safe loading (numpy numbers yes, code never), archives, and the errors."""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import peer_reference as R
from netvlad.cli import main
from netvlad.convert import ConvertConfig, convert_file
from netvlad.convert.peers import load_torch_file
from netvlad.convert.peers.trunks import resnet_trunk
from netvlad.layers import NetVLAD
from netvlad.models import create_model, load_model, save_model

TOL = 1e-4
K = 64


def _mvtb(*parts) -> Path:
    import mvtbdata

    return Path(mvtbdata.__file__).parent.joinpath("images", *parts)


def _rgb(path: Path, size=None) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    return np.array(img if size is None else img.resize(size, Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def campus():
    """A 640×426 street photo: the 480×640 resize of Patch-NetVLAD / OpenIBL really changes it."""
    return _rgb(sorted(_mvtb("campus").glob("*.png"))[0])


@pytest.fixture(scope="module")
def campus_small():
    """The same photo at 320×213, for pytorch-NetVlad (it extracts at full size: cheaper here)."""
    return _rgb(sorted(_mvtb("campus").glob("*.png"))[0], (320, 213))



@pytest.fixture(scope="module")
def vgg():
    return R.vgg16_features(seed=0)


def _prefixed(prefix: str, state: dict) -> dict:
    return {f"{prefix}{k}": v.clone() for k, v in state.items()}


def _convert(capsys, src: Path, out: Path, *extra: str):
    """`netvlad convert SRC --out OUT`: (loaded model, printed text)."""
    capsys.readouterr()
    assert main(["convert", str(src), "--out", str(out), *extra]) == 0
    return load_model(out), capsys.readouterr().out


def _ours(model, img, capture_head: bool = False):
    """Our descriptor for a uint8 image (the model's own preprocessing), optionally with the head's output."""
    seen = {}
    hook = None
    if capture_head:
        hook = model.head.register_forward_hook(lambda m, i, o: seen.setdefault("head", o))
    with torch.no_grad():
        out = model(model.preprocess.apply(img)[None])[0]
    if hook is not None:
        hook.remove()
        return out, seen["head"][0]
    return out


def _diff(a, b) -> float:
    return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max())


def _well_conditioned(assign: torch.Tensor) -> None:
    # Soft assignments neither uniform nor one-hot: a comparison that can fail.
    top = assign.max(dim=1).values.mean().item()
    assert 0.3 < top < 0.99, top


# --------------------------------------------------------------------------- Patch-NetVLAD


def test_patch_netvlad_wpca_checkpoint(tmp_path, capsys, vgg, campus):
    x = R.patch_netvlad_input(campus)
    with torch.no_grad():
        fmap = vgg(x)
    pool = R.init_netvlad(fmap, K, seed=1)
    w, b = R.random_projection(K * 512, 32, seed=2)
    ref_vlad, assign = R.netvlad_forward(fmap, pool)
    ref = R.conv_projection(ref_vlad, w, b)[0]
    _well_conditioned(assign)
    state = _prefixed("encoder.", vgg.state_dict()) | _prefixed("pool.", pool)
    state |= {"WPCA.0.weight": w.view(32, -1, 1, 1), "WPCA.0.bias": b}  # add_pca.py's nn.Conv2d
    src = tmp_path / "mapillary_WPCA32.pth.tar"
    torch.save({"num_pcs": 32, "state_dict": state}, src)

    model, text = _convert(capsys, src, tmp_path / "patch.pt")
    assert "Patch-NetVLAD checkpoint (WPCA 32): vgg16 cropped at conv5_3, head vlad_preL2_intra (K=64)" \
        in text
    assert "resized to 480×640" in text and "k·D+d" in text
    assert model.preprocess.resize == (480, 640) and model.preprocess.style == "imagenet"
    assert model.out_dim == 32 and model.config.vlad_order == "torch"
    ours, vlad = _ours(model, campus, capture_head=True)
    assert _diff(ours, ref) <= TOL
    # Before WPCA: the 32768-D vector in the project's cluster-major order, not MATLAB's.
    assert _diff(vlad, ref_vlad[0]) <= TOL
    matlab_order = ref_vlad[0].view(K, 512).T.reshape(-1)
    assert _diff(vlad, matlab_order) > 100 * TOL


# --------------------------------------------------------------------------- pytorch-NetVlad


def _nanne_container(state: dict) -> dict:
    """main.py's save_checkpoint dict, numpy numbers included (recalls: np.float64 values)."""
    return {
        "epoch": 7,
        "state_dict": state,
        "recalls": {n: np.float64(r) for n, r in zip((1, 5, 10, 20), (0.5, 0.7, 0.8, 0.9))},
        "best_score": np.float64(0.7),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "momentum": 0.9, "params": [0, 1]}]},
        "parallel": True,
    }


def test_pytorch_netvlad_vladv2_dataparallel_legacy_file_with_numpy_1x_scalars(tmp_path, vgg, campus_small):
    x = R.nanne_input(campus_small)
    with torch.no_grad():
        fmap = vgg(x)
    pool = R.init_netvlad(fmap, K, seed=3, vladv2=True)
    ref, assign = R.netvlad_forward(fmap, pool)
    _well_conditioned(assign)
    # nGPU > 1: model.encoder and model.pool wrapped in DataParallel.
    state = _prefixed("encoder.module.", vgg.state_dict()) | _prefixed("pool.module.", pool)
    src = tmp_path / "checkpoint.pth.tar"
    torch.save(_nanne_container(state), src, _use_new_zipfile_serialization=False)
    # Written as a 2018 install (numpy 1.x) writes it: numpy.core.multiarray, not numpy._core.
    raw = src.read_bytes()
    assert raw.count(b"cnumpy._core.multiarray\n") >= 1
    src.write_bytes(raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))

    model, info = convert_file(src)
    assert info.format == "pytorch-NetVlad checkpoint" and info.method == "vladv2_preL2_intra"
    assert model.preprocess.resize is None and model.preprocess.max_side is None
    assert any("module." in n for n in info.notes)
    assert _diff(_ours(model, campus_small), ref[0]) <= TOL


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_pytorch_netvlad_max_avg_pooling_needs_the_method(tmp_path, capsys, vgg, campus_small, pooling):
    src = tmp_path / "model_best.pth.tar"
    torch.save(_nanne_container(_prefixed("encoder.", vgg.state_dict())), src)  # pooling has no weights
    assert main(["convert", str(src), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert str(src) in err and "pass --method max or --method avg" in err
    assert not (tmp_path / "m.pt").exists()

    model, text = _convert(capsys, src, tmp_path / "m.pt", "--method", pooling)
    assert f"head {pooling}" in text and "cannot tell" in text
    with torch.no_grad():
        fmap = vgg(R.nanne_input(campus_small))
    pool = torch.nn.AdaptiveMaxPool2d(1) if pooling == "max" else torch.nn.AdaptiveAvgPool2d(1)
    ref = F.normalize(pool(fmap).view(1, -1), p=2, dim=1)[0]  # pool, Flatten, L2Norm
    assert model.out_dim == 512
    assert _diff(_ours(model, campus_small), ref) <= TOL


# --------------------------------------------------------------------------- VG benchmark


@pytest.fixture(scope="module")
def resnet18_case(campus):
    trunk = R.resnet_trunk((2, 2, 2), bottleneck=False, seed=4)  # resnet18conv4: children[:-3]
    with torch.no_grad():
        fmap = trunk(R.benchmark_input(campus))
    pool = R.init_netvlad(fmap, K, seed=5)
    ref_vlad, assign = R.netvlad_forward(fmap, pool)
    _well_conditioned(assign)
    return trunk, pool, ref_vlad


# The photo is 640×426: the benchmark's resize of the normalised float tensor to 480×640 really
# changes it (a resize of the 8-bit image would differ by ~1e-3).
@pytest.mark.parametrize("layout", ["bare state dict, module.", "training checkpoint with fc"])
def test_vg_benchmark_resnet18(tmp_path, capsys, resnet18_case, campus, layout):
    trunk, pool, ref_vlad = resnet18_case
    state = _prefixed("backbone.", trunk.state_dict())
    src = tmp_path / "best_model.pth"
    if layout.startswith("bare"):
        state |= _prefixed("aggregation.", pool)
        torch.save({f"module.{k}": v for k, v in state.items()}, src)  # as resume_model accepts
        ref, out_dim = ref_vlad[0], K * 256
    else:
        w, b = R.random_projection(K * 256, 48, seed=6)  # --fc_output_dim 48: Linear then L2Norm
        state |= _prefixed("aggregation.0.", pool) | {"aggregation.1.weight": w, "aggregation.1.bias": b}
        torch.save({"epoch_num": 3, "model_state_dict": state, "optimizer_state_dict": {"state": {}},
                    "recalls": np.array([70.1, 85.2, 90.3]), "best_r5": np.float64(85.2),
                    "not_improved_num": 0}, src)
        ref, out_dim = F.normalize(ref_vlad @ w.T + b, p=2, dim=1)[0], 48
    model, text = _convert(capsys, src, tmp_path / "vg.pt")
    assert "deep-visual-geo-localization-benchmark" in text and "resnet18 cropped at layer3" in text
    assert model.out_dim == out_dim and model.preprocess.resize == (480, 640)
    assert model.preprocess.resize_stage == "tensor"
    assert _diff(_ours(model, campus), ref) <= TOL


def test_vg_benchmark_resnet101(tmp_path, campus):
    # ResNet-101 (their model zoo), cropped at layer3 (resnet101conv4). Compared on a small
    # preprocessed input: the 480×640 pipeline is covered by the ResNet-18 test.
    trunk = R.resnet_trunk((3, 4, 23), bottleneck=True, seed=7)
    x = R.nanne_input(_rgb(sorted(_mvtb("campus").glob("*.png"))[1], (128, 96)))
    with torch.no_grad():
        fmap = trunk(x)
    pool = R.init_netvlad(fmap, 16, seed=8)
    ref, assign = R.netvlad_forward(fmap, pool)
    _well_conditioned(assign)
    src = tmp_path / "resnet101conv4.pth"
    torch.save(_prefixed("backbone.", trunk.state_dict()) | _prefixed("aggregation.", pool), src)
    model, info = convert_file(src)
    assert (info.arch, info.crop, info.num_clusters) == ("resnet101", "layer3", 16)
    with torch.no_grad():
        assert _diff(model(x)[0], ref[0]) <= TOL


def test_resnet_depth_and_crop_from_the_keys():
    def keys(bottleneck, blocks):
        names = ["0.weight", "1.weight", "1.running_mean"]
        for i, n in enumerate(blocks):
            for j in range(n):
                names += [f"{4 + i}.{j}.conv1.weight"] + ([f"{4 + i}.{j}.conv3.weight"] if bottleneck else [])
        return {f"backbone.{n}": torch.empty(0) for n in names}

    assert resnet_trunk(keys(True, (3, 4, 6, 3)), "backbone.", "f")[:2] == ("resnet50", "layer4")
    assert resnet_trunk(keys(False, (2, 2, 2)), "backbone.", "f")[:2] == ("resnet18", "layer3")
    with pytest.raises(ValueError, match="f: the trunk is ResNet-34; supported: ResNet-18, ResNet-50, Re"):
        resnet_trunk(keys(False, (3, 4, 6)), "backbone.", "f")


# --------------------------------------------------------------------------- OpenIBL


@pytest.fixture(scope="module")
def openibl_case(vgg, campus):
    with torch.no_grad():
        fmap = vgg(R.openibl_input(campus))
    pool = R.init_netvlad(fmap, K, seed=9)
    ref_vlad, assign = R.netvlad_forward(fmap, pool)  # EmbedNet: the layer, then intra-norm, flatten, L2
    _well_conditioned(assign)
    return pool, ref_vlad


def test_openibl_hub_model(tmp_path, capsys, vgg, campus, openibl_case):
    pool, ref_vlad = openibl_case
    w, b = R.random_projection(K * 512, 40, seed=10)
    state = _prefixed("base_model.base.", vgg.state_dict()) | _prefixed("net_vlad.", pool)
    state |= {"pca_layer.weight": w.view(40, -1, 1, 1), "pca_layer.bias": b}  # EmbedNetPCA
    src = tmp_path / "vgg16_netvlad.pth"
    torch.save(state, src)
    model, text = _convert(capsys, src, tmp_path / "ibl.pt")
    assert "OpenIBL model with PCA (40-D, EmbedNetPCA)" in text and "matconvnet" in text
    np.testing.assert_allclose(model.preprocess.mean, (123.68, 116.779, 103.939), rtol=1e-9)
    assert model.preprocess.resize == (480, 640) and model.preprocess.std == (1.0, 1.0, 1.0)
    ref = R.conv_projection(ref_vlad, w, b)[0]  # then extract_cnn_feature's F.normalize: no-op
    assert _diff(_ours(model, campus), ref) <= TOL


def test_openibl_training_checkpoint_with_its_pca_file(tmp_path, capsys, vgg, campus, openibl_case):
    pool, ref_vlad = openibl_case
    run = tmp_path / "run"
    run.mkdir()
    # Saved from the DistributedDataParallel model: every key under module.
    state = _prefixed("module.base_model.base.", vgg.state_dict()) | _prefixed("module.net_vlad.", pool)
    src = run / "model_best.pth.tar"
    torch.save({"state_dict": state, "epoch": 4, "best_recall5": np.float64(0.91)}, src)
    R.write_openibl_pca(run / "pca_params_model_best.h5", K * 512, 24, seed=11)

    model, text = _convert(capsys, src, tmp_path / "ibl.pt")
    assert "OpenIBL training checkpoint" in text and "pca_params_model_best.h5" in text
    ref = R.openibl_pca_infer(run / "pca_params_model_best.h5", ref_vlad, 24)[0]
    assert model.out_dim == 24 and _diff(_ours(model, campus), ref) <= TOL
    first, want = model, model.fingerprint()

    # The same file given with --pca under another name, from elsewhere.
    other = tmp_path / "pca.h5"
    shutil.move(run / "pca_params_model_best.h5", other)
    assert convert_file(src, pca=other)[0].fingerprint() == want
    # No PCA file: the NetVLAD vector, and a note saying how to get the whitened one.
    bare, info = convert_file(src)
    assert bare.out_dim == K * 512 and bare.whitening is None
    assert any(n.startswith("no PCA file (pca_params_model_best.h5)") and "--pca FILE" in n
               for n in info.notes)

    # A Google-Drive zip of the run folder: model_best.pth.tar (and its PCA file) picked.
    shutil.copy(src, run / "checkpoint3.pth.tar")
    shutil.copy(other, run / "pca_params_model_best.h5")
    archive = tmp_path / "run.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for f in sorted(run.iterdir()):
            z.write(f, f"run/{f.name}")
    model, info = convert_file(archive)
    assert model.fingerprint() == want and "converted run/model_best.pth.tar" in info.notes[0]
    assert info.source == f"{archive}:run/model_best.pth.tar"
    # A tar holding a single checkpoint (and its PCA file under OpenIBL's name for it).
    archive = tmp_path / "run.tar"
    with tarfile.open(archive, "w") as t:
        t.add(run / "checkpoint3.pth.tar", "x/checkpoint3.pth.tar")
        t.add(other, "x/pca_params_checkpoint3.h5")
    model, info = convert_file(archive)
    assert "the archive's only checkpoint" in info.notes[0]
    assert model.config.pretrained == "checkpoint3.pth.tar"
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- normalisation


def test_a_cluster_nothing_goes_to_is_normalised_as_f_normalize_does():
    # The projects' intra-norm divides by max(‖v‖, 1e-12): a cluster with a residual norm of ~1e-6
    # still gets a unit block. MATLAB's sqrt(‖v‖² + 1e-12) would shrink it (kept for order="matlab").
    d, k = 8, 3
    g = torch.Generator().manual_seed(0)
    c = F.normalize(torch.randn(k, d, generator=g), dim=1)
    x = (c[:2].T @ torch.rand(2, 12, generator=g)).view(1, d, 3, 4)  # descriptors near clusters 0, 1
    params = {"centroids": c, "conv.weight": 50 * c[:, :, None, None]}
    ref, assign = R.netvlad_forward(x, params)
    residual_norm = ((F.normalize(x, dim=1).flatten(2) - c[2].view(1, d, 1)) * assign[:, 2:3]).sum(-1).norm()
    assert 1e-7 < residual_norm < 1e-5
    layers = {}
    for order in ("torch", "matlab"):
        layer = NetVLAD(d, k, pre_l2=True, order=order)
        with torch.no_grad():
            layer.centroids.copy_(c)
            layer.assignment.weight.copy_(params["conv.weight"])
            layer.initialized.fill_(True)
            layers[order] = layer(x)[0]
    assert _diff(layers["torch"], ref[0]) < 1e-6
    matlab_as_torch = layers["matlab"].view(d, k).T.reshape(-1)
    assert _diff(matlab_as_torch, ref[0]) > 1e-3


# --------------------------------------------------------------------------- safe loading


class _RunsCode:
    """Unpickling this calls os.system: a checkpoint must never be loaded that way."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_in_a_checkpoint_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "pwned"
    src = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": {"encoder.0.weight": torch.zeros(1)}, "hook": _RunsCode(marker)}, src)
    assert main(["convert", str(src), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert f"{src}: refused: loading it would need {os.system.__module__}.system" in err
    assert "nothing in the file was executed" in err
    assert not marker.exists() and not (tmp_path / "m.pt").exists()


def test_numpy_numbers_and_arrays_load(tmp_path):
    obj = {"best": np.float64(0.5), "n": np.int64(3), "f": np.float32(2.5), "arr": np.arange(3.0)}
    for zip_format in (True, False):
        path = tmp_path / f"x{zip_format}.pth"
        torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
        got = load_torch_file(path)
        assert got["best"] == 0.5 and got["n"] == 3 and got["f"] == 2.5
        np.testing.assert_array_equal(got["arr"], obj["arr"])


# --------------------------------------------------------------------------- errors


def _fake_vgg_keys(prefix: str) -> dict:
    """VGG-16 key names with empty tensors: enough for the checks that run before any weight is used."""
    convs = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    return {f"{prefix}{i}.{p}": torch.zeros(1) for i in convs for p in ("weight", "bias")}


def _cli_error(capsys, tmp_path, src: Path, *extra: str) -> str:
    capsys.readouterr()
    assert main(["convert", str(src), "--out", str(tmp_path / "out.pt"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("netvlad convert: error: ") and err.count("\n") == 1
    return err


def test_errors_name_the_file_and_the_problem(tmp_path, capsys):
    src = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "conv.weight": torch.zeros(1)}, src)
    err = _cli_error(capsys, tmp_path, src)
    assert f"{src}: a PyTorch checkpoint of no supported NetVLAD project; its keys start fc.weight, " \
        "conv.weight" in err
    for project in ("Patch-NetVLAD", "pytorch-NetVlad", "deep-visual-geo-localization-benchmark", "OpenIBL"):
        assert project in err

    torch.save({"state_dict": {"a": torch.zeros(1000)}}, src, _use_new_zipfile_serialization=False)
    src.write_bytes(src.read_bytes()[:300])  # a download cut short
    assert f"{src}: not a readable PyTorch checkpoint (" in _cli_error(capsys, tmp_path, src)

    torch.save({"weights": {"a": torch.zeros(1)}}, src)
    err = _cli_error(capsys, tmp_path, src)
    assert "no state dict (name -> tensor) found; top-level keys: weights" in err

    ours = tmp_path / "ours.pt"
    save_model(create_model("resnet18-netvlad"), ours)
    assert f"{ours}: already a netvlad checkpoint" in _cli_error(capsys, tmp_path, ours)

    alex = {"encoder.0.weight": torch.zeros(64, 3, 11, 11), "encoder.0.bias": torch.zeros(64)}
    torch.save({"state_dict": alex}, src)
    assert "torchvision's AlexNet" in _cli_error(capsys, tmp_path, src)

    nanne = _fake_vgg_keys("encoder.") | {"pool.centroids": torch.zeros(1), "pool.conv.weight": torch.ones(1)}
    torch.save({"state_dict": nanne, "epoch": 1}, src)
    err = _cli_error(capsys, tmp_path, src, "--pca", str(src.with_suffix(".h5")))
    assert "a pytorch-NetVlad model; --pca applies to OpenIBL training checkpoints only" in err
    err = _cli_error(capsys, tmp_path, src, "--method", "vladv2_preL2_intra")
    assert "the file's head is vlad_preL2_intra; --method vladv2_preL2_intra contradicts it" in err
    assert "is also an input (FILE" in _cli_error(capsys, tmp_path, src, "--out", str(src))

    gem = _fake_vgg_keys("backbone.") | {"aggregation.1.p": torch.ones(1)}
    torch.save(gem, src)
    err = _cli_error(capsys, tmp_path, src)
    assert "aggregation is not NetVLAD (keys aggregation.1.p); only NetVLAD" in err


def test_archives_without_a_single_checkpoint(tmp_path, capsys):
    archive = tmp_path / "run.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("run/flags.json", "{}")
    assert f"{archive}: an archive holding no checkpoint" in _cli_error(capsys, tmp_path, archive)
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("run/checkpoint1.pth.tar", b"x")
        z.writestr("run/checkpoint2.pth.tar", b"x")
    err = _cli_error(capsys, tmp_path, archive)
    assert "several checkpoints in the archive and none named model_best.pth.tar or best_model.pth" in err
    assert "run/checkpoint1.pth.tar, run/checkpoint2.pth.tar" in err
    old = tmp_path / "ancient.pth"  # torch.save's first format: a tar of sys_info, pickle, storages, tensors
    with tarfile.open(old, "w") as t:
        for name in ("sys_info", "pickle", "storages", "tensors"):
            (tmp_path / name).write_bytes(b"\x80\x02N.")
            t.add(tmp_path / name, name)
    assert "PyTorch's oldest (tar) format, which cannot be loaded without running code" in _cli_error(
        capsys, tmp_path, old
    )
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['whiten'\]"):
        convert_file(archive, ConvertConfig(), whiten=True)
