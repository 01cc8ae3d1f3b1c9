"""Sharded extraction: N processes (torchrun ranks, or the tasks of a job array) each extract a
disjoint slice of the image list into a resumable shard file; the shards merge into the feature
file a single process would have written.

Why the slices are made of *batches*: descriptors depend (at float rounding) on which images
share a forward pass, so a shard computes exactly the batches of the single-process plan
(:func:`netvlad.extract.plan_batches` over the whole list). Whole batches are dealt to shards,
largest first onto the least loaded (cost = network-input pixels), so shards are balanced by
work, not by count. Within a shard its rows keep their list order; because every batch of a size
bucket but the last is full, planning the shard's own rows gives back the same batches. The
merged file is therefore byte-identical to a single-process run: same names in the same order,
same descriptors, same identity attributes.

A shard of OUT is ``OUT.shard-IIIII-of-NNNNN.h5``: a complete feature file of its rows (usable on
its own, e.g. by ``netvlad index build``) with attributes naming the run (``shard_run``, a hash of
the image list, model identity and the assignment), ``shard_index``, ``shard_count`` and
``run_num_images``, and a ``shard_rows`` dataset (each row's position in the run's list). Shards
are written through the same resumable writer as any feature file: a killed process leaves
``OUT.shard-....partial.h5`` and the same command resumes its missing rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from netvlad.data.images import ImageLoadError, image_size
from netvlad.extract.batches import plan_batches, preprocess_for
from netvlad.extract.config import ExtractConfig
from netvlad.extract.run import _check_model, _config, extract_features, file_attrs
from netvlad.extract.sizing import SizePolicy
from netvlad.io import (
    FeatureFileError,
    FeatureIdentity,
    FeatureWriter,
    OutputStatus,
    names_sha256,
    output_status,
    partial_path,
    read_attrs,
)

logger = logging.getLogger("netvlad.extract")

#: Attributes of a shard that the merged file does not carry.
SHARD_ATTRS = ("shard_run", "shard_index", "shard_count", "run_num_images", "run_names_sha256")


def shard_path(out: str | Path, index: int, count: int) -> Path:
    """Where shard ``index`` (0-based) of ``count`` of the feature file ``out`` is written."""
    out = Path(out)
    stem = out.name[: -len(".h5")] if out.name.endswith(".h5") else out.name
    return out.with_name(f"{stem}.shard-{index:05d}-of-{count:05d}.h5")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → (I, N) with 0 ≤ I < N (I is 0-based, as Slurm's ``SLURM_ARRAY_TASK_ID`` with
    ``--array=0-(N-1)`` and torch ranks are)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"expected I/N (shard I of N, 0 <= I < N), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"expected I/N with 0 <= I < N, got {text!r}")
    return i, n


@dataclasses.dataclass
class ShardPlan:
    """Which rows of the image list each shard extracts.

    Attributes:
        rows: ``count`` sorted int64 arrays of row positions (disjoint, covering the list).
        cost: each shard's work (network-input pixels of its images).
        run: hex digest naming the run (image list, model identity, storage type, assignment).
    """

    rows: list[np.ndarray]
    cost: list[int]
    run: str

    @property
    def count(self) -> int:
        return len(self.rows)


def assign_batches(batches: Sequence[Sequence[int]], costs: Sequence[int], count: int) -> list[np.ndarray]:
    """Deal whole batches to ``count`` shards, largest cost first onto the least loaded shard
    (ties: the earlier batch, the lower shard); each shard's rows sorted. Deterministic."""
    load = [0] * count
    owned: list[list[int]] = [[] for _ in range(count)]
    for b in sorted(range(len(batches)), key=lambda j: (-costs[j], j)):
        s = min(range(count), key=lambda k: (load[k], k))
        load[s] += costs[b]
        owned[s].extend(batches[b])
    return [np.sort(np.asarray(r, dtype=np.int64)) for r in owned]


def _image_sizes(model, paths: Sequence[Path], cfg: ExtractConfig, progress: bool
                 ) -> tuple[list[Any], list[int]]:
    """Size bucket and network-input pixels of every image, as the single-process plan reads them
    (an unreadable header: a bucket of its own, found again and reported by the shard owning it)."""
    policy = SizePolicy(preprocess_for(model, cfg.max_side), cfg, model)
    sizes: list[Any] = []
    pixels: list[int] = []
    bar = tqdm(paths, unit="img", desc="image sizes", disable=not progress or len(paths) < 1000,
               dynamic_ncols=True)
    for i, p in enumerate(bar):
        try:
            hw = image_size(p, honour_exif=cfg.exif_orientation)
        except ImageLoadError:
            sizes.append(("bad", i))
            pixels.append(0)
            continue
        sizes.append(hw)
        pixels.append(policy.pixels(*hw))
    return sizes, pixels


def plan_shards(model, paths: Sequence[str | Path], names: Sequence[str], count: int,
                config: ExtractConfig | None = None, **overrides) -> ShardPlan:
    """Split the extraction of ``paths`` into ``count`` shards of whole single-process batches.

    Reads every image header (as a single-process run does); same arguments, same plan, on any
    machine.
    """
    cfg = _config(config, overrides)
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    paths = [Path(p) for p in paths]
    sizes, pixels = _image_sizes(model, paths, cfg, cfg.progress)
    batches = plan_batches(sizes, cfg.batch_size, pixels, cfg.max_pixels)
    costs = [max(1, sum(pixels[i] for i in b)) for b in batches]
    rows = assign_batches(batches, costs, count)
    owner = np.zeros(len(paths), dtype=np.int32)
    for k, r in enumerate(rows):
        owner[r] = k
    attrs = file_attrs(model, cfg)
    h = hashlib.sha256()
    identity = {"names": names_sha256([str(n) for n in names]), "count": count,
                "dtype": "float16" if cfg.half else "float32", "dim": int(model.out_dim),
                **{k: attrs[k] for k in ("fingerprint", "preprocessing", "compute")}}
    h.update(json.dumps(identity, sort_keys=True, default=str).encode())
    h.update(owner.tobytes())
    load = [int(sum(costs[j] for j, b in enumerate(batches) if owner[b[0]] == k)) for k in range(count)]
    return ShardPlan(rows=rows, cost=load, run=h.hexdigest())


def _check_leftover(path: Path, run: str, overwrite: bool) -> None:
    """A shard (or partial shard) at ``path`` from another run is refused with what to do."""
    for p in (path, partial_path(path)):
        if overwrite or not p.exists():
            continue
        try:
            theirs = read_attrs(p).get("shard_run")
        except (FeatureFileError, OSError):
            continue  # the writer reports (or discards) what it cannot read
        if theirs != run:
            raise FeatureFileError(
                f"{p}: a shard of another run (another image list, model, batch size, pixel bound or "
                "shard count); delete it or pass overwrite=True / --overwrite")


def final_status(model, names: Sequence[str], out: str | Path, cfg: ExtractConfig) -> OutputStatus:
    """What a single-process run would find at ``out`` ("up-to-date" or not), without writing."""
    attrs = file_attrs(model, cfg)
    identity = FeatureIdentity(
        fingerprint=attrs["fingerprint"], dim=int(model.out_dim), dtype="float16" if cfg.half else "float32",
        names_sha256=names_sha256([str(n) for n in names]),
        preprocessing=json.dumps(attrs["preprocessing"], sort_keys=True), compute=attrs["compute"])
    return output_status(out, identity, len(names), overwrite=cfg.overwrite)


def extract_shard(model, paths: Sequence[str | Path], names: Sequence[str], out: str | Path,
                  index: int, count: int, config: ExtractConfig | None = None, *,
                  plan: ShardPlan | None = None,
                  on_status: Callable[[OutputStatus], None] | None = None, **overrides) -> Path:
    """Extract shard ``index`` of ``count`` of the run that writes ``out`` (resumable, atomic).

    Args:
        model, paths, names, config, overrides: as :func:`netvlad.extract.extract_features`, for
            the *whole* image list (every shard gets the same arguments).
        out: the feature file the shards merge into; the shard is :func:`shard_path` of it.
        index, count: this shard (0-based) and the number of shards.
        plan: a precomputed :func:`plan_shards` (it reads every image header).
        on_status: as :func:`netvlad.extract.extract_features` (for the shard file).

    Returns:
        The shard's path, or ``out`` itself when ``out`` is already complete and up to date
        (then nothing is extracted).
    """
    cfg = _config(config, overrides)
    paths = [Path(p) for p in paths]
    names = [str(n) for n in names]
    if not 0 <= index < count:
        raise ValueError(f"shard index must be in 0..{count - 1}, got {index}")
    if len(paths) != len(names) or not paths:
        raise ValueError(f"{out}: {len(paths)} paths and {len(names)} names")
    _check_model(model)
    status = final_status(model, names, out, cfg)
    if status.kind == "up-to-date":
        logger.info(status.message)
        if on_status is not None:
            on_status(status)
        return Path(out)
    plan = plan or plan_shards(model, paths, names, count, cfg)
    path = shard_path(out, index, count)
    _check_leftover(path, plan.run, cfg.overwrite)
    rows = plan.rows[index]
    if not len(rows):  # more shards than batches: an empty shard still says it was done
        return _write_empty_shard(model, path, names, cfg, plan, index)
    extra = {"shard_run": plan.run, "shard_index": index, "shard_count": count,
             "run_num_images": len(names), "run_names_sha256": names_sha256(names)}
    return extract_features(model, [paths[i] for i in rows], [names[i] for i in rows], path, cfg,
                            on_status=on_status, extra_attrs=extra, datasets={"shard_rows": rows})


def _write_empty_shard(model, path: Path, names: list[str], cfg: ExtractConfig, plan: ShardPlan,
                       index: int) -> Path:
    attrs = {**file_attrs(model, cfg), "shard_run": plan.run, "shard_index": index, "shard_count": plan.count,
             "run_num_images": len(names), "run_names_sha256": names_sha256(names)}
    w = FeatureWriter(path, [], int(model.out_dim), "float16" if cfg.half else "float32", attrs,
                      overwrite=cfg.overwrite, datasets={"shard_rows": np.zeros(0, np.int64)})
    w.open()
    return w.finish()
