"""The catalogue of published NetVLAD models: ``catalogue.json`` next to this file, read on demand."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "Catalogue",
    "WeightsEntry",
    "find_weights",
    "load_catalogue",
    "packaged_catalogue_path",
    "resolve_catalogue",
]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Names travel through shells, file names and torch.hub (dashes become underscores there).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class WeightsEntry:
    """One published model.

    Attributes:
        name: the catalogue name (``netvlad weights get NAME``, ``create_model(NAME, pretrained=True)``).
        project: the project that published it; project_url: its home.
        architecture: backbone, crop, head and whitening, in words.
        trained_on: the training set.
        reproduces: the paper table row / README row the file stands for.
        results: the numbers that row gives ("Pitts30k R@1" → 83.2); empty when the source gives none.
        url: the direct download; page_url: where a person fetches it by hand, when that differs
            (a Google Drive page).
        file_name: the download's name in the cache.
        format: the file's format, in words (the converter recognises it by content anyway).
        size: bytes, None when unknown.
        sha256: the published checksum, None when unknown (then recorded at the first download).
        licence: the licence of the weights, as their project states it.
        source_url: where ``url`` was found (the project's README or script, pinned to a commit).
        notes: anything a user should know.
    """

    name: str
    project: str
    url: str
    file_name: str
    licence: str
    source_url: str
    project_url: str | None = None
    architecture: str = ""
    trained_on: str = ""
    reproduces: str = ""
    results: dict[str, float] = field(default_factory=dict)
    page_url: str | None = None
    format: str = ""
    size: int | None = None
    sha256: str | None = None
    notes: str = ""

    @property
    def hub_name(self) -> str:
        """The torch.hub entry point of this model (``-`` and ``.`` become ``_``)."""
        return re.sub(r"[-.]", "_", self.name)

    @property
    def manual_url(self) -> str:
        """Where a person downloads the file by hand."""
        return self.page_url or self.url

    def results_text(self) -> str:
        """The results as one short string, e.g. "Pitts30k R@1 83.2, MSLS R@1 50.9"."""
        return ", ".join(f"{k} {v:g}" for k, v in self.results.items())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "catalogue") -> WeightsEntry:
        """Build and validate an entry; errors name ``where`` and the entry."""
        name = d.get("name", "?")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: entry {name!r} has unknown fields {unknown}")
        required = ("name", "project", "url", "file_name", "licence", "source_url")
        missing = [k for k in required if not d.get(k)]
        if missing:
            raise ValueError(f"{where}: entry {name!r} lacks {missing}")
        if not _NAME.match(d["name"]):
            raise ValueError(f"{where}: entry name {name!r} must be letters, digits, '_', '-' or '.'")
        if Path(d["file_name"]).name != d["file_name"] or d["file_name"] in (".", ".."):
            raise ValueError(f"{where}: entry {name!r}: file_name {d['file_name']!r} must be a plain name")
        sha = d.get("sha256")
        if sha is not None and not _SHA256.match(str(sha)):
            raise ValueError(f"{where}: entry {name!r}: sha256 must be 64 lower-case hex digits or null")
        if d.get("size") is not None and int(d["size"]) < 0:
            raise ValueError(f"{where}: entry {name!r}: size must be >= 0 or null")
        return cls(**{**d, "results": dict(d.get("results") or {})})


@dataclass(frozen=True)
class Catalogue:
    """Entries in file order, plus the catalogue's notes and what it deliberately leaves out.

    Attributes:
        entries: the models.
        notes: general remarks (how sha256/size nulls are handled, ...).
        not_included: published files left out, each {"name", "reason"}.
        source: the file it was read from (for error messages).
    """

    entries: tuple[WeightsEntry, ...]
    notes: tuple[str, ...] = ()
    not_included: tuple[dict[str, str], ...] = ()
    source: str = "catalogue"

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def get(self, name: str) -> WeightsEntry | None:
        """The entry called ``name`` (or whose torch.hub name is ``name``), None if there is none."""
        for e in self.entries:
            if name in (e.name, e.hub_name):
                return e
        return None


def packaged_catalogue_path() -> Path:
    """The catalogue shipped with the package (``netvlad/weights/catalogue.json``)."""
    return Path(__file__).resolve().with_name("catalogue.json")


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Read and validate a catalogue file (None: the packaged one).

    A catalogue of your own (same JSON layout) lets a lab serve the files from a mirror.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a catalogue, an invalid entry, or a name used twice.
    """
    path = packaged_catalogue_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such catalogue file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON catalogue ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ValueError(f"{path}: not a weights catalogue (no 'models' list)")
    entries = tuple(WeightsEntry.from_dict(d, where=str(path)) for d in data["models"])
    seen: set[str] = set()
    for e in entries:
        for key in {e.name, e.hub_name}:
            if key in seen:
                raise ValueError(f"{path}: name {key!r} is used twice")
            seen.add(key)
    notes, left_out = tuple(data.get("notes") or ()), tuple(data.get("not_included") or ())
    return Catalogue(entries, notes, left_out, str(path))


def resolve_catalogue(catalogue: Catalogue | str | Path | None) -> Catalogue:
    """A Catalogue as is, a path read with :func:`load_catalogue`, None → the packaged catalogue."""
    if isinstance(catalogue, Catalogue):
        return catalogue
    return load_catalogue(catalogue)


def find_weights(name: str, catalogue: Catalogue | str | Path | None = None) -> WeightsEntry:
    """The catalogue entry called ``name``.

    Raises:
        ValueError: no such entry (the message suggests close names and ``netvlad weights list``).
    """
    cat = resolve_catalogue(catalogue)
    entry = cat.get(name)
    if entry is None:
        hint = did_you_mean(name, cat)
        raise ValueError(f"{name!r} is not a published model (see `netvlad weights list`){hint}")
    return entry


def did_you_mean(name: str, catalogue: Catalogue) -> str:
    """"; did you mean X?" for a near miss, else ""."""
    close = difflib.get_close_matches(name, catalogue.names(), n=2, cutoff=0.75)
    return f"; did you mean {' or '.join(close)}?" if close else ""
