"""Resumable, checksummed HTTP downloads with the standard library.

An unfinished download lives in ``<dest>.partial`` and is resumed with ``Range: bytes=N-``; a server
that ignores the Range header (HTTP 200) restarts it from zero. Only a complete file whose checksum
matches the expected one is renamed to ``dest``, so ``dest`` is never a partial or wrong file.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from netvlad._sniff import sniff
from netvlad.weights.cache import sha256_file

__all__ = ["ChecksumError", "DownloadError", "DownloadResult", "download_file"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class DownloadError(OSError):
    """The file could not be fetched (offline, HTTP error, timeout, a web page instead of the file).

    Attributes:
        url: what was asked for.
        reason: why it failed, in words.
        resumable: bytes were kept in the ``.partial`` file; running again resumes.
        message: the whole message, when a caller adds context (default "URL: reason").
    """

    def __init__(self, url: str, reason: str, resumable: bool = False, message: str | None = None):
        super().__init__(message or f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.resumable = resumable


class ChecksumError(ValueError):
    """A file's sha256 is not the expected one; the message names the file, expected and actual."""


@dataclass(frozen=True)
class DownloadResult:
    """A finished download: where it is, its sha256 (hex) and size in bytes."""

    path: Path
    sha256: str
    size: int


class _Cut(Exception):
    """The connection ended before the announced size: the bytes so far are in the partial file."""

    def __init__(self, have: int, total: int | None, why: str):
        super().__init__(why)
        self.have, self.total, self.why = have, total, why


def download_file(
    url: str,
    dest: str | Path,
    *,
    expected_sha256: str | None = None,
    timeout: float = 30.0,
    retries: int = 2,
    progress: bool = True,
) -> DownloadResult:
    """Download ``url`` to ``dest``, resuming ``dest.partial`` if an earlier try left one.

    Args:
        url: http(s) URL (redirects are followed, keeping the Range header).
        dest: the final file; written only once complete and verified.
        expected_sha256: when given, a complete download with another checksum is refused: it is
            moved to ``dest.rejected`` (for inspection) and :class:`ChecksumError` is raised.
        timeout: seconds to wait for the connection and for each read.
        retries: how many times a connection cut mid-file is resumed at once before giving up.
        progress: show a tqdm progress bar in bytes (on stderr).

    Returns:
        :class:`DownloadResult`.

    Raises:
        DownloadError: network failure, HTTP error, timeout, or an HTML page instead of the file
            (bytes already received stay in ``dest.partial`` when the server can resume them).
        ChecksumError: the file is complete but its sha256 is not ``expected_sha256``.
    """
    dest = Path(dest)
    partial = dest.with_name(dest.name + ".partial")
    dest.parent.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        try:
            _fetch(url, partial, timeout, progress)
            break
        except _Cut as cut:
            attempt += 1
            got = f"{cut.have} of {cut.total} bytes" if cut.total else f"{cut.have} bytes"
            if attempt > retries:
                raise DownloadError(url, f"connection lost after {got} ({cut.why}); kept in {partial}, "
                                    "run again to resume", resumable=True) from None
            log.warning("%s: connection lost after %s (%s); resuming", url, got, cut.why)
    if sniff(partial) == "html":
        partial.unlink()
        raise DownloadError(url, "the server answered an HTML page, not the file (a sign-in, quota or "
                            "virus-scan page?)")
    sha = sha256_file(partial)
    if expected_sha256 is not None and sha != expected_sha256:
        os.replace(partial, dest.with_name(dest.name + ".rejected"))
        raise ChecksumError(f"{url}: sha256 mismatch: expected {expected_sha256}, got {sha}; the file "
                            f"is kept as {dest.name}.rejected and not used")
    size = partial.stat().st_size
    os.replace(partial, dest)
    return DownloadResult(dest, sha, size)


def _open(url: str, have: int, timeout: float):
    # Some hosts refuse urllib's default agent; identity encoding keeps byte offsets valid for Range.
    headers = {"User-Agent": "netvlad-weights/1 (python urllib)", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise DownloadError(url, f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DownloadError(url, f"cannot connect ({exc.reason})") from None
    except TimeoutError:
        raise DownloadError(url, f"no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(url, f"cannot connect ({exc})") from None


def _fetch(url: str, partial: Path, timeout: float, progress: bool) -> None:
    """One HTTP request appending to (or restarting) ``partial``; raises _Cut if the body ends early."""
    have = partial.stat().st_size if partial.exists() else 0
    try:
        resp = _open(url, have, timeout)
    except DownloadError as exc:
        if have and exc.reason.startswith("HTTP 416"):
            # The partial file is not a prefix the server can extend (already whole, or the file
            # changed and shrank): start again from zero.
            partial.unlink()
            resp, have = _open(url, 0, timeout), 0
        else:
            raise
    with resp:
        if "text/html" in resp.headers.get("Content-Type", "").lower():
            raise DownloadError(url, "the server answered an HTML page, not the file (a sign-in, quota or "
                                "virus-scan page?)")
        total = _total_size(resp)
        if resp.status == 206:
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:
                raise DownloadError(url, f"the server resumed at an unexpected offset "
                                    f"({resp.headers.get('Content-Range')!r} for bytes={have}-)")
        else:
            have = 0  # 200: the server ignored the Range header and sends the whole file
        _copy(resp, partial, have, total, progress)


def _total_size(resp) -> int | None:
    if resp.status == 206:
        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if match and match.group(3) != "*":
            return int(match.group(3))
        return None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _copy(resp, partial: Path, have: int, total: int | None, progress: bool) -> None:
    from tqdm.auto import tqdm

    with open(partial, "ab" if have else "wb") as f, tqdm(
        total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=partial.name[:-8],
        disable=not progress, leave=False,
    ) as bar:
        while True:
            try:
                chunk = resp.read(_CHUNK)
            except http.client.IncompleteRead as exc:
                f.write(exc.partial)
                raise _Cut(have + len(exc.partial), total, "incomplete read") from None
            except TimeoutError:
                raise _Cut(have, total, "timed out") from None
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                raise _Cut(have, total, str(exc) or type(exc).__name__) from None
            if not chunk:
                break
            f.write(chunk)
            have += len(chunk)
            bar.update(len(chunk))
    if total is not None and have < total:
        raise _Cut(have, total, "the server closed the connection")
