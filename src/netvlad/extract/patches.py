"""Patch-NetVLAD patch descriptors: NetVLAD over sliding windows of the feature map, in one pass.

Hausler et al., "Patch-NetVLAD" (CVPR 2021): the backbone runs once per image; every window of
``size``×``size`` cells taken every ``stride`` cells of its feature map is aggregated by the
model's own NetVLAD layer (soft-assignment, residuals, intra-norm, L2, the model's descriptor
order) and, when the model has one, projected by its PCA-whitening and L2-normalised again. Since
NetVLAD's soft-assignment is per position, a window's descriptor is exactly the layer run on that
window of the map. Images are never cropped.

Settings of the paper (``PATCH_PRESETS``): "speed" (one scale, 5×5 windows, stride 1; the paper
also keeps 512 PCA dimensions there) and "performance" (2×2, 5×5, 8×8, stride 1, fused with
weights 0.45, 0.15, 0.4).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from netvlad.data.images import ImageLoadError, image_size
from netvlad.extract.batches import _collate, _ImageFiles, _plan, _worker_init, preprocess_for
from netvlad.extract.config import ExtractConfig, default_num_workers, tune_malloc
from netvlad.extract.run import _as_dict, _check_model, _compute_type, _prepared, autocast_for
from netvlad.extract.sizing import SizePolicy
from netvlad.io import OutputStatus, PatchWriter
from netvlad.layers import NetVLAD, whole_l2n

logger = logging.getLogger("netvlad.extract")

__all__ = ["PATCH_PRESETS", "PatchConfig", "compute_patches", "estimate_patch_bytes", "extract_patches",
           "patch_descriptors", "patch_file_for", "patch_positions"]


@dataclasses.dataclass(frozen=True)
class PatchConfig:
    """Patch settings of an extraction.

    Attributes:
        sizes: window sides in feature-map cells, one per scale.
        strides: window steps in cells, one per scale.
        dim: keep the first ``dim`` PCA-whitened dimensions (the paper's num_pcs; needs a model
            with whitening); None keeps the model's output dimension.
        half: store float16 (halves the file; scores change by less than float16 rounding).
    """

    sizes: tuple[int, ...] = (5,)
    strides: tuple[int, ...] = (1,)
    dim: int | None = None
    half: bool = True

    def __post_init__(self):
        if not self.sizes or len(self.sizes) != len(self.strides):
            raise ValueError(f"patch sizes {self.sizes} and strides {self.strides} must be non-empty and "
                             "of equal length")
        if min(self.sizes) < 1 or min(self.strides) < 1:
            raise ValueError(f"patch sizes and strides must be >= 1, got {self.sizes} / {self.strides}")
        if self.dim is not None and self.dim < 1:
            raise ValueError(f"patch dim must be >= 1 or None, got {self.dim}")

    @property
    def scales(self) -> list[tuple[int, int]]:
        return [(int(s), int(t)) for s, t in zip(self.sizes, self.strides)]

    @classmethod
    def preset(cls, name: str, **overrides) -> PatchConfig:
        if name not in PATCH_PRESETS:
            raise ValueError(f"unknown patch preset {name!r}; choose from {', '.join(PATCH_PRESETS)}")
        return dataclasses.replace(PATCH_PRESETS[name], **overrides)


PATCH_PRESETS = {
    "speed": PatchConfig(sizes=(5,), strides=(1,)),
    "performance": PatchConfig(sizes=(2, 5, 8), strides=(1, 1, 1)),
}


def patch_file_for(features: str | Path) -> Path:
    """Where ``netvlad extract --patches`` puts the patch file of a global feature file:
    ``feats_db.h5`` → ``feats_db.patches.h5``."""
    features = Path(features)
    return features.with_name(f"{features.stem}.patches.h5")


def patch_positions(height: int, width: int, size: int, stride: int) -> np.ndarray:
    """(row, col) of the top-left cell of every window, row-major: P×2 int64 (P = 0 when the map
    is smaller than a window)."""
    rows = np.arange(0, height - size + 1, stride)
    cols = np.arange(0, width - size + 1, stride)
    r, c = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([r.ravel(), c.ravel()], axis=1).astype(np.int64)


def _whiten(model, d: torch.Tensor, dim: int | None) -> torch.Tensor:
    w = getattr(model, "whitening", None)
    if w is None:
        return d
    n = w.weight.shape[0] if dim is None else int(dim)
    with torch.autocast(d.device.type, enabled=False):
        return whole_l2n(F.linear(d, w.weight[:n].to(d.dtype), w.bias[:n].to(d.dtype)))


def patch_descriptors(model, fmap: torch.Tensor, size: int, stride: int, dim: int | None = None,
                      chunk: int = 256) -> tuple[torch.Tensor, np.ndarray]:
    """NetVLAD descriptors of every ``size``×``size`` window (step ``stride``) of a feature map.

    Args:
        model: a PlaceModel with a NetVLAD head (``model.head``; ``model.whitening`` applied when
            present, cropped to ``dim``).
        fmap: B×D×H×W backbone output (what ``model.head`` takes).
        dim: keep the first ``dim`` whitened dimensions (None: all).
        chunk: windows aggregated per call of the head (bounds its B×N×K temporaries).

    Returns:
        (descriptors B×P×out float32, L2-normalised; positions P×2 (row, col) of each window's
        top-left cell, as :func:`patch_positions`).
    """
    head = model.head
    if not isinstance(head, NetVLAD):
        raise ValueError(f"patch descriptors need a NetVLAD head; this model pools with "
                         f"{type(head).__name__}")
    if dim is not None and getattr(model, "whitening", None) is None:
        raise ValueError("a patch dimension (num_pcs) needs a model with PCA-whitening; this one has none")
    b, _, h, w = fmap.shape
    pos = patch_positions(h, w, size, stride)
    out_dim = int(model.out_dim if dim is None else dim)
    if len(pos) == 0:
        return fmap.new_zeros((b, 0, out_dim), dtype=torch.float32), pos
    # B×D×nr×nc×s×s → (B·P)×D×s×s windows, P row-major as patch_positions.
    win = fmap.unfold(2, size, stride).unfold(3, size, stride)
    win = win.permute(0, 2, 3, 1, 4, 5).reshape(b * len(pos), fmap.shape[1], size, size)
    parts = [_whiten(model, head(win[i:i + chunk]), dim) for i in range(0, len(win), chunk)]
    return torch.cat(parts).float().view(b, len(pos), -1), pos


def estimate_patch_bytes(model, paths: Sequence[Path], patches: PatchConfig,
                         config: ExtractConfig | None = None) -> int:
    """Bytes the patch file of ``paths`` will hold (descriptors + positions), from image headers.

    The map size is taken as ceil(input side / backbone stride), the usual padding of the crop
    layers; unreadable images count as none.
    """
    cfg = config or ExtractConfig()
    policy = SizePolicy(preprocess_for(model, cfg.max_side), cfg)
    cell = int(getattr(model.backbone, "stride", 16))
    dim = int(model.out_dim if patches.dim is None else patches.dim)
    per_value = 2 if patches.half else 4
    counts: dict[tuple[int, int], int] = {}
    for p in paths:
        try:
            hw = image_size(p, honour_exif=cfg.exif_orientation)
        except ImageLoadError:
            continue
        target = policy.target(*hw) or policy.input_size(*hw)
        key = (-(-target[0] // cell), -(-target[1] // cell))
        counts[key] = counts.get(key, 0) + 1
    total = 0
    for (h, w), n in counts.items():
        num = sum(len(patch_positions(h, w, s, t)) for s, t in patches.scales)
        total += n * num * (dim * per_value + 4)
    return int(total)


def _iter_patches(model, paths, todo, cfg: ExtractConfig, patches: PatchConfig, desc: str):
    """Yield (row, [(desc, pos)] per scale, map_hw) per image, or (row, None, reason) for a bad one."""
    plan, bad = _plan(model, paths, todo, cfg)
    for i, reason in bad:
        yield i, None, reason
    if not plan:
        return
    device = torch.device(cfg.device)
    if device.type == "cpu" and cfg.tune_malloc:
        tune_malloc()
    workers = default_num_workers(device) if cfg.num_workers is None else int(cfg.num_workers)
    loader = torch.utils.data.DataLoader(
        _ImageFiles(paths, SizePolicy(preprocess_for(model, cfg.max_side), cfg)), batch_sampler=plan,
        num_workers=workers, collate_fn=_collate, worker_init_fn=_worker_init if workers else None,
        prefetch_factor=2 if workers else None)
    total = sum(len(b) for b in plan)
    with _prepared(model, device, cfg.channels_last), torch.inference_mode(), \
            tqdm(total=total, unit="img", desc=desc, disable=not cfg.progress, dynamic_ncols=True) as bar:
        for groups, bad in loader:
            if bad and not cfg.skip_bad:
                raise ImageLoadError(bad[0][1])
            for i, reason in bad:
                yield i, None, reason
            for rows, x in groups:
                x = x.to(device)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast_for(cfg, device):
                    fmap = model.backbone(x)
                per_scale = [patch_descriptors(model, fmap, s, t, patches.dim) for s, t in patches.scales]
                for j, row in enumerate(rows):
                    sets = [(d[j].cpu().numpy(), p) for d, p in per_scale]
                    if not all(np.isfinite(d).all() for d, _ in sets):
                        why = "the model produced non-finite (NaN/inf) patch descriptors for it"
                        if not cfg.skip_bad:
                            raise ValueError(f"{paths[row]}: {why}; --skip-bad records it as a bad image")
                        yield row, None, why
                        continue
                    yield row, sets, tuple(fmap.shape[2:])
            bar.update(sum(len(r) for r, _ in groups) + len(bad))


def extract_patches(model, paths: Sequence[str | Path], names: Sequence[str], out: str | Path,
                    patches: PatchConfig | None = None, config: ExtractConfig | None = None, *,
                    callback: Callable[[int, int], None] | None = None,
                    on_status: Callable[[OutputStatus], None] | None = None, **overrides) -> Path:
    """Extract Patch-NetVLAD patch features of ``paths`` into the patch file ``out`` (resumable, atomic).

    Args:
        model: a ready PlaceModel with a NetVLAD head.
        paths, names: N image files and the names stored for them.
        out: output ``.h5`` (written as ``OUT.partial.h5``, renamed when complete).
        patches: :class:`PatchConfig` (default: the "speed" preset).
        config: :class:`ExtractConfig` (batching, device, image rules, skip_bad, overwrite, ...);
            keyword ``overrides`` replace its fields. Its ``half`` is ignored: ``patches.half`` decides.
        callback: ``callback(images_done, num_images)`` after each image.
        on_status: called once with the writer's decision ("new", "resume", "up-to-date").

    Returns:
        ``out``. A finished file of the same model, images, preprocessing and patch setting is reused;
        one from another is refused (FeatureFileError) unless ``overwrite``.
    """
    cfg = dataclasses.replace(config or ExtractConfig(), **overrides)
    patches = patches or PATCH_PRESETS["speed"]
    paths = [Path(p) for p in paths]
    names = [str(n) for n in names]
    out = Path(out)
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.precision == "int8" or cfg.compile:
        raise ValueError("patch features run the backbone eagerly in fp32, bf16 or fp16; "
                         "int8 and compile are options of global extraction only")
    if not paths:
        raise ValueError(f"{out}: empty image list, nothing to extract")
    if len(paths) != len(names):
        raise ValueError(f"{out}: {len(paths)} paths but {len(names)} names")
    if len(set(names)) != len(names):
        dup = next(n for i, n in enumerate(names) if n in names[:i])
        raise ValueError(f"{out}: duplicate image name {dup!r}")
    _check_model(model)
    if not isinstance(getattr(model, "head", None), NetVLAD):
        raise ValueError(f"{out}: patch features need a NetVLAD model; this one pools with "
                         f"{type(getattr(model, 'head', None)).__name__}")
    if patches.dim is not None:
        w = getattr(model, "whitening", None)
        if w is None or patches.dim > w.weight.shape[0]:
            have = "no PCA-whitening" if w is None else f"{w.weight.shape[0]}-D whitening"
            raise ValueError(f"{out}: patch dim {patches.dim} needs the model's PCA-whitening; it has {have}")
    pre = preprocess_for(model, cfg.max_side)
    image_rules = {"max_pixels": cfg.max_pixels, "oversize": cfg.oversize,
                   "exif_orientation": bool(cfg.exif_orientation)}
    attrs = {"fingerprint": model.fingerprint(), "preprocessing": {**_as_dict(pre), **image_rules},
             "compute": _compute_type(cfg), "cell_stride": int(getattr(model.backbone, "stride", 0))}
    if cfg.model_ref:
        attrs["model_ref"] = str(cfg.model_ref)
    dim = int(model.out_dim if patches.dim is None else patches.dim)
    writer = PatchWriter(out, names, patches.scales, dim, "float16" if patches.half else "float32", attrs,
                         overwrite=cfg.overwrite)
    todo = writer.open()
    logger.info(writer.status.message)
    if on_status is not None:
        on_status(writer.status)
    if writer.status.kind == "up-to-date":
        return out
    try:
        with contextlib.closing(_iter_patches(model, paths, todo, cfg, patches, out.name)) as items:
            for row, sets, extra in items:
                if sets is None:
                    writer.mark_bad(row, extra)
                else:
                    writer.write(row, sets, extra)
                if callback is not None:
                    callback(writer.done, len(names))
    except BaseException:
        if writer.done == 0 and writer.status.kind == "new":
            writer.discard()
            raise
        logger.info("%s: stopped after %d of %d images; rerun to resume", out, writer.done, len(names))
        writer.close()
        raise
    return writer.finish()


def compute_patches(model, paths: Sequence[str | Path], patches: PatchConfig | None = None,
                    config: ExtractConfig | None = None, **overrides) -> list:
    """Patch features of a few images in memory (a user's photos for ``netvlad query --rerank patch``).

    Returns:
        per image, per scale (descriptors P×D float32, positions P×2 int64), as a patch file stores
        them. A bad image raises ImageLoadError (or, with ``skip_bad``, gets empty patch sets).
    """
    cfg = dataclasses.replace(config or ExtractConfig(), **overrides)
    patches = patches or PATCH_PRESETS["speed"]
    paths = [Path(p) for p in paths]
    _check_model(model)
    dim = int(model.out_dim if patches.dim is None else patches.dim)
    empty = [(np.zeros((0, dim), np.float32), np.zeros((0, 2), np.int64))] * len(patches.scales)
    out: list = [empty] * len(paths)
    with contextlib.closing(_iter_patches(model, paths, np.ones(len(paths), bool), cfg, patches,
                                          "patches")) as items:
        for row, sets, _ in items:
            if sets is not None:
                out[row] = [(d.astype(np.float32), p.astype(np.int64)) for d, p in sets]
    return out
