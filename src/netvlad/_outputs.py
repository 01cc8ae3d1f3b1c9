"""Output paths that never destroy an input or a user's file, per-output locks, full-disk errors.

Why: a mistyped ``--out`` must not turn a feature file into an index folder, empty a folder of
the user's files or overwrite the report that was meant as an input; two processes writing the
same output must not undo each other's work; a full disk must be a one-line error that says how
much space to free, never a traceback or a file that later reads as something else.

The rules every writing command applies (see README "When things go wrong"):

- an output that is also an input (same file after resolving relative paths and symlinks) is
  refused, even with ``--overwrite``;
- an existing output file is replaced only when it is netvlad's own artefact of the same kind
  (recognised by its content, never by its name), when it is empty, or with ``--overwrite``;
- an existing folder is written into or replaced only when it is empty or holds only what
  netvlad itself writes there; a folder holding anything else is never touched, whatever the flags.

A leaf utility (standard library only): every part of the package may import it.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import struct
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "DiskFullError",
    "OutputBusyError",
    "OutputError",
    "OutputLock",
    "check_distinct",
    "check_not_input",
    "check_output_dir",
    "check_output_file",
    "disk_full_error",
    "folder_holds_only",
    "format_bytes",
    "free_bytes",
    "is_disk_full",
    "is_netvlad_checkpoint",
    "is_onnx_model",
    "is_torchscript",
    "json_object_with",
    "lock_path",
    "png_text",
    "same_file",
    "text_starts_with",
]

Inputs = Iterable[tuple[str, "str | os.PathLike | None"]]


class OutputError(ValueError):
    """An output path that would destroy an input or a file/folder netvlad did not write."""


class OutputBusyError(OSError):
    """Another process holds the output's lock."""


class DiskFullError(OSError):
    """No space left on the device (or quota exceeded) while writing an output; the message says
    which file and about how much space is needed."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC


# ------------------------------------------------------------------------------ same file


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file: ``os.path.samefile`` when both exist (hard
    links, symlinks, ``..``), else equal resolved paths."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_not_input(out: str | os.PathLike, inputs: Inputs) -> None:
    """Raise :class:`OutputError` when ``out`` is one of ``inputs`` ((label, path) pairs; None
    paths are skipped). Cheap when ``out`` does not exist: paths are only resolved when their
    file names match."""
    out = Path(out)
    try:
        st = os.stat(out)
    except OSError:
        st = None
    real = os.path.realpath(out)
    for label, path in inputs:
        if path is None:
            continue
        if st is not None:
            try:
                other = os.stat(path)
            except OSError:
                continue
            hit = (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)
        else:
            hit = Path(path).name == out.name and os.path.realpath(path) == real
        if hit:
            raise OutputError(f"{out}: is also an input ({label} {path}); an output never replaces an "
                              "input: choose another output path")


def check_distinct(outputs: Iterable[tuple[str, str | os.PathLike | None]]) -> None:
    """Raise :class:`OutputError` when two outputs ((label, path) pairs) are the same file."""
    seen: list[tuple[str, str | os.PathLike]] = []
    for label, path in outputs:
        if path is None:
            continue
        for other_label, other in seen:
            if same_file(path, other):
                raise OutputError(f"{path}: given as both {other_label} and {label}; choose two paths")
        seen.append((label, path))


def check_output_file(out: str | os.PathLike, *, inputs: Inputs = (),
                      is_ours: Callable[[Path], bool] | None = None, kind: str = "file",
                      overwrite: bool = False) -> Path:
    """Check that writing the file ``out`` destroys nothing (see the module's rules).

    Args:
        out: the output file.
        inputs: (label, path) pairs the command reads; ``out`` may be none of them.
        is_ours: recognises netvlad's own artefact of this kind by content (None: nothing is).
        kind: words for the artefact in messages, e.g. "netvlad checkpoint".
        overwrite: replace an existing file that is not ours (never an input, never a folder).

    Returns:
        ``out`` as a Path.

    Raises:
        OutputError: ``out`` is an input, a folder, or a file that is not ours (without overwrite).
    """
    out = Path(out)
    check_not_input(out, inputs)
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; give the path of the {kind} to write")
    if not out.exists() or overwrite or out.stat().st_size == 0:
        return out
    if is_ours is not None and _recognised(is_ours, out):
        return out
    what = f"exists and is not a {kind}" if is_ours is not None else "exists"
    raise OutputError(f"{out}: {what}; refusing to replace it "
                      "(choose another path, or pass --overwrite to replace it)")


def check_output_dir(out: str | os.PathLike, *, inputs: Inputs = (),
                     is_ours: Callable[[Path], bool] | None = None, kind: str = "folder",
                     overwrite: bool = False, replaces_file: bool = False) -> Path:
    """Check that writing the folder ``out`` destroys nothing (see the module's rules).

    Args:
        out: the output folder.
        inputs: (label, path) pairs the command reads; ``out`` may be none of them.
        is_ours: recognises a folder that holds only netvlad's own output of this kind.
        kind: words for the folder in messages, e.g. "netvlad index folder".
        overwrite: with ``replaces_file``, replace an existing *file* at ``out``. It never lets a
            folder holding anything else be emptied or written into.
        replaces_file: the command can replace a file at ``out`` by its folder (only with overwrite).

    Raises:
        OutputError: ``out`` is an input, a file, or a non-empty folder that is not ours.
    """
    out = Path(out)
    check_not_input(out, inputs)
    if out.exists() and not out.is_dir():
        if replaces_file and overwrite:
            return out
        hint = " (or pass --overwrite to replace it)" if replaces_file else ""
        raise OutputError(f"{out}: is a file, not a {kind}; refusing to replace it: "
                          f"choose another path{hint}")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if is_ours is not None and _recognised(is_ours, out):
        return out
    some = sorted(p.name for p in out.iterdir())
    listed = ", ".join(some[:3]) + (", ..." if len(some) > 3 else "")
    raise OutputError(f"{out}: folder holds files netvlad did not write ({listed}); it is never emptied "
                      f"or written into (not even with --overwrite): choose a new or empty folder")


def _recognised(is_ours: Callable[[Path], bool], path: Path) -> bool:
    try:
        return bool(is_ours(path))
    except (OSError, ValueError, KeyError, TypeError):
        return False


# ------------------------------------------------------------------------------ recognisers


def folder_holds_only(path: str | os.PathLike, patterns: Iterable[str]) -> bool:
    """True when every top-level entry of the folder matches one of the fnmatch ``patterns``
    (hidden temporaries of interrupted atomic writes, ``.*.tmp*``, are always allowed)."""
    pats = [*patterns, ".*.tmp*"]
    return all(any(fnmatch.fnmatchcase(p.name, pat) for pat in pats) for p in Path(path).iterdir())


def _head(path: Path, n: int = 4096) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def is_netvlad_checkpoint(path: str | os.PathLike) -> bool:
    """A netvlad checkpoint (``save_model`` / training checkpoints): a torch zip archive whose
    pickle names the ``netvlad-checkpoint`` format, or a safetensors file with that metadata."""
    path = Path(path)
    head = _head(path, 16)
    if head.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            return bool(pkl) and b"netvlad-checkpoint" in z.read(pkl[0])
    if len(head) >= 8:
        (size,) = struct.unpack("<Q", head[:8])
        if 2 <= size < 100_000_000:
            with open(path, "rb") as f:
                f.seek(8)
                header = json.loads(f.read(size))
            return (header.get("__metadata__") or {}).get("format") == "netvlad-checkpoint"
    return False


def is_torchscript(path: str | os.PathLike) -> bool:
    """A TorchScript archive (``torch.jit.save``: a zip with ``code/`` and ``constants.pkl``)."""
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())


def is_onnx_model(path: str | os.PathLike) -> bool:
    """An ONNX model exported by PyTorch (ModelProto: ir_version field, producer "pytorch")."""
    head = _head(Path(path), 64)
    return head[:1] == b"\x08" and b"pytorch" in head


def png_text(path: str | os.PathLike) -> dict[str, str]:
    """The tEXt chunks of a PNG file before its image data ({} for a file that is not a PNG)."""
    out: dict[str, str] = {}
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return out
        while True:
            head = f.read(8)
            if len(head) < 8:
                return out
            length, ctype = struct.unpack(">I4s", head)
            if ctype in (b"IDAT", b"IEND") or length > 1 << 20:
                return out
            data = f.read(length)
            f.seek(4, os.SEEK_CUR)  # CRC
            if ctype == b"tEXt" and b"\0" in data:
                key, value = data.split(b"\0", 1)
                out[key.decode("latin-1")] = value.decode("latin-1")


def json_object_with(path: str | os.PathLike, keys: Iterable[str]) -> bool:
    """True when ``path`` holds a JSON object with all ``keys``."""
    obj = json.loads(Path(path).read_text(encoding="utf-8"))
    return isinstance(obj, dict) and all(k in obj for k in keys)


def text_starts_with(path: str | os.PathLike, prefixes: tuple[str, ...]) -> bool:
    """True when the file is UTF-8 text starting with one of ``prefixes``."""
    head = _head(Path(path), 1024)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return text.startswith(prefixes)


# ------------------------------------------------------------------------------ locks


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of an output: ``feats.h5`` -> ``feats.h5.lock``, ``run/`` -> ``run.lock``."""
    out = Path(out)
    return out.with_name(out.name + ".lock")


class OutputLock:
    """Exclusive lock of one output between processes: ``fcntl.flock`` on ``<out>.lock``.

    The kernel releases a flock when its holder dies, however it dies, so a lock is never
    stale. The holder's PID is written into the file for the message the next process prints;
    the file is removed on release (after a crash it stays, unlocked, and is reused). A no-op
    where ``fcntl`` does not exist (Windows).

    Usage::

        with OutputLock(out):
            ...  # check and write out

    Raises (on entry):
        OutputBusyError: another process holds the lock (the message names its PID).
    """

    def __init__(self, out: str | os.PathLike, what: str = "writing"):
        self.out = Path(out)
        self.path = lock_path(out)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on Linux/macOS
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise OutputBusyError(
                    f"{self.out}: another netvlad process (PID {pid}) is {self.what} it (lock {self.path}); "
                    "wait for it to finish or stop it, then rerun") from None
            # The previous holder removes the file when it releases: a lock taken on that removed
            # file protects nothing, so start again on the current one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        held = os.pread(fd, 64, 0).strip()
        if held and not held.isdigit():  # somebody's own file of that name: not ours to truncate
            os.close(fd)
            raise OutputError(f"{self.path}: exists and is not a netvlad lock file (it would hold a PID); "
                              "move it away")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:  # e.g. a full disk: the PID is for messages only, the lock holds without it
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: see acquire()
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __del__(self) -> None:
        # A holder dropped without release() must not keep its own process out of the output.
        try:
            self.release()
        except Exception:  # noqa: BLE001 - at interpreter shutdown anything may be gone
            pass

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


# ------------------------------------------------------------------------------ full disk

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
