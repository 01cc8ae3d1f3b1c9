"""Atomic file writes: write a temp file in the target's folder, then ``os.replace`` it into place.

Why: a crash, a Ctrl-C or a full disk in the middle of a write must never leave a partial file
under the final name (a truncated checkpoint, feature file or dataset that later loads as garbage
or half-resumes). The temp file sits in the same folder, so the rename stays on one filesystem and
is atomic; readers see either the old file or the complete new one. On any failure, including
KeyboardInterrupt, the temp file is removed and the old file is left untouched.

A leaf utility (standard library only): every part of the package may import it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text"]


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


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], *, suffix: str = ".tmp") -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temp file, which then replaces ``path``.

    Args:
        path: the final file; missing parent folders are created.
        write: called once with the temp file's path (a str; the file exists and is empty) and
            must write the whole content to it, e.g. ``lambda tmp: torch.save(obj, tmp)``.
        suffix: end of the temp file's name, for writers that pick a format or append an extension
            from the name (``np.save`` wants ``.npy``, ``np.savez`` ``.npz``, ``savefig`` ``.png``).

    Returns:
        ``path`` as a Path.

    Raises:
        Whatever ``write`` raises (the temp file is removed first; ``path`` is untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path, suffix)
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see ``atomic_write``). Returns ``path``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding=encoding))

