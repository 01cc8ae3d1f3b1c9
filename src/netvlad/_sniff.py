"""What kind of file is this? Recognised by content (magic bytes), never by name.

A leaf utility (stdlib only) so that every part can say "this is a text file, not a checkpoint"
instead of passing a parser's raw error to the user.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

__all__ = ["FileKind", "sniff", "describe"]

#: The kinds :func:`sniff` tells apart.
FileKind = str

_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."  # torch.save's legacy pickle magic
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Photos given where a model or a feature file was meant (formats with signatures of 3+ bytes).
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")


def sniff(path: str | Path) -> FileKind:
    """The kind of ``path`` from its first bytes.

    Returns one of: "missing", "directory", "empty", "matlab-v5" (MATLAB 5.0 MAT-file header:
    v5/v6/v7), "matlab-v73" (an HDF5 file with MATLAB's 512-byte header), "hdf5", "torch-zip"
    (``torch.save`` since 1.6), "torch-legacy" (older ``torch.save``), "zip" (any other zip
    archive), "tar", "gzip", "safetensors", "npy", "pickle", "image" (PNG, JPEG, GIF, TIFF, WebP),
    "html", "json", "text", "binary".
    """
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.is_dir():
        return "directory"
    with open(path, "rb") as f:
        head = f.read(1024)
    if not head:
        return "empty"
    if head.startswith(b"MATLAB 5.0 MAT-file"):
        return "matlab-v5"
    if head.startswith(b"MATLAB 7.3 MAT-file"):
        return "matlab-v73"
    if head.startswith(_HDF5_SIGNATURE) or head[512:520] == _HDF5_SIGNATURE:
        return "hdf5"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_kind(path)
    if head.startswith(_LEGACY_TORCH_MAGIC) or head.startswith(b"\x80\x02\x8a"):
        return "torch-legacy"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(_IMAGE_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if _is_safetensors(head):
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return _text_kind(head)


def describe(kind: FileKind) -> str:
    """A few words for a kind from :func:`sniff`, for error messages."""
    return {
        "missing": "no such file",
        "directory": "a directory",
        "empty": "an empty file",
        "matlab-v5": "a MATLAB v5/v7 .mat file",
        "matlab-v73": "a MATLAB v7.3 .mat file",
        "hdf5": "an HDF5 file",
        "torch-zip": "a PyTorch checkpoint",
        "torch-legacy": "a PyTorch checkpoint (legacy format)",
        "zip": "a zip archive",
        "tar": "a tar archive",
        "gzip": "a gzip-compressed file",
        "safetensors": "a safetensors file",
        "npy": "a NumPy .npy array",
        "pickle": "a Python pickle",
        "image": "an image file",
        "html": "an HTML page (a download that returned a web page?)",
        "json": "a JSON file",
        "text": "a text file",
        "binary": "a file of unrecognised binary content",
    }.get(kind, kind)


def _zip_kind(path: Path) -> FileKind:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return "binary"
    # torch.save writes <archive>/data.pkl plus data/ records; a zip of checkpoints does not.
    if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return "torch-zip"
    return "zip"


def _is_safetensors(head: bytes) -> bool:
    if len(head) < 10:
        return False
    (size,) = struct.unpack("<Q", head[:8])
    return 2 <= size < 100_000_000 and head[8:9] == b"{"


def _text_kind(head: bytes) -> FileKind:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character cut at the 1024-byte boundary is still text
        try:
            text = head[:-4].decode("utf-8")
        except UnicodeDecodeError:
            return "binary"
    if any(ord(c) < 9 or 13 < ord(c) < 32 for c in text):
        return "binary"
    stripped = text.lstrip().lower()
    if stripped.startswith(("<!doctype html", "<html")) or "<html" in stripped[:200]:
        return "html"
    if stripped.startswith(("{", "[")):
        try:
            json.loads(text)
            return "json"
        except ValueError:
            return "text" if len(head) < 1024 else "json"
    return "text"
