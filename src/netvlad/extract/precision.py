"""How the network runs during extraction: fp32, bf16 or int8, eager or ``torch.compile``-d.

Speed depends on the CPU more than on the code (numbers in benchmarks/RESULTS.md):

- **bf16** is fast only where oneDNN has native bf16 kernels (AVX512_BF16, AMX-BF16, AVX2-VNNI-2).
  Elsewhere oneDNN emulates it: a bf16 convolution runs ~7× *slower* than fp32 on an AVX2-only CPU
  and VGG-16 3× slower on an AVX-512 CPU without AVX512_BF16, so :func:`precision_note` warns.
- **int8** (static post-training quantization of the backbone through PyTorch's FX quantization,
  ``x86`` engine: fbgemm/oneDNN) uses AMX-INT8 or VNNI where present and AVX2's 8-bit
  multiply-adds otherwise (measured 2.3× fp32 on VGG-16 on an AVX2-only CPU). Activations use
  8 bits where the CPU has VNNI or AMX, 7 without (x86's ``reduce_range``); a ReLU6's input is
  calibrated on its clamped values (EfficientNet-Lite0's recall depends on it). Activation scales
  are calibrated on a few of the images being extracted, chosen by position in the full list, so
  an interrupted and resumed run calibrates on the same images and computes the same descriptors.
  The NetVLAD head and whitening stay fp32.
- **compile** runs the model through ``torch.compile`` with inductor's *freezing*: weights become
  constants, oneDNN pre-packs them (bf16 weights for bf16) and fuses ReLU into the convolution as a
  post-op. The first batch of each input size pays the compilation (about a minute for VGG-16 on
  2 cores); a runner is cached per model weights, precision and device, so later calls reuse it.

The model a caller passes is never modified: reduced-precision and compiled variants are copies.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import warnings
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.ao.quantization.observer import HistogramObserver

logger = logging.getLogger("netvlad.extract")

#: Values of ``ExtractConfig.precision``. fp16 runs only on CUDA (CPU fp16 convolutions are
#: ~100× slower than fp32 on CPUs without AVX512_FP16).
PRECISIONS = ("fp32", "bf16", "fp16", "int8")

#: Images used to calibrate int8 activation scales (evenly spaced over the image list).
INT8_CALIBRATION_IMAGES = 8


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


#: x86 flags of bf16 instructions oneDNN uses (AVX512_BF16, AMX-BF16, AVX-NE-CONVERT of AVX2-VNNI-2).
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "avx_ne_convert")


def native_bf16() -> bool:
    """True where oneDNN runs bf16 convolutions natively (not emulated through fp32).

    On x86 this is read from the CPU flags: torch's own check
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) also says True on AVX-512 CPUs without bf16
    instructions, where oneDNN emulates bf16 (VGG-16 measured 3× slower than fp32 on a Skylake-SP
    Xeon). Elsewhere (no x86 flags in /proc/cpuinfo) torch's check decides.
    """
    flags = cpu_flags()
    if ("avx2" in flags or "avx512f" in flags) and not any(f in flags for f in BF16_FLAGS):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def int8_isa() -> str:
    """The best 8-bit dot-product instructions here: "amx", "avx512_vnni", "avx_vnni" or "avx2"."""
    flags = cpu_flags()
    for isa in ("amx_int8", "avx512_vnni", "avx_vnni"):
        if isa in flags:
            return isa.replace("_int8", "")
    return "avx2" if "avx2" in flags else "none"


def precision_note(precision: str, device: str | torch.device) -> str | None:
    """A warning worth printing before running ``precision`` on ``device`` here, or None."""
    dev = torch.device(device)
    if dev.type == "cpu" and precision == "bf16" and not native_bf16():
        return ("bf16 on this CPU is emulated (no AVX512_BF16/AMX-BF16): expect it several times slower "
                "than fp32; int8 or fp32 is the fast choice here")
    if dev.type == "cpu" and precision == "fp16":
        return "fp16 on CPU is very slow; use bf16 (native bf16 CPUs), int8 or fp32"
    if dev.type != "cpu" and precision == "int8":
        return None  # refused by make_runner
    return None


def check_precision(precision: str, device: str | torch.device, compile: bool = False) -> None:
    """Raise ValueError for a precision/device/compile combination that cannot run."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dev = torch.device(device)
    if precision == "int8" and dev.type != "cpu":
        raise ValueError(f"precision int8 runs on CPU only (PyTorch's x86 quantization), not {dev}")
    if precision == "int8" and compile:
        raise ValueError("compile applies to fp32/bf16; int8 already runs fused quantized kernels")


class _CastIn(nn.Module):
    """Runs ``inner`` on its input cast to ``dtype`` and returns float32 (a reduced-precision trunk
    inside an fp32 model: the NetVLAD head, whitening and norms stay fp32)."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype | None):
        super().__init__()
        self.inner = inner
        self.dtype = dtype
        self.out_channels = getattr(inner, "out_channels", None)

    def forward(self, x: Tensor) -> Tensor:
        if self.dtype is not None:
            x = x.to(self.dtype)
        return self.inner(x).float()


def _tf_same_pad(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """TensorFlow "SAME" zero padding of x (B×C×H×W) for a conv of ``kernel``/``stride``."""
    pads = []
    for n, k, s in zip(reversed(x.shape[-2:]), reversed(kernel), reversed(stride)):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return nn.functional.pad(x, pads)


# A graph node evaluated at run time: the padding depends on the input size, which tracing cannot see.
torch.fx.wrap("_tf_same_pad")


class _SamePadConv(nn.Module):
    """Input-size-dependent SAME padding, then a plain (quantizable) Conv2d."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = _plain_conv(conv)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(_tf_same_pad(x, self.conv.kernel_size, self.conv.stride))


def _plain_conv(conv: nn.Conv2d) -> nn.Conv2d:
    c = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None)
    c.load_state_dict(conv.state_dict())
    return c


def _traceable(module: nn.Module) -> nn.Module:
    """Replace Conv2d subclasses (their own forward, e.g. EfficientNet's TF-SAME padding computed
    from the input size) by plain Conv2d modules that FX quantization recognises; in place."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d) and type(child) is not nn.Conv2d:
            plain = _SamePadConv(child) if getattr(child, "_dynamic", False) else _plain_conv(child)
            setattr(module, name, plain.train(child.training))
        else:
            _traceable(child)
    return module


def quantize_backbone_int8(model: nn.Module, calibration: Iterable[Tensor]) -> nn.Module:
    """A copy of ``model`` whose backbone is int8 (static PTQ, per-channel weights, x86 engine).

    Args:
        model: a PlaceModel in eval mode (its ``backbone`` is traced with torch.fx).
        calibration: preprocessed image batches (B×3×H×W float32) whose activations set the scales.

    Returns:
        A new model computing B×3×H×W → B×out_dim with an int8 trunk and float32 head.
    """
    torch.backends.quantized.engine = "x86"
    batches = [x.contiguous(memory_format=torch.channels_last) for x in calibration]
    if not batches:
        raise ValueError("int8 needs at least one calibration image")
    q = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        # torch marks its eager/FX quantized tensors deprecated in favour of torchao (not installed).
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        trunk = prepare_fx(_traceable(q.backbone.float()), _qconfig_mapping(), (batches[0],))
        _observe_after_clamps(trunk)
        with torch.no_grad():
            for x in batches:
                trunk(x)
        q.backbone = _CastIn(convert_fx(trunk), None)
    return q


def _qconfig_mapping():
    """PyTorch's x86 mapping; activations on the full 8 bits where the CPU multiplies u8×s8 with
    32-bit accumulation (VNNI, AMX). Without VNNI, AVX2's ``vpmaddubsw`` sums pairs into int16 with
    saturation, which is why the x86 default keeps activations to 7 bits."""
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping

    mapping = get_default_qconfig_mapping("x86")
    if int8_isa() in ("amx", "avx512_vnni", "avx_vnni"):
        default = mapping.global_qconfig
        mapping.set_global(QConfig(activation=HistogramObserver.with_args(reduce_range=False),
                                   weight=default.weight))
    return mapping


class _ClampedObserver(HistogramObserver):
    """A histogram observer that records ``x.clamp(lo, hi)``: the range the clamp after it keeps."""

    def __init__(self, lo: float, hi: float, **kwargs):
        super().__init__(**kwargs)
        self.lo, self.hi = lo, hi

    def forward(self, x: Tensor) -> Tensor:
        super().forward(x.detach().clamp(self.lo, self.hi))
        return x


def _observe_after_clamps(prepared: torch.fx.GraphModule) -> int:
    """Make each activation observer whose one consumer is a ReLU6 (any ``Hardtanh``) record the
    clamped values; call between ``prepare_fx`` and calibration.

    PyTorch's x86 quantization fuses Conv+BN+ReLU but not ReLU6, so the convolution's output is
    quantized over its pre-activation range (up to ~100 in EfficientNet-Lite0) and ReLU6's [0, 6]
    keeps 5–9 of the 256 levels: measured 62 % relative error at Lite0's block15 and recall@1 on a
    town down to 67 % of fp32's. Calibrated on the clamped values instead (zero point 0 for
    ReLU6), the kernel's uint8 saturation computes the clamp exactly and the levels cover what
    ReLU6 passes on; the error drops to ~20 %. Returns how many observers were replaced.
    """
    changed = 0
    for node in prepared.graph.nodes:
        if node.op != "call_module" or not isinstance(prepared.get_submodule(node.target), nn.Hardtanh):
            continue
        clamp = prepared.get_submodule(node.target)
        src = node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        old = prepared.get_submodule(src.target)
        if type(old) is not HistogramObserver:
            continue
        new = _ClampedObserver(float(clamp.min_val), float(clamp.max_val), bins=old.bins, dtype=old.dtype,
                               qscheme=old.qscheme, reduce_range=old.reduce_range)
        setattr(prepared, src.target, new)
        changed += 1
    return changed


@contextlib.contextmanager
def _freezing():
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True):
        yield


class Runner:
    """Callable B×3×H×W float32 → B×out_dim float32 descriptors for one precision/compile choice."""

    def __init__(self, net: Callable[[Tensor], Tensor], precision: str, compiled: bool,
                 autocast: torch.dtype | None, device: torch.device):
        self.net, self.precision, self.compiled = net, precision, compiled
        self._autocast, self._device = autocast, device

    def __call__(self, x: Tensor) -> Tensor:
        ctx = (torch.autocast(self._device.type, dtype=self._autocast) if self._autocast is not None
               else contextlib.nullcontext())
        with ctx, (_freezing() if self.compiled else contextlib.nullcontext()):
            y = self.net(x)
        return y.float()


# model -> {key: Runner}: compiled and quantized copies are expensive to build.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def make_runner(model: nn.Module, precision: str = "fp32", *, compile: bool = False,
                device: str | torch.device = "cpu",
                calibration: Callable[[], Iterable[Tensor]] | None = None,
                calibration_key: str = "") -> Runner:
    """The function extraction calls per batch, for ``model`` (eval, on ``device``) at ``precision``.

    Args:
        model: a ready PlaceModel, already in eval mode, on ``device``, in its final memory format.
        precision: one of :data:`PRECISIONS`. bf16 eager is autocast; bf16 compiled casts a copy's
            backbone weights to bf16 (pre-packed by freezing) and keeps the head fp32.
        compile: ``torch.compile`` with inductor freezing (fp32/bf16).
        device: where the model is.
        calibration: for int8, returns preprocessed image batches (called once, when building).
        calibration_key: identifies the calibration images (part of the cache key).

    Returns:
        A :class:`Runner`. Built once per (weights, precision, compile, device, calibration_key)
        while the model lives; eager fp32/bf16 runners cost nothing to build.
    """
    dev = torch.device(device)
    check_precision(precision, dev, compile)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if precision != "int8" and not compile:
        return Runner(model, precision, False, autocast, dev)
    fingerprint = model.fingerprint() if hasattr(model, "fingerprint") else str(id(model))
    key = (precision, compile, str(dev), fingerprint, calibration_key)
    cached = _CACHE.setdefault(model, {})
    if key in cached:
        return cached[key]
    if precision == "int8":
        if calibration is None:
            raise ValueError("precision int8 needs calibration images")
        logger.info("int8: calibrating activation scales (%s)", int8_isa())
        runner = Runner(quantize_backbone_int8(model, calibration()), precision, False, None, dev)
    else:
        net = copy.deepcopy(model).eval()
        if precision in ("bf16", "fp16"):
            net.backbone = _CastIn(net.backbone.to(autocast), autocast)
        logger.info("compiling the %s model (torch.compile, freezing): the first batch of each size "
                    "takes a while", precision)
        runner = Runner(torch.compile(net, dynamic=False), precision, True, None, dev)
    cached.clear()  # one variant per model at a time: each holds a copy of the weights
    cached[key] = runner
    return runner


def calibration_rows(n_images: int, n: int = INT8_CALIBRATION_IMAGES) -> list[int]:
    """``n`` evenly spaced indices into a list of ``n_images`` (all of them when fewer)."""
    if n_images <= n:
        return list(range(n_images))
    return sorted({round(i * (n_images - 1) / (n - 1)) for i in range(n)})
