"""Atomic file writes: write a temp file in the target's folder, then ``os.replace`` it into place.

Why: a crash, a Ctrl-C or a full disk in the middle of a write must never leave a partial file
under the final name (a truncated checkpoint, feature file or dataset that later loads as garbage
or half-resumes). The temp file sits in the same folder, so the rename stays on one filesystem and
is atomic; readers see either the old file or the complete new one. On any failure, including
KeyboardInterrupt, the temp file is removed and the old file is left untouched; a full disk
becomes a one-line :class:`netvlad._outputs.DiskFullError` naming the file and the space needed.

A leaf utility (standard library only): every part of the package may import it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from netvlad._outputs import disk_full_error, free_bytes, is_disk_full

__all__ = ["atomic_write", "atomic_write_text", "exchange", "make_temp_dir", "stale_temp_dirs"]

# Writers that fail on a full disk without saying so (torch.save: "unexpected pos 576 vs 534") are
# recognised by the space left when they fail.
_NEARLY_FULL = 1 << 20


def _new_temp(path: Path, suffix: str) -> Path:
    """Create an empty, uniquely named temp file next to ``path`` and return its path.

    Unlike ``tempfile.mkstemp`` (always mode 0600) the file is created with 0666 minus the umask,
    so the final file gets the same permissions a plain ``open(path, "w")`` would give it.
    """
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], *, suffix: str = ".tmp",
                 size_hint: int | None = None) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temp file, which then replaces ``path``.

    Args:
        path: the final file; missing parent folders are created.
        write: called once with the temp file's path (a str; the file exists and is empty) and
            must write the whole content to it, e.g. ``lambda tmp: torch.save(obj, tmp)``.
        suffix: end of the temp file's name, for writers that pick a format or append an extension
            from the name (``np.save`` wants ``.npy``, ``np.savez`` ``.npz``, ``savefig`` ``.png``).
        size_hint: the expected size in bytes, for the full-disk message (default: the size of
            the file being replaced, else what was written before the disk filled up).

    Returns:
        ``path`` as a Path.

    Raises:
        DiskFullError (an OSError): no space left on the device (``path`` is untouched).
        Whatever else ``write`` raises (the temp file is removed first; ``path`` is untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path, suffix)
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        written = _size(tmp)
        full = _disk_full(exc, tmp)
        tmp.unlink(missing_ok=True)
        if full:
            needed = max(size_hint or 0, _size(path), written) or None
            guess = needed == written and not size_hint
            how = "at least what was written before it filled up" if guess else ""
            raise disk_full_error(path, needed, how=how) from exc
        raise
    return path


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _disk_full(exc: BaseException, tmp: Path) -> bool:
    if not isinstance(exc, (OSError, RuntimeError)):
        return False
    if is_disk_full(exc):
        return True
    free = free_bytes(tmp)
    return isinstance(exc, RuntimeError) and free is not None and free < _NEARLY_FULL


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see ``atomic_write``). Returns ``path``."""
    data = text.encode(encoding)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), size_hint=len(data))


def make_temp_dir(path: str | os.PathLike) -> Path:
    """Create an empty, uniquely named folder next to ``path`` to assemble it in, then rename.

    The name ``.NAME.PID-RANDOM.tmp`` lets :func:`stale_temp_dirs` find the leftovers of killed
    processes. Unlike ``tempfile.mkdtemp`` (always mode 0700) the folder gets 0777 minus the umask,
    like any folder the user creates.
    """
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            os.mkdir(tmp, 0o777)
        except FileExistsError:
            continue
        return tmp


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Why: a folder cannot be renamed over a non-empty folder, and moving the old one aside first
    leaves a moment with neither; the exchange has none. Returns False where the system or the
    filesystem cannot do it (the caller then moves the old one aside).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def stale_temp_dirs(path: str | os.PathLike) -> list[Path]:
    """Folders :func:`make_temp_dir` made for ``path`` whose process no longer runs."""
    path = Path(path)
    stale = []
    prefix = f".{path.name}."
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    for p in entries:
        if not (p.name.startswith(prefix) and p.name.endswith(".tmp") and p.is_dir()):
            continue
        pid = p.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            stale.append(p)
    return stale


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

