"""Dataset SPEC strings with options: ``[FORMAT:]PATH[?key=value&key=value]``.

A SPEC is usually a plain path (``/data/msls``). Options choose a part of a dataset without a
separate flag for every command: ``/data/msls?cities=cph,sf&subtask=n2d``,
``/data/pitts250k?split=val``. The optional ``FORMAT:`` prefix (``msls:``, ``vg:``) names the loader
when the folder alone is ambiguous. An existing path is always taken whole, so a folder whose name
holds ``?`` still works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

#: Loaders that may be named in a SPEC prefix.
PREFIXES = ("msls", "vg")


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed SPEC: the path (or built-in name), an optional format and the options."""

    path: str
    fmt: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def parse_spec(spec: str | Path) -> DatasetSpec:
    """Split ``[FORMAT:]PATH[?key=value&...]`` (see module docstring).

    Raises:
        ValueError: an option without ``=``, or an option given twice.
    """
    text = str(spec)
    if Path(text).exists():
        return DatasetSpec(text)
    fmt = None
    head, sep, rest = text.partition(":")
    if sep and head.lower() in PREFIXES:
        fmt, text = head.lower(), rest
    path, _, query = text.partition("?") if not Path(text).exists() else (text, "", "")
    options: dict[str, str] = {}
    if query:
        for part in query.split("&"):
            if "=" not in part:
                raise ValueError(f"{spec}: option {part!r} is not key=value (SPEC?key=value&key=value)")
        for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
            key = key.strip().lower()
            if key in options:
                raise ValueError(f"{spec}: option {key!r} given twice")
            options[key] = value.strip()
    return DatasetSpec(path, fmt, options)


def split_list(value: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """``"cph, sf"`` or ``["cph", "sf"]`` → ``["cph", "sf"]``; None stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [v.strip() for v in items if v.strip()]
