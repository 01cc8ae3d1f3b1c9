"""Extraction settings and process-level CPU tuning."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import sys

import torch

from netvlad.extract.precision import check_precision
from netvlad.models import check_device

#: Default ``ExtractConfig.max_pixels``: 2**23 (8.4 Mpx, e.g. 3344×2508). VGG-16 fp32 needs about
#: 520 bytes per input pixel for its forward pass (peak RSS measured in a subprocess with
#: ``resource.getrusage``: benchmarks/image_memory.py), so a forward pass at this limit takes about
#: 4.4 GB instead of 52 GB for a 10000×10000 photo. The benchmarks stay at their protocol
#: resolution: Pittsburgh and Tokyo Time Machine batches of 8 at 640×480 (2.5 Mpx), Oxford and
#: Paris batches of 8 at about 1024×768 (6.3 Mpx), Holidays at ≤ 786k px (its protocol downscales).
#: Tokyo 24/7 queries vary in size: one above the bound is downscaled with a warning
#: (``max_pixels=None`` / ``--max-pixels 0`` keeps native resolution).
DEFAULT_MAX_PIXELS = 1 << 23

#: What to do with an image whose network input exceeds ``max_pixels``.
OVERSIZE_MODES = ("downscale", "refuse")


def default_num_workers(device: torch.device | str) -> int:
    """Decoding processes to use when the caller does not say.

    On CPU, decode in the main process: a 640×480 JPEG decodes in a few ms against hundreds of ms
    of CNN, and worker processes preempt the OpenMP compute threads, which then wait at every
    barrier (measured on a 2-core machine: 0.66 img/s with one worker vs 1.45 without, VGG-16
    fp32; benchmarks/RESULTS.md). On CUDA the CPU is otherwise idle, so decode in parallel.
    """
    if torch.device(device).type == "cpu":
        return 0
    return min(4, os.cpu_count() or 1)


@dataclasses.dataclass
class ExtractConfig:
    """Extraction settings (the CLI's defaults come from here).

    Attributes:
        batch_size: images per forward pass (only images of equal size share a batch).
        num_workers: DataLoader processes decoding images (0: decode in the main process; None:
            automatic, see :func:`default_num_workers`).
        device: torch device string.
        half: store descriptors as float16 (computation stays float32 unless amp/bf16).
        amp: autocast: float16 on CUDA, bfloat16 on CPU.
        bf16: autocast to bfloat16 on any device (the fast CPU path on AVX512_BF16 machines).
        precision: "fp32", "bf16", "fp16" (CUDA) or "int8" (CPU, calibrated static quantization of
            the backbone); None derives it from ``bf16``/``amp``. See :mod:`netvlad.extract.precision`.
        compile: run a ``torch.compile``-d copy with inductor freezing (fp32/bf16; the first batch
            of each image size compiles).
        skip_bad: record unreadable images (NaN rows, ``bad_images`` attribute) instead of stopping.
        overwrite: replace an existing output from another model/image list.
        max_side: override the model's preprocessing resize: None keeps the model's, a positive
            value caps the longest side at that many pixels, 0 means native resolution (no resize,
            even when the model's preprocessing has a max_side or a fixed resize; the benchmarks'
            protocol).
        max_pixels: the most pixels one forward pass may hold (network input after preprocessing,
            summed over a batch), which bounds its activation memory (see :data:`DEFAULT_MAX_PIXELS`
            and :func:`estimate_forward_bytes`). Equal-size images share a batch only up to it; an
            image above it alone is handled as ``oversize`` says. None: no bound.
        oversize: "downscale" (keep the aspect ratio, at most ``max_pixels``; a warning names the
            image and the size used; JPEGs are decoded at reduced scale) or "refuse" (the image is
            a bad image: an error naming it, or a NaN row with ``skip_bad``).
        exif_orientation: apply the photos' EXIF orientation tag. Off by default, as the datasets'
            protocols are; on for photos users give (``netvlad query``, ``--images`` folders).
        model_ref: how to rebuild the model later (a preset name or a checkpoint's absolute path),
            stored as the feature file's ``model_ref`` attribute so ``netvlad index build`` and
            ``netvlad query`` need no --model. Provenance only: not part of the file's identity.
        channels_last: NHWC memory format (20-35% faster on CPU with oneDNN).
        tune_malloc: apply :func:`tune_malloc` when running on CPU.
        progress: show a tqdm bar (images/s).
    """

    batch_size: int = 8
    num_workers: int | None = None
    device: str = "cpu"
    half: bool = False
    amp: bool = False
    bf16: bool = False
    precision: str | None = None
    compile: bool = False
    skip_bad: bool = False
    overwrite: bool = False
    max_side: int | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    oversize: str = "downscale"
    exif_orientation: bool = False
    model_ref: str | None = None
    channels_last: bool = True
    tune_malloc: bool = True
    progress: bool = True

    def __post_init__(self):
        check_device(self.device)
        if self.num_workers is not None and int(self.num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0 (0: decode in the main process) or None, "
                             f"got {self.num_workers}")
        if self.max_pixels is not None and int(self.max_pixels) < 1:
            raise ValueError(f"max_pixels must be >= 1 or None (no bound), got {self.max_pixels}")
        if self.precision is not None:
            check_precision(self.precision, self.device, self.compile)
        if self.oversize not in OVERSIZE_MODES:
            raise ValueError(f"oversize must be one of {', '.join(OVERSIZE_MODES)}, got {self.oversize!r}")


def tune_malloc() -> bool:
    """Keep large freed blocks in glibc's heap instead of returning them to the OS.

    Why: a CNN forward pass allocates and frees activation tensors of tens of MB per layer (VGG-16
    at 480×640: up to 79 MB per image). glibc serves blocks above ``M_MMAP_THRESHOLD`` with a fresh
    ``mmap`` and ``munmap``s them on free, so every layer pays page faults to zero new pages:
    measured −20–25% throughput on this project's CPUs. Raising the mmap and trim thresholds makes
    the heap keep and reuse that memory (what tcmalloc/jemalloc do). The cost is that peak memory
    is not returned to the OS until the process exits. Process-wide and idempotent; a no-op (False)
    where glibc's ``mallopt`` is unavailable.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    ok = libc.mallopt(m_mmap_threshold, 1 << 30)  # blocks up to 1 GiB come from the heap
    ok &= libc.mallopt(m_trim_threshold, (1 << 31) - 1)  # never shrink the heap on free
    ok &= libc.mallopt(m_top_pad, 64 << 20)  # grow the heap in 64 MiB steps
    return bool(ok)
