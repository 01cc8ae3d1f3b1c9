"""Batched extraction: images → descriptors, in memory or into a resumable feature file."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from netvlad.data.images import ImageLoadError
from netvlad.extract.batches import _collate, _ImageFiles, _plan, _worker_init, preprocess_for
from netvlad.extract.config import ExtractConfig, default_num_workers, tune_malloc
from netvlad.extract.precision import Runner, calibration_rows, make_runner, precision_note
from netvlad.extract.sizing import SizePolicy
from netvlad.io import FeatureWriter, OutputStatus

logger = logging.getLogger("netvlad.extract")


def _as_dict(obj: Any) -> dict:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return dict(obj) if isinstance(obj, dict) else {"repr": repr(obj)}


def is_channels_last(model: torch.nn.Module) -> bool:
    """True when the model's 4-D weights (convolutions) are in channels_last memory format."""
    w4 = [p for p in model.parameters() if p.dim() == 4]
    return bool(w4) and all(p.is_contiguous(memory_format=torch.channels_last) for p in w4)


@contextlib.contextmanager
def _prepared(model: torch.nn.Module, device: str | torch.device, channels_last: bool):
    """eval mode on ``device`` (channels_last weights) for the duration; the model is restored after."""
    was_training = model.training
    first = next(model.parameters(), None)
    orig_device = first.device if first is not None else None
    convert = channels_last and not is_channels_last(model)
    device = torch.device(device)
    model.eval().to(device)
    if convert:
        model.to(memory_format=torch.channels_last)
    try:
        yield device
    finally:
        if convert:
            model.to(memory_format=torch.contiguous_format)
        if orig_device is not None and orig_device != device:
            model.to(orig_device)
        model.train(was_training)


def _compute_type(cfg: ExtractConfig) -> str:
    if cfg.precision is not None:
        return cfg.precision
    if cfg.bf16 or (cfg.amp and torch.device(cfg.device).type == "cpu"):
        return "bf16"
    return "fp16" if cfg.amp else "fp32"


def autocast_for(cfg: ExtractConfig, device: torch.device):
    """The autocast context of an eager forward at ``cfg``'s precision (fp32: none).

    int8 has no autocast form (it is a quantised copy of the model), so it is refused here.
    """
    kind = _compute_type(cfg)
    if kind == "int8":
        raise ValueError("int8 precision needs a quantised model; this step runs eager in fp32, bf16 or fp16")
    if kind == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if kind == "bf16" else torch.float16)


def _runner(model, paths: Sequence[Path], cfg: ExtractConfig, device: torch.device) -> Runner:
    """The model at the configured precision; int8 calibrates on images spread over ``paths``."""
    kind = _compute_type(cfg)
    note = precision_note(kind, device)
    if note:
        logger.warning(note)
    rows = calibration_rows(len(paths))
    files = _ImageFiles(paths, SizePolicy(preprocess_for(model, cfg.max_side), cfg))

    def calibration():
        return (x.unsqueeze(0).to(device) for _, x, _ in map(files.__getitem__, rows) if x is not None)

    return make_runner(model, kind, compile=cfg.compile, device=device, calibration=calibration,
                       calibration_key="|".join(str(paths[i]) for i in rows))


def _forward(runner: Runner | torch.nn.Module, x: torch.Tensor, cfg: ExtractConfig, device: torch.device
             ) -> np.ndarray:
    if not isinstance(runner, Runner):  # a bare model: eager, at the autocast precision
        kind = _compute_type(cfg)
        runner = make_runner(runner, kind if kind != "int8" else "fp32", device=device)
    x = x.to(device, non_blocking=True)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = runner(x)
    if runner.precision != "fp32":
        # The final L2 norm may have run in reduced precision; redo it in float32.
        y = y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return y.cpu().numpy()


def _iter_descriptors(model, paths: Sequence[Path], todo: np.ndarray, cfg: ExtractConfig,
                      desc: str) -> Iterator[tuple[list[int], np.ndarray | None, list[str]]]:
    """Yield ``(rows, descriptors len(rows)×D, [])`` per batch, or ``(rows, None, reasons)`` for bad
    images (raising ImageLoadError instead unless ``cfg.skip_bad``)."""
    plan, bad = _plan(model, paths, todo, cfg)
    for i, reason in bad:
        yield [i], None, [reason]
    if not plan:
        return
    device = torch.device(cfg.device)
    if device.type == "cpu" and cfg.tune_malloc:
        tune_malloc()
    workers = default_num_workers(device) if cfg.num_workers is None else int(cfg.num_workers)
    loader = torch.utils.data.DataLoader(
        _ImageFiles(paths, SizePolicy(preprocess_for(model, cfg.max_side), cfg)), batch_sampler=plan,
        num_workers=workers, collate_fn=_collate, worker_init_fn=_worker_init if workers else None,
        pin_memory=device.type == "cuda", prefetch_factor=2 if workers else None)
    total = sum(len(b) for b in plan)
    with _prepared(model, device, cfg.channels_last), torch.inference_mode(), \
            tqdm(total=total, unit="img", desc=desc, disable=not cfg.progress, dynamic_ncols=True) as bar:
        runner = _runner(model, paths, cfg, device)
        for groups, bad in loader:
            if bad and not cfg.skip_bad:
                raise ImageLoadError(bad[0][1])
            if bad:
                yield [i for i, _ in bad], None, [m for _, m in bad]
            for rows, x in groups:
                yield from _finite_or_bad(rows, _forward(runner, x, cfg, device), paths, cfg.skip_bad)
            bar.update(sum(len(r) for r, _ in groups) + len(bad))


def _finite_or_bad(rows: list[int], y: np.ndarray, paths: Sequence[Path], skip_bad: bool):
    """Split a batch's descriptors into finite ones and bad images: a NaN/inf descriptor (fp16
    overflow, a degenerate image) is never stored as a result (ValueError naming the image, or
    with ``skip_bad`` a bad image: NaN row, listed in ``bad_images``)."""
    ok = np.isfinite(y).all(axis=1)
    if ok.all():
        yield rows, y, []
        return
    bad = [r for r, good in zip(rows, ok) if not good]
    why = "the model produced a non-finite (NaN/inf) descriptor for it"
    if not skip_bad:
        raise ValueError(f"{paths[bad[0]]}: {why}; skip_bad=True / --skip-bad records it as a bad image")
    if ok.any():
        yield [r for r, good in zip(rows, ok) if good], y[ok], []
    yield bad, None, [why] * len(bad)


def _config(config: ExtractConfig | None, overrides: dict) -> ExtractConfig:
    return dataclasses.replace(config or ExtractConfig(), **overrides)


def _check_model(model) -> None:
    for attr in ("out_dim", "preprocess", "check_ready"):
        if not hasattr(model, attr):
            raise TypeError(f"model has no {attr!r}: pass a netvlad PlaceModel (netvlad.models.load_model)")
    model.check_ready()


def file_attrs(model, cfg: ExtractConfig) -> dict[str, Any]:
    """The attributes :func:`extract_features` stores: the file's identity and provenance."""
    pre = preprocess_for(model, cfg.max_side)
    # How files become network inputs, beyond the model's Preprocess, is part of the file's identity:
    # a rerun with another pixel bound or orientation rule must not reuse the descriptors.
    image_rules = {"max_pixels": cfg.max_pixels, "oversize": cfg.oversize,
                   "exif_orientation": bool(cfg.exif_orientation)}
    attrs = {"fingerprint": model.fingerprint(), "preprocessing": {**_as_dict(pre), **image_rules},
             "model_config": _as_dict(getattr(model, "config", {})),
             "compute": _compute_type(cfg)}
    if cfg.model_ref:
        attrs["model_ref"] = str(cfg.model_ref)
    return attrs


def extract_features(model, paths: Sequence[str | Path], names: Sequence[str], out: str | Path,
                     config: ExtractConfig | None = None, *,
                     callback: Callable[[int, int], None] | None = None,
                     on_status: Callable[[OutputStatus], None] | None = None,
                     extra_attrs: dict[str, Any] | None = None,
                     datasets: dict[str, np.ndarray] | None = None, **overrides) -> Path:
    """Extract descriptors of ``paths`` into the feature file ``out`` (resumable, atomic).

    Args:
        model: a ready PlaceModel (``out_dim``, ``preprocess``, ``check_ready()``, ``fingerprint()``).
        paths: N image files.
        names: N names stored in the file (usually paths relative to the image root).
        out: output ``.h5``; written as ``OUT.partial.h5`` and renamed when complete.
        config: :class:`ExtractConfig`; keyword ``overrides`` replace its fields
            (``batch_size=``, ``num_workers=``, ``device=``, ``half=``, ``amp=``, ``skip_bad=``,
            ``max_side=`` (0: native resolution), ``max_pixels=``, ``oversize=``,
            ``exif_orientation=``, ``model_ref=``, ...).
        callback: called as ``callback(rows_done, num_images)`` after each stored batch.
        on_status: called once, before any image is read, with the writer's decision
            (:class:`netvlad.io.OutputStatus`: ``kind`` "new", "resume" or "up-to-date", rows
            ``done``, and a ``message`` such as "resuming OUT: 16 of 56 rows done").
        extra_attrs, datasets: more attributes and datasets to store (a shard's, see
            :mod:`netvlad.extract.shard`); not part of the file's identity.

    Returns:
        ``out``. An existing ``out`` from the same model, preprocessing and image list is reused
        (logged as up to date); one from another is refused (FeatureFileError) unless
        ``overwrite``. An interrupted run leaves ``OUT.partial.h5``; rerunning resumes it.

    Raises:
        ValueError: empty image list, names/paths mismatch or duplicate names.
        ImageLoadError: an unreadable image, a decompression bomb or (``oversize="refuse"``) an
            image over ``max_pixels`` (names it), unless ``skip_bad``: then its row is NaN and its
            name is listed in the file's ``bad_images`` attribute.

    The file's ``preprocessing`` attribute is the model's preprocessing as applied (``max_side``
    override included) plus ``max_pixels``, ``oversize`` and ``exif_orientation``.
    """
    cfg = _config(config, overrides)
    paths = [Path(p) for p in paths]
    names = [str(n) for n in names]
    out = Path(out)
    _check_image_list(paths, names, out, cfg)
    _check_model(model)
    attrs = {**file_attrs(model, cfg), **(extra_attrs or {})}
    writer = FeatureWriter(out, names, int(model.out_dim), "float16" if cfg.half else "float32", attrs,
                           overwrite=cfg.overwrite, datasets=datasets)
    todo = writer.open()
    logger.info(writer.status.message)
    if on_status is not None:
        on_status(writer.status)
    if writer.status.kind == "up-to-date":
        return out
    _write_descriptors(writer, model, paths, todo, cfg, out, callback)
    return _finish(writer, out)


def _check_image_list(paths: list[Path], names: list[str], out: Path, cfg: ExtractConfig) -> None:
    """ValueError for a request that cannot make a feature file, before the partial file exists."""
    if cfg.batch_size < 1:  # checked before the partial file exists (README: When things go wrong)
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if not paths:
        raise ValueError(f"{out}: empty image list, nothing to extract")
    if len(paths) != len(names):
        raise ValueError(f"{out}: {len(paths)} paths but {len(names)} names")
    if len(set(names)) != len(names):
        dup = next(n for i, n in enumerate(names) if n in names[:i])
        raise ValueError(f"{out}: duplicate image name {dup!r}")


def _write_descriptors(writer: FeatureWriter, model, paths: list[Path], todo: np.ndarray, cfg: ExtractConfig,
                       out: Path, callback: Callable[[int, int], None] | None) -> None:
    """Compute the rows still to do into the open ``writer``; on any exception leave a resumable
    partial file (or none, if nothing was computed in a new one) and re-raise."""
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
                    callback(writer.done, len(paths))
    except BaseException:
        if writer.done == 0 and writer.status.kind == "new":
            writer.discard()  # nothing computed yet: nothing to resume, no file left behind
            raise
        logger.info("%s: stopped after %d of %d images; rerun to resume", out, writer.done, len(paths))
        writer.close()
        raise


def _finish(writer: FeatureWriter, out: Path) -> Path:
    """Rename the complete file into place, warning about the bad images it lists."""
    bad = writer.bad_images
    path = writer.finish()
    if bad:
        logger.warning("%s: %d bad image(s) skipped (rows are NaN, names in attribute bad_images): %s",
                       out, len(bad), ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))
    return path


def compute_descriptors(model, paths: Sequence[str | Path], config: ExtractConfig | None = None, *,
                        label: str = "descriptors", **overrides) -> np.ndarray:
    """Descriptors of ``paths`` in memory: an N×out_dim float32 array (rows of bad images are NaN
    with ``skip_bad=True``; otherwise a bad image raises ImageLoadError naming it). Bad images are
    those :func:`extract_features` calls bad (unreadable, decompression bombs, refused oversize).

    Same batching and speed settings as :func:`extract_features` (``batch_size=``, ``device=``,
    ``progress=``, ... as keyword overrides of ``config``); ``label`` names the progress bar.
    """
    cfg = _config(config, overrides)
    paths = [Path(p) for p in paths]
    _check_model(model)
    preprocess_for(model, cfg.max_side)  # a bad max_side fails before any image is read
    result = np.full((len(paths), int(model.out_dim)), np.nan, dtype=np.float32)
    with contextlib.closing(_iter_descriptors(model, paths, np.ones(len(paths), bool), cfg,
                                              desc=label)) as batches:
        for rows, desc, _ in batches:
            if desc is not None:
                result[rows] = desc
    return result


