"""ONNX / TorchScript export: dynamic batch and image size, parity with PyTorch through onnxruntime."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from netvlad.cli import main
from netvlad.export import (
    ExportConfig,
    ParityError,
    check_onnx,
    check_torchscript,
    export_onnx,
    export_torchscript,
)
from netvlad.models import PRESETS, create_model, save_model

# CaffeNet exercises the awkward ops: MatConvNet LRN, grouped convs; NetVLAD: softmax, bmm, norms.
SIZES = ((2, 80, 96), (1, 99, 71))


@pytest.fixture(scope="module")
def model():
    m = create_model("alexnet-netvlad", seed=1)
    g = torch.Generator().manual_seed(0)
    m.head.init_from_descriptors(
        torch.nn.functional.normalize(torch.randn(500, 256, generator=g), dim=1), niter=3, backend="torch"
    )
    m.set_whitening(torch.randn(32, m.head.out_dim, generator=g) / 64, torch.randn(32, generator=g) / 100)
    return m.eval()


def test_onnx_has_dynamic_axes_and_matches_torch(tmp_path, model):
    config = ExportConfig(exporter="torchscript", check_sizes=SIZES)
    out = export_onnx(model, tmp_path / "m.onnx", config)
    graph = onnx.load(str(out)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) and d for d in (dims[0], dims[2], dims[3]))
    diff = check_onnx(model, out, config)
    assert 0 <= diff <= 1e-4


def test_parity_check_catches_a_different_model(tmp_path, model):
    config = ExportConfig(exporter="torchscript", check_sizes=SIZES[:1])
    out = export_onnx(model, tmp_path / "m.onnx", config)
    other = create_model("alexnet-netvlad", seed=2)
    other.head.load_state_dict(model.head.state_dict())
    other.set_whitening(model.whitening.weight, model.whitening.bias)
    with pytest.raises(ParityError, match=r"max abs difference .* exceeds tolerance 0\.0001"):
        check_onnx(other.eval(), out, config)


def test_torchscript_roundtrip(tmp_path, model):
    config = ExportConfig(check_sizes=SIZES)
    out = export_torchscript(model, tmp_path / "m.ts", config)
    assert check_torchscript(model, out, config) <= 1e-5


def test_cli_export_prints_parity_and_fails_above_tolerance(tmp_path, capsys, model):
    ckpt = save_model(model, tmp_path / "m.pt")
    sizes = ["--check-size", "2", "80", "96", "--check-size", "1", "99", "71"]
    args = ["export", str(ckpt), "--onnx", str(tmp_path / "m.onnx"), "--exporter", "torchscript", *sizes]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "parity" in out and "OK" in out and "B×32" in out
    assert main([*args, "--tolerance", "0"]) == 1  # float32 vs onnxruntime is never bit-exact here
    assert "parity FAILED" in capsys.readouterr().out


def test_cli_export_refuses_uninitialised_netvlad(tmp_path, capsys):
    ckpt = save_model(create_model("alexnet-netvlad"), tmp_path / "raw.pt")
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert "never initialised" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    assert main(["export", str(ckpt)]) == 2


@pytest.mark.slow
def test_dynamo_exporter(tmp_path, model):
    config = ExportConfig(exporter="dynamo", check_sizes=SIZES)
    out = export_onnx(model, tmp_path / "m.onnx", config)
    assert check_onnx(model, out, config) <= 1e-4
    sess_shape = onnx.load(str(out)).graph.output[0].type.tensor_type.shape.dim
    assert sess_shape[1].dim_value == 32
    assert np.isfinite(check_onnx(model, out, config))


def test_torch_hub_builds_presets_and_loads_checkpoints(tmp_path, model):
    repo = str(Path(__file__).resolve().parents[1])
    spec = importlib.util.spec_from_file_location("hubconf_under_test", Path(repo) / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    entries = {n for n in dir(hub) if callable(getattr(hub, n)) and not n.startswith("_")}
    assert hub.dependencies[0] == "torch"
    assert {p.replace("-", "_") for p in PRESETS} <= set(entries) and "netvlad" in entries
    built = torch.hub.load(repo, "alexnet_netvlad", source="local", seed=3)
    assert built.config == create_model("alexnet-netvlad", seed=3).config
    ckpt = save_model(model, tmp_path / "m.pt")
    loaded = torch.hub.load(repo, "netvlad", source="local", pretrained_checkpoint=str(ckpt))
    assert loaded.fingerprint() == model.fingerprint()
