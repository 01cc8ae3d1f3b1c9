"""The request side of ``POST /localize``: the multipart form → a job for the model.

The body is counted as it arrives (a chunked upload has no Content-Length to check up front), the
fields ``k``, ``lat``, ``lon``, ``radius_m`` are checked, and the image is written to a temp file.
Every problem is a :class:`RequestError` carrying the status and the message the client gets.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from netvlad.rerank.prior import PositionPrior

__all__ = ["RequestError", "UploadJob", "read_job", "too_large_text"]


class RequestError(Exception):
    """A bad request: ``status`` and the message the client gets."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class UploadJob:
    """One uploaded photo to localise: its temp file, the name the client gave, k and a prior."""

    path: Path
    label: str
    k: int
    prior: PositionPrior | None


class _BodyTooLarge(Exception):
    pass


def too_large_text(max_upload_bytes: int) -> str:
    """The 413 message for a body over ``max_upload_bytes``."""
    return f"request body over the {max_upload_bytes}-byte limit (netvlad serve --max-upload-mb)"


def _int_field(form, name: str, default: int, lo: int, hi: int) -> int:
    raw = form.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(str(raw))
    except ValueError:
        raise RequestError(
            400, f"field {name!r} must be an integer from {lo} to {hi}, got {str(raw)[:40]!r}"
        ) from None
    if not lo <= v <= hi:
        raise RequestError(400, f"field {name!r} must be an integer from {lo} to {hi}, got {v}")
    return v


def _prior_fields(form, index) -> PositionPrior | None:
    names = ("lat", "lon", "radius_m")
    given = [form.get(n) not in (None, "") for n in names]
    if not any(given):
        return None
    if not all(given):
        missing = [n for n, g in zip(names, given) if not g]
        raise RequestError(400, f"a position prior needs lat, lon and radius_m; missing {', '.join(missing)}")
    try:
        lat, lon, radius = (float(str(form.get(n))) for n in names)
    except ValueError:
        raise RequestError(400, "lat, lon and radius_m must be numbers (degrees, degrees, metres)") from None
    if index.utm is None:
        raise RequestError(400, "the loaded index holds no coordinates; it cannot take a position prior")
    try:
        return PositionPrior.from_latlon(lat, lon, radius, index.meta.get("zone"))
    except ValueError as exc:
        raise RequestError(400, str(exc)) from None


async def _read_form(request: Request, max_upload_bytes: int):
    """The parsed multipart form, refusing (413) a body that grows past ``max_upload_bytes``."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise RequestError(400, "expected a multipart/form-data body with an 'image' file field")
    # Count the body as it arrives: a chunked upload has no Content-Length to check up front.
    seen = 0
    receive = request._receive

    async def counted():
        nonlocal seen
        msg = await receive()
        seen += len(msg.get("body", b""))
        if seen > max_upload_bytes:
            raise _BodyTooLarge()
        return msg

    request._receive = counted
    try:
        return await request.form(max_files=1, max_fields=8)
    except _BodyTooLarge:
        raise RequestError(413, too_large_text(max_upload_bytes)) from None
    except Exception as exc:  # noqa: BLE001 - a malformed body from a client is its problem, said in one line
        raise RequestError(400, f"could not parse the multipart form: {str(exc)[:200]}") from None


async def read_job(request: Request, cfg, index, tmp: Path) -> UploadJob:
    """Parse the multipart form into a job whose image lies in a temp file under ``tmp``.

    Args:
        request: the ``POST /localize`` request.
        cfg: the service's ``ServeConfig`` (``k_default``, ``k_max``, ``max_upload_bytes``).
        index: the loaded index (a position prior needs its coordinates and zone).
        tmp: folder for the temp file; the caller deletes the file when the job is done.

    Returns:
        The :class:`UploadJob`; a :class:`RequestError` for any problem with the request.
    """
    form = await _read_form(request, cfg.max_upload_bytes)
    upload = form.get("image")
    if upload is None:
        raise RequestError(400, "missing form field 'image' (the photo to localise)")
    if isinstance(upload, str) or not hasattr(upload, "read"):
        raise RequestError(400, "form field 'image' must be a file upload, not text")
    k = _int_field(form, "k", cfg.k_default, 1, cfg.k_max)
    prior = _prior_fields(form, index)
    label = os.path.basename(upload.filename or "") or "upload"
    data = await upload.read()
    await form.close()
    if not data:
        raise RequestError(400, f"{label}: empty file")
    fd, name = tempfile.mkstemp(dir=tmp, suffix=".upload")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return UploadJob(Path(name), label, k, prior)
