"""One writer per output: an exclusive ``flock`` on ``<out>.lock`` that dies with its holder."""

from __future__ import annotations

import os
from pathlib import Path

from netvlad._outputs.paths import OutputError


class OutputBusyError(OSError):
    """Another process holds the output's lock."""



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
