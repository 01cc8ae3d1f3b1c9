"""netvlad.models: presets, preprocessing, checkpoints, cluster initialisation, and the models CLI."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from netvlad.cli import main
from netvlad.layers import MaxPool, NetVLAD, UninitializedError
from netvlad.models import (
    IMAGENET,
    MATCONVNET,
    PRESETS,
    ModelConfig,
    PlaceModel,
    Preprocess,
    create_model,
    init_clusters,
    list_presets,
    load_model,
    save_model,
)

H, W = 64, 80


def _img(seed=0, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _ready(model: PlaceModel, seed=0) -> PlaceModel:
    """Initialise a NetVLAD head from random unit descriptors (cheap stand-in for init_clusters)."""
    if isinstance(model.head, NetVLAD):
        g = torch.Generator().manual_seed(seed)
        d = torch.randn(4 * model.config.num_clusters, model.local_dim, generator=g)
        model.head.init_from_descriptors(d / d.norm(dim=1, keepdim=True), niter=5, backend="torch")
    return model


def _small(method="vlad_preL2_intra", k=8) -> PlaceModel:
    return create_model(ModelConfig("alexnet", "conv5", method, k, None, MATCONVNET), seed=1)


# --- preprocessing ------------------------------------------------------------------------------
def test_preprocess_matconvnet_and_imagenet():
    img = np.zeros((2, 3, 3), np.uint8)
    img[0, 0] = (255, 128, 0)
    t = MATCONVNET.apply(img)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    np.testing.assert_allclose(t[:, 0, 0].numpy(), [255 - 123.68, 128 - 116.779, 0 - 103.939], rtol=1e-6)
    np.testing.assert_allclose(t[:, 1, 1].numpy(), [-123.68, -116.779, -103.939], rtol=1e-6)
    u = IMAGENET.apply(img)
    want = (np.array([1.0, 128 / 255, 0.0]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(u[:, 0, 0].numpy(), want, rtol=1e-5)
    # grey H×W is replicated to RGB
    g = MATCONVNET.apply(np.full((4, 5), 10, np.uint8))
    assert g.shape == (3, 4, 5)


def test_preprocess_resize_and_errors():
    pre = Preprocess(max_side=40)
    assert pre.apply(_img()).shape == (3, 32, 40)  # 64×80 → longer side 40, aspect kept
    assert Preprocess(max_side=100).apply(_img()).shape == (3, H, W)  # never upscales
    assert Preprocess.from_dict(pre.to_dict()) == pre
    with pytest.raises(ValueError, match="uint8"):  # float on 0–255 is taken (MATLAB's single images)
        MATCONVNET.apply(np.zeros((4, 4, 3), np.int16))
    with pytest.raises(ValueError, match=r"H×W×3 RGB image, got shape \(4, 4, 4\)"):
        MATCONVNET.apply(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="unknown preprocessing style"):
        Preprocess(style="caffe")


def test_preprocess_fixed_resize_is_pil_bilinear():
    # torchvision's Resize((H, W)) on a PIL image is PIL's bilinear resize to (W, H), aspect ignored.
    pre = Preprocess("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1.0, resize=(24, 50))
    img = _img()
    want = np.asarray(Image.fromarray(img).resize((50, 24), Image.Resampling.BILINEAR), np.float32) / 255.0
    want = (want - np.array(pre.mean, np.float32)) / np.array(pre.std, np.float32)
    np.testing.assert_allclose(pre.apply(img).permute(1, 2, 0).numpy(), want, rtol=0, atol=1e-5)
    assert pre.output_size(1000, 3) == (24, 50)
    assert Preprocess.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    assert "resize" not in Preprocess().to_dict()  # unset fields stay out: old fingerprints hold
    # the VG benchmark's order: normalise, then resize the float tensor (bilinear, no antialias)
    late = Preprocess("imagenet", pre.mean, pre.std, 1.0, resize=(24, 50), resize_stage="tensor")
    full = Preprocess("imagenet", pre.mean, pre.std, 1.0).apply(img)
    want = torch.nn.functional.interpolate(full[None], size=(24, 50), mode="bilinear", align_corners=False)
    torch.testing.assert_close(late.apply(img), want[0], rtol=0, atol=0)
    assert Preprocess.from_dict(json.loads(json.dumps(late.to_dict()))) == late
    assert "resize_stage" not in pre.to_dict()
    with pytest.raises(ValueError, match="resize_stage"):
        Preprocess(resize=(4, 4), resize_stage="late")
    with pytest.raises(ValueError, match="max_side or resize, not both"):
        Preprocess(max_side=10, resize=(4, 4))
    with pytest.raises(ValueError, match=r"resize must be \(H, W\)"):
        Preprocess(resize=(0, 4))


def test_config_round_trip_and_errors():
    cfg = PRESETS["vgg16-netvlad"].replace(whiten_dim=128)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert ModelConfig(method="intra_vlad_preL2").method == "vlad_preL2_intra"
    torch_order = cfg.replace(vlad_order="torch")
    assert ModelConfig.from_dict(json.loads(json.dumps(torch_order.to_dict()))) == torch_order
    assert "vlad_order" not in cfg.to_dict()  # the default stays out: older fingerprints hold
    with pytest.raises(ValueError, match="unknown vlad_order"):
        cfg.replace(vlad_order="cm")
    with pytest.raises(ValueError, match="unsupported token"):
        ModelConfig(method="vlad_bogus")
    with pytest.raises(ValueError, match="unknown model preset 'nope'; choose from vgg16-netvlad"):
        create_model("nope")


def test_preset_table():
    names = list_presets()
    for want in ("vgg16-netvlad", "vgg19-netvlad", "alexnet-netvlad", "vgg16-max", "vgg16-avg",
                 "resnet18-netvlad", "resnet50-netvlad", "lite0-netvlad", "lite0-max"):
        assert want in names
    assert PRESETS["vgg16-netvlad"].preprocess == MATCONVNET
    assert PRESETS["resnet18-netvlad"].preprocess == IMAGENET
    assert PRESETS["lite0-netvlad"].pretrained == "imagenet"


# --- every preset -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_and_gives_finite_out_dim(name):
    model = create_model(name)  # random backbones; lite0 with its real installed ImageNet weights
    cfg = PRESETS[name]
    assert model.config.pretrained == cfg.pretrained
    expect = model.local_dim * cfg.num_clusters if "vlad" in cfg.method else model.local_dim
    assert model.out_dim == expect
    _ready(model)
    x = model.preprocess.apply(_img()).unsqueeze(0)
    with torch.inference_mode():
        y = model(torch.cat([x, x.flip(3)]))
    assert y.shape == (2, model.out_dim)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.norm(dim=1), torch.ones(2))
    assert model.config.crop  # the concrete crop layer is recorded


def test_lite0_preset_uses_real_weights():
    a, b = create_model("lite0-max", seed=0), create_model("lite0-max", seed=1)
    # the backbone comes from the installed file, not the seed
    for (k, va), vb in zip(a.backbone.state_dict().items(), b.backbone.state_dict().values()):
        assert torch.equal(va, vb), k
    r = create_model("lite0-max", weights="random", seed=0)
    assert r.config.pretrained is None
    assert not torch.equal(next(iter(r.backbone.parameters())), next(iter(a.backbone.parameters())))


def test_create_model_seeded_and_leaves_global_rng():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = _small(), _small()
    assert torch.equal(torch.get_rng_state(), state)
    assert a.fingerprint() == b.fingerprint()
    c = create_model(ModelConfig("alexnet", "conv5", "vlad_preL2_intra", 8, None, MATCONVNET), seed=2)
    assert c.fingerprint() != a.fingerprint()


def test_uninitialised_model_refuses_forward():
    model = _small()
    assert not model.initialized
    x = model.preprocess.apply(_img()).unsqueeze(0)
    msg = r"alexnet/vlad_preL2_intra: .*never initialised.*netvlad init"
    with pytest.raises(UninitializedError, match=msg):
        model(x)
    assert _small("max").initialized  # pooling heads need no initialisation


def test_channels_last_input_and_local_features():
    model = _ready(_small())
    x = torch.stack([model.preprocess.apply(_img(i)) for i in range(2)])
    with torch.inference_mode():
        y = model(x)
        y_cl = model(x.contiguous(memory_format=torch.channels_last))
        f = model.local_features(x)
    torch.testing.assert_close(y_cl, y, atol=1e-5, rtol=0)
    assert f.shape[:2] == (2, model.local_dim)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(f.shape[0], *f.shape[2:]), atol=1e-5, rtol=0)


def test_head_matches_layer_on_backbone_output():
    model = _ready(_small())
    x = model.preprocess.apply(_img()).unsqueeze(0)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), model.head(model.backbone(x)))


# --- whitening ----------------------------------------------------------------------------------
def test_set_whitening():
    model = _ready(_small(k=4))
    n = model.out_dim
    g = torch.Generator().manual_seed(0)
    wmat, bias = torch.randn(16, n, generator=g), torch.randn(16, generator=g)
    x = model.preprocess.apply(_img()).unsqueeze(0)
    with torch.inference_mode():
        before = model(x)
    model.set_whitening(wmat, bias)
    assert model.out_dim == 16 and model.config.whiten_dim == 16
    with torch.inference_mode():
        y = model(x)
    want = before @ wmat.T + bias
    torch.testing.assert_close(y, want / want.norm(dim=1, keepdim=True), rtol=1e-4, atol=1e-5)
    assert model.layer_names()[-2:] == ["WPCA", "finalL2"]
    with pytest.raises(ValueError, match=rf"weight dim_out×{n}"):
        model.set_whitening(torch.zeros(4, n + 1), torch.zeros(4))


# --- checkpoints --------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_round_trip(tmp_path, suffix):
    model = _ready(_small(k=4))
    model.set_whitening(torch.randn(8, model.out_dim), torch.randn(8))
    path = save_model(model, tmp_path / f"sub/m{suffix}", extra={"epoch": 3, "note": "x"})
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    loaded = load_model(path)
    assert loaded.config == model.config and not loaded.training
    assert loaded.fingerprint() == model.fingerprint()
    x = torch.stack([model.preprocess.apply(_img(i)) for i in range(2)])
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
    from netvlad.models import load_checkpoint

    assert load_checkpoint(path)[2] == {"epoch": 3, "note": "x"}


def test_fingerprint_sensitive_to_weights():
    model = _ready(_small(k=4))
    fp = model.fingerprint()
    with torch.no_grad():
        model.head.centroids[0, 0] += 1e-3
    assert model.fingerprint() != fp


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_MARKER",))


def test_load_never_executes_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"format": "netvlad-checkpoint", "version": 1, "config": {}, "x": _Evil()}, f, protocol=2)
    with pytest.raises(ValueError, match="evil.pt: refused to load.*could run code"):
        load_model(bad)
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint, and not a preset"):
        load_model(tmp_path / "missing.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="bare.pt: not a netvlad checkpoint"):
        load_model(tmp_path / "bare.pt")
    model = _small(k=4)
    save_model(model, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "new.pt")
    with pytest.raises(ValueError, match="version 99 is newer"):
        load_model(tmp_path / "new.pt")
    payload["version"] = 1
    payload["config"]["num_clusters"] = 5
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="mismatch.pt: weights do not match the config"):
        load_model(tmp_path / "mismatch.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_model(tmp_path / "junk.pt")


def test_uninitialised_state_survives_checkpoint(tmp_path):
    model = _small(k=4)
    loaded = load_model(save_model(model, tmp_path / "u.pt"))
    assert not loaded.initialized
    with pytest.raises(UninitializedError):
        loaded(loaded.preprocess.apply(_img()).unsqueeze(0))


# --- cluster initialisation ---------------------------------------------------------------------
class _Images:
    """A lazy image sequence that records which indices were read."""

    def __init__(self, n):
        self.n, self.read = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.read.append(i)
        return _img(i)


def test_init_clusters_random_subset_and_counts():
    model = _small(k=8)
    imgs = _Images(30)
    res = init_clusters(model, imgs, per_image=7, max_images=10, seed=43, progress=False)
    assert model.initialized
    assert len(imgs.read) == 10 and imgs.read == sorted(imgs.read)
    assert imgs.read != list(range(10))  # a random subset, not the first 10 (the original's bug)
    per = min(7, model.local_features(model.preprocess.apply(_img()).unsqueeze(0))[0, 0].numel())
    assert res.num_images == 10 and res.num_descriptors == 10 * per and res.alpha > 0
    # same seed, same subset and same clusters
    model2, imgs2 = _small(k=8), _Images(30)
    init_clusters(model2, imgs2, per_image=7, max_images=10, seed=43, progress=False, kmeans_backend="torch")
    assert imgs2.read == imgs.read
    # same descriptors and the same k-means++ start; faiss and torch Lloyd then agree closely
    torch.testing.assert_close(model2.head.centroids, model.head.centroids, atol=1e-4, rtol=0)
    # the centres live where the preL2 descriptors live: on/inside the unit ball
    assert (model.head.centroids.norm(dim=1) <= 1 + 1e-5).all()


def test_init_clusters_iterator_loader_and_errors():
    model = _small(k=4)
    seen = []

    def loader(i):
        seen.append(i)
        return _img(i)

    res = init_clusters(model, iter(range(100)), per_image=5, max_images=3, progress=False, loader=loader,
                        kmeans_backend="torch")
    assert seen == [0, 1, 2] and res.num_descriptors == 3 * 5
    with pytest.raises(ValueError, match="method max has no clusters"):
        init_clusters(_small("max"), [_img()], progress=False)
    with pytest.raises(ValueError, match="at least K=4 descriptors"):
        init_clusters(_small(k=4), [_img()], per_image=2, progress=False)
    assert isinstance(_small("max").head, MaxPool)


# --- CLI ----------------------------------------------------------------------------------------
def test_cli_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert name in out
    assert "32768" in out and "matconvnet" in out
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["out_dim"] for r in rows}["alexnet-netvlad"] == 256 * 64


def test_cli_describe_preset(capsys):
    assert main(["describe", "alexnet-netvlad"]) == 0
    out = capsys.readouterr().out
    assert "output dim:    16384" in out
    assert "NO: run `netvlad init alexnet-netvlad" in out
    assert "conv1 " in out and "preL2 vlad:core vlad:intranorm postL2" in out
    assert "matconvnet: RGB 0-255 minus mean (123.68, 116.779, 103.939)" in out
    assert main(["describe", "nope"]) == 2
    assert "no such checkpoint, and not a preset" in capsys.readouterr().err


def test_cli_init_and_describe_checkpoint(tmp_path, capsys):
    imgs = tmp_path / "imgs" / "nested"
    imgs.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(_img(i, 160, 200)).save(imgs / f"{i:02d}.png")
    (imgs / "notes.txt").write_text("not an image")
    out = tmp_path / "ckpt" / "off.pt"
    rc = main(["init", "alexnet-netvlad", "--images", str(tmp_path / "imgs"), "--out", str(out),
               "--per-image", "20", "--max-images", "5", "--quiet", "--max-side", "180"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "random backbone" in cap.err
    assert "from 100 descriptors of 5 of 6 images" in cap.out
    model = load_model(out)
    assert model.initialized and model.preprocess.max_side == 180
    x = model.preprocess.apply(_img()).unsqueeze(0)
    with torch.inference_mode():
        assert torch.isfinite(model(x)).all()
    assert main(["describe", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["initialized"] is True and info["fingerprint"] == model.fingerprint()
    assert info["out_dim"] == 16384


def test_cli_init_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["init", "alexnet-netvlad", "--images", str(tmp_path / "empty"), "--out",
                 str(tmp_path / "x.pt")]) == 2
    assert "no images found" in capsys.readouterr().err
    assert main(["init", "vgg16-max", "--images", str(tmp_path), "--out", str(tmp_path / "x.pt")]) == 2
    assert "has no clusters" in capsys.readouterr().err
    assert main(["init", "alexnet-netvlad", "--out", str(tmp_path / "x.pt")]) == 2
    assert "give --images DIR or --dataset SPEC" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_cli_init_from_dataset_database(tmp_path, capsys):
    # database images only: the query image is not a database image and must not be read
    (tmp_path / "im").mkdir()
    rows = ["split,path,easting,northing"]
    for i in range(4):
        Image.fromarray(_img(i, 160, 200)).save(tmp_path / "im" / f"db{i}.png")
        rows.append(f"db,im/db{i}.png,{10.0 * i},0")
    rows.append("query,im/missing_query.png,0,1")
    (tmp_path / "ds.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "off.safetensors"
    rc = main(["init", "alexnet-netvlad", "--dataset", str(tmp_path / "ds.csv"), "--out", str(out),
               "--per-image", "30", "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "of 4 of the 4 database images" in cap.out
    assert load_model(out).initialized


def test_preprocess_accepts_read_only_arrays_without_warning():
    import warnings

    from netvlad.models import Preprocess

    img = np.asarray(Image.fromarray(np.full((8, 10, 3), 200, np.uint8)))
    assert not img.flags.writeable
    pre = Preprocess(style="matconvnet", mean=(123.68, 116.779, 103.939), std=(1.0, 1.0, 1.0), scale=255.0,
                     max_side=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = pre.apply(img)
    assert t.shape == (3, 8, 10)
    assert torch.allclose(t[0], torch.full((8, 10), 200 - 123.68))


def test_load_model_takes_weights_for_presets_only(tmp_path):
    ckpt = tmp_path / "m.pt"
    save_model(create_model("lite0-max", weights="random"), ckpt)
    with pytest.raises(ValueError, match=r"m\.pt: --weights applies to presets only"):
        load_model(ckpt, weights="imagenet")
    assert load_model("lite0-max", weights="random").config.pretrained is None


def test_preprocess_takes_float_images_on_0_255_as_matlab():
    from netvlad.models.config import IMAGENET, MATCONVNET

    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for pre in (MATCONVNET, IMAGENET):
        torch.testing.assert_close(pre.apply(img.astype(np.float32)), pre.apply(img), rtol=0, atol=0)
    frac = np.full((2, 3, 3), 100.25, np.float64)  # not rounded, as MATLAB's single images
    want = torch.tensor([100.25 - m for m in MATCONVNET.mean]).view(3, 1, 1).expand(3, 2, 3)
    torch.testing.assert_close(MATCONVNET.apply(frac), want)
    small = dataclasses.replace(MATCONVNET, max_side=4)  # resized as the uint8 image is, up to its rounding
    got, ref = small.apply(img.astype(np.float32)), small.apply(img)
    assert got.shape == ref.shape == (3, 3, 4) and (got - ref).abs().max() <= 1.0
    with pytest.raises(ValueError, match=r"\[0, 255\] \(not 0–1\), got \[-1, 3\]"):
        MATCONVNET.apply(np.array([[[-1.0, 3.0, 0.0]]]))
    with pytest.raises(ValueError, match="NaN or inf"):
        MATCONVNET.apply(np.full((1, 1, 3), np.nan))
    with pytest.raises(ValueError, match="got int32"):
        MATCONVNET.apply(np.zeros((1, 1, 3), np.int32))
