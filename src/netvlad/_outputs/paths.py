"""Output paths that destroy nothing: no input, no file or folder netvlad did not write (the rules
are in the package docstring), and the recognisers of netvlad's own artefacts by content."""

from __future__ import annotations

import fnmatch
import json
import os
import struct
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

Inputs = Iterable[tuple[str, "str | os.PathLike | None"]]


class OutputError(ValueError):
    """An output path that would destroy an input or a file/folder netvlad did not write."""


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
