"""A full disk (or quota) as one line naming the file, the space needed and the space free."""

from __future__ import annotations

import errno
import os
from pathlib import Path


class DiskFullError(OSError):
    """No space left on the device (or quota exceeded) while writing an output; the message says
    which file and about how much space is needed."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# h5py wraps HDF5's failures (RuntimeError "... errno = 28, error message = 'No space left on
# device'"), torch and faiss raise RuntimeErrors that only say so in words.
_FULL_WORDS = ("No space left on device", "errno = 28", "Disk quota exceeded", "errno = 122")


def is_disk_full(exc: BaseException) -> bool:
    """True for "no space left on device" / "disk quota exceeded", whoever wrapped it."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if isinstance(e, (OSError, RuntimeError)) and any(w in str(e) for w in _FULL_WORDS):
            return True
    return False


def _chain(exc: BaseException | None):
    seen = 0
    while exc is not None and seen < 10:
        yield exc
        exc = exc.__cause__ or exc.__context__
        seen += 1


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes an unprivileged process may still write on the filesystem holding ``path`` (or its
    nearest existing parent); None when unknown."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def disk_full_error(path: str | os.PathLike, needed: int | None = None, *, how: str = "",
                    then: str = "free some space and rerun") -> DiskFullError:
    """A one-line :class:`DiskFullError` for ``path``.

    Args:
        path: the file being written.
        needed: estimated bytes still to write (None: unknown).
        how: how ``needed`` was estimated, e.g. "136 rows × 4096 × 4 bytes" (shown in brackets).
        then: what to do.
    """
    free = free_bytes(path)
    parts = [f"{path}: disk full (no space left on device)"]
    if needed is not None:
        parts.append(f"about {format_bytes(needed)} more needed" + (f" ({how})" if how else ""))
    if free is not None:
        parts.append(f"{format_bytes(free)} free there now")
    return DiskFullError("; ".join(parts) + f"; {then}")
