"""Published model → verified download → converted checkpoint → PlaceModel, each step cached.

``get_weights(name)`` makes sure ``downloads/<file>`` is the file the catalogue (or its first
download) says it is, converts it once into ``models/<name>-<sha12>.safetensors`` and returns that
path; later calls make no request. The converted checkpoint is redone when the source's checksum
or the converter's code changes. A lock per entry makes concurrent processes (torchrun) wait for
the one fetching instead of downloading into the same file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from netvlad import models as _models
from netvlad._sniff import sniff
from netvlad.models import PRESETS, PlaceModel
from netvlad.weights.cache import (
    CachePaths,
    DownloadRecord,
    cache_lock,
    default_cache_dir,
    read_record,
    sha256_file,
    write_record,
)
from netvlad.weights.catalogue import Catalogue, WeightsEntry, did_you_mean, find_weights, resolve_catalogue
from netvlad.weights.download import ChecksumError, DownloadError, download_file

__all__ = [
    "cache_status",
    "converter_version",
    "create_model",
    "get_weights",
    "load_model",
    "load_pretrained",
    "published",
]

log = logging.getLogger(__name__)

#: ``converter(path) -> (PlaceModel, ConversionInfo)``, e.g. :func:`netvlad.convert.convert_file`.
Converter = Callable[[Path], Any]


def converter_version(converter: Converter | None = None) -> str:
    """What a converted checkpoint records about the converter that made it.

    For the built-in converter, a digest of the ``netvlad.convert`` sources and the checkpoint
    format version: any change to the converter's code invalidates converted checkpoints, which
    are then redone from the (verified) download. For another ``converter``, its ``version``
    attribute or its qualified name.
    """
    if converter is not None:
        version = getattr(converter, "version", None)
        if version is not None:
            return str(version)
        return f"{converter.__module__}.{getattr(converter, '__qualname__', type(converter).__qualname__)}"
    import netvlad.convert
    from netvlad.models.checkpoint import VERSION

    root = Path(netvlad.convert.__file__).resolve().parent
    h = hashlib.sha256(f"checkpoint-v{VERSION}".encode())
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return f"netvlad.convert-{h.hexdigest()[:16]}"


def published(name: str, catalogue: Catalogue | str | Path | None = None) -> WeightsEntry | None:
    """The catalogue entry called ``name``, None when it is not a published model's name."""
    return resolve_catalogue(catalogue).get(name)


def cache_status(entry: WeightsEntry, cache_dir: str | Path | None = None) -> str:
    """"converted", "downloaded", "partial (N MiB)" or "no": what the cache holds for ``entry``."""
    paths = _paths(entry, cache_dir)
    if paths.models():
        return "converted"
    if paths.download.is_file():
        return "downloaded"
    if paths.partial.is_file():
        return f"partial ({paths.partial.stat().st_size / 2**20:.0f} MiB)"
    return "no"


def get_weights(
    name: str,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    *,
    catalogue: Catalogue | str | Path | None = None,
    converter: Converter | None = None,
    timeout: float = 30.0,
    retries: int = 2,
    redownload: bool = False,
) -> Path:
    """Download (once), verify and convert (once) a published model; return the checkpoint's path.

    Args:
        name: a catalogue name (``netvlad weights list``).
        cache_dir: the cache folder; None = :func:`default_cache_dir` ($NETVLAD_HOME, else the
            user cache folder).
        progress: show a progress bar while downloading.
        catalogue: a :class:`Catalogue` or catalogue file (None = the packaged one); a catalogue of
            your own points the same names at a mirror.
        converter: ``converter(path) -> (PlaceModel, info)``; None = :func:`netvlad.convert.convert_file`.
        timeout: seconds to wait for the server (connection and each read).
        retries: how many times a cut connection is resumed within this call.
        redownload: discard the cached download and its recorded checksum, then fetch it again.

    Another process fetching or converting the same entry holds its lock; this call waits for it.

    Returns:
        the converted checkpoint (``.safetensors``; ``netvlad.models.load_model`` reads it).

    Raises:
        ValueError: an unknown name; a checksum mismatch (:class:`ChecksumError`, naming the file,
            the expected and the actual sha256); a download the converter cannot read.
        OSError: the download failed (:class:`DownloadError`: the message names the URL and the
            path where a file fetched by hand is accepted).
    """
    entry = find_weights(name, catalogue)
    paths = _paths(entry, cache_dir)
    version = converter_version(converter)
    with cache_lock(paths.lock):
        if redownload:
            for p in (paths.download, paths.record, paths.partial, paths.rejected):
                p.unlink(missing_ok=True)
        sha = _verified_source(entry, paths, version, progress, timeout, retries)
        return _converted(entry, paths, sha, converter, version)


def load_pretrained(
    name: str,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    *,
    progress: bool = True,
    catalogue: Catalogue | str | Path | None = None,
    converter: Converter | None = None,
    timeout: float = 30.0,
) -> PlaceModel:
    """A published model, ready: :func:`get_weights` then ``load_model`` → eval mode on ``device``.

    Example:
        >>> model = load_pretrained("vd16_pitts30k_conv5_3_vlad_preL2_intra_white")  # doctest: +SKIP
        >>> model.out_dim  # doctest: +SKIP
        4096
    """
    kw = dict(catalogue=catalogue, converter=converter, timeout=timeout)
    path = get_weights(name, cache_dir, progress, **kw)
    try:
        return _models.load_model(path, device=device)
    except ValueError as exc:
        # A converted checkpoint this version of the model code cannot read is ours to redo.
        log.warning("%s: %s; converting %s again", path, exc, name)
        path.unlink(missing_ok=True)
        return _models.load_model(get_weights(name, cache_dir, progress, **kw), device=device)


def create_model(name_or_preset, pretrained: bool = False, **kw) -> PlaceModel:
    """A preset (→ :func:`netvlad.models.create_model`) or, with ``pretrained=True``, a published model.

    Args:
        name_or_preset: a preset name or :class:`~netvlad.models.ModelConfig`, or a catalogue name.
        pretrained: load a published model's weights (downloaded and converted once, then cached).
        kw: for a preset, ``weights``/``seed`` of :func:`netvlad.models.create_model`; for a
            published model, ``device``, ``cache_dir``, ``progress``, ``catalogue``, ``converter``,
            ``timeout`` of :func:`load_pretrained`.

    Raises:
        ValueError: a catalogue name without ``pretrained=True`` (its weights are the point), or
            ``pretrained=True`` with a preset (presets have no published weights).

    Example:
        >>> import netvlad
        >>> name = "vd16_pitts30k_conv5_3_vlad_preL2_intra_white"
        >>> m = netvlad.create_model(name, pretrained=True)  # doctest: +SKIP
    """
    catalogue = kw.pop("catalogue", None)
    if isinstance(name_or_preset, str) and name_or_preset not in PRESETS:
        cat = resolve_catalogue(catalogue)
        entry = cat.get(name_or_preset)
        if entry is not None:
            if not pretrained:
                raise ValueError(f"{name_or_preset}: a published model, whose weights are the point: pass "
                                 "pretrained=True to download and convert them")
            return load_pretrained(entry.name, catalogue=cat, **kw)
        if pretrained:
            hint = did_you_mean(name_or_preset, cat)
            raise ValueError(f"{name_or_preset!r} is not a published model (`netvlad weights list`){hint}")
    if pretrained:
        raise ValueError(f"{name_or_preset}: presets have no published weights; pretrained=True takes a "
                         "published model's name (`netvlad weights list`); for ImageNet backbone weights "
                         "pass weights='imagenet'")
    return _models.create_model(name_or_preset, **kw)


def load_model(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    weights: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    catalogue: Catalogue | str | Path | None = None,
    progress: bool = True,
) -> PlaceModel:
    """:func:`netvlad.models.load_model` that also takes a published model's name.

    Resolution order: an existing file, a preset, a catalogue name (downloaded and converted once,
    see :func:`get_weights`).

    Raises:
        FileNotFoundError: none of the three (the message lists the presets and suggests names).
        ValueError: ``weights`` with a checkpoint or a published model (they carry their own).
    """
    if isinstance(name_or_path, str) and name_or_path not in PRESETS and not Path(name_or_path).exists():
        cat = resolve_catalogue(catalogue)
        entry = cat.get(name_or_path)
        if entry is not None:
            if weights is not None:
                raise ValueError(f"{name_or_path}: --weights applies to presets only; a published model "
                                 "carries its own weights")
            return load_pretrained(entry.name, device, cache_dir, progress=progress, catalogue=cat)
        try:
            return _models.load_model(name_or_path, device=device, weights=weights)
        except FileNotFoundError as exc:
            hint = did_you_mean(name_or_path, cat)
            raise FileNotFoundError(f"{exc}, nor a published model (`netvlad weights list`){hint}") from None
    return _models.load_model(name_or_path, device=device, weights=weights)


def model_reference(model: str) -> str:
    """What to record so that a later command can rebuild ``model`` (a MODEL argument of
    :func:`load_model`): a preset or published-weights name as is (resolved as ``load_model`` does:
    an existing file wins), a checkpoint as an absolute path, so the reference still works from
    another working directory.

    Returns:
        the name, or the checkpoint's absolute path.
    """
    if (model in PRESETS or published(model) is not None) and not Path(model).exists():
        return model
    return str(Path(model).resolve())


# --------------------------------------------------------------------------- steps


def _paths(entry: WeightsEntry, cache_dir: str | Path | None) -> CachePaths:
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    return CachePaths(root, entry.name, entry.file_name)


def _verified_source(
    entry: WeightsEntry, paths: CachePaths, version: str, progress: bool, timeout: float, retries: int
) -> str:
    """The sha256 of a download known to be the right file, fetching it if needed."""
    record = read_record(paths.record)
    if entry.sha256 and record and record.sha256 != entry.sha256:
        raise ChecksumError(
            f"{paths.download}: the catalogue's sha256 for {entry.name} is {entry.sha256}, but "
            f"{record.sha256} was recorded at its {_how(record)}; refused (the file, or the catalogue, "
            f"changed): run `netvlad weights get {entry.name} --redownload` to fetch it again")
    expected = entry.sha256 or (record.sha256 if record else None)
    if paths.download.is_file():
        return _check_cached(entry, paths, expected, record)
    if expected and _current_model(paths.model(expected), expected, version):
        return expected  # the user removed the download; the converted checkpoint is all we need
    try:
        res = download_file(entry.url, paths.download, expected_sha256=expected, timeout=timeout,
                            retries=retries, progress=progress)
    except DownloadError as exc:
        where = "" if entry.manual_url == entry.url else f" from {entry.manual_url}"
        raise DownloadError(exc.url, exc.reason, exc.resumable, message=(
            f"{entry.name}: cannot download {entry.url}: {exc.reason}; or fetch it by hand{where} and put "
            f"it at {paths.download}")) from None
    except ChecksumError as exc:
        source = "the catalogue's" if entry.sha256 else f"recorded at its {_how(record)}"
        raise ChecksumError(f"{entry.name}: {exc} (expected sha256: {source})") from None
    if record is None:
        write_record(paths.record, res.sha256, res.size, entry.url, "download")
    return res.sha256


def _check_cached(entry: WeightsEntry, paths: CachePaths, expected: str | None, record) -> str:
    actual = sha256_file(paths.download)
    if expected is not None and actual != expected:
        source = "the catalogue's" if entry.sha256 else f"recorded at its {_how(record)}"
        raise ChecksumError(
            f"{paths.download}: sha256 mismatch for {entry.name}: expected {expected} ({source}), got "
            f"{actual}; the file changed and is not used: run `netvlad weights get {entry.name} "
            "--redownload` or put the right file there")
    if record is None:
        # A file put there by hand (the path every download error names): trusted on first use.
        kind = sniff(paths.download)
        if kind in ("html", "empty"):
            what = "an HTML page" if kind == "html" else "an empty file"
            raise ValueError(f"{paths.download}: {what}, not {entry.name}'s model file; fetch it again from "
                             f"{entry.manual_url}")
        write_record(paths.record, actual, paths.download.stat().st_size, None, "manual")
        log.info("%s: recorded sha256 %s of a file placed by hand", paths.download, actual)
    return actual


def _how(record: DownloadRecord | None) -> str:
    if record is None:
        return "first download"
    what = "first download" if record.origin == "download" else "first use (placed by hand)"
    return f"{what} ({record.time})"


def _current_model(path: Path, source_sha256: str, version: str) -> bool:
    """``path`` is a readable converted checkpoint of this source made by this converter version."""
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        made = json.loads(meta.get("extra", "{}")).get("weights", {})
    except Exception as exc:  # safetensors raises its own error types; any failure means "redo it"
        log.warning("%s: unreadable converted checkpoint (%s); converting again", path, exc)
        return False
    return made.get("source_sha256") == source_sha256 and made.get("converter") == version


def _converted(
    entry: WeightsEntry, paths: CachePaths, sha: str, converter: Converter | None, version: str
) -> Path:
    from netvlad.models import save_model

    target = paths.model(sha)
    if _current_model(target, sha, version):
        return target
    if converter is None:
        from netvlad.convert import convert_file as converter
    try:
        model, info = converter(paths.download)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{entry.name}: {paths.download} (sha256 {sha[:12]}…) was downloaded and verified, "
                         f"but does not convert: {exc}") from exc
    made = {"name": entry.name, "project": entry.project, "url": entry.url, "file_name": entry.file_name,
            "source_sha256": sha, "converter": version, "licence": entry.licence,
            "reproduces": entry.reproduces}
    extra = {"weights": made, "conversion": info.to_dict() if hasattr(info, "to_dict") else {}}
    save_model(model, target, extra=extra)
    for old in paths.models():
        if old != target:  # made from an earlier source file: the new one replaces it
            old.unlink(missing_ok=True)
    log.info("%s: converted %s → %s", entry.name, paths.download, target)
    return target
