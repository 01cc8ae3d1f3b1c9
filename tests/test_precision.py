"""Extraction precisions (bf16, int8) and torch.compile: outputs match fp32 within stated tolerances."""

from __future__ import annotations

import copy

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from netvlad import extract
from netvlad.cli import main
from netvlad.extract import precision
from netvlad.models import PRESETS, create_model, init_clusters, save_model

# Tolerances on the cosine between a descriptor and its fp32 twin (both L2-normalised), for this
# tiny random VGG trunk (conv1_1..conv2_1, K=4, 32×40 images). bf16 keeps 8 mantissa bits, int8
# per-tensor activations 7 bits (x86's reduce_range, on CPUs without VNNI) or 8: measured minima
# 0.99993 and 0.99864 (7 bits).
BF16_MIN_COS = 0.999
INT8_MIN_COS = 0.98
COMPILED_FP32_MAX_ABS = 1e-5


def _image(rng, w=40, h=32):
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def model():
    m = create_model(PRESETS["vgg16-netvlad"].replace(crop="conv2_1", num_clusters=4), seed=0)
    rng = np.random.default_rng(0)
    init_clusters(m, [_image(rng) for _ in range(3)], progress=False)
    return m


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("prec")
    rng = np.random.default_rng(1)
    paths = []
    for i in range(6):
        p = root / f"im{i}.png"
        Image.fromarray(_image(rng)).save(p)
        paths.append(p)
    return paths


def _cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_bf16_and_int8_match_fp32(model, images):
    f32 = extract.compute_descriptors(model, images, progress=False)
    b16 = extract.compute_descriptors(model, images, progress=False, precision="bf16")
    i8 = extract.compute_descriptors(model, images, progress=False, precision="int8")
    assert np.isfinite(b16).all() and np.isfinite(i8).all()
    np.testing.assert_allclose(np.linalg.norm(i8, axis=1), 1.0, atol=1e-5)
    assert _cos(f32, b16).min() >= BF16_MIN_COS
    assert _cos(f32, i8).min() >= INT8_MIN_COS
    assert not np.array_equal(f32, i8)  # int8 really ran: quantization changes the bits
    # Same retrieval: every image's nearest other image is the same under each precision.
    def nn(d):
        s = d @ d.T
        np.fill_diagonal(s, -np.inf)
        return s.argmax(1)
    assert (nn(b16) == nn(f32)).all()


def test_int8_leaves_the_model_alone_and_is_reused(model, images):
    before = model.fingerprint()
    cfg = extract.ExtractConfig(progress=False, precision="int8")
    r1 = extract.compute_descriptors(model, images, cfg)
    r2 = extract.compute_descriptors(model, images, cfg)
    assert model.fingerprint() == before
    assert all(p.dtype == torch.float32 for p in model.parameters())
    np.testing.assert_array_equal(r1, r2)  # the same calibration images, the same result


def test_calibration_rows_spread_over_the_list():
    assert precision.calibration_rows(3, 8) == [0, 1, 2]
    rows = precision.calibration_rows(100, 8)
    assert rows[0] == 0 and rows[-1] == 99 and len(rows) == 8


def test_bad_combinations_are_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        extract.ExtractConfig(precision="fp8")
    with pytest.raises(ValueError, match="compile applies to fp32/bf16"):
        extract.ExtractConfig(precision="int8", compile=True)


def test_emulated_bf16_is_warned_about(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    assert "emulated" in precision.precision_note("bf16", "cpu")
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    assert precision.precision_note("bf16", "cpu") is None
    assert precision.precision_note("fp32", "cpu") is None


def test_native_bf16_needs_bf16_instructions_on_x86(monkeypatch):
    # torch's own check says True on any AVX-512 CPU; oneDNN only emulates bf16 without these flags.
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    for flags, expected in [
        ({"avx2"}, False),
        ({"avx2", "avx512f", "avx512bw", "avx512vl"}, False),  # Skylake-SP
        ({"avx2", "avx512f", "avx512_bf16"}, True),  # Cooper Lake, Zen 4/5
        ({"avx2", "avx512f", "amx_bf16", "amx_tile"}, True),  # Sapphire Rapids
        ({"avx2", "avx_ne_convert"}, True),  # AVX2-VNNI-2
        (set(), True),  # no x86 flags (e.g. aarch64): torch's check decides
    ]:
        monkeypatch.setattr(precision, "cpu_flags", lambda f=flags: frozenset(f))
        assert precision.native_bf16() is expected, flags


@pytest.mark.slow
def test_compiled_fp32_and_bf16_match_eager(model, images):
    f32 = extract.compute_descriptors(model, images, progress=False)
    c32 = extract.compute_descriptors(model, images, progress=False, compile=True)
    assert np.abs(c32 - f32).max() <= COMPILED_FP32_MAX_ABS
    c16 = extract.compute_descriptors(model, images, progress=False, compile=True, precision="bf16")
    assert _cos(f32, c16).min() >= BF16_MIN_COS


def test_cli_precision_option_is_recorded(model, images, tmp_path, capsys):
    ckpt = save_model(model, tmp_path / "m.pt")
    out = tmp_path / "f.h5"
    root = images[0].parent
    assert main(["extract", str(ckpt), "--images", str(root), "--out", str(out), "--precision", "int8",
                 "--no-progress"]) == 0
    with h5py.File(out) as f:
        assert f.attrs["compute"] == "int8"
        assert f["descriptors"].shape == (len(images), model.out_dim)
    assert main(["extract", str(ckpt), "--images", str(root), "--out", str(tmp_path / "g.h5"),
                 "--precision", "int8", "--compile"]) == 2
    assert "compile applies to fp32/bf16" in capsys.readouterr().err


def test_int8_handles_input_size_dependent_padding():
    # EfficientNet's stride-2 convs pad "SAME" from the input size, which FX tracing cannot see;
    # the quantized copy computes it at run time, so odd and even sizes both work.
    from netvlad.extract.precision import quantize_backbone_int8

    m = create_model(PRESETS["lite0-netvlad"].replace(crop="block3", num_clusters=4), weights="random",
                     seed=0).eval()
    rng = np.random.default_rng(2)
    init_clusters(m, [_image(rng) for _ in range(2)], progress=False)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 3, h, w, generator=g) for h, w in ((32, 40), (33, 41))]
    q = quantize_backbone_int8(m, xs)  # calibrated on these inputs: checks the mechanism, not the ranges
    with torch.inference_mode():
        for x in xs:
            a, b = m(x).numpy(), q(x).numpy()
            assert a.shape == b.shape
            # Random depthwise weights with random BN statistics quantize worse than VGG's convs:
            # measured minimum 0.973.
            assert _cos(a, b).min() >= 0.95


def test_int8_quantizes_a_relu6_input_over_the_clamp_range():
    # Conv → BN → ReLU6 as in EfficientNet-Lite: the conv's pre-activation range (here ±~60) must
    # not set the scale of ReLU6's output. Oracle: the float conv on the dequantized input and
    # weights, clamped to [0, 6], rounded once to the output's grid (zero point 0, max ≤ 6).
    import warnings

    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                              torch.nn.ReLU6()).eval()
    with torch.no_grad():
        net[0].weight.normal_(0, 3.0, generator=g)
    xs = [torch.randn(2, 3, 16, 16, generator=g) for _ in range(3)]
    with torch.no_grad():
        pre = torch.cat([net[1](net[0](x)) for x in xs])
    assert pre.abs().max() > 30  # the case: a pre-activation range far beyond 6

    def quantized(fix: bool):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = prepare_fx(copy.deepcopy(net), precision._qconfig_mapping(), (xs[0],))
            changed = precision._observe_after_clamps(prepared) if fix else 0
            with torch.no_grad():
                for x in xs:
                    prepared(x)
            return convert_fx(prepared), changed

    fixed, changed = quantized(True)
    plain, _ = quantized(False)
    assert changed == 1
    conv = fixed.get_submodule("0")
    q_max = 255 if precision.int8_isa() in ("amx", "avx512_vnni", "avx_vnni") else 127
    assert conv.zero_point == 0 and conv.scale * q_max <= 6.0 + 1e-6
    quant = next(n for n in fixed.graph.nodes if n.target is torch.quantize_per_tensor)
    scale_in, zp_in = getattr(fixed, quant.args[1].target), getattr(fixed, quant.args[2].target)
    w, b = conv.weight().dequantize(), conv.bias()
    with torch.no_grad():
        for x in xs:
            xq = torch.quantize_per_tensor(x, float(scale_in), int(zp_in), torch.quint8).dequantize()
            ref = torch.nn.functional.conv2d(xq, w, b, padding=1).clamp(0, 6)
            expect = (ref.clamp(max=conv.scale * q_max) / conv.scale).round() * conv.scale
            assert (fixed(x) - expect).abs().max() <= conv.scale * 0.01 + 1e-4  # accumulation order only
        def levels(model):  # distinct output values strictly inside ReLU6's (0, 6)
            y = torch.cat([model(x) for x in xs])
            return len(torch.unique(y[(y > 0) & (y < 6)]))

        n_fixed, n_plain = levels(fixed), levels(plain)
    assert n_plain <= 20 and n_fixed >= 5 * n_plain, (n_fixed, n_plain)  # without the fix: ~13 levels


@pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max")  # torch's own, on reduce_range
@pytest.mark.parametrize("isa, bits", [("avx2", 7), ("none", 7), ("avx512_vnni", 8), ("amx", 8)])
def test_int8_activation_bits_follow_the_cpu(monkeypatch, isa, bits):
    # AVX2's vpmaddubsw saturates pairs into int16, so activations keep 7 bits there (x86's
    # reduce_range); VNNI/AMX accumulate in int32 and take all 8.
    monkeypatch.setattr(precision, "int8_isa", lambda: isa)
    observer = precision._qconfig_mapping().global_qconfig.activation()
    assert observer.quant_max - observer.quant_min + 1 == 2**bits
