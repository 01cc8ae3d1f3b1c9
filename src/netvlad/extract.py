"""Run a place-recognition model over images in batches: in memory or into a resumable feature file.

The MATLAB original (``serialAllFeats``) stacks images into batches, so sets of mixed image sizes
need batch size 1. Here image sizes are read from file headers (cheap) and images of equal size
are grouped into the same batches, so any set runs batched. The batch plan depends only on the
image list, the sizes and the batch size, so a resumed run computes exactly the batches the
uninterrupted run would have (byte-identical descriptors).

CPU speed (see docs/perf-facts.md): inference_mode, channels_last activations and weights, one
process with torch's default thread count (one per core), JPEG decoding overlapped in DataLoader
workers that use one thread each, and glibc malloc tuning (:func:`tune_malloc`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from netvlad.data.images import ImageLoadError, load_image, to_rgb_array
from netvlad.io import FeatureWriter

logger = logging.getLogger(__name__)


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
        skip_bad: record unreadable images (NaN rows, ``bad_images`` attribute) instead of stopping.
        overwrite: replace an existing output from another model/image list.
        max_side: override the model's preprocessing resize: None keeps the model's, a positive
            value caps the longest side at that many pixels, 0 means native resolution (no resize,
            even when the model's preprocessing has a max_side or a fixed resize; the benchmarks'
            protocol).
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
    skip_bad: bool = False
    overwrite: bool = False
    max_side: int | None = None
    model_ref: str | None = None
    channels_last: bool = True
    tune_malloc: bool = True
    progress: bool = True


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


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only (Pillow opens lazily)."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError as exc:
        raise ImageLoadError(f"{path}: image not found") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"{path}: not an image Pillow can read") from exc
    except (OSError, SyntaxError) as exc:
        raise ImageLoadError(f"{path}: corrupt or truncated image ({exc})") from exc


def plan_batches(sizes: Sequence[Any], batch_size: int) -> list[list[int]]:
    """Group image indices by size into batches of at most ``batch_size``.

    Buckets come in order of their first image, indices keep their order within a bucket, so a
    set of equal-size images is batched in file order. Deterministic: resuming relies on it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    buckets: dict[Any, list[int]] = {}
    for i, s in enumerate(sizes):
        buckets.setdefault(s, []).append(i)
    return [b[j:j + batch_size] for b in buckets.values() for j in range(0, len(b), batch_size)]


class _ImageFiles(torch.utils.data.Dataset):
    """Decodes and preprocesses one image; a bad file becomes (index, None, message)."""

    def __init__(self, paths: Sequence[Path], preprocess: Any):
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = load_image(self.paths[i])
        except ImageLoadError as exc:
            return i, None, str(exc)
        return i, self.preprocess.apply(img), None


def _collate(items):
    groups: dict[tuple, tuple[list[int], list[torch.Tensor]]] = {}
    bad = []
    for i, t, err in items:
        if err is not None:
            bad.append((i, err))
        else:
            # Split by decoded shape too, in case a header disagreed with the pixels.
            rows, ts = groups.setdefault(tuple(t.shape), ([], []))
            rows.append(i)
            ts.append(t)
    return [(rows, torch.stack(ts)) for rows, ts in groups.values()], bad


def _worker_init(_worker_id: int) -> None:
    # Decoding is single-threaded; extra intra-op threads in workers only steal the main
    # process's cores.
    torch.set_num_threads(1)


def _preprocess_for(model: torch.nn.Module, max_side: int | None) -> Any:
    """The model's Preprocess with ``ExtractConfig.max_side`` applied (None: as is, 0: no resize)."""
    pre = model.preprocess
    if max_side is None:
        return pre
    if int(max_side) < 0:
        raise ValueError(f"max_side must be >= 0 (0: native resolution), got {max_side}")
    # Preprocess says "no resize" with max_side=None and resize=None; an explicit value replaces both.
    return dataclasses.replace(pre, max_side=int(max_side) or None, resize=None)


def _as_dict(obj: Any) -> dict:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return dict(obj) if isinstance(obj, dict) else {"repr": repr(obj)}


@contextlib.contextmanager
def _prepared(model: torch.nn.Module, device: str | torch.device, channels_last: bool):
    """eval mode on ``device`` (channels_last weights) for the duration; the model is restored after."""
    was_training = model.training
    first = next(model.parameters(), None)
    orig_device = first.device if first is not None else None
    device = torch.device(device)
    model.eval().to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        yield device
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        if orig_device is not None and orig_device != device:
            model.to(orig_device)
        model.train(was_training)


def _autocast(cfg: ExtractConfig, device: torch.device):
    kind = _compute_type(cfg)
    if kind == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if kind == "bf16" else torch.float16)


def _compute_type(cfg: ExtractConfig) -> str:
    if cfg.bf16 or (cfg.amp and torch.device(cfg.device).type == "cpu"):
        return "bf16"
    return "fp16" if cfg.amp else "fp32"


def _forward(model, x: torch.Tensor, cfg: ExtractConfig, device: torch.device) -> np.ndarray:
    x = x.to(device, non_blocking=True)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with _autocast(cfg, device):
        y = model(x)
    y = y.float()
    if cfg.amp or cfg.bf16:
        # The final L2 norm may have run in reduced precision; redo it in float32.
        y = y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return y.cpu().numpy()


def _iter_descriptors(model, paths: Sequence[Path], todo: np.ndarray, cfg: ExtractConfig,
                      desc: str) -> Iterator[tuple[list[int], np.ndarray | None, list[str]]]:
    """Yield ``(rows, descriptors len(rows)×D, [])`` per batch, or ``(rows, None, reasons)`` for bad
    images (raising ImageLoadError instead unless ``cfg.skip_bad``)."""
    # Headers of every image (done ones too): the plan must be the uninterrupted run's plan.
    sizes: list[Any] = []
    for i, p in enumerate(paths):
        try:
            sizes.append(_image_size(p))
        except ImageLoadError as exc:
            sizes.append(("bad", i))  # a bucket of its own
            if todo[i] and not cfg.skip_bad:
                raise
            if todo[i]:
                yield [i], None, [str(exc)]
    plan = [[i for i in b if todo[i] and sizes[i][0] != "bad"] for b in plan_batches(sizes, cfg.batch_size)]
    plan = [b for b in plan if b]
    if not plan:
        return
    device = torch.device(cfg.device)
    if device.type == "cpu" and cfg.tune_malloc:
        tune_malloc()
    workers = default_num_workers(device) if cfg.num_workers is None else max(0, int(cfg.num_workers))
    loader = torch.utils.data.DataLoader(
        _ImageFiles(paths, _preprocess_for(model, cfg.max_side)), batch_sampler=plan, num_workers=workers,
        collate_fn=_collate, worker_init_fn=_worker_init if workers else None,
        pin_memory=device.type == "cuda", prefetch_factor=2 if workers else None)
    total = sum(len(b) for b in plan)
    with _prepared(model, device, cfg.channels_last), torch.inference_mode(), \
            tqdm(total=total, unit="img", desc=desc, disable=not cfg.progress, dynamic_ncols=True) as bar:
        for groups, bad in loader:
            if bad and not cfg.skip_bad:
                raise ImageLoadError(bad[0][1])
            if bad:
                yield [i for i, _ in bad], None, [m for _, m in bad]
            for rows, x in groups:
                yield rows, _forward(model, x, cfg, device), []
            bar.update(sum(len(r) for r, _ in groups) + len(bad))


def _config(config: ExtractConfig | None, overrides: dict) -> ExtractConfig:
    return dataclasses.replace(config or ExtractConfig(), **overrides)


def _check_model(model) -> None:
    for attr in ("out_dim", "preprocess", "check_ready"):
        if not hasattr(model, attr):
            raise TypeError(f"model has no {attr!r}: pass a netvlad PlaceModel (netvlad.models.load_model)")
    model.check_ready()


def extract_features(model, paths: Sequence[str | Path], names: Sequence[str], out: str | Path,
                     config: ExtractConfig | None = None, *,
                     callback: Callable[[int, int], None] | None = None, **overrides) -> Path:
    """Extract descriptors of ``paths`` into the feature file ``out`` (resumable, atomic).

    Args:
        model: a ready PlaceModel (``out_dim``, ``preprocess``, ``check_ready()``, ``fingerprint()``).
        paths: N image files.
        names: N names stored in the file (usually paths relative to the image root).
        out: output ``.h5``; written as ``OUT.partial.h5`` and renamed when complete.
        config: :class:`ExtractConfig`; keyword ``overrides`` replace its fields
            (``batch_size=``, ``num_workers=``, ``device=``, ``half=``, ``amp=``, ``skip_bad=``,
            ``max_side=`` (0: native resolution), ``model_ref=``, ...).
        callback: called as ``callback(rows_done, num_images)`` after each stored batch.

    Returns:
        ``out``. An existing ``out`` from the same model, preprocessing and image list is reused
        (logged as up to date); one from another is refused (FeatureFileError) unless
        ``overwrite``. An interrupted run leaves ``OUT.partial.h5``; rerunning resumes it.

    Raises:
        ValueError: empty image list, names/paths mismatch or duplicate names.
        ImageLoadError: an unreadable image (names it), unless ``skip_bad``: then its row is NaN
            and its name is listed in the file's ``bad_images`` attribute.
    """
    cfg = _config(config, overrides)
    paths = [Path(p) for p in paths]
    names = [str(n) for n in names]
    out = Path(out)
    if not paths:
        raise ValueError(f"{out}: empty image list, nothing to extract")
    if len(paths) != len(names):
        raise ValueError(f"{out}: {len(paths)} paths but {len(names)} names")
    if len(set(names)) != len(names):
        dup = next(n for i, n in enumerate(names) if n in names[:i])
        raise ValueError(f"{out}: duplicate image name {dup!r}")
    _check_model(model)
    pre = _preprocess_for(model, cfg.max_side)
    attrs = {"fingerprint": model.fingerprint(), "preprocessing": _as_dict(pre),
             "model_config": _as_dict(getattr(model, "config", {})),
             "compute": _compute_type(cfg)}
    if cfg.model_ref:
        attrs["model_ref"] = str(cfg.model_ref)
    writer = FeatureWriter(out, names, int(model.out_dim), "float16" if cfg.half else "float32", attrs,
                           overwrite=cfg.overwrite)
    todo = writer.open()
    logger.info(writer.status.message)
    if writer.status.kind == "up-to-date":
        return out
    try:
        # closing(): on an exception, shut the loader's workers and restore the model right away
        # rather than whenever the traceback is released.
        with contextlib.closing(_iter_descriptors(model, paths, todo, cfg, desc=out.name)) as batches:
            for rows, desc, reasons in batches:
                if desc is None:
                    writer.mark_bad(rows, reasons)
                else:
                    writer.write(rows, desc)
                if callback is not None:
                    callback(writer.done, len(names))
    except BaseException:
        logger.info("%s: stopped after %d of %d images; rerun to resume", out, writer.done, len(names))
        writer.close()
        raise
    bad = writer.bad_images
    path = writer.finish()
    if bad:
        logger.warning("%s: %d bad image(s) skipped (rows are NaN, names in attribute bad_images): %s",
                       out, len(bad), ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))
    return path


def compute_descriptors(model, paths: Sequence[str | Path], config: ExtractConfig | None = None, *,
                        label: str = "descriptors", **overrides) -> np.ndarray:
    """Descriptors of ``paths`` in memory: an N×out_dim float32 array (rows of bad images are NaN
    with ``skip_bad=True``; otherwise a bad image raises ImageLoadError naming it).

    Same batching and speed settings as :func:`extract_features` (``batch_size=``, ``device=``,
    ``progress=``, ... as keyword overrides of ``config``); ``label`` names the progress bar.
    """
    cfg = _config(config, overrides)
    paths = [Path(p) for p in paths]
    _check_model(model)
    _preprocess_for(model, cfg.max_side)  # a bad max_side fails before any image is read
    result = np.full((len(paths), int(model.out_dim)), np.nan, dtype=np.float32)
    with contextlib.closing(_iter_descriptors(model, paths, np.ones(len(paths), bool), cfg,
                                              desc=label)) as batches:
        for rows, desc, _ in batches:
            if desc is not None:
                result[rows] = desc
    return result


def _to_uint8_rgb(image: Any) -> np.ndarray:
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return to_rgb_array(image)
    if isinstance(image, torch.Tensor):
        raise TypeError("compute_representation takes a path, PIL image or H×W×3 uint8 array, not a tensor")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"image array must be uint8 (0-255), got {arr.dtype}; scale and convert it first")
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 2, 3, 4)):
        if arr.ndim == 3 and arr.shape[2] == 3:
            return np.ascontiguousarray(arr)
        mode = {1: "L", 2: "LA", 4: "RGBA"}[1 if arr.ndim == 2 else arr.shape[2]]
        return to_rgb_array(Image.fromarray(arr.reshape(arr.shape[:2]) if mode == "L" else arr, mode))
    raise ValueError(f"image array must be H×W, H×W×1, H×W×3 or H×W×4, got shape {arr.shape}")


def compute_representation(model, image: Any, device: str | torch.device | None = None,
                           channels_last: bool = True) -> np.ndarray:
    """One image's descriptor (MATLAB ``computeRepresentation``).

    Args:
        model: a ready PlaceModel.
        image: a path, a PIL image (any mode) or an H×W(×1|3|4) uint8 array (grey is replicated,
            alpha dropped). EXIF orientation is ignored, as in the datasets' protocols.
        device: where to run (default: where the model's parameters are).

    Returns:
        (out_dim,) float32.
    """
    _check_model(model)
    arr = _to_uint8_rgb(image)
    x = model.preprocess.apply(arr)[None]
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else "cpu"
    cfg = ExtractConfig(device=str(device), channels_last=channels_last, progress=False)
    with _prepared(model, device, channels_last) as dev, torch.inference_mode():
        return _forward(model, x, cfg, dev)[0]
