"""Where downloads and converted checkpoints live, and the records that make them trustworthy.

Layout of a cache folder::

    downloads/<file_name>            the file as published (verified against its sha256 on every use)
    downloads/<file_name>.json       its record: sha256, url, size, time, origin (download | manual)
    downloads/<file_name>.partial    an unfinished download, resumed with an HTTP Range request
    downloads/<file_name>.lock       held while one process fetches or converts (others wait)
    models/<name>-<sha12>.safetensors  the converted checkpoint; <sha12> starts the source's sha256
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netvlad._atomic import atomic_write_text

__all__ = [
    "CachePaths",
    "DownloadRecord",
    "cache_lock",
    "default_cache_dir",
    "read_record",
    "sha256_file",
    "write_record",
]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def default_cache_dir(
    environ: Mapping[str, str] | None = None, platform: str | None = None, home: str | Path | None = None
) -> Path:
    """The cache folder used when a function gets ``cache_dir=None``.

    ``$NETVLAD_HOME`` when set; otherwise the platform's user cache folder plus ``netvlad``:
    ``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux and other Unixes, ``~/Library/Caches`` on macOS,
    ``%LOCALAPPDATA%`` on Windows (the folders platformdirs gives, without the dependency).

    Args:
        environ, platform, home: stand-ins for ``os.environ``, ``sys.platform`` and the home folder
            (for tests and for callers that manage their own environment).
    """
    env = os.environ if environ is None else environ
    if env.get("NETVLAD_HOME"):
        return Path(env["NETVLAD_HOME"]).expanduser()
    plat = sys.platform if platform is None else platform
    home = Path.home() if home is None else Path(home)
    if plat.startswith(("win", "cygwin")):
        base = Path(env["LOCALAPPDATA"]) if env.get("LOCALAPPDATA") else home / "AppData" / "Local"
        return base / "netvlad" / "Cache"
    if plat == "darwin":
        return home / "Library" / "Caches" / "netvlad"
    xdg = env.get("XDG_CACHE_HOME")
    # The XDG spec says to ignore a relative XDG_CACHE_HOME.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".cache"
    return base / "netvlad"


@dataclass(frozen=True)
class CachePaths:
    """The paths of one catalogue entry inside a cache folder."""

    root: Path
    name: str
    file_name: str

    @property
    def download(self) -> Path:
        return self.root / "downloads" / self.file_name

    @property
    def partial(self) -> Path:
        return self.download.with_name(self.file_name + ".partial")

    @property
    def record(self) -> Path:
        return self.download.with_name(self.file_name + ".json")

    @property
    def lock(self) -> Path:
        return self.download.with_name(self.file_name + ".lock")

    @property
    def rejected(self) -> Path:
        return self.download.with_name(self.file_name + ".rejected")

    def model(self, source_sha256: str) -> Path:
        return self.root / "models" / f"{self.name}-{source_sha256[:12]}.safetensors"

    def models(self) -> list[Path]:
        """Every converted checkpoint of this entry in the cache, whatever its source checksum."""
        folder = self.root / "models"
        if not folder.is_dir():
            return []
        prefix = f"{self.name}-"
        return sorted(p for p in folder.glob(f"{glob_escape(prefix)}*.safetensors")
                      if len(p.name) == len(prefix) + 12 + len(".safetensors"))


def glob_escape(text: str) -> str:
    """``text`` with glob metacharacters made literal."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


@dataclass(frozen=True)
class DownloadRecord:
    """The sidecar of a download: what the file was when it was first trusted.

    Attributes:
        sha256: the file's checksum (the catalogue's, or recorded at first use).
        size: bytes.
        url: where it came from (None for a file placed by hand).
        time: when it was recorded (ISO 8601, UTC).
        origin: "download" or "manual" (a file the user put there).
    """

    sha256: str
    size: int
    url: str | None
    time: str
    origin: str = "download"

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "url": self.url, "time": self.time,
                "origin": self.origin}


def read_record(path: Path) -> DownloadRecord | None:
    """The sidecar at ``path``, None when there is none.

    Raises:
        ValueError: a sidecar that is not one (it is never silently replaced: it holds the
            checksum every later use is verified against).
    """
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return DownloadRecord(sha256=str(d["sha256"]), size=int(d["size"]), url=d.get("url"),
                              time=str(d.get("time", "")), origin=str(d.get("origin", "download")))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable download record ({exc}); download the file again with "
                         "`netvlad weights get NAME --redownload`") from exc


def write_record(path: Path, sha256: str, size: int, url: str | None, origin: str) -> DownloadRecord:
    """Write a sidecar atomically and return it."""
    rec = DownloadRecord(sha256, size, url, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), origin)
    atomic_write_text(path, json.dumps(rec.to_dict(), indent=1) + "\n")
    return rec


def sha256_file(path: Path) -> str:
    """The file's sha256 (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    Why: ``torchrun`` starts several processes that may all ask for the same published model; the
    first fetches and converts it, the others wait and then find it cached, instead of appending to
    one ``.partial`` file together. The operating system's advisory lock (flock / msvcrt) is
    released when its holder dies, so a killed download never leaves a stale lock behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        if not _try_lock(f):
            log.warning("%s: another process holds it (fetching or converting); waiting", path)
            _lock(f)
        try:
            yield
        finally:
            _unlock(f)


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(f) -> bool:
        f.seek(0)
        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _lock(f) -> None:
        while not _try_lock(f):
            time.sleep(0.5)

    def _unlock(f) -> None:
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(f) -> bool:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _lock(f) -> None:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)

    def _unlock(f) -> None:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
