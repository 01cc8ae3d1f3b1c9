"""Run a place-recognition model over images in batches: in memory or into a resumable feature file.

The MATLAB original (``serialAllFeats``) stacks images into batches, so sets of mixed image sizes
need batch size 1. Here image sizes are read from file headers (cheap) and images of equal size
are grouped into the same batches, so any set runs batched. The batch plan depends only on the
image list, the sizes, the batch size and the pixel bound, so a resumed run computes exactly the
batches the uninterrupted run would have (byte-identical descriptors).

Memory is bounded per forward pass (``ExtractConfig.max_pixels``): a batch of equal-size images
holds at most that many network-input pixels, and a single image above it is downscaled (JPEGs
decoded at reduced scale) or refused; a decompression bomb is a bad image. EXIF orientation is a
setting (off for datasets, as their protocols are).

CPU speed (benchmarks/extract.py): inference_mode, channels_last activations and weights, one
process with torch's default thread count (one per core), JPEG decoding overlapped in DataLoader
workers that use one thread each, and glibc malloc tuning (:func:`tune_malloc`).

Parts: ``config`` (settings), ``sizing`` (the pixel bound and memory estimates), ``batches`` (the
size-bucketed batch plan and image decoding), ``run`` (batched extraction), ``single`` (one image),
``shard`` / ``merge`` / ``distributed`` (several processes or machines: shards of whole batches,
their merge, torchrun ranks), ``patches`` (Patch-NetVLAD patch features), ``jobs`` (the files one
``netvlad extract`` run writes: a folder's images, a dataset's splits).
"""

from __future__ import annotations

from netvlad.extract.batches import plan_batches, preprocess_for
from netvlad.extract.config import (
    DEFAULT_MAX_PIXELS,
    OVERSIZE_MODES,
    ExtractConfig,
    default_num_workers,
    tune_malloc,
)
from netvlad.extract.distributed import RankFailedError, extract_distributed, init_distributed
from netvlad.extract.jobs import ExtractJob, dataset_jobs, folder_job
from netvlad.extract.merge import merge_shards
from netvlad.extract.patches import (
    PATCH_PRESETS,
    PatchConfig,
    compute_patches,
    estimate_patch_bytes,
    extract_patches,
    patch_descriptors,
    patch_file_for,
    patch_positions,
)
from netvlad.extract.run import compute_descriptors, extract_features, is_channels_last
from netvlad.extract.shard import ShardPlan, extract_shard, parse_shard, plan_shards, shard_path
from netvlad.extract.single import ModelImageReader, compute_representation
from netvlad.extract.sizing import estimate_forward_bytes, fit_size, forward_bytes_per_pixel

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "OVERSIZE_MODES",
    "PATCH_PRESETS",
    "ExtractConfig",
    "ExtractJob",
    "ModelImageReader",
    "PatchConfig",
    "RankFailedError",
    "ShardPlan",
    "compute_descriptors",
    "compute_patches",
    "compute_representation",
    "dataset_jobs",
    "default_num_workers",
    "estimate_forward_bytes",
    "estimate_patch_bytes",
    "extract_distributed",
    "extract_features",
    "extract_patches",
    "extract_shard",
    "folder_job",
    "is_channels_last",
    "fit_size",
    "forward_bytes_per_pixel",
    "init_distributed",
    "merge_shards",
    "parse_shard",
    "patch_descriptors",
    "patch_file_for",
    "patch_positions",
    "plan_batches",
    "plan_shards",
    "preprocess_for",
    "shard_path",
    "tune_malloc",
]
