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
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from netvlad.data.images import ImageLoadError, image_size
from netvlad.extract.config import ExtractConfig
from netvlad.extract.run import (
    _check_model,
    _config,
    extract_features,
    file_attrs,
    plan_batches,
    preprocess_for,
)
from netvlad.extract.sizing import SizePolicy
from netvlad.io import (
    FeatureFileError,
    FeatureIdentity,
    FeatureRows,
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
#: Attributes every feature file computes for itself (never copied from a shard).
_OWN_ATTRS = ("format", "version", "dim", "dtype", "num_images", "names_sha256", "complete", "done",
              "bad_images")


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


# ----------------------------------------------------------------------------------------- merge


def _open_shards(shards: Sequence[str | Path]) -> list[FeatureRows]:
    opened: list[FeatureRows] = []
    try:
        for p in shards:
            f = FeatureRows(p, allow_partial=True)
            opened.append(f)
            if "shard_run" not in f.attrs:
                raise FeatureFileError(f"{p}: not a shard (no shard_run attribute): a feature file of a "
                                       "whole run needs no merging")
            if not f.attrs.get("complete", False):
                raise FeatureFileError(
                    f"{p}: shard {f.attrs['shard_index']} of {f.attrs['shard_count']} is partial "
                    f"({f.attrs.get('done', '?')} of {f.attrs.get('num_images', '?')} images): rerun its "
                    "extraction to finish it")
    except BaseException:
        for f in opened:
            f.close()
        raise
    return opened


def _check_one_run(shards: list[FeatureRows], out: Path) -> int:
    """All shards of one run, each once, none missing; returns the run's image count."""
    first = shards[0]
    count = int(first.attrs["shard_count"])
    for f in shards[1:]:
        if f.attrs["shard_run"] != first.attrs["shard_run"] or int(f.attrs["shard_count"]) != count:
            raise FeatureFileError(
                f"{f.path}: not a shard of the run of {first.path} (another image list, model, batch size, "
                f"pixel bound or shard count: run {str(f.attrs['shard_run'])[:12]} vs "
                f"{str(first.attrs['shard_run'])[:12]})")
    seen: dict[int, Path] = {}
    for f in shards:
        i = int(f.attrs["shard_index"])
        if i in seen:
            raise FeatureFileError(f"{f.path}: shard {i} of {count} given twice (also {seen[i]})")
        seen[i] = f.path
    missing = [i for i in range(count) if i not in seen]
    if missing:
        where = shard_path(out, missing[0], count)
        raise FeatureFileError(
            f"missing shard(s) {', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''} "
            f"of {count} (e.g. {where}): extract it with --shard {missing[0]}/{count}")
    return int(first.attrs["run_num_images"])


def merge_shards(shards: Sequence[str | Path], out: str | Path, *, overwrite: bool = False,
                 progress: bool = True, rows_per_block: int = 16384) -> Path:
    """Assemble the shards of one run into the feature file ``out`` (resumable, atomic).

    The result is the file a single-process run writes: names in the run's order, the same
    descriptors and identity attributes (``bad_images`` listed in row order). Memory: the names and
    one block of rows.

    Raises:
        FeatureFileError: a file that is not a shard, a partial shard, shards of different runs, a
            shard given twice, a missing shard (named, with the option that extracts it), or rows
            that do not add up to the run's image list.
    """
    out = Path(out)
    if not shards:
        raise ValueError(f"{out}: no shards to merge")
    opened = _open_shards(shards)
    try:
        total = _check_one_run(opened, out)
        names: list[str | None] = [None] * total
        where: list[np.ndarray] = []
        for f in opened:
            rows = f.dataset("shard_rows")
            if rows is None or len(rows) != len(f) or (len(rows) and (rows.min() < 0 or rows.max() >= total)):
                raise FeatureFileError(f"{f.path}: shard_rows missing or out of range")
            for r, n in zip(rows.tolist(), f.names()):
                if names[r] is not None:
                    raise FeatureFileError(f"{f.path}: row {r} is also in another shard")
                names[r] = n
            where.append(rows)
        if any(n is None for n in names):
            raise FeatureFileError(f"{out}: the shards hold {sum(n is not None for n in names)} of the run's "
                                   f"{total} rows")
        if names_sha256(names) != opened[0].attrs["run_names_sha256"]:
            raise FeatureFileError(f"{out}: the shards' names do not make the run's image list")
        return _write_merged(opened, where, names, out, overwrite, progress, rows_per_block)
    finally:
        for f in opened:
            f.close()


def _write_merged(shards: list[FeatureRows], where: list[np.ndarray], names: list[str], out: Path,
                  overwrite: bool, progress: bool, block: int) -> Path:
    first = shards[0]
    attrs = {k: v for k, v in first.attrs.items() if k not in SHARD_ATTRS + _OWN_ATTRS}
    writer = FeatureWriter(out, names, first.dim, first.dtype, attrs, overwrite=overwrite)
    todo = writer.open()
    logger.info(writer.status.message)
    if writer.status.kind == "up-to-date":
        return out
    try:
        with tqdm(total=int(todo.sum()), unit="row", desc=f"merge {out.name}", disable=not progress,
                  dynamic_ncols=True) as bar:
            for f, rows in zip(shards, where):
                bad = set(f.attrs.get("bad_images", []))
                for start, block_names, x in f.blocks(block):
                    r = rows[start:start + len(x)]
                    mine = todo[r]
                    is_bad = np.array([n in bad for n in block_names], dtype=bool) & mine
                    good = mine & ~is_bad
                    if good.any():
                        writer.write(r[good], x[good])
                    if is_bad.any():
                        writer.mark_bad(r[is_bad].tolist(), ["failed in its shard"] * int(is_bad.sum()))
                    bar.update(int(mine.sum()))
    except BaseException:
        writer.close()
        raise
    return writer.finish()


def remove_shards(out: str | Path, count: int) -> None:
    """Delete the shard files of ``out`` (after a merge)."""
    for i in range(count):
        shard_path(out, i, count).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------- torch.distributed


def init_distributed(device: str) -> tuple[int, int, str]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1): gloo on CPU, nccl on CUDA.

    Returns ``(rank, world_size, device)``, the device being this rank's GPU (``cuda:LOCAL_RANK``)
    on CUDA. Without torchrun: ``(0, 1, device)`` and nothing is initialised.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    use_cuda = str(device).startswith("cuda")
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return dist.get_rank(), dist.get_world_size(), device


class RankFailedError(RuntimeError):
    """Another rank of a distributed extraction failed (its message says which and why)."""


def _all_ok(error: BaseException | None) -> list[str | None]:
    """Every rank's error message (None: it succeeded), gathered on every rank."""
    import torch.distributed as dist

    msgs: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(msgs, None if error is None else f"{type(error).__name__}: {error}")
    return msgs


def extract_distributed(model, paths: Sequence[str | Path], names: Sequence[str], out: str | Path,
                        config: ExtractConfig | None = None, *,
                        on_status: Callable[[OutputStatus], None] | None = None, **overrides) -> Path:
    """Extract into ``out`` with every rank of the initialised process group taking one shard;
    rank 0 merges the shards into ``out`` and removes them. Every rank returns ``out``.

    The same call on one process (no process group) is :func:`extract_features`. A rank that
    fails or is killed leaves its partial shard; rerunning the same command resumes every shard's
    missing rows. A failure on any rank raises on every rank (its own error there, a
    :class:`RankFailedError` naming the rank and the error on the others).
    """
    import torch.distributed as dist

    cfg = _config(config, overrides)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return extract_features(model, paths, names, out, cfg, on_status=on_status)
    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(out)
    error: BaseException | None = None
    try:
        result = extract_shard(model, paths, names, out, rank, world, cfg, on_status=on_status)
    except Exception as exc:  # noqa: BLE001 - reported to every rank below, then re-raised
        error, result = exc, None
    msgs = _all_ok(error)
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(msgs) if m is not None]
    if failed:
        r, m = failed[0]
        raise RankFailedError(f"rank {r} of {world} failed ({m}); its shard stays partial: rerun to resume")
    if result == out:  # up to date on every rank (the same check on the same file)
        return out
    if rank == 0:
        try:
            merge_shards([shard_path(out, i, world) for i in range(world)], out, overwrite=cfg.overwrite,
                         progress=cfg.progress)
            remove_shards(out, world)
        except Exception as exc:  # noqa: BLE001
            error = exc
    msgs = _all_ok(error)
    if error is not None:
        raise error
    if msgs[0] is not None:
        raise RankFailedError(f"rank 0 failed to merge the shards into {out} ({msgs[0]})")
    return out
