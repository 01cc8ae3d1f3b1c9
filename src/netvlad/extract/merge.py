"""Merging the shards of one sharded extraction into the feature file a single process writes
(see :mod:`netvlad.extract.shard` for what a shard is)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from netvlad.extract.shard import SHARD_ATTRS, shard_path
from netvlad.io import FeatureFileError, FeatureRows, FeatureWriter, names_sha256

logger = logging.getLogger("netvlad.extract")

#: Attributes every feature file computes for itself (never copied from a shard).
_OWN_ATTRS = ("format", "version", "dim", "dtype", "num_images", "names_sha256", "complete", "done",
              "bad_images")



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
