"""Export a PlaceModel to ONNX (dynamic batch and image size) or TorchScript, with a parity check.

The exported graph takes the *preprocessed* B×3×H×W float32 tensor (``model.preprocess``: for the
MATLAB models 0–255 RGB minus the mean pixel, no std) and returns the L2-normalised B×out_dim
descriptor. Preprocessing is not baked in, so the same graph serves any image loader.

Exporters (``ExportConfig.exporter``):

- ``"dynamo"`` (default): ``torch.onnx.export(..., dynamo=True)`` with ``torch.export`` dynamic
  dims for batch, height and width. PyTorch's default since 2.9; needs ``onnxscript``.
- ``"torchscript"``: the legacy tracer-based exporter with ``dynamic_axes``; deprecated by
  PyTorch but several times faster to run. Both give the same parity on our models (softmax,
  bmm, the norms, MatConvNet's LRN via avg_pool3d, grouped convs all export).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from netvlad._atomic import atomic_write

__all__ = [
    "ExportConfig",
    "ParityError",
    "check_onnx",
    "check_torchscript",
    "export_onnx",
    "export_torchscript",
]

log = logging.getLogger(__name__)


class ParityError(RuntimeError):
    """The exported graph's descriptors differ from PyTorch's by more than the tolerance."""


@dataclass(frozen=True)
class ExportConfig:
    """Options of :func:`export_onnx` / the ``netvlad export`` command.

    Attributes:
        opset: ONNX opset version.
        exporter: "dynamo" or "torchscript" (see module docstring).
        check_sizes: (batch, height, width) inputs of the parity check; two different shapes
            prove the batch and image dims are really dynamic.
        tolerance: the largest allowed |onnx − torch| on the L2-normalised descriptors.
        seed: seed of the random check images.
    """

    opset: int = 18
    exporter: str = "dynamo"
    check_sizes: tuple[tuple[int, int, int], ...] = ((2, 224, 224), (1, 160, 288))
    tolerance: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        if self.exporter not in ("dynamo", "torchscript"):
            raise ValueError(f"unknown exporter {self.exporter!r}; choose dynamo or torchscript")


def _example(model, batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Random uint8 images through the model's own preprocessing: B×3×H×W float32."""
    rng = np.random.default_rng(seed)
    pre = model.preprocess
    imgs = [pre.apply(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(batch)]
    return torch.stack(imgs)


def export_onnx(model, out: str | Path, config: ExportConfig | None = None) -> Path:
    """Write ``model`` (eval mode, CPU) as an ONNX graph ``image`` B×3×H×W → ``descriptor`` B×D.

    Args:
        model: a ready :class:`~netvlad.models.PlaceModel` (NetVLAD initialised).
        out: the .onnx file (written atomically).
        config: :class:`ExportConfig`.

    Returns:
        ``out``.

    Raises:
        netvlad.layers.UninitializedError: the NetVLAD clusters were never initialised.
    """
    config = config or ExportConfig()
    model = model.eval().to("cpu")
    model.check_ready()
    _, h, w = config.check_sizes[0]
    example = _example(model, 2, max(h, 64), max(w, 64), config.seed)

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer/deprecation chatter; parity is checked instead
            if config.exporter == "dynamo":
                batch, height, width = (torch.export.Dim(n) for n in ("batch", "height", "width"))
                prog = torch.onnx.export(
                    model,
                    (example,),
                    None,
                    input_names=["image"],
                    output_names=["descriptor"],
                    opset_version=config.opset,
                    dynamo=True,
                    verbose=False,
                    dynamic_shapes=({0: batch, 2: height, 3: width},),
                )
                prog.save(tmp)
            else:
                torch.onnx.export(
                    model,
                    (example,),
                    tmp,
                    input_names=["image"],
                    output_names=["descriptor"],
                    opset_version=config.opset,
                    dynamo=False,
                    dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "descriptor": {0: "batch"}},
                )

    return atomic_write(out, write)


def export_torchscript(model, out: str | Path, config: ExportConfig | None = None) -> Path:
    """Write ``model`` as a traced TorchScript module (``torch.jit.load`` it; input as for ONNX)."""
    config = config or ExportConfig()
    model = model.eval().to("cpu")
    model.check_ready()
    _, h, w = config.check_sizes[0]
    example = _example(model, 2, max(h, 64), max(w, 64), config.seed)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (example,), check_trace=False)
    return atomic_write(out, lambda tmp: torch.jit.save(traced, tmp))


def _compare(model, run, config: ExportConfig, what: str) -> float:
    worst = 0.0
    for i, (b, h, w) in enumerate(config.check_sizes):
        x = _example(model, b, h, w, config.seed + 1 + i)
        with torch.no_grad():
            ref = model(x).double().numpy()
        got = np.asarray(run(x), dtype=np.float64)
        if got.shape != ref.shape:
            raise ParityError(
                f"{what}: output shape {got.shape} for input {tuple(x.shape)}, expected {ref.shape}"
            )
        diff = float(np.abs(got - ref).max())
        log.info("%s parity at %s: max |diff| = %.3g", what, tuple(x.shape), diff)
        worst = max(worst, diff)
    if not worst <= config.tolerance:
        raise ParityError(f"{what}: max abs difference {worst:.3g} exceeds tolerance {config.tolerance:g}")
    return worst


def check_onnx(model, onnx_path: str | Path, config: ExportConfig | None = None) -> float:
    """Run the ONNX file with onnxruntime and PyTorch on ``config.check_sizes`` inputs.

    Returns:
        the max abs difference over all check inputs.

    Raises:
        ParityError: above ``config.tolerance`` or a wrong output shape.
    """
    import onnxruntime as ort

    config = config or ExportConfig()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return _compare(
        model.eval(), lambda x: sess.run(None, {name: x.numpy()})[0], config, f"{onnx_path} (onnxruntime)"
    )


def check_torchscript(model, ts_path: str | Path, config: ExportConfig | None = None) -> float:
    """Like :func:`check_onnx` for a TorchScript file."""
    config = config or ExportConfig()
    loaded = torch.jit.load(str(ts_path), map_location="cpu")

    def run(x):
        with torch.no_grad():
            return loaded(x).double().numpy()

    return _compare(model.eval(), run, config, f"{ts_path} (TorchScript)")
